"""Tokenizer metadata for GGUF from a transformers fast tokenizer (byte-level BPE).

llama.cpp does not run the tokenizer.json pipeline; it re-implements a fixed set of
pre-tokenizers, named by ``tokenizer.ggml.pre``. :func:`detect_pre_tokenizer` reads
the tokenizer's own pre-tokenizer description and names the llama.cpp one that splits
text the same way; the export's verification then checks it on real strings.

Where generation ends: llama.cpp ends at its end-of-generation set, which it builds from the
EOS, EOT and EOM ids of the file and from tokens whose *text* it knows (``<|end|>``,
``<|endoftext|>``, ``<|im_end|>``...). transformers ends at every id of the generation config.
:func:`assign_stops` puts a stop llama.cpp would not know into the EOM slot, which llama.cpp
uses for nothing else; a stop left over is harmless only when the chat template never writes
it inside an answer (:func:`answer_token_ids`): Phi-3's generation config lists
``<|assistant|>``, which its template writes only *before* an answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

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
    stops_left: list[int] = field(default_factory=list)
    """Stop ids of transformers that llama.cpp will not end at (no slot left); see :func:`assign_stops`."""
    phi3_whitespace: bool = False
    """The special tokens eat the whitespace after them as Phi-3's do (see :func:`llama_name`)."""


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


def vocab_metadata(tokenizer: Any, vocab_size: int, stop_token: str | None, stops: Iterable[int] = ()) -> VocabMetadata:
    """Tokens, types, merges or scores and special ids for the GGUF, padded to ``vocab_size``.

    Byte-level BPE (Llama-3.x, SmolLM2, Qwen2) becomes llama.cpp's ``gpt2`` vocabulary;
    BPE with byte fallback and a ``▁`` word marker (the SentencePiece style of Llama-2 and
    Mistral) becomes its ``llama`` vocabulary, with each token's score the negated rank of the
    merge that makes it, so llama.cpp merges in the same order. ``stops``: the ids transformers
    ends generation at (the generation config's), made end-of-generation ids for llama.cpp too
    (:func:`assign_stops`).
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
        vocab = VocabMetadata("llama", pre, tokens, types, [], special, add_bos, add_eos, scores=scores,
                              add_space_prefix=_adds_space_prefix(tok_json))
    else:
        vocab = VocabMetadata("gpt2", pre, tokens, types, merges, special, add_bos, add_eos)
    vocab.phi3_whitespace = strips_like_phi3(tokenizer, tokens, types)
    if stops:
        assign_stops(vocab, stops, answer_token_ids(tokenizer))
    return vocab


PHI3_KEPT = ("<unk>", "<s>", "<|endoftext|>")
PHI3_NAMED = re.compile(r"phi-?3", re.IGNORECASE)


def strips_like_phi3(tokenizer: Any, tokens: list[str], types: list[int]) -> bool:
    """Whether the added tokens that eat the whitespace after them (``rstrip``) are exactly those llama.cpp
    strips for a model named Phi-3: every control, user-defined and unknown token and ``</s>``, except
    ``<unk>``, ``<s>`` and ``<|endoftext|>`` (``llama_vocab::impl::load``). llama.cpp has no per-token flag
    for it in GGUF: it decides by ``general.name``."""
    stripped = {i for i, a in tokenizer.added_tokens_decoder.items() if getattr(a, "rstrip", False)}
    if not stripped or not all(t in tokens for t in (*PHI3_KEPT, "</s>")):
        return False
    cached = {i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN)} | {tokens.index("</s>")}
    return stripped == cached - {tokens.index(t) for t in PHI3_KEPT}


def llama_name(name: str, vocab: VocabMetadata) -> str:
    """``general.name`` such that llama.cpp strips whitespace after special tokens exactly when the tokenizer
    does: llama.cpp does it for every model whose name contains "phi-3" or "phi3", and for no other."""
    if vocab.phi3_whitespace and not PHI3_NAMED.search(name):
        return f"{name} (phi-3 tokenizer)"
    if not vocab.phi3_whitespace and PHI3_NAMED.search(name):
        return PHI3_NAMED.sub(lambda m: m.group(0)[:3] + " 3", name)  # "phi3-tune" -> "phi 3-tune"
    return name


LLAMA_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>",
    "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})
"""Token texts llama.cpp ends generation at whatever the file says (``llama_vocab::impl::load``, the
end-of-generation list, llama-cpp-python 0.3.36's llama.cpp)."""


def llama_end_ids(vocab: VocabMetadata) -> set[int]:
    """The ids llama.cpp will end generation at for this vocabulary: EOS, EOT, EOM and the texts it knows."""
    ids = {i for i, token in enumerate(vocab.tokens) if token in LLAMA_EOG_TEXTS}
    return ids | {vocab.special_ids[k] for k in ("eos", "eot", "eom") if k in vocab.special_ids}


def assign_stops(vocab: VocabMetadata, stops: Iterable[int], in_answers: set[int] | None) -> list[int]:
    """Make llama.cpp end at every id of ``stops``: one it would not know goes into the EOM slot (llama.cpp
    uses EOM for nothing but ending generation; EOS and EOT keep their meaning), those the template writes
    inside answers first. The ids left over are kept in ``vocab.stops_left`` and returned."""
    missing = sorted(set(stops) - llama_end_ids(vocab), key=lambda i: (in_answers is not None and i not in in_answers, i))
    if missing and "eom" not in vocab.special_ids:
        vocab.special_ids["eom"] = missing.pop(0)
    vocab.stops_left = missing
    return missing


ANSWER_PROBE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": "Yes."}]


def answer_token_ids(tokenizer: Any) -> set[int] | None:
    """The ids the chat template writes inside assistant turns (their end-of-turn token included), from a
    rendered two-answer conversation; ``None`` for a model without a chat template (a base model's text may
    end anywhere). A token outside this set is never trained as part of an answer."""
    from recipetune.data.templating import assistant_spans

    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        return None
    variables = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    for messages in (ANSWER_PROBE, ANSWER_PROBE[1:]):  # some templates refuse a system message
        try:
            text, spans = assistant_spans(template, messages, **variables)
            break
        except Exception:
            continue
    else:
        return None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: set[int] = set()
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if any(span.start <= start and end <= span.end and end > start for span in spans):
            ids.add(token)
    return ids


def _adds_space_prefix(tok_json: dict[str, Any]) -> bool:
    """Whether the tokenizer puts ``▁`` before the text (SentencePiece's add_dummy_prefix)."""
    text = json.dumps([tok_json.get("normalizer"), tok_json.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text \
        or '"add_prefix_space": true' in text
