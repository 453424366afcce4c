"""The format stage: rows -> conversations -> row operations -> rendered text -> tokens with loss masks.

:func:`build_dataset` does everything without a run (``recipe data`` uses it);
:func:`format_for_training` is the default ``format`` stage. Rendering and
tokenizing run in ``format.num_proc`` processes (:mod:`.encode`); the result
is cached (:mod:`.cache`) under a key of the data, the format options and the
tokenizer, so a second run with the same recipe reuses it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..components import ChatTemplate, FormattedDataset
from ..problems import NoChatTemplate, UserError
from .encode import EncodeSettings, WithTools, encode_conversations, encode_one
from .mixture import describe_members, gather, member_stats, read_order, to_mixed_order
from .ops import Record, describe_row
from .new_tokens import apply_choice as apply_new_tokens_choice
from .samples import IGNORE, SampleTable

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe.model import Recipe
    from ..run import Run

log = logging.getLogger("recipetune")

SPLITS = ("train", "validation", "test")


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
        if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
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
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    return text


def template_variables(tokenizer: Any, template: ChatTemplate | None = None) -> dict[str, Any]:
    """``bos_token`` / ``eos_token`` for rendering: the template's own when it names them, else the tokenizer's."""
    bos = (template.bos_token if template is not None else None) or tokenizer.bos_token or ""
    eos = (template.eos_token if template is not None else None) or tokenizer.eos_token or ""
    return {"bos_token": bos, "eos_token": eos}


def tokenize_conversation(tokenizer: Any, template_text: str, messages: list[dict[str, str]],
                          train_on: str, max_len: int, variables: dict[str, Any] | None = None,
                          stop: str | None = None) -> dict[str, Any]:
    """One sample: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` where no loss), ``text``.

    ``stop``: the stop token that ends an assistant turn (default: the tokenizer's EOS, which
    :func:`prepare_tokenizer` sets to the template's stop token)."""
    settings = EncodeSettings(template_text, variables or template_variables(tokenizer), train_on, max_len, "truncate",
                              stop if stop is not None else tokenizer.eos_token)
    return encode_one(tokenizer, settings, messages)


# ---------------------------------------------------------------- reading and standardizing
def _conversation(record: Record, tools_of: Any) -> list[dict[str, Any]]:
    """The messages of a record, with the tools its row defines (for templates that render them)."""
    tools = tools_of(record.row) if tools_of is not None else None
    return WithTools(record.messages, tools) if tools else record.messages


def _max_len(recipe: "Recipe", max_seq_length: int | None) -> int:
    return (recipe.format.max_seq_length or max_seq_length
            or recipe.load.options.model_dump().get("max_seq_length") or 2048)


def _num_proc(fmt) -> int:
    import os

    return fmt.num_proc or max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def build_dataset(recipe: "Recipe", tokenizer: Any, model: Any = None, max_seq_length: int | None = None, *,
                  limit: int | None = None, progress: bool | None = None, use_cache: bool | None = None,
                  keep_dropped: int = 0) -> FormattedDataset:
    """Everything the format stage does, usable without a run (``recipe data``).

    ``limit`` caps the rows read (after ``format.limit``); ``progress`` shows a
    progress bar (default: when stderr is a terminal); ``use_cache`` overrides
    ``format.cache``; ``keep_dropped`` keeps that many examples of dropped
    samples per reason in ``stats["dropped_examples"]``.
    """
    from . import cache as data_cache

    started = time.perf_counter()
    fmt = recipe.format
    template = recipe.chat_template.component
    template, new_tokens = apply_new_tokens_choice(recipe, template, tokenizer)  # refuse, map or add (format.new_tokens)
    variables = template_variables(tokenizer, template)
    try:
        template_text = prepare_tokenizer(template, tokenizer, model)
        missing_template: NoChatTemplate | None = None
    except NoChatTemplate as exc:  # plain text (standardizer "text") needs none; anything else stops below
        template_text, missing_template = "", exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    # the tokenizer as prepared: the same for a fresh tokenizer and one prepared before in this process
    tokenizer_key = data_cache.tokenizer_fingerprint(tokenizer)
    max_len = _max_len(recipe, max_seq_length)
    split_seed = fmt.split_seed if fmt.split_seed is not None else recipe.seed
    caching = fmt.cache if use_cache is None else use_cache
    key = data_cache.cache_key(recipe, tokenizer_key, template_text, variables, max_len, limit) if caching else None
    if key is not None:
        hit = data_cache.load(key)
        if hit is not None:
            tables, stats = hit
            stats = {**stats, "cache": "hit", "seconds": round(time.perf_counter() - started, 2)}
            stats.pop("new_tokens", None)  # this call's own: the tokens may have been added before (under LoRA)
            if new_tokens:
                stats["new_tokens"] = new_tokens
            return _formatted(tables, template, stats)

    dropped: dict[str, int] = {}
    row_examples: dict[str, str] = {}  # the first row dropped for each reason before templating
    reads, parts, members = gather(recipe, limit, dropped, row_examples, missing_template)
    total, read = sum(r.total for r in reads), sum(r.read for r in reads)
    chosen_names = ", ".join(dict.fromkeys(r.chosen.name for r in reads))
    empty_answers = [r for r in parts["train"] if _has_empty_answer(r.messages)]

    settings = EncodeSettings(template_text, variables, fmt.train_on, max_len, fmt.too_long,
                              template.stop_token_for(tokenizer))
    tools_of = [getattr(r.chosen, "tools_of", None) for r in reads]
    conversations = [_conversation(rec, tools_of[k]) for name in parts for rec, k in zip(parts[name], members[name])]
    owner = [name for name in parts for _ in parts[name]]
    member_ids = np.asarray([k for name in parts for k in members[name]], dtype=np.int32)
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    order = read_order(parts, members)  # a weighted mixture: encode in read order, then mix the samples
    encoded = encode_conversations(tokenizer, settings, conversations if order is None else
                                   [conversations[i] for i in order], num_proc=_num_proc(fmt), progress=progress)
    if order is not None:
        encoded = to_mixed_order(encoded, order)
    for reason, count in encoded.dropped.items():
        dropped[reason] = dropped.get(reason, 0) + count
    encoded.table.sources = member_ids[np.asarray(encoded.kept_index, dtype=np.int64)]
    if len(parts) == 1:  # only train
        tables = {"train": encoded.table}
    else:
        kept_owner = [owner[i] for i in encoded.kept_index]
        tables = {name: encoded.table.select([j for j, o in enumerate(kept_owner) if o == name]) for name in parts}

    if len(tables["train"]) == 0:
        reason = max(encoded.dropped, key=encoded.dropped.get) if encoded.dropped else "?"
        example = encoded.examples.get("no_trained_tokens") or encoded.examples.get(reason) or ""
        if reason == "no_trained_tokens" or "no_trained_tokens" in encoded.dropped:
            raise UserError(
                f"none of the {len(conversations)} samples has a token to train on (format.train_on = {fmt.train_on!r}, "
                f"{encoded.dropped.get('no_trained_tokens', 0)} without trained tokens); check the chat template "
                f"and format.max_seq_length. Example sample:\n{example[:400]}")
        raise UserError(f"no sample is left to train on: {', '.join(f'{k} {v}' for k, v in sorted(dropped.items()))}; "
                        f"example of a dropped sample ({reason}):\n{example[:400]}")

    before_split = len(tables["train"])  # both fractions are of all the samples
    for name, fraction in (("validation", fmt.validation_fraction), ("test", fmt.test_fraction)):
        if fraction > 0:
            train = tables["train"]
            order = list(range(len(train)))
            random.Random(f"{split_seed}-{name}").shuffle(order)
            n_held = max(1, int(before_split * fraction))
            if n_held >= len(train):
                raise UserError(f"format.{name}_fraction = {fraction} leaves no sample to train on ({len(train)} samples)")
            tables[name] = train.select(sorted(order[:n_held]))
            tables["train"] = train.select(sorted(order[n_held:]))

    stats = _stats(tables, template, tokenizer, total=total, read=read, standardizer=chosen_names,
                   dropped=dropped, truncated=encoded.truncated, max_len=max_len)
    if fmt.datasets:
        stats["mix"] = fmt.mix
        stats["datasets"] = member_stats(reads, tables)
    if new_tokens:
        stats["new_tokens"] = new_tokens
    stats["empty_answers"] = len(empty_answers)
    if empty_answers:
        stats["empty_answer_example"] = describe_row(empty_answers[0].index, empty_answers[0].row, limit=160)
    stats["cache"] = "miss" if key is not None else "off"
    stats["seconds"] = round(time.perf_counter() - started, 2)
    if keep_dropped:
        stats["dropped_examples"] = {**row_examples, **encoded.examples}
    if key is not None:
        data_cache.save(key, tables, {k: v for k, v in stats.items() if k != "dropped_examples"})
    return _formatted(tables, template, stats)


def _formatted(tables: dict[str, SampleTable], template: ChatTemplate, stats: dict[str, Any]) -> FormattedDataset:
    dataset = FormattedDataset(train=tables["train"], validation=tables.get("validation") or None,  # type: ignore[arg-type]
                               chat_template=template, stats=stats)
    dataset.test = tables.get("test") or None  # type: ignore[attr-defined]
    return dataset


def _stats(tables: dict[str, SampleTable], template: ChatTemplate, tokenizer: Any, *, total: int, read: int,
           standardizer: str, dropped: dict[str, int], truncated: int, max_len: int) -> dict[str, Any]:
    import numpy as np

    train = tables["train"]
    stop = template.stop_token_for(tokenizer)
    # a token the vocabulary lacks converts to the unknown token's id; one it has keeps its own (GPT-2-style
    # tokenizers use <|endoftext|> as both the unknown and the end-of-text token)
    stop_id = tokenizer.convert_tokens_to_ids(stop) if stop and stop in tokenizer.get_vocab() else None
    all_tables = [t for t in tables.values() if len(t)]
    lengths = np.concatenate([t.lengths for t in all_tables])
    trained = (train.labels != IGNORE)
    stop_trained = 0
    if stop_id is not None:  # samples with at least one trained stop token
        hits = np.flatnonzero(train.labels == stop_id)
        stop_trained = len(np.unique(np.searchsorted(train.offsets, hits, side="right")))
    stats: dict[str, Any] = {
        "rows": total, "read": read, "standardizer": standardizer, "samples": len(train),
        "validation": len(tables.get("validation") or ()), "test": len(tables.get("test") or ()),
        "kept": sum(len(t) for t in tables.values()),
    }
    for reason in ("malformed", "filtered", "empty", "duplicate", "limit", "template_error", "too_long",
                   "no_trained_tokens"):
        if dropped.get(reason):
            stats[f"dropped_{reason}"] = dropped[reason]
    stats.update({
        "truncated": truncated, "stop_token": stop, "stop_token_id": stop_id,
        "samples_with_trained_stop_token": stop_trained,
        "tokens": int(train.lengths.sum()), "trained_tokens": int(trained.sum()),
        "max_length": int(lengths.max()), "mean_length": round(float(lengths.mean()), 1), "max_seq_length": max_len,
    })
    # the older key, kept for readers of format_stats
    stats["malformed"] = dropped.get("malformed", 0)
    stats["no_trained_tokens"] = dropped.get("no_trained_tokens", 0)
    return stats


def check_stop_token(stats: dict[str, Any], train_on: str) -> str | None:
    """A loud warning when the stop token is not trained: the model would never learn to stop (the log and
    ``recipe data`` add the "warning" label)."""
    stop = stats.get("stop_token")
    if not stop:
        return None
    if stats.get("stop_token_id") is None:
        return (f"the stop token {stop!r} is not a single token of the tokenizer: the model cannot learn to "
                "stop. Use a chat template whose stop token the tokenizer has (or that adds it).")
    if stats.get("samples_with_trained_stop_token", 0) == 0:
        return (f"the stop token {stop!r} is not among the trained tokens of any sample "
                f"(format.train_on = {train_on!r}): the fine-tuned model will not learn to stop and will ramble "
                "(the \"never stops\" failure of GGUF exports in llama.cpp and Ollama). Check that the chat template "
                "writes the stop token at the end of assistant turns, and format.max_seq_length.")
    untruncated = stats.get("samples", 0) - stats.get("truncated", 0)
    if untruncated > 0 and stats["samples_with_trained_stop_token"] < 0.5 * untruncated:
        return (f"the stop token {stop!r} is trained in only {stats['samples_with_trained_stop_token']} of "
                f"{stats['samples']} samples: the model may not learn to stop.")
    return None


def _has_empty_answer(messages: list[dict[str, str]]) -> bool:
    return any(m.get("role") == "assistant" and not m.get("tool_calls") and not str(m.get("content") or "").strip()
               for m in messages)


def check_empty_answers(stats: dict[str, Any]) -> str | None:
    """A warning when rows have an assistant turn with no text: those samples train the stop token alone."""
    count = stats.get("empty_answers", 0)
    if not count:
        return None
    return (f"{count} of {stats.get('read', '?')} rows have an empty answer (an assistant turn with no text): the "
            "model learns to answer them with the stop token alone, and may give empty answers. Drop them with "
            '[[format.ops]] op = "drop_empty", or fill them in. First: ' + str(stats.get("empty_answer_example", "")))


def format_for_training(run: "Run", loaded) -> FormattedDataset:
    # several processes: rank 0 formats and fills the cache, the others read it (docs/distributed.md)
    dataset = build_dataset(run.recipe, loaded.tokenizer, loaded.model, loaded.max_seq_length,
                            use_cache=True if run.world_size > 1 else None)
    stats = dataset.stats
    dropped = ", ".join(f"{k[len('dropped_'):]} {v}" for k, v in stats.items() if k.startswith("dropped_")) or "none"
    run.logger.info("format: %d samples (%d tokens, %d trained; %d validation, %d test) from %d rows as %s; "
                    "dropped: %s; truncated %d; cache %s, %.1f s",
                    stats["samples"], stats["tokens"], stats["trained_tokens"], stats["validation"], stats["test"],
                    stats["read"], stats["standardizer"], dropped, stats["truncated"], stats["cache"], stats["seconds"])
    for line in describe_members(stats.get("datasets") or []):
        run.logger.info("format: dataset %s", line)
    warning = check_stop_token(stats, run.recipe.format.train_on)
    if warning:
        run.logger.warning("%s", warning)
        stats["stop_token_warning"] = warning
    empty = check_empty_answers(stats)
    if empty:
        run.logger.warning("%s", empty)
        stats["empty_answer_warning"] = empty
    if stats.get("new_tokens"):
        run.logger.info("new tokens: %s", stats["new_tokens"]["message"])
    run.state["format_stats"] = stats
    if getattr(dataset, "test", None):
        run.state["test_dataset"] = dataset.test
    return dataset
