"""Tokens a chat template needs that the tokenizer lacks, and what the recipe does about them.

A template written for another model family names special tokens the tokenizer may not have: the
``zephyr`` template on SmolLM2 (a ChatML model) writes ``</s>``, ``<|system|>``, ``<|user|>`` and
``<|assistant|>``. Adding them grows the embedding matrix (49152 -> 49156 rows); under LoRA those new
rows are *not* trained (LoRA trains the projections only), so the model meets untrained vectors for
its role markers and its stop token, and peft then saves the whole resized embedding with the
"adapter" (236 MB instead of 19.6 MB). ``format.new_tokens`` makes the recipe choose:

``"train"``
    add the tokens and train their rows. Under LoRA only those rows are trained and saved (peft's
    ``trainable_token_indices``, a few KB per token), on the input embedding and, when it is not tied
    to it, the output layer (so the model can learn to *say* the new stop token).
``"map"``
    add nothing: the template's stop token becomes the tokenizer's own end-of-sequence token, and
    the other markers are written as plain text (a few existing tokens each).
``"refuse"``
    stop with an error naming the tokens (Axolotl's choice). The default when an adapter trains the
    model; full fine-tuning trains every row, so its default is ``"train"``.

Everything here is plain Python (no transformers): ``recipe validate`` reads a local model folder's
tokenizer files with :func:`folder_vocabulary` to say the same thing before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..components import ChatTemplate
from ..problems import UserError

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe.model import Recipe

MODES = ("train", "map", "refuse")


def missing_tokens(template: ChatTemplate, vocabulary: Iterable[str]) -> list[str]:
    """The template's special tokens that ``vocabulary`` (token strings) lacks, in the template's order."""
    have = set(vocabulary)
    return [t for t in dict.fromkeys(template.special_tokens) if t not in have]


def mode_for(recipe: "Recipe") -> str:
    """``format.new_tokens`` as set, else ``refuse`` under an adapter and ``train`` for full fine-tuning."""
    chosen = getattr(recipe.format, "new_tokens", None) if recipe.format is not None else None
    if chosen:
        return chosen
    return "refuse" if recipe.adapt is not None else "train"


def folder_vocabulary(folder: Path) -> set[str] | None:
    """Token strings of the tokenizer saved in ``folder`` (``tokenizer.json`` and the added tokens of
    ``tokenizer_config.json``), read without transformers; None when there is no ``tokenizer.json``."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocab = (data.get("model") or {}).get("vocab") or {}
    tokens = set(vocab if isinstance(vocab, dict) else (entry[0] for entry in vocab))
    tokens.update(t.get("content", "") for t in data.get("added_tokens") or [])
    config = Path(folder) / "tokenizer_config.json"
    if config.is_file():
        try:
            decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
            tokens.update(v.get("content", "") for v in decoder.values() if isinstance(v, dict))
        except (OSError, ValueError):
            pass
    return tokens


def map_targets(template: ChatTemplate, missing: list[str], eos_token: str | None, vocabulary: Iterable[str]) -> dict[str, str]:
    """What ``map`` writes instead of each missing token: the tokenizer's EOS for a missing stop (or EOS)
    token, the token's own text (plain text, several existing tokens) for the others. A missing stop token
    with no EOS of the tokenizer's own to stand in for it cannot be mapped: :class:`UserError`."""
    have = set(vocabulary)
    ends = {template.stop_token, template.eos_token} - {None}
    targets: dict[str, str] = {}
    for token in missing:
        if token in ends:
            if not eos_token or eos_token not in have:
                raise UserError(f"format.new_tokens = \"map\": the chat template {template.name!r} ends answers with "
                                f"{token!r}, which the tokenizer lacks, and the tokenizer has no end-of-sequence token "
                                "to map it to; set format.new_tokens = \"train\" or choose another chat_template")
            targets[token] = eos_token
        else:
            targets[token] = token
    return targets


