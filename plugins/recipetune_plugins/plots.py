"""PNG plots of a training run, in its folder, drawn from ``metrics.jsonl`` after the train stage.

Every run that trains gets them (no ``[[report]]`` table needed) and ``report.md`` shows them under "Training
curves"; the loss per step is the core's ``loss.png``:

- ``loss_per_epoch.png``: mean train loss of each epoch and mean eval loss of the evaluations in it — the curve the
  seed notebook drew by hand to compare learning rates and schedules (``recipe sweep`` draws every run's on one);
- ``learning_rate.png``: the learning rate at each step (warm-up, decay, plateaus);
- ``memory_per_step.png``: GPU memory reserved and peak allocated per logged step on CUDA, host RSS on a CPU.

Drawn with matplotlib's Agg backend (no display) and written atomically. A resumed run draws the whole run: the
metrics file holds every step once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from recipetune import ReportBlock, hookimpl
from recipetune.atomic import atomic_path

MEMORY_KEYS = {"memory_reserved_gib": "GPU reserved", "memory_peak_allocated_gib": "GPU peak allocated",
               "host_rss_gib": "host RSS"}


def epoch_of(progress: float) -> int:
    """The 1-based epoch a logged line belongs to (``epoch`` is the progress at the end of its step: 0.5, 1.0 ...)."""
    return max(1, math.ceil(progress - 1e-9))


def loss_per_epoch(metrics: list[dict[str, float]]) -> dict[str, dict[int, float]]:
    """``{"train": {epoch: mean loss}, "eval": {epoch: mean eval loss}}`` from metric lines with an ``epoch``."""
    sums: dict[str, dict[int, list[float]]] = {"train": {}, "eval": {}}
    for row in metrics:
        if "epoch" not in row:
            continue
        for kind, key in (("train", "loss"), ("eval", "eval_loss")):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums[kind].setdefault(epoch_of(float(row["epoch"])), []).append(float(value))
    return {kind: {e: sum(v) / len(v) for e, v in sorted(by.items())} for kind, by in sums.items()}


def _figure(title: str, ylabel: str, xlabel: str = "step"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_loss_per_epoch(metrics: list[dict[str, float]], path: Path) -> Path | None:
    per_epoch = loss_per_epoch(metrics)
    if not per_epoch["train"] and not per_epoch["eval"]:
        return None
    plt, fig, ax = _figure("Mean loss per epoch", "loss", "epoch")
    for kind, style, color in (("train", "o-", "#1f77b4"), ("eval", "s--", "#d62728")):
        points = per_epoch[kind]
        if points:
            ax.plot(list(points), list(points.values()), style, color=color, label=f"{kind} loss")
    ax.set_xticks(sorted(set(per_epoch["train"]) | set(per_epoch["eval"])))
    ax.legend()
    return _save(plt, fig, path)


def plot_learning_rate(metrics: list[dict[str, float]], path: Path) -> Path | None:
    points = [(row["step"], row["learning_rate"]) for row in metrics if "learning_rate" in row and "loss" in row]
    if not points:
        return None
    plt, fig, ax = _figure("Learning rate", "learning rate")
    ax.plot(*zip(*points), color="#2ca02c")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(plt, fig, path)


def plot_memory(metrics: list[dict[str, float]], path: Path) -> Path | None:
    series = {label: [(row["step"], row[key]) for row in metrics if key in row] for key, label in MEMORY_KEYS.items()}
    series = {label: points for label, points in series.items() if points}
    if not series:
        return None
    plt, fig, ax = _figure("Memory per step", "GiB")
    for label, points in series.items():
        ax.plot(*zip(*points), label=label)
    ax.set_ylim(bottom=0)
    ax.legend()
    return _save(plt, fig, path)


def write_plots(run: Any) -> list[Path]:
    """Draw every plot the run's metrics allow; returns the PNGs written."""
    metrics = run.read_metrics()
    out = Path(run.output_dir)
    drawn = [plot_loss_per_epoch(metrics, out / "loss_per_epoch.png"), plot_learning_rate(metrics, out / "learning_rate.png"),
             plot_memory(metrics, out / "memory_per_step.png")]
    return [p for p in drawn if p is not None]


@hookimpl
def after_stage_run(run, stage, result):
    if stage != "train" or not getattr(run, "is_main", True):
        return
    files = write_plots(run)
    if not files:
        return
    per_epoch = loss_per_epoch(run.read_metrics())
    rows = [f"| {e} | {per_epoch['train'].get(e, float('nan')):.4f} | "
            + (f"{per_epoch['eval'][e]:.4f}" if e in per_epoch["eval"] else "-") + " |"
            for e in sorted(set(per_epoch["train"]) | set(per_epoch["eval"]))]
    table = ["| epoch | mean train loss | mean eval loss |", "|---|---|---|", *rows] if rows else []
    images = [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in files]
    run.report_blocks.append(ReportBlock("Training curves", "\n".join(table + [""] + images), files,
                                         data={"loss_per_epoch": per_epoch}))
