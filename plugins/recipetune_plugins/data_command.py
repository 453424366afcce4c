"""``recipe data RECIPE``: the formatted samples exactly as the trainer will see them, without training.

Loads only the tokenizer of the recipe's ``load.model`` (a GGUF or ``pkg:``
model is converted once to an HF folder by :mod:`.model_sources`), runs the
format stage's own code (:func:`recipetune.data.pipeline.build_dataset`) and
prints samples with their trained spans marked, counts (kept, dropped by
reason), the stop-token check and a token-length histogram (text here, PNG in
the output folder).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from recipetune import hookimpl

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"
"""Markers around trained tokens when colour is off."""


def load_tokenizer(recipe: Any, local_only: bool = False):
    """The tokenizer of ``load.model``, without loading any weights (``local_only``: from this machine's files and
    cache only, never the network)."""
    from recipetune import UserError

    from .model_sources import hf_folder_from_gguf, local_model_path

    options = recipe.load.options
    model = getattr(options, "model", None)
    if not model:
        raise UserError(f'load: backend "{recipe.load.use}" names no model; recipe data needs load.model')
    local = local_model_path(str(model))
    source = str(model)
    if local is not None and local.suffix == ".gguf":
        source = str(hf_folder_from_gguf(local))
    elif local is not None:
        source = str(local)
    from .model_sources import load_tokenizer as load_faithfully

    kwargs: dict[str, Any] = {}
    if getattr(options, "revision", None):
        kwargs["revision"] = options.revision
    if getattr(options, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    if local_only:
        kwargs["local_files_only"] = True
    try:
        return load_faithfully(source, **kwargs)[0]  # as the hf backend loads it (model_sources.TokenizerChoice)
    except (OSError, ValueError) as exc:
        raise UserError(f"load.model {model!r}: cannot load its tokenizer: {exc}") from None


def segments(tokenizer: Any, sample: dict[str, Any]) -> list[tuple[str, bool]]:
    """The sample's text as runs of (text, trained?), decoded token run by token run."""
    out: list[tuple[str, bool]] = []
    ids, labels = sample["input_ids"], sample["labels"]
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != -100) != (labels[start] != -100):
            out.append((tokenizer.decode(ids[start:i], skip_special_tokens=False), labels[start] != -100))
            start = i
    return out


def marked(parts: list[tuple[str, bool]], color: bool) -> str:
    if color:
        return "".join(click.style(t, fg="green", bold=True) if on else click.style(t, dim=True) for t, on in parts)
    return "".join(f"{TRAINED_OPEN}{t}{TRAINED_CLOSE}" if on else t for t, on in parts)


def histogram(lengths: list[int], bins: int = 12) -> list[dict[str, int]]:
    """Counts of samples by token length, in equal bins from the shortest sample to the longest."""
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - low) // width)] += 1
    return [{"from": low + i * width, "to": low + (i + 1) * width - 1, "count": c} for i, c in enumerate(counts)
            if low + i * width <= high]


def histogram_text(hist: list[dict[str, int]], width: int = 40) -> list[str]:
    peak = max((h["count"] for h in hist), default=1) or 1
    return [f"  {h['from']:>6}-{h['to']:<6} {'#' * round(width * h['count'] / peak):<{width}} {h['count']}" for h in hist]


