"""The report stage: ``report.md`` with the run's summary, loss curve and every reporter's block."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import atomic

if TYPE_CHECKING:  # pragma: no cover
    from .components import TrainResult
    from .run import Run


def plot_loss(metrics: list[dict], path: Path) -> Path | None:
    """Training (and evaluation) loss against step, as a PNG. None when nothing was logged."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="#d62728")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def trainable_share(trainable: int, total: int) -> str:
    """``11,272,192 trainable parameters of 1,247,086,592 (0.90%)``: the one wording of the log, plan and report.

    ``total`` counts parameters as the model has them (a 4-bit weight is one parameter, not half a byte).
    """
    return f"{trainable:,} trainable parameters of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def _as_written(recipe) -> dict:
    """The recipe's tables as its file gives them, before command-line overrides."""
    import tomllib

    try:
        return tomllib.loads(recipe.text)
    except (tomllib.TOMLDecodeError, TypeError):
        return {}


def _model_row(run: "Run") -> str:
    """The model that ran: the override's, with the recipe's own named when they differ."""
    recipe = run.recipe
    model = recipe.load.options.model_dump().get("model", "?")
    loaded = getattr(run, "loaded", None)
    if loaded is not None and getattr(loaded, "model_name", None):
        model = loaded.model_name
    written = _as_written(recipe).get("load", {}).get("model")
    note = f" (overridden; the recipe names `{written}`)" if written and written != model else ""
    return f"| model | `{model}` via `{recipe.load.use}`{note} |"


def _overrides_note(recipe) -> list[str]:
    if not recipe.overrides:
        return []
    shown = " ".join(f"`{o}`" for o in recipe.overrides)
    return [f"Command-line overrides: {shown}" + (" (the description above is the recipe's, written before them)."
                                                   if recipe.header.description else "."), ""]


def write_report(run: "Run", result: "TrainResult | None") -> Path:
    recipe = run.recipe
    lines = [f"# Run report: {recipe.name}", ""]
    if recipe.header.description:
        lines += [recipe.header.description, ""]
    lines += _overrides_note(recipe)
    lines += ["| | |", "|---|---|", _model_row(run),
              f"| adapter | {recipe.adapt.use if recipe.adapt else 'none (full fine-tuning)' if recipe.train else 'none (no training: export only)'} |"]
    if run.state.get("trainable_parameters"):
        lines.append(f"| parameters | {trainable_share(*run.state['trainable_parameters'])} |")
    if recipe.format is not None:
        if recipe.format.datasets:  # a mixture
            lines.append(f"| data | {len(recipe.format.datasets)} datasets mixed by {recipe.format.mix} "
                         f"(template {recipe.chat_template.use}) |")
        else:
            lines.append(f"| data | `{Path(recipe.format.dataset).name}` ({recipe.standardizer.use}, template {recipe.chat_template.use}) |")
    lines.append(f"| seed | {recipe.seed} |")
    if result is not None:
        lines.append(f"| steps | {result.steps} |")
        if result.train_loss is not None:
            lines.append(f"| mean train loss | {result.train_loss:.4f} |")
        lines.append(f"| train runtime | {result.runtime_s:.1f} s |")
    for stage, seconds in run.timings.items():
        lines.append(f"| stage {stage} | {seconds:.1f} s |")
    lines.append("")
    stats = run.state.get("format_stats")
    if stats:
        shown = {k: v for k, v in stats.items() if k not in ("empty_answer_example", "stop_token_warning", "datasets")}
        lines += ["## Data", "", " · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in shown.items()), ""]
        for key in ("stop_token_warning", "empty_answer_warning"):
            if stats.get(key):
                lines += [f"**Warning:** {stats[key]}", ""]
        if stats.get("datasets"):  # a mixture: each dataset's share (recipetune.data.mixture.member_stats)
            lines += ["| dataset | read | after its ops | in the mixture | samples | share | trained tokens | share |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {m['name']} | {m['read']} | {m['after_ops']} | {m['mixed']} | {m['samples']} | "
                      f"{100 * m['share_samples']:.1f}% | {m['trained_tokens']} | {100 * m['share_trained_tokens']:.1f}% |"
                      for m in stats["datasets"]]
            lines.append("")
    metrics = run.read_metrics()
    losses = [m for m in metrics if "loss" in m]
    if losses:
        png = plot_loss(metrics, run.output_dir / "loss.png")
        first, last = losses[0]["loss"], losses[-1]["loss"]
        lines += ["## Loss", "", f"First logged loss {first:.4f} (step {losses[0]['step']}), "
                  f"last {last:.4f} (step {losses[-1]['step']}).", ""]
        if png:
            lines += [f"![loss curve]({png.name})", ""]
    for section in recipe.report:
        block = section.component.render(run)
        if block is not None:
            lines += [f"## {block.title}", "", block.markdown.rstrip(), ""]
    for block in run.report_blocks:  # blocks plugins add without a [[report]] table (e.g. several processes)
        lines += [f"## {block.title}", "", block.markdown.rstrip(), ""]
    if run.artifacts:
        lines += ["## Artifacts", ""]
        for a in run.artifacts:
            rel = a.path.relative_to(run.output_dir) if a.path.is_relative_to(run.output_dir) else a.path
            lines.append(f"- **{a.kind}**: `{rel}` — {a.description}")
            lines += [f"  {line}" for line in a.report.splitlines()]
        lines.append("")
    path = run.output_dir / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path
