"""Shared pieces of the GPU benchmark (bench/gpu/): model architectures, the local tokenizer, the
generated data, and how a path's measurements become one JSON line.

Nothing is downloaded: the models are Llama-3.2-1B / 3B *architectures* with random weights, the
tokenizer is a byte-level BPE trained here and laid out like Llama-3's (128,000 regular tokens, then
256 special tokens from id 128000), and the data is generated text shaped like FineTome-100k
(ShareGPT ``conversations`` of ``from``/``value`` turns).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 128256
REGULAR = 128000

# config.json values of meta-llama/Llama-3.2-1B-Instruct and -3B-Instruct (architecture only).
_LLAMA32 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": VOCAB,
    "intermediate_size": 8192,
    "num_key_value_heads": 8,
}
CONFIGS = {
    "1b": {**_LLAMA32, "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "head_dim": 64},
    "3b": {**_LLAMA32, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24, "head_dim": 128},
    # For a CPU dry run of the scripts only (python bench/gpu/prepare.py --sizes tiny).
    "tiny": {**_LLAMA32, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16, "intermediate_size": 128},
}

LLAMA3_SPECIAL = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>", 6: "<|start_header_id|>",
                  7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>", 10: "<|python_tag|>"}


def special_tokens() -> list[str]:
    """Llama-3's 256 special tokens in id order (128000..128255)."""
    out, reserved = [], 0
    for i in range(256):
        if i in LLAMA3_SPECIAL:
            out.append(LLAMA3_SPECIAL[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


# ---------------------------------------------------------------- text
def words(seed: int = 0, n: int = 6000) -> list[str]:
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "gr", "ch", "sh", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng"]
    vocab = set()
    while len(vocab) < n:
        vocab.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3))))
    return sorted(vocab)


def sentence(rng: random.Random, vocab: list[str], n_words: int) -> str:
    out, i = [], 0
    while i < n_words:
        k = min(rng.randint(6, 18), n_words - i)
        s = " ".join(rng.choice(vocab) for _ in range(k))
        out.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!", ","]))
        i += k
    return " ".join(out)


def finetome_rows(n: int, seed: int = 3407, user_words: tuple[int, int] = (40, 160),
                  answer_words: tuple[int, int] = (1900, 2600)) -> list[dict[str, Any]]:
    """FineTome-100k-shaped rows: {"conversations": [{"from": "human"|"gpt", "value": ...}], "source", "score"}.

    The default answer length makes every sample longer than 2048 tokens with the bench tokenizer, so
    each is truncated to max_seq_length and no batch has padding (every path trains the same tokens).
    """
    rng, vocab = random.Random(seed), words()
    rows = []
    for i in range(n):
        conv = []
        if i % 4 == 0:
            conv.append({"from": "system", "value": sentence(rng, vocab, 20)})
        conv.append({"from": "human", "value": sentence(rng, vocab, rng.randint(*user_words))})
        conv.append({"from": "gpt", "value": sentence(rng, vocab, rng.randint(*answer_words))})
        rows.append({"conversations": conv, "source": "generated", "score": round(rng.uniform(3.5, 5.0), 2)})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


# ---------------------------------------------------------------- tokenizer and model
def make_tokenizer(bpe_vocab: int = 16000):
    """A byte-level BPE laid out like Llama-3's: ids < 128000 regular (trained merges + unused fillers), then 256 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    rng, vocab = random.Random(1), words()
    corpus = [sentence(rng, vocab, 200) for _ in range(300)]
    tok.train_from_iterator(corpus, trainer=trainer)
    data = json.loads(tok.to_str())
    model_vocab = data["model"]["vocab"]
    for i in range(len(model_vocab), REGULAR):  # unused regular ids, as a real 128k vocabulary has
        model_vocab[f"<unused_{i}>"] = i
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(special_tokens())
    assert tok.get_vocab_size() == VOCAB and tok.token_to_id("<|eot_id|>") == 128009
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", model_max_length=131072)


def make_model(folder: Path, size: str, seed: int = 0, device: str = "cuda") -> Path:
    """A random-initialised Llama-3.2 architecture saved as an HF folder (bf16 safetensors) with the local tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    config_json = dict(CONFIGS[size])
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    device = device if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                                               do_sample=False)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))  # the config.json values above, as written
    make_tokenizer().save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