class MappedTemplate(ChatTemplate):
    """A template whose missing tokens are replaced: the stop token by the tokenizer's EOS, markers by text."""

    def __init__(self, inner: ChatTemplate, targets: dict[str, str]):
        super().__init__(inner.options)
        self.inner, self.targets = inner, targets
        self.name = inner.name  # type: ignore[misc]
        self.special_tokens = tuple(t for t in inner.special_tokens if t not in targets)  # type: ignore[misc]
        self.bos_token = targets.get(inner.bos_token, inner.bos_token) if inner.bos_token else None  # type: ignore[misc]
        self.eos_token = targets.get(inner.eos_token, inner.eos_token) if inner.eos_token else None  # type: ignore[misc]
        self.stop_token = targets.get(inner.stop_token, inner.stop_token) if inner.stop_token else None  # type: ignore[misc]

    def template_for(self, tokenizer: Any) -> str:
        text = self.inner.template_for(tokenizer)
        for token, target in self.targets.items():
            if target != token:
                text = text.replace(token, target)
        return text

    def stop_token_for(self, tokenizer: Any) -> str | None:
        stop = self.inner.stop_token_for(tokenizer)
        return self.targets.get(stop, stop) if stop else stop


def explain(template: ChatTemplate, missing: list[str], mode: str, rows_before: int | None = None,
            adapter: bool = True, eos_token: str | None = None) -> str:
    """One paragraph: which tokens the template adds, and what follows under ``mode``."""
    names = ", ".join(repr(t) for t in missing)
    grows = f" from {rows_before} to {rows_before + len(missing)} rows" if rows_before else ""
    head = f"the chat template {template.name!r} needs {len(missing)} token(s) the tokenizer lacks: {names}"
    if mode == "train":
        how = ("only their rows are trained and saved with the adapter (peft trainable_token_indices)" if adapter
               else "full fine-tuning trains them with the rest")
        return f"{head}; they are added (the embedding matrix grows{grows}) and {how}"
    if mode == "map":
        ends = {template.stop_token, template.eos_token} - {None}
        mapped = [t for t in missing if t in ends]
        said = f"{', '.join(repr(t) for t in mapped)} is written as the tokenizer's {eos_token!r}" if mapped else ""
        text = [t for t in missing if t not in ends]
        plain = f"{', '.join(repr(t) for t in text)} are written as plain text" if text else ""
        return f"{head}; nothing is added: " + "; ".join(p for p in (said, plain) if p)
    return (f"{head}. Adding them grows the embedding matrix{grows}, and LoRA does not train the new rows: the model would "
            "meet untrained vectors for them and the adapter would carry the whole embedding matrix. Choose with "
            'format.new_tokens = "train" (train just those rows), "map" (no new tokens: the stop token becomes the '
            "tokenizer's own end token, the other markers plain text), or use the model's own template "
            '(chat_template = "tokenizer")')


def apply_choice(recipe: "Recipe", template: ChatTemplate, tokenizer: Any) -> tuple[ChatTemplate, dict[str, Any] | None]:
    """The template to format with, and a note of the new tokens for the stats (None when none are missing).

    ``refuse`` raises :class:`UserError` naming the tokens; ``map`` returns a :class:`MappedTemplate`;
    ``train`` returns the template unchanged (``prepare_tokenizer`` adds the tokens)."""
    vocabulary = tokenizer.get_vocab()
    missing = missing_tokens(template, vocabulary)
    if not missing:
        return template, None
    mode = mode_for(recipe)
    adapter = recipe.adapt is not None
    note = {"tokens": missing, "mode": mode, "rows_before": len(tokenizer)}
    if mode == "refuse":
        raise UserError("format.chat_template: " + explain(template, missing, mode, len(tokenizer), adapter))
    if mode == "map":
        eos = getattr(tokenizer, "eos_token", None)
        template = MappedTemplate(template, map_targets(template, missing, eos, vocabulary))
        note["message"] = explain(template.inner, missing, mode, eos_token=eos)
        return template, note
    note["message"] = explain(template, missing, mode, len(tokenizer), adapter)
    return template, note
