"""The comparison a sweep writes: one row per run (``sweep.md``, ``sweep.csv``, ``sweep.json``) and one PNG with
every run's average training loss per epoch (``loss_per_epoch.png``).

Everything is read back from the run folders (``metrics.jsonl``, ``resolved.json``, ``rouge.json``,
``best/best.json``), so the table can be rebuilt at any time, also of a sweep that was killed half-way.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from recipetune import atomic

COLUMNS = ("steps", "epochs", "final_train_loss", "best_train_loss", "last_epoch_train_loss", "final_eval_loss",
           "best_eval_loss", "rougeL", "seconds")
"""Numbers of each run in the table, besides its name, its grid values and its status."""

HEADERS = {"steps": "steps", "epochs": "epochs", "final_train_loss": "final train loss",
           "best_train_loss": "best train loss", "last_epoch_train_loss": "last epoch mean train loss",
           "final_eval_loss": "final eval loss", "best_eval_loss": "best eval loss", "rougeL": "ROUGE-L",
           "seconds": "time (s)"}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (a torn last line of a killed run is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def loss_per_epoch(metrics: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Mean training loss of each epoch: (1, mean), (2, mean)... A step logged at epoch ``e`` (transformers logs the
    fraction of the data seen, 0 < e) belongs to epoch ``ceil(e)``."""
    buckets: dict[int, list[float]] = {}
    for m in metrics:
        if "loss" in m and "epoch" in m and math.isfinite(m["loss"]):
            buckets.setdefault(max(1, math.ceil(m["epoch"] - 1e-9)), []).append(m["loss"])
    return [(epoch, sum(v) / len(v)) for epoch, v in sorted(buckets.items())]


def summarize(run_dir: Path) -> dict[str, Any]:
    """The numbers of one run folder (None where the run has none)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    epochs = loss_per_epoch(metrics)
    resolved = _read_json(run_dir / "resolved.json") or {}
    rouge = _read_json(run_dir / "rouge.json") or {}
    best = _read_json(run_dir / "best" / "best.json")
    timings = resolved.get("timings") or {}
    return {
        "steps": max((int(m["step"]) for m in train), default=None),
        "epochs": round(max((m.get("epoch", 0.0) for m in train), default=0.0), 3) if train else None,
        "final_train_loss": train[-1]["loss"] if train else None,
        "best_train_loss": min(m["loss"] for m in train) if train else None,
        "last_epoch_train_loss": epochs[-1][1] if epochs else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": min(m["eval_loss"] for m in evals) if evals else None,
        "rougeL": (rouge.get("after") or {}).get("rougeL"),
        "rouge_before": rouge.get("before"),
        "rouge_after": rouge.get("after"),
        "best": best,
        "train_seconds": timings.get("train"),
        "loss_per_epoch": epochs,
        "loss_per_step": [(int(m["step"]), m["loss"]) for m in train],
    }


def best_run(rows: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The name of the best finished run and the column that decided: best eval loss when every finished run has
    one, else the last epoch's mean training loss (the seed's comparison)."""
    done = [r for r in rows if r["status"] == "done"]
    for column in ("best_eval_loss", "last_epoch_train_loss", "final_train_loss"):
        if done and all(r.get(column) is not None for r in done):
            return min(done, key=lambda r: r[column])["name"], column
    return None, None


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return "–"
    if column in ("steps",):
        return str(value)
    if column == "seconds":
        return f"{value:.0f}"
    if column == "epochs":
        return f"{value:g}"
    return f"{value:.4f}"


def rows_of(sweep_dir: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in state["runs"]:
        summary = summarize(Path(sweep_dir) / run["name"])
        rows.append({"name": run["name"], "params": run["params"], "status": run["status"],
                     "seconds": run.get("seconds"), **{k: v for k, v in summary.items() if k != "seconds"}})
    return rows


def markdown_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    winner, column = best_run(rows)
    head = ["run", *keys, "status", *(HEADERS[c] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (len(keys) + 2) + "---:|" * len(COLUMNS)]
    for r in rows:
        name = f"**{r['name']}** ★" if r["name"] == winner else r["name"]
        cells = [name, *(f"`{r['params'][k]}`" for k in keys), r["status"], *(_fmt(r.get(c), c) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    if winner:
        lines += ["", f"★ best finished run by {HEADERS[column]}: **{winner}**."]
    return "\n".join(lines)


def plot_loss_per_epoch(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Every run's mean training loss per epoch (left) and its loss per step (right), in one PNG."""
    if not any(r["loss_per_step"] for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for r in rows:
        if r["loss_per_epoch"]:
            left.plot(*zip(*r["loss_per_epoch"]), "o-", label=r["name"])
        if r["loss_per_step"]:
            right.plot(*zip(*r["loss_per_step"]), linewidth=1, label=r["name"])
    left.set_title("mean training loss per epoch")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_xticks(sorted({e for r in rows for e, _ in r["loss_per_epoch"]}))
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_title("training loss per step")
    right.set_xlabel("step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_comparison(sweep_dir: Path, state: dict[str, Any]) -> dict[str, Path]:
    """Write ``sweep.md``, ``sweep.csv``, ``sweep.json`` (state and results) and ``loss_per_epoch.png``."""
    sweep_dir = Path(sweep_dir)
    keys = list(state["grid"])
    rows = rows_of(sweep_dir, state)
    written: dict[str, Path] = {}
    png = plot_loss_per_epoch(rows, sweep_dir / "loss_per_epoch.png")
    done = sum(r["status"] == "done" for r in rows)
    md = [f"# Sweep of `{state['recipe_name']}`", "",
          f"Recipe `{state['recipe']}`" + (f", overrides `{' '.join(state['overrides'])}`" if state["overrides"] else "")
          + f"; {done} of {len(rows)} runs finished.", "",
          "Grid: " + "; ".join(f"`{k}` = {', '.join(f'`{v}`' for v in vals)}" for k, vals in state["grid"].items()), "",
          markdown_table(rows, keys), ""]
    if png is not None:
        md += [f"![loss per epoch]({png.name})", ""]
        written["png"] = png
    md += ["Each run's folder holds its `report.md`, `metrics.jsonl` and artifacts.", ""]
    written["md"] = atomic.write_text(sweep_dir / "sweep.md", "\n".join(md))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", *keys, "status", *COLUMNS])
    for r in rows:
        writer.writerow([r["name"], *(r["params"][k] for k in keys), r["status"],
                         *("" if r.get(c) is None else r[c] for c in COLUMNS)])
    written["csv"] = atomic.write_text(sweep_dir / "sweep.csv", buffer.getvalue())
    winner, column = best_run(rows)
    results = [{k: v for k, v in r.items() if k != "loss_per_step"} for r in rows]
    written["json"] = atomic.write_json(sweep_dir / "sweep.json", {**state, "results": results, "best_run": winner,
                                                                   "best_by": column})
    return written
