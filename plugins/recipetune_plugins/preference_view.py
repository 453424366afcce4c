"""What ``recipe data`` shows for preference data: the examples as the dpo/orpo/kto trainers get them.

For each example: the prompt as rendered (not trained), then each answer with its trained tokens marked the way
``recipe data`` marks SFT samples (green, or between ⟦ ⟧), and the counts of :mod:`.preference_data`.
"""

from __future__ import annotations

from typing import Any

import click


def preference_view(recipe: Any, tokenizer: Any, limit: int | None, shown: int) -> dict[str, Any] | None:
    """``{"stats", "warning", "examples"}`` for a recipe whose data is preference data, else ``None``."""
    from recipetune import UserError

    from .preference_data import build_preference_data, check_pairs

    names = {s.use for s in (recipe.standardizer, *recipe.member_standardizers) if s is not None}
    if not names & {"preference", "auto"}:
        return None
    try:
        data = build_preference_data(recipe, tokenizer, limit=limit)
    except UserError:
        if "preference" in names:
            raise
        return None  # "auto" read the rows as another format: nothing to show here
    examples = []
    for e in data.train[:shown]:
        item: dict[str, Any] = {"prompt": tokenizer.decode(e["prompt_ids"]), "prompt_tokens": len(e["prompt_ids"])}
        for side in ("chosen", "rejected", "completion"):
            if f"{side}_ids" in e:
                item[side] = tokenizer.decode(e[f"{side}_ids"])
                item[f"{side}_tokens"] = len(e[f"{side}_ids"])
        if "label" in e:
            item["label"] = e["label"]
        examples.append(item)
    return {"stats": data.stats, "warning": check_pairs(data.stats), "examples": examples}


def echo_view(view: dict[str, Any], color: bool) -> None:
    """Print the view (answers marked as trained)."""
    def mark(text: str) -> str:
        return click.style(text, fg="green", bold=True) if color else f"⟦{text}⟧"

    stats = view["stats"]
    for i, e in enumerate(view["examples"]):
        click.echo(f"── preference example {i} (prompt {e['prompt_tokens']} tokens, not trained) ──")
        click.echo(click.style(e["prompt"], dim=True) if color else e["prompt"])
        for side in ("chosen", "rejected", "completion"):
            if side in e:
                label = side if side != "completion" else ("desirable" if e.get("label") else "undesirable")
                click.echo(f"  {label} ({e[f'{side}_tokens']} tokens): {mark(e[side])}")
    dropped = ", ".join(f"{k[len('dropped_'):]} {v}" for k, v in stats.items() if k.startswith("dropped_")) or "none"
    counts = (f" ({stats['desirable']} desirable, {stats['undesirable']} undesirable)" if stats["kind"] == "unpaired"
              else "")
    click.echo(f"preference: {stats['examples']} {stats['kind']} examples{counts}, {stats['validation']} validation; "
               f"dropped: {dropped}; answers ending with the stop token {stats['stop_token']!r}: "
               f"{stats['answers_ending_with_stop_token']} of {stats['answers']}; truncated {stats['truncated']}; "
               f"mean prompt {stats['mean_prompt_tokens']} tokens, mean answer {stats['mean_answer_tokens']}")
    if view["warning"]:
        click.echo(f"warning: {view['warning']}", err=True)
