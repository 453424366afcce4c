"""A faster engine for byte-level BPE tokenizers, checked against the tokenizer it stands in for.

The format stage spends most of its time in the model's own tokenizer (Hugging Face ``tokenizers``).
For a byte-level BPE tokenizer, the GPT-2 / Llama-3 / Qwen2 / SmolLM2 kind, the same token ids
come from ``tiktoken``'s BPE about three times faster: the text is split at the added tokens
(special tokens), each stretch is split by the pre-tokenizer's regex and merged by rank. The ranks
are the tokenizer's merges in order (the token a merge makes gets the merge's place in the list),
and ranks map back to the tokenizer's ids.

:func:`fast_encoder` builds one only for a tokenizer it can describe exactly (no normalizer, no
byte fallback, no dropout, a plain regex pre-tokenizer, added tokens that strip nothing), and
returns ``None`` for any other. What it cannot prove from the file, that merging by rank gives the
same merges as merging by pair, is checked on the data: the encoder compares itself with the
tokenizer on a sample of the texts of every batch (:meth:`FastEncoder.agrees`), and the format
stage falls back to the tokenizer for the whole dataset at the first difference.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The regex of ``tokenizers``' ``ByteLevel(use_regex=True)`` pre-tokenizer (GPT-2's)."""


def _byte_decoder() -> dict[str, int]:
    """The byte-level alphabet (one printable character per byte, GPT-2's) -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _pattern(pre: dict[str, Any] | None) -> str | None:
    """The one regex that splits text as this pre-tokenizer does, or ``None`` when there is none."""
    if not pre:
        return None
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(parts) == 1 and parts[0].get("type") == "ByteLevel":
        level = parts[0]
        return GPT2_PATTERN if level.get("use_regex", True) and not level.get("add_prefix_space") else None
    if len(parts) == 2 and [p.get("type") for p in parts] == ["Split", "ByteLevel"]:
        split, level = parts
        regex = (split.get("pattern") or {}).get("Regex")
        if (regex and split.get("behavior") == "Isolated" and not split.get("invert")
                and not level.get("use_regex", True) and not level.get("add_prefix_space")):
            return regex
    return None


class FastEncoder:
    """Token ids of texts through ``tiktoken``, the same ids as the tokenizer it was built from."""

    def __init__(self, encoding: Any, rank_to_id: np.ndarray, added: dict[str, int]):
        self._encoding = encoding
        self._rank_to_id = rank_to_id
        self._has_gaps = bool((rank_to_id < 0).any())
        self._added = added
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")") \
            if added else None

    def encode(self, text: str) -> np.ndarray | None:
        """The token ids of ``text`` (no special tokens added), as ``int32``; ``None`` when the text holds a byte the
        vocabulary has no token for (the tokenizer decides what becomes of it)."""
        parts = self._split.split(text) if self._split is not None else [text]
        ids: list[np.ndarray] = []
        for i, part in enumerate(parts):
            if i % 2:  # an added token: the split keeps the separators at the odd places
                ids.append(np.asarray([self._added[part]], dtype=np.int32))
            elif part:
                ids.append(self._rank_to_id[np.asarray(self._encoding.encode_ordinary(part), dtype=np.int64)])
        out = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        return None if self._has_gaps and (out < 0).any() else out

    def agrees(self, backend: Any, texts: list[str], encoded: list[np.ndarray | None]) -> bool:
        """Whether the tokenizer (``backend``, a ``tokenizers.Tokenizer``) gives these ids to these texts."""
        for enc, ids in zip(backend.encode_batch(texts, add_special_tokens=False), encoded):
            if ids is not None and not np.array_equal(np.asarray(enc.ids, dtype=np.int32), ids):
                return False
        return True


def fast_encoder(backend: Any) -> FastEncoder | None:
    """A :class:`FastEncoder` for a byte-level BPE ``tokenizers.Tokenizer``, or ``None`` when ``tiktoken`` is not
    installed or the tokenizer is of another kind."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        config = json.loads(backend.to_str())
    except Exception:  # pragma: no cover - a tokenizer that cannot serialise itself
        return None
    model = config.get("model") or {}
    pattern = _pattern(config.get("pre_tokenizer"))
    if (pattern is None or config.get("normalizer") is not None or model.get("type") != "BPE"
            or model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix")):
        return None
    added_tokens = config.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added_tokens):
        return None
    decoder = _byte_decoder()
    vocab: dict[str, int] = model.get("vocab") or {}
    try:
        def to_bytes(token: str) -> bytes:
            return bytes(decoder[c] for c in token)

        ranks: dict[bytes, int] = {}
        for b in range(256):  # every single byte is a token of a byte-level vocabulary
            ranks[bytes([b])] = b
        for i, merge in enumerate(model.get("merges") or []):
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            ranks.setdefault(to_bytes(left) + to_bytes(right), 256 + i)
        rank_to_id = np.full(256 + len(model.get("merges") or []), -1, dtype=np.int32)
        for token, i in vocab.items():
            rank = ranks.get(to_bytes(token))
            if rank is not None:
                rank_to_id[rank] = i
    except KeyError:  # a token outside the byte-level alphabet
        return None
    if len(set(rank_to_id[rank_to_id >= 0].tolist())) != int((rank_to_id >= 0).sum()):
        return None  # two ranks for one id
    if any(rank_to_id[r] < 0 for r in sorted(set(ranks.values())) if r >= 256):
        return None  # a merge whose result is not in the vocabulary
    # A byte without a token of its own (SmolLM2 has none for 21 bytes, most of which UTF-8 never writes) keeps
    # its rank with id -1: a text that needs one is encoded by the tokenizer itself (see FastEncoder.encode).
    # tiktoken wants ranks 0..n-1 without gaps: renumber, keeping the order
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    dense = {token: new for new, (token, _) in enumerate(ordered)}
    dense_to_id = np.asarray([rank_to_id[old] for _, old in ordered], dtype=np.int32)
    try:
        encoding = tiktoken.Encoding("recipetune-bpe", pat_str=pattern, mergeable_ranks=dense, special_tokens={})
    except Exception:  # a regex tiktoken's engine does not take
        return None
    added = {t["content"]: int(t["id"]) for t in added_tokens}
    return FastEncoder(encoding, dense_to_id, added)
