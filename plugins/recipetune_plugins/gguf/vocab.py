"""Tokenizer metadata for GGUF from a transformers fast tokenizer (byte-level BPE).

llama.cpp does not run the tokenizer.json pipeline; it re-implements a fixed set of
pre-tokenizers, named by ``tokenizer.ggml.pre``. :func:`detect_pre_tokenizer` reads
the tokenizer's own pre-tokenizer description and names the llama.cpp one that splits
text the same way; the export's verification then checks it on real strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from recipetune import UserError

# llama.cpp token types (gguf.TokenType): NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Pieces of the split regexes that tell the families apart.
LLAMA3_DIGITS = r"\p{N}{1,3}"
QWEN2_SPLIT = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"


@dataclass
class VocabMetadata:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    scores: list[float] = field(default_factory=list)  # SentencePiece-style vocabularies
    add_space_prefix: bool = False


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise UserError(f"GGUF export needs a fast (tokenizers-backed) tokenizer; got {type(tokenizer).__name__}")
    return json.loads(backend.to_str())


def detect_pre_tokenizer(tok_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name that splits text like this tokenizer.json does."""
    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in steps):
        raise UserError("GGUF export: this tokenizer adds a space before the text (ByteLevel add_prefix_space); "
                        "llama.cpp's gpt2 vocabulary does not, so token ids would differ")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's regex, no digit splitting (also the test tokenizers and SmolLM2 as transformers reads it)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # single digits, then GPT-2's regex
    if kinds and kinds[0] == "Split":
        pattern = (steps[0].get("pattern") or {}).get("Regex", "")
        if LLAMA3_DIGITS in pattern:
            return "llama-bpe"  # Llama-3.x: digits in groups of up to three
        if QWEN2_SPLIT in pattern:
            return "qwen2"
    raise UserError("GGUF export: llama.cpp has no pre-tokenizer known to match this tokenizer's "
                    f"({json.dumps(pre)[:300]}); supported: GPT-2 byte-level, SmolLM, Llama-3, Qwen2 byte-level BPE")


def vocab_metadata(tokenizer: Any, vocab_size: int, stop_token: str | None) -> VocabMetadata:
    """Tokens, types, merges or scores and special ids for the GGUF, padded to ``vocab_size``.

    Byte-level BPE (Llama-3.x, SmolLM2, Qwen2) becomes llama.cpp's ``gpt2`` vocabulary;
    BPE with byte fallback and a ``▁`` word marker (the SentencePiece style of Llama-2 and
    Mistral) becomes its ``llama`` vocabulary, with each token's score the negated rank of the
    merge that makes it, so llama.cpp merges in the same order.
    """
    tok_json = _backend_json(tokenizer)
    model = tok_json.get("model", {})
    if model.get("type") != "BPE":
        raise UserError("GGUF export supports byte-level BPE tokenizers (Llama-3.x, SmolLM2, Qwen2) and "
                        f"SentencePiece-style BPE with byte fallback (Llama-2, Mistral); this one is {model.get('type')}")
    spm = bool(model.get("byte_fallback"))
    if not spm and (tok_json.get("normalizer") or {"type": "NFC"}).get("type") != "NFC":
        # NFC (Qwen2's) changes no text that is already composed, which is nearly all text; anything else does
        raise UserError("GGUF export: this byte-level BPE tokenizer has a normalizer "
                        f"({json.dumps(tok_json['normalizer'])[:120]}); llama.cpp's gpt2 vocabulary applies none, so "
                        "it would split some text differently (x², ①, full-width letters...)")
    pre = "default" if spm else detect_pre_tokenizer(tok_json)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model's embedding has {vocab_size} rows")
    added = {i: a for i, a in tokenizer.added_tokens_decoder.items()}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif spm and BYTE_TOKEN.fullmatch(by_id[i]):
            tokens.append(by_id[i])
            types.append(BYTE)
        elif spm and by_id[i] == model.get("unk_token"):
            tokens.append(by_id[i])
            types.append(UNKNOWN)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    scores: list[float] = []
    if spm:
        rank: dict[str, int] = {}
        for r, merge in enumerate(merges):
            rank.setdefault(merge.replace(" ", "", 1), r)
        scores = [0.0 if t != NORMAL else -float(rank.get(tok, 0 if len(tok) == 1 else len(merges)))
                  for tok, t in zip(tokens, types)]
    special: dict[str, int] = {}
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unk_token_id"), ("pad", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            special[key] = value
    if stop_token:
        stop_id = tokenizer.convert_tokens_to_ids(stop_token) if stop_token in tokenizer.get_vocab() else None
        if isinstance(stop_id, int):
            special["eot"] = stop_id
    probe = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    add_bos = len(probe) > len(bare) and probe[0] == special.get("bos")
    add_eos = len(probe) > len(bare) and probe[-1] == special.get("eos")
    if spm:
        return VocabMetadata("llama", pre, tokens, types, [], special, add_bos, add_eos, scores=scores,
                             add_space_prefix=_adds_space_prefix(tok_json))
    return VocabMetadata("gpt2", pre, tokens, types, merges, special, add_bos, add_eos)


def _adds_space_prefix(tok_json: dict[str, Any]) -> bool:
    """Whether the tokenizer puts ``▁`` before the text (SentencePiece's add_dummy_prefix)."""
    text = json.dumps([tok_json.get("normalizer"), tok_json.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text \
        or '"add_prefix_space": true' in text