def histogram_png(lengths: list[int], max_len: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recipetune.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.hist(lengths, bins=40, color="#1f77b4")
    ax.axvline(max_len, color="#d62728", linestyle="--", label=f"max_seq_length {max_len}")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _default_output_dir(recipe: Any) -> Path:
    if recipe.header.output_dir is not None:
        return Path(recipe.header.output_dir) / "data"
    return Path.cwd() / "runs" / recipe.name / f"data-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@hookimpl
def register_commands(cli):
    @cli.command("data")
    @click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--limit", type=click.IntRange(min=1), help="Read at most N rows.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--samples", "n_samples", type=click.IntRange(min=0), default=3, show_default=True,
                  help="How many formatted samples to show.")
    @click.option("--output-dir", type=click.Path(file_okay=False), help="Folder for the histogram PNG "
                  "(default: runs/<name>/data-<timestamp>).")
    @click.option("--no-cache", is_flag=True, help="Rebuild the formatted data even when a cached copy exists.")
    def data(recipe_path: str, overrides: tuple[str, ...], limit: int | None, as_json: bool, n_samples: int,
             output_dir: str | None, no_cache: bool) -> None:
        """Show RECIPE's training samples as the trainer will see them. Trains nothing; loads only the tokenizer.

        Trained-on tokens are marked (green, or between ⟦ ⟧ without colour). Prints how many rows were kept and
        dropped (by reason), the stop-token check and a token-length histogram; writes length_histogram.png.
        """
        from recipetune import RecipeError, UserError, load_recipe

        try:
            recipe = load_recipe(recipe_path, list(overrides))
        except RecipeError as exc:
            for p in exc.problems:
                click.echo(p.render(), err=True)
            sys.exit(2)
        if recipe.format is None:
            raise UserError("the recipe has no [format] table")
        from recipetune.data.pipeline import build_dataset, check_empty_answers, check_stop_token

        tokenizer = load_tokenizer(recipe)
        dataset = build_dataset(recipe, tokenizer, None, limit=limit, progress=not as_json and sys.stderr.isatty(),
                                use_cache=False if no_cache else None, keep_dropped=1)
        stats = dict(dataset.stats)
        examples = stats.pop("dropped_examples", {})
        warning = check_stop_token(stats, recipe.format.train_on)
        lengths = [int(n) for part in (dataset.train, dataset.validation, getattr(dataset, "test", None))
                   if part is not None for n in _lengths(part)]
        hist = histogram(lengths)
        out_dir = Path(output_dir) if output_dir else _default_output_dir(recipe)
        out_dir.mkdir(parents=True, exist_ok=True)
        png = histogram_png(lengths, stats["max_seq_length"], out_dir / "length_histogram.png")
        shown = [dataset.train[i] for i in range(min(n_samples, len(dataset.train)))]
        from .preference_view import echo_view, preference_view  # preference data: examples as dpo/orpo/kto get them

        pairs = preference_view(recipe, tokenizer, limit, n_samples)
        dropped = {k[len("dropped_"):]: v for k, v in stats.items() if k.startswith("dropped_")}
        if as_json:
            click.echo(json.dumps({
                "stats": stats, "dropped": dropped, "stop_token_warning": warning, "histogram": hist,
                "histogram_png": str(png), "dropped_examples": examples, "preference": pairs,
                "samples": [{"text": s["text"], "input_ids": s["input_ids"], "labels": s["labels"],
                             "trained": [t for t, on in segments(tokenizer, s) if on]} for s in shown],
            }, indent=2, default=str))
            return
        color = sys.stdout.isatty()
        for i, sample in enumerate(shown):
            trained = sum(1 for x in sample["labels"] if x != -100)
            click.echo(click.style(f"── sample {i} ({len(sample['input_ids'])} tokens, {trained} trained) ──", bold=True)
                       if color else f"── sample {i} ({len(sample['input_ids'])} tokens, {trained} trained) ──")
            click.echo(marked(segments(tokenizer, sample), color))
        click.echo("")
        click.echo(f"rows {stats['rows']} · read {stats['read']} · standardizer {stats['standardizer']} · "
                   f"kept {stats['kept']} (train {stats['samples']}, validation {stats['validation']}, "
                   f"test {stats['test']})")
        click.echo("dropped: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none")
                   + f" · truncated {stats['truncated']} (max_seq_length {stats['max_seq_length']})")
        if stats.get("datasets"):  # a mixture: each dataset's share of the samples and of the trained tokens
            from recipetune.data.mixture import describe_members

            click.echo(f"datasets (mix {stats['mix']}):")
            for line in describe_members(stats["datasets"]):
                click.echo(f"  {line}")
        for reason, example in examples.items():
            first = " ".join(example.split())
            click.echo(f"  e.g. {reason}: {first[:160]}{'...' if len(first) > 160 else ''}")
        click.echo(f"tokens {stats['tokens']} · trained {stats['trained_tokens']} · mean length {stats['mean_length']} "
                   f"· max {stats['max_length']} · stop token {stats['stop_token']!r} trained in "
                   f"{stats['samples_with_trained_stop_token']} of {stats['samples']} samples · cache {stats['cache']}")
        if stats.get("new_tokens"):  # tokens the chat template adds (format.new_tokens)
            click.echo(f"new tokens: {stats['new_tokens']['message']}")
        if warning:
            warning = f"warning: {warning}"
            click.echo(click.style(warning, fg="red", bold=True) if color else warning, err=True)
        empty = check_empty_answers(stats)
        if empty:
            click.echo(f"warning: {empty}", err=True)
        click.echo("token lengths:")
        for line in histogram_text(hist):
            click.echo(line)
        click.echo(f"histogram: {png}")
        if pairs is not None:
            echo_view(pairs, color)


def _lengths(part: Any) -> list[int]:
    lengths = getattr(part, "lengths", None)
    if lengths is not None:
        return [int(n) for n in lengths]
    return [len(s["input_ids"]) for s in part]
