"""The format stage: rows -> conversations -> rendered text -> tokens with loss masks."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..components import ChatTemplate, DatasetFormat, FormattedDataset
from ..problems import UserError
from .sources import read_rows
from .templating import assistant_spans, render

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe.model import Recipe
    from ..run import Run

IGNORE = -100


def prepare_tokenizer(template: ChatTemplate, tokenizer: Any, model: Any = None) -> str:
    """Put the chat template, its special tokens and its stop token into the tokenizer (and model).

    Returns the template text. Special tokens the template needs but the
    tokenizer lacks are added (and the model's embeddings resized), so that the
    tokenizer, the generation config and every export agree on the stop token.
    """
    text = template.template_for(tokenizer)
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.special_tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = text
    stop = template.stop_token_for(tokenizer)
    if stop and stop != tokenizer.eos_token:
        tokenizer.eos_token = stop
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and stop:
        stop_id = tokenizer.convert_tokens_to_ids(stop)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            ids = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id] if gen.eos_token_id is not None else []
            gen.eos_token_id = [stop_id] + [i for i in ids if i != stop_id]
            gen.pad_token_id = tokenizer.pad_token_id
    return text


def template_variables(tokenizer: Any) -> dict[str, Any]:
    return {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}


def tokenize_conversation(tokenizer: Any, template_text: str, messages: list[dict[str, str]],
                          train_on: str, max_len: int) -> dict[str, Any]:
    """One sample: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` where no loss), ``text``."""
    variables = template_variables(tokenizer)
    if train_on == "assistant":
        text, spans = assistant_spans(template_text, messages, **variables)
    else:
        text, spans = render(template_text, messages, **variables), None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_len)
    ids = list(enc["input_ids"])
    if spans is None:
        labels = list(ids)
    else:
        labels = [tok if any(a <= start < b for a, b in spans) else IGNORE
                  for tok, (start, _end) in zip(ids, enc["offset_mapping"])]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "text": text}


def standardize_rows(rows: list[dict[str, Any]], fmt: DatasetFormat) -> tuple[list[list[dict[str, str]]], int]:
    conversations, dropped = [], 0
    for row in rows:
        conv = fmt.standardize(row)
        if conv:
            conversations.append(conv)
        else:
            dropped += 1
    return conversations, dropped


def build_dataset(recipe: "Recipe", tokenizer: Any, model: Any = None, max_seq_length: int | None = None) -> FormattedDataset:
    """Everything the format stage does, usable without a run (``recipe data``)."""
    fmt = recipe.format
    rows = read_rows(fmt.dataset, fmt.split, fmt.subset)
    total = len(rows)
    if fmt.shuffle_seed is not None:
        random.Random(fmt.shuffle_seed).shuffle(rows)
    if fmt.limit is not None:
        rows = rows[: fmt.limit]
    conversations, malformed = standardize_rows(rows, recipe.standardizer.component)
    if not conversations:
        raise UserError(f"format.dataset {fmt.dataset}: no row could be read as {recipe.standardizer.use!r} "
                        f"({len(rows)} rows, all malformed); check format.standardizer")
    template = recipe.chat_template.component
    template_text = prepare_tokenizer(template, tokenizer, model)
    max_len = fmt.max_seq_length or max_seq_length or recipe.load.options.model_dump().get("max_seq_length") or 2048
    samples = [tokenize_conversation(tokenizer, template_text, conv, fmt.train_on, max_len) for conv in conversations]
    untrained = [s for s in samples if all(l == IGNORE for l in s["labels"])]
    if len(untrained) == len(samples):
        example = untrained[0]["text"][:300]
        raise UserError(f"none of the {len(samples)} samples has a token to train on (format.train_on = {fmt.train_on!r}); "
                        f"example sample:\n{example}")
    samples = [s for s in samples if any(l != IGNORE for l in s["labels"])]
    validation = None
    if fmt.validation_fraction > 0:
        order = list(range(len(samples)))
        random.Random(recipe.seed).shuffle(order)
        n_val = max(1, int(len(samples) * fmt.validation_fraction))
        validation = [samples[i] for i in sorted(order[:n_val])]
        samples = [samples[i] for i in sorted(order[n_val:])]
    stop = template.stop_token_for(tokenizer)
    stop_id = tokenizer.convert_tokens_to_ids(stop) if stop else None
    stop_trained = sum(1 for s in samples if stop_id is not None and stop_id in s["labels"])
    lengths = [len(s["input_ids"]) for s in samples]
    stats = {
        "rows": total, "read": len(rows), "malformed": malformed, "no_trained_tokens": len(untrained),
        "samples": len(samples), "validation": len(validation or []), "stop_token": stop,
        "samples_with_trained_stop_token": stop_trained,
        "tokens": sum(lengths), "trained_tokens": sum(sum(1 for l in s["labels"] if l != IGNORE) for s in samples),
        "max_length": max(lengths), "mean_length": round(sum(lengths) / len(lengths), 1), "max_seq_length": max_len,
    }
    return FormattedDataset(train=samples, validation=validation, chat_template=template, stats=stats)


def format_for_training(run: "Run", loaded) -> FormattedDataset:
    dataset = build_dataset(run.recipe, loaded.tokenizer, loaded.model, loaded.max_seq_length)
    stats = dataset.stats
    run.logger.info("format: %d samples (%d tokens, %d trained) from %d rows; %d malformed, %d without trained tokens",
                    stats["samples"], stats["tokens"], stats["trained_tokens"], stats["read"],
                    stats["malformed"], stats["no_trained_tokens"])
    if run.recipe.format.train_on == "assistant" and stats["stop_token"] and stats["samples_with_trained_stop_token"] == 0:
        run.logger.warning("WARNING: the stop token %r is not trained in any sample: the model will not learn to stop",
                           stats["stop_token"])
    run.state["format_stats"] = stats
    return dataset