# ---------------------------------------------------------------- measuring
class Meter:
    """Per-step wall times (taken after a host sync), losses and non-pad tokens of one path."""

    def __init__(self, path: str, size: str, warmup: int):
        self.path, self.size, self.warmup = path, size, warmup
        self.t0 = float(os.environ.get("BENCH_T0") or time.time())  # the driver's clock just before the process started
        self.steps: list[dict[str, float]] = []
        self.extra: dict[str, Any] = {}

    def step(self, step: int, loss: float | None, tokens: int) -> None:
        self.steps.append({"step": step, "t": time.time(), "loss": loss, "tokens": tokens})

    def result(self) -> dict[str, Any]:
        import torch

        s = self.steps
        measured = s[self.warmup:] if len(s) > self.warmup else s[1:]
        start = s[self.warmup - 1]["t"] if len(s) > self.warmup and self.warmup > 0 else s[0]["t"]
        span = measured[-1]["t"] - start if measured else float("nan")
        tokens = sum(m["tokens"] for m in measured)
        out = {
            "path": self.path, "size": self.size, "steps": len(s), "warmup_steps": self.warmup,
            "measured_steps": len(measured), "tokens_per_step": (tokens / len(measured)) if measured else None,
            "tokens_per_s": round(tokens / span, 1) if measured and span > 0 else None,
            "s_per_step": round(span / len(measured), 4) if measured else None,
            "time_to_first_step_s": round(s[0]["t"] - self.t0, 2) if s else None,
            "first_losses": [round(m["loss"], 4) if m["loss"] is not None else None for m in s[:5]],
            "last_loss": round(s[-1]["loss"], 4) if s and s[-1]["loss"] is not None else None,
            "step_ms": [round(1000 * (b["t"] - a["t"])) for a, b in zip(s, s[1:])],
        }
        if measured:
            times = sorted(out["step_ms"][max(self.warmup - 1, 0):])
            out["median_step_ms"] = times[len(times) // 2]
        if torch.cuda.is_available():
            out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            out["gpu"] = torch.cuda.get_device_name(0)
        out["versions"] = versions()
        out.update(self.extra)
        return out

    def write(self) -> dict[str, Any]:
        result = self.result()
        target = os.environ.get("BENCH_RESULT")
        line = json.dumps(result)
        if target:
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        print("BENCH_RESULT " + line, flush=True)
        return result


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "unsloth",
                 "unsloth_zoo", "recipetune"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_samples(path: Path) -> list[dict[str, list[int]]]:
    return json.loads(Path(path).read_text())


def batches(samples: list[dict[str, list[int]]], batch_size: int, pad_id: int, steps: int):
    """Right-padded batches in file order (the same samples every raw path trains on), as CPU tensors."""
    import torch

    for step in range(steps):
        chunk = [samples[(step * batch_size + i) % len(samples)] for i in range(batch_size)]
        longest = max(len(s["input_ids"]) for s in chunk)
        ids = torch.full((batch_size, longest), pad_id, dtype=torch.long)
        labels = torch.full((batch_size, longest), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, longest), dtype=torch.long)
        for i, s in enumerate(chunk):
            n = len(s["input_ids"])
            ids[i, :n] = torch.tensor(s["input_ids"])
            labels[i, :n] = torch.tensor(s["labels"])
            mask[i, :n] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum())


# ---------------------------------------------------------------- long-tailed chat data (packing benchmark)
LONGTAIL_MEDIAN, LONGTAIL_P90 = 366, 1100
"""Target token lengths of whole conversations: the median and 90th percentile of real chat data (FineTome-like
mixes of short questions and long answers); lognormal, capped below max_seq_length."""


def longtail_rows(n: int, seed: int = 3407, tokens_per_word: float = 1.9, cap_tokens: int = 1960) -> list[dict[str, Any]]:
    """ShareGPT rows whose tokenized lengths follow a lognormal with median ``LONGTAIL_MEDIAN`` and 90th percentile
    ``LONGTAIL_P90`` tokens (cut at ``cap_tokens``): one to three user/assistant turns, a system prompt in a quarter
    of them. ``tokens_per_word``: the bench tokenizer's rate on these words (prepare.py prints the real lengths)."""
    import math

    rng, vocab = random.Random(seed), words()
    sigma = math.log(LONGTAIL_P90 / LONGTAIL_MEDIAN) / 1.2816
    rows = []
    for i in range(n):
        target = min(cap_tokens, max(24, int(rng.lognormvariate(math.log(LONGTAIL_MEDIAN), sigma))))
        budget = max(8, int(target / tokens_per_word))
        turns = 1 if budget < 150 else rng.choice([1, 1, 2, 3])
        conv = [{"from": "system", "value": sentence(rng, vocab, 12)}] if i % 4 == 0 else []
        for _ in range(turns):
            share = budget // turns
            user = max(4, int(share * rng.uniform(0.1, 0.3)))
            conv.append({"from": "human", "value": sentence(rng, vocab, user)})
            conv.append({"from": "gpt", "value": sentence(rng, vocab, max(4, share - user))})
        rows.append({"conversations": conv, "source": "generated-longtail"})
    return rows
