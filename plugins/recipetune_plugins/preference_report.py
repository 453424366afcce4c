"""The "Preference training" block of ``report.md``: rewards, margins and accuracies from ``metrics.jsonl``, and a PNG.

TRL logs ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and ``rewards/accuracies`` (dpo, orpo; kto
the first three and ``kl``) at every logged step; the block compares the first logged step with the mean of the
last few (one step is noisy on small batches) and draws ``preference_rewards.png``.
"""

from __future__ import annotations

import math
from typing import Any

from recipetune import ReportBlock
from recipetune.atomic import atomic_path

KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl", "log_odds_ratio", "nll_loss")
LAST = 3
"""Logged steps averaged for the "last" column."""


def summary(metrics: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{key: {"first": ..., "last": mean of the last LAST steps, "steps": n}}`` for each logged preference metric."""
    out: dict[str, dict[str, float]] = {}
    for key in KEYS:
        values = [float(m[key]) for m in metrics if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
        if values:
            tail = values[-LAST:]
            out[key] = {"first": values[0], "last": sum(tail) / len(tail), "steps": len(values)}
    return out


def rewards_png(metrics: list[dict[str, float]], path) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    for key, ax in (("rewards/chosen", left), ("rewards/rejected", left), ("rewards/margins", left),
                    ("rewards/accuracies", right)):
        points = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), marker=".", label=key.split("/")[1])
    left.set_title("rewards (policy vs reference, x beta)", fontsize=10)
    right.set_title("reward accuracy (chosen above rejected)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def add_report_block(run, trainer: str, metrics: list[dict[str, float]], stats: dict[str, Any]) -> None:
    """Append the block to ``run.report_blocks`` (rank 0 writes the report)."""
    found = summary(metrics)
    lines = [f"Trainer `{trainer}` on {stats['examples']} {stats['kind']} examples "
             f"({stats['answers_ending_with_stop_token']} of {stats['answers']} answers end with the stop token "
             f"{stats.get('stop_token')!r}; mean prompt {stats['mean_prompt_tokens']} tokens, "
             f"mean answer {stats['mean_answer_tokens']}).", ""]
    if stats.get("stop_token_warning"):
        lines += [f"**Warning:** {stats['stop_token_warning']}", ""]
    files = []
    if found:
        lines += ["| metric | first step | last steps (mean) |", "|---|---|---|"]
        lines += [f"| {k} | {v['first']:.4f} | {v['last']:.4f} |" for k, v in found.items()]
        lines.append("")
        if run.is_main and any(k.startswith("rewards/") for k in found):
            png = rewards_png(metrics, run.output_dir / "preference_rewards.png")
            files.append(png)
            lines += [f"![rewards]({png.name})", ""]
    run.report_blocks.append(ReportBlock(title="Preference training", markdown="\n".join(lines), files=files,
                                         data={"summary": found, "data": stats}))
