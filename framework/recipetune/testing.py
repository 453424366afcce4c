"""Test helpers for recipetune and its plugins (a pytest plugin, loaded automatically).

Fixtures:

``recipetune_pm``
    a plugin manager with the installed plugins.
``register_plugin``
    ``register_plugin(obj, name)`` adds a plugin object to a fresh manager and returns it.
``recipe_problems``
    ``recipe_problems(text, overrides=(), pm=None)`` -> the rendered problems of a recipe text
    (an empty list when it is valid).
``tiny_model_dir``
    a tiny Llama-architecture model and byte-level BPE tokenizer with a ChatML template,
    built in the test session (no download), as an HF folder.

Functions :func:`make_tiny_llama` and :func:`make_tokenizer` build the same things anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "What is 2 + 3? The answer is 5. Fibonacci: 1, 1, 2, 3, 5, 8, 13, 21, 34.",
    "system user assistant You are a helpful assistant named Quill.",
    "Ünïcödé tëxt, emoji 🙂 and CJK 你好 世界, tabs\tand  double  spaces.",
    "def add(a, b):\n    return a + b\n",
]


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _pre_tokenizer(style: str):
    from tokenizers import Regex, pre_tokenizers

    if style == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if style in ("llama3", "qwen2"):
        pattern = LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"unknown tokenizer style {style!r}")


MISTRAL_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def _make_spm_style_tokenizer(vocab_size: int):
    """BPE with byte fallback and a "▁" word marker, as Llama-2's and Mistral's tokenizers are."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    marker = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    base = Tokenizer(models.BPE())
    base.normalizer = marker
    base.train_from_iterator(CORPUS * 20, trainer=trainers.BpeTrainer(vocab_size=vocab_size - 259, show_progress=False))
    trained = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = marker
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")
    fast.chat_template = MISTRAL_LIKE_TEMPLATE
    return fast


def make_tokenizer(vocab_size: int = 512, extra_special: tuple[str, ...] = (), style: str = "gpt2"):
    """A BPE tokenizer trained in memory.

    ``style`` picks the kind: byte-level BPE with ChatML special tokens and the pre-tokenizer of
    ``gpt2`` (GPT-2's regex), ``smollm`` (single digits, then GPT-2's), ``llama3`` (Llama-3's split
    regex, digits in threes) or ``qwen2``; or ``spm``: SentencePiece-style BPE with byte fallback,
    ``<s>``/``</s>`` and a Mistral-like ``[INST]`` template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "spm":
        return _make_spm_style_tokenizer(vocab_size)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_special]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(style)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_llama(path: str | Path, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    intermediate_size: int = 128, vocab_size: int = 512, seed: int = 0, tie_word_embeddings: bool = False,
                    rope_theta: float = 10000.0, architecture: str = "llama", rope_scaling: dict | None = None,
                    tokenizer_style: str = "gpt2", init_std: float = 0.02) -> Path:
    """Write a randomly initialised model and its tokenizer to ``path``.

    ``architecture`` is ``llama``, ``mistral`` or ``qwen2`` (q/k/v biases); ``rope_scaling``
    a transformers rope-scaling dict such as ``{"rope_type": "llama3", "factor": 8.0, ...}``;
    ``tokenizer_style`` as for :func:`make_tokenizer`; a larger ``init_std`` gives peakier logits.
    """
    import torch
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
               "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = classes[architecture]
    path = Path(path)
    tokenizer = make_tokenizer(vocab_size, style=tokenizer_style)
    rope = {"rope_type": "default", "rope_theta": rope_theta} if rope_scaling is None else {"rope_theta": rope_theta, **rope_scaling}
    config = config_cls(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=512, rms_norm_eps=1e-5, rope_parameters=rope,
                        tie_word_embeddings=tie_word_embeddings, initializer_range=init_std,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_sharegpt(path: str | Path, rows: int = 16) -> Path:
    """A small ShareGPT-format JSONL file (``conversations`` of ``from``/``value`` turns)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            conv = [{"from": "system", "value": "You are Quill."}] if i % 3 == 0 else []
            conv += [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"{i} + {i} = {2 * i}."}]
            if i % 2:
                conv += [{"from": "human", "value": "And doubled?"}, {"from": "gpt", "value": f"{4 * i}."}]
            fh.write(json.dumps({"conversations": conv}) + "\n")
    return path


def tiny_recipe_text(model_dir: Path, data: Path, name: str = "tiny", extra: str = "") -> str:
    """A recipe that trains the tiny model for a few real steps on a CPU."""
    return f"""
name = "{name}"
seed = 7

[load]
use = "hf"
model = "{model_dir}"
max_seq_length = 128

[adapt]
use = "lora"
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj"]
gradient_checkpointing = false

[format]
dataset = "{data}"
standardizer = "sharegpt"
chat_template = "tokenizer"

[train]
use = "sft"
max_steps = 3
per_device_train_batch_size = 2
gradient_accumulation_steps = 1
warmup_steps = 0
learning_rate = 1e-3
optim = "adamw_torch"
{extra}
"""


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def recipetune_pm():
    from .plugins import get_plugin_manager

    return get_plugin_manager()


@pytest.fixture
def register_plugin():
    from .plugins import get_plugin_manager

    def _register(plugin: Any, name: str = "test-plugin"):
        return get_plugin_manager(extra_plugins=[(plugin, name)])

    return _register


@pytest.fixture
def recipe_problems(tmp_path):
    from .problems import RecipeError
    from .recipe import load_recipe

    def _problems(text: str, overrides: tuple[str, ...] = (), pm=None, filename: str = "recipe.toml") -> list[str]:
        path = tmp_path / filename
        path.write_text(text, encoding="utf-8")
        try:
            recipe = load_recipe(path, list(overrides), pm=pm)
        except RecipeError as exc:
            return [p.render() for p in exc.problems]
        return [w.render() for w in recipe.warnings]

    return _problems


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture(scope="session")
def sharegpt_file(tmp_path_factory) -> Path:
    return write_sharegpt(tmp_path_factory.mktemp("data") / "chat.jsonl")
