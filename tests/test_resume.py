"""Proven resume: runs killed (SIGKILL, also in the middle of writing a checkpoint) or interrupted (Ctrl-C) and then
resumed end with the same adapter weights, bit for bit, and the same metrics.jsonl lines as an uninterrupted run.

Tolerance: none. On a CPU every per-step value (loss, grad_norm, learning_rate, epoch, num_tokens, entropy,
mean_token_accuracy) and every adapter tensor is compared with ``==`` / ``torch.equal``. Only fields that measure
the machine rather than the training differ between two runs and are left out: the wall-clock ``time``,
``tokens_per_second``, memory, and the runtime and throughput of the evaluation and summary lines.

The kill points are random (the seed is printed in every failure message; ``RECIPETUNE_TEST_SEED`` repeats one).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipetune import checkpoints
from recipetune.testing import tiny_recipe_text

MAX_STEPS = 8
OVERRIDES = (f"train.max_steps={MAX_STEPS}", "train.save_steps=2", "train.save_total_limit=2",
             "format.validation_fraction=0.25", "train.eval_steps=4")
EXTRA = '\n[[report]]\nuse = "tensorboard"\n\n[[export]]\nuse = "lora"\n'
MACHINE_FIELDS = {"time", "tokens_per_second", "host_rss_gib", "memory_reserved_gib", "memory_peak_allocated_gib",
                  "train_runtime", "train_samples_per_second", "train_steps_per_second",
                  "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def metric_lines(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in MACHINE_FIELDS} for row in rows]


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "artifacts" / "lora" / "adapter_model.safetensors")


def cli_in_process(args: list[str]):
    """``recipe ARGS`` in this process (the resumed runs: no second interpreter start)."""
    from click.testing import CliRunner

    from recipetune.cli import build_cli

    return CliRunner().invoke(build_cli(), args, catch_exceptions=False)


def start(recipe: Path, out: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``recipe run`` in a child process we can kill; stderr goes to ``log``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RECIPETUNE_PROGRESS", None)  # stderr is a file: the progress must come as plain lines by itself
    with log.open("a") as fh:
        return subprocess.Popen([sys.executable, "-m", "recipetune", "run", str(recipe), *OVERRIDES,
                                 "--output-dir", str(out)], env=full_env, stdout=fh, stderr=subprocess.STDOUT)


def steps_logged(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    except OSError:
        return 0


def resumed(log: Path, times: int):
    """A condition: the log shows the ``times``-th start of a resumed training."""
    return lambda: log.read_text().count("resuming training from") >= times


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 240, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None else ""
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, tiny_model_dir, sharegpt_file) -> Path:
    path = tmp_path_factory.mktemp("resume") / "tiny.toml"
    path.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file, extra=EXTRA))
    return path


@pytest.fixture(scope="module")
def uninterrupted(recipe_file) -> Path:
    out = recipe_file.parent / "uninterrupted"
    result = cli_in_process(["run", str(recipe_file), *OVERRIDES, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_killed_and_interrupted_runs_resume_bit_for_bit(recipe_file, uninterrupted, tmp_path):
    seed = int(os.environ.get("RECIPETUNE_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    why = f"(RECIPETUNE_TEST_SEED={seed})"
    out, log = tmp_path / "run", tmp_path / "stderr.log"

    # 1. SIGKILL in the middle of writing a checkpoint: after the adapter, before the optimizer (a named fault point).
    mid_write = rng.choice([2, 4])
    proc = start(recipe_file, out, log, {"RECIPETUNE_FAULT": f"checkpoint-write:{mid_write}:kill"})
    assert proc.wait(timeout=240) == -signal.SIGKILL, log.read_text()[-3000:]
    half = out / "checkpoints" / f"checkpoint-{mid_write}"
    assert (half / "adapter_model.safetensors").exists() and not checkpoints.is_complete(half), why
    assert checkpoints.newest_complete(out / "checkpoints") == (
        out / "checkpoints" / f"checkpoint-{mid_write - 2}" if mid_write > 2 else None), why

    # 2. The same command resumes from the newest complete checkpoint (never the half-written one) and is
    #    SIGKILLed from outside at a random later step.
    kill_after = rng.randint(mid_write + 1, MAX_STEPS - 3)
    proc = start(recipe_file, out, log)
    wait_for(proc, resumed(log, 1), f"the first resumed training {why}", log=log)
    wait_for(proc, lambda: steps_logged(out) >= kill_after, f"step {kill_after} {why}", log=log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    text = log.read_text()
    assert f"removed incomplete checkpoint(s) (the run stopped while writing them): checkpoint-{mid_write}" in text, why
    assert "resuming the run in" in text, why

    # 3. Resumed again, then Ctrl-C at a random later step: a checkpoint is written and the command to resume printed.
    resumed_at = checkpoints.checkpoint_step(checkpoints.newest_complete(out / "checkpoints") or Path("checkpoint-0"))
    interrupt_after = rng.randint(max(resumed_at + 1, kill_after - 1), MAX_STEPS - 1)
    proc = start(recipe_file, out, log)
    wait_for(proc, resumed(log, 2), f"the second resumed training {why}", log=log)
    wait_for(proc, lambda: steps_logged(out) >= interrupt_after, f"step {interrupt_after} {why}", log=log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "interrupted; checkpoint written:" in text, text[-2000:]
    command = text.split("resume with: ")[-1].splitlines()[0]
    stopped = checkpoints.newest_complete(out / "checkpoints")
    assert stopped is not None and checkpoints.checkpoint_step(stopped) >= interrupt_after, why

    # 4. The printed command finishes the run (here in-process); it says it resumes, from where.
    args = shlex.split(command)
    assert args[:2] == ["recipe", "run"] and args[-2:] == ["--output-dir", str(out)], command
    result = cli_in_process(args[1:])
    assert result.exit_code == 0, result.output
    assert f"resuming the run in {out} from {stopped.name}" in (out / "run.log").read_text(), why

    assert metric_lines(out) == metric_lines(uninterrupted), why
    final, reference = adapter(out), adapter(uninterrupted)
    import torch

    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference), f"adapter weights differ {why}"
    assert len(checkpoints.complete_checkpoints(out / "checkpoints")) == 2, "save_total_limit = 2"

    # What people watch survives the kills too: TensorBoard's own reader sees every step once (the resumed sessions
    # purged what the killed ones logged past their checkpoints), with the values of metrics.jsonl.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "eval/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
            "memory/host_rss_gib"} <= tags, tags
    rows = metric_lines(out)
    for tag, key in (("train/loss", "loss"), ("eval/loss", "eval_loss"), ("train/learning_rate", "learning_rate")):
        logged = [(row["step"], row[key]) for row in rows if key in row]
        seen = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in seen] == [s for s, _ in logged], (tag, why)
        assert [v for _, v in seen] == pytest.approx([v for _, v in logged], rel=1e-6), tag  # float32 in event files
    # ... the progress came as plain lines (stderr is not a terminal), never as the Trainer's own bar
    text = log.read_text()
    assert re.search(rf"train step \d+/{MAX_STEPS} \(\d+%\) · loss \d+\.\d{{4}} · [\d,]+ tok/s · elapsed \S+ · ETA \S+", text)
    assert not re.search(rf"\d+/{MAX_STEPS} \[", text), "the Trainer's tqdm bar printed too"
    for png in ("loss.png", "loss_per_epoch.png", "learning_rate.png", "memory_per_step.png"):
        assert (out / png).stat().st_size > 1000, png
