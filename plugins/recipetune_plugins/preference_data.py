"""Preference examples rendered with the recipe's chat template and tokenized for TRL's preference trainers.

The rows are read, standardized and filtered by the format stage's own code (:func:`recipetune.data.mixture.gather`:
sources, mixtures, ``[[format.ops]]``); each row's :class:`~.preference.PreferenceRow` is then rendered here:

- the prompt with the generation prompt (``<|im_start|>assistant\\n``), exactly what the model sees when it answers;
- prompt + each completion; the completion is what follows the prompt up to and including the template's stop
  token (what a template writes after it, ChatML's newline, is not part of the answer).

Each example becomes ``prompt_ids`` + ``chosen_ids`` / ``rejected_ids`` (or ``completion_ids`` + ``label``), the
columns TRL's preference collators take: the loss is on completion tokens only (the prompt is masked), and the stop
token is the last completion token of every answer that was not truncated; :func:`check_pairs` warns otherwise.
TRL would render and tokenize the rows itself, but with the tokenizer's template only and without recipetune's
masks, stop-token rule, mixtures and operations, so the trainers get these columns already built.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from recipetune import UserError

from .preference import Preference, PreferenceRow


@dataclass
class PreferenceData:
    """Tokenized preference examples (lists of dicts with TRL's columns), with the texts and counts."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]] = field(default_factory=list)
    paired: bool = True
    stats: dict[str, Any] = field(default_factory=dict)


def _offsets_tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode_example(tokenizer: Any, template: str, variables: dict[str, Any], stop: str | None,
                   prompt: list[dict[str, Any]], completion: list[dict[str, Any]]) -> tuple[list[int], list[int], str]:
    """``(prompt_ids, completion_ids, text)`` of one answer to a prompt.

    Raises ``ValueError`` when the template renders the prompt differently once an answer follows (the prompt the
    model would be trained on is not the one it sees when asked)."""
    from recipetune.data.templating import render

    prompt_text = render(template, prompt, add_generation_prompt=True, **variables)
    full = render(template, [*prompt, *completion], add_generation_prompt=False, **variables)
    if not full.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently when an answer follows it")
    end = len(full)
    if stop:  # the answer ends with its (last) stop token; what follows it is not part of the answer
        at = full.rfind(stop, len(prompt_text))
        if at >= 0:
            end = at + len(stop)
    text = full[:end]
    ids, offsets = _offsets_tokenize(tokenizer, text)
    # a token that straddles the end of the prompt belongs to the answer (TRL: the common prefix is the prompt)
    cut = 0
    while cut < len(ids) and offsets[cut][1] <= len(prompt_text):
        cut += 1
    return ids[:cut], ids[cut:], text


def _fit(prompt_ids: list[int], answers: list[list[int]], max_len: int, too_long: str) -> tuple[list[list[int]], bool] | None:
    """Answers cut so that prompt + answer fits ``max_len`` (``None``: drop the example)."""
    if all(len(prompt_ids) + len(a) <= max_len for a in answers):
        return answers, False
    if too_long == "drop" or len(prompt_ids) >= max_len:
        return None
    return [a[: max_len - len(prompt_ids)] for a in answers], True


def build_preference_data(recipe: Any, tokenizer: Any, model: Any = None, max_seq_length: int | None = None, *,
                          limit: int | None = None) -> PreferenceData:
    """Every preference example of the recipe's data, tokenized; raises :class:`UserError` for data that is not
    preference data or that leaves nothing to train on."""
    from recipetune.data.mixture import gather
    from recipetune.data.new_tokens import apply_choice
    from recipetune.data.pipeline import _max_len, prepare_tokenizer, template_variables

    fmt = recipe.format
    template = recipe.chat_template.component
    template, _ = apply_choice(recipe, template, tokenizer)
    variables = template_variables(tokenizer, template)
    template_text = prepare_tokenizer(template, tokenizer, model)
    stop = template.stop_token_for(tokenizer)
    stop_id = tokenizer.convert_tokens_to_ids(stop) if stop and stop in tokenizer.get_vocab() else None
    max_len = _max_len(recipe, max_seq_length)

    dropped: dict[str, int] = {}
    reads, parts, members = gather(recipe, limit, dropped, {}, None)
    not_preference = sorted({r.chosen.name for r in reads if not isinstance(r.chosen, Preference)})
    if not_preference:
        raise UserError(f"format.standardizer: preference training needs preference rows (standardizer = "
                        f"\"preference\", or \"auto\" on prompt/chosen/rejected or prompt/completion/label rows); "
                        f"the data was read as {', '.join(not_preference)}")
    examples: dict[str, list[dict[str, Any]]] = {}
    kinds: set[bool] = set()
    truncated = stop_trained = answers = 0
    first_error = ""
    for split, records in parts.items():
        out = examples.setdefault(split, [])
        for record, member in zip(records, members[split]):
            row: PreferenceRow | None = reads[member].chosen.parts(record.row)
            if row is None:
                dropped["malformed"] = dropped.get("malformed", 0) + 1
                continue
            kinds.add(row.paired)
            completions = [row.chosen, row.rejected] if row.paired else [row.completion]
            try:
                encoded = [encode_example(tokenizer, template_text, variables, stop, row.prompt, c) for c in completions]
            except Exception as exc:  # a template error (raise_exception) or a prompt rendered differently
                dropped["template_error"] = dropped.get("template_error", 0) + 1
                first_error = first_error or str(exc)
                continue
            prompt_ids = min((e[0] for e in encoded), key=len)  # the shared prompt (the shorter if tokens merged)
            answers_ids = [e[0][len(prompt_ids):] + e[1] for e in encoded]
            if any(not a for a in answers_ids):
                dropped["empty"] = dropped.get("empty", 0) + 1
                continue
            fitted = _fit(prompt_ids, answers_ids, max_len, fmt.too_long)
            if fitted is None:
                dropped["too_long"] = dropped.get("too_long", 0) + 1
                continue
            answers_ids, was_cut = fitted
            truncated += was_cut
            answers += len(answers_ids)
            stop_trained += sum(1 for a in answers_ids if stop_id is not None and a[-1] == stop_id)
            texts = [e[2] for e in encoded]
            if row.paired:
                out.append({"prompt_ids": prompt_ids, "chosen_ids": answers_ids[0], "rejected_ids": answers_ids[1],
                            "chosen_text": texts[0], "rejected_text": texts[1]})
            else:
                out.append({"prompt_ids": prompt_ids, "completion_ids": answers_ids[0], "label": bool(row.label),
                            "completion_text": texts[0]})
    if len(kinds) > 1:
        raise UserError("format: the data mixes paired rows (chosen/rejected) and unpaired rows (completion/label); "
                        "use one kind (kto reads paired rows too, as one desirable and one undesirable answer)")
    train = examples.get("train", [])
    if not train:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "no rows"
        raise UserError(f"no preference example is left to train on ({reasons})" + (f": {first_error}" if first_error else ""))
    validation = examples.get("validation", [])
    if fmt.validation_fraction:
        order = list(range(len(train)))
        random.Random(f"{fmt.split_seed if fmt.split_seed is not None else recipe.seed}-validation").shuffle(order)
        held = set(order[: max(1, int(len(train) * fmt.validation_fraction))])
        if len(held) >= len(train):
            raise UserError(f"format.validation_fraction = {fmt.validation_fraction} leaves no example to train on")
        validation = validation + [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
    paired = kinds != {False}
    prompt_lengths = [len(e["prompt_ids"]) for e in train]
    answer_keys = ("chosen_ids", "rejected_ids") if paired else ("completion_ids",)
    answer_lengths = [len(e[k]) for e in train for k in answer_keys]
    stats: dict[str, Any] = {
        "kind": "paired" if paired else "unpaired", "rows": sum(r.total for r in reads), "read": sum(r.read for r in reads),
        "examples": len(train), "validation": len(validation), "answers": answers,
        "answers_ending_with_stop_token": stop_trained, "stop_token": stop, "stop_token_id": stop_id,
        "truncated": truncated, "max_seq_length": max_len,
        "mean_prompt_tokens": round(sum(prompt_lengths) / len(prompt_lengths), 1),
        "mean_answer_tokens": round(sum(answer_lengths) / len(answer_lengths), 1),
        **{f"dropped_{k}": v for k, v in sorted(dropped.items())},
    }
    if not paired:
        stats["desirable"] = sum(1 for e in train if e["label"])
        stats["undesirable"] = len(train) - stats["desirable"]
    if first_error:
        stats["template_error_example"] = first_error
    return PreferenceData(train=train, validation=validation, paired=paired, stats=stats)


def check_pairs(stats: dict[str, Any]) -> str | None:
    """A warning when answers do not end with the stop token (the model would not learn to stop)."""
    stop = stats.get("stop_token")
    if not stop:
        return None
    if stats.get("stop_token_id") is None:
        return f"the stop token {stop!r} is not a single token of the tokenizer: the model cannot learn to stop"
    whole = stats["answers"] - stats["truncated"] * (2 if stats["kind"] == "paired" else 1)
    if stats["answers_ending_with_stop_token"] < whole:
        return (f"only {stats['answers_ending_with_stop_token']} of {stats['answers']} answers end with the stop token "
                f"{stop!r}: check that the chat template ends assistant turns with it")
    return None


def columns(examples: list[dict[str, Any]], paired: bool) -> dict[str, list[Any]]:
    """The columns a TRL trainer takes (texts left out)."""
    keys = ("prompt_ids", "chosen_ids", "rejected_ids") if paired else ("prompt_ids", "completion_ids", "label")
    return {k: [e[k] for e in examples] for k in keys}
