"""recipe sweep: a 2x2 grid of real tiny runs, killed after its first run and continued."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

RECIPE = str(ROOT / "recipes" / "sweep_lr_scheduler.toml")


def tiny_overrides(model_dir: Path, data: Path) -> list[str]:
    """The shipped sweep recipe on the tiny model and a local file (no download, no GPU)."""
    return ["load.use=hf", f"load.model={model_dir}", "load.load_in_4bit=false", "load.max_seq_length=128",
            f"format.dataset={data}", "format.chat_template=tokenizer", "format.validation_fraction=0.2",
            "train.optim=adamw_torch", "train.max_steps=2", "train.eval_steps=1", "train.save_steps=1",
            "train.warmup_steps=0", "adapt.gradient_checkpointing=false", "train.logging_steps=1"]


def test_grid_values_are_validated_at_their_line(tmp_path):
    text = (ROOT / "recipes" / "sweep_lr_scheduler.toml").read_text().replace('"linear", "cosine"]', '"linear", "cosin"]')
    (tmp_path / "r.toml").write_text(text)
    result = run_cli("validate", str(tmp_path / "r.toml"))
    assert result.returncode == 2
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith('"train.lr_scheduler_type"'))
    assert f"r.toml:{line}:1: sweep.grid.train.lr_scheduler_type: the value \"cosin\": unknown learning-rate schedule" \
           f" 'cosin'; did you mean 'cosine'?" in result.stderr


def test_dry_run_lists_every_combination_and_a_bad_combination_stops_all(tmp_path, tiny_model_dir, sharegpt_file):
    args = ["sweep", RECIPE, "--dry-run", "--output-dir", str(tmp_path / "s"), *tiny_overrides(tiny_model_dir, sharegpt_file)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("train.learning_rate=") == 6 and "04-learning_rate=0.0002-lr_scheduler_type=cosine" in result.stdout
    result = run_cli(*args, "--grid", "train.learning_rate=1e-4,-1")
    assert result.returncode == 2 and "combination train.learning_rate=-1" in result.stderr
    assert "nothing was started" in result.stderr and not (tmp_path / "s").exists()


def _state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return None


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.slow
def test_a_killed_sweep_continues_with_the_unfinished_runs(tmp_path, tiny_model_dir, sharegpt_file):
    folder = tmp_path / "sweep"
    args = [sys.executable, "-m", "recipetune", "sweep", RECIPE, "--grid", "train.learning_rate=1e-3,2e-3",
            "--output-dir", str(folder), *tiny_overrides(tiny_model_dir, sharegpt_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    child = None
    while time.time() < deadline:  # wait until the first run finished and the second one runs
        state = _state(folder)
        if state and state["runs"][0]["status"] == "done" and state["runs"][1].get("pid"):
            child = state["runs"][1]["pid"]
            break
        assert sweep.poll() is None, "the sweep ended before it was killed"
        time.sleep(0.2)
    assert child is not None, "the first run did not finish in time"
    sweep.kill()  # SIGKILL: no chance to clean up
    sweep.wait()
    for _ in range(100):
        if _gone(child):
            break
        time.sleep(0.1)
    assert _gone(child), "the run the sweep was running dies with it"
    first = folder / _state(folder)["runs"][0]["name"]
    finished_at = (first / "report.md").stat().st_mtime_ns
    assert [r["status"] for r in _state(folder)["runs"]] == ["done", "running", "pending", "pending"]

    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(f"\n--- {p}:\n" + p.read_text()[-1500:] for p in folder.glob("*/run.log"))
    assert result.returncode == 0, (result.stderr[-1500:], result.stdout, logs)
    assert f"[sweep] {first.name}: finished before, skipped" in result.stderr
    assert (first / "report.md").stat().st_mtime_ns == finished_at, "a finished run is not run again"
    state = _state(folder)
    assert [r["status"] for r in state["runs"]] == ["done"] * 4
    assert [r["params"] for r in state["runs"]] == [
        {"train.learning_rate": lr, "train.lr_scheduler_type": s} for lr in ("1e-3", "2e-3") for s in ("linear", "cosine")]

    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["run"] for r in rows] == [r["name"] for r in state["runs"]]
    for row, result_row in zip(rows, state["results"]):
        assert row["steps"] == "2" and float(row["final_train_loss"]) > 0 and float(row["best_eval_loss"]) > 0
        metrics = [json.loads(l) for l in (folder / row["run"] / "metrics.jsonl").read_text().splitlines()]
        assert float(row["final_eval_loss"]) == pytest.approx([m for m in metrics if "eval_loss" in m][-1]["eval_loss"])
        assert result_row["loss_per_epoch"] and result_row["status"] == "done"
    assert state["best_run"] == min(rows, key=lambda r: float(r["best_eval_loss"]))["run"]
    table = (folder / "sweep.md").read_text()
    assert f"**{state['best_run']}** ★" in table and "4 of 4 runs finished" in table
    assert (folder / "loss_per_epoch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
