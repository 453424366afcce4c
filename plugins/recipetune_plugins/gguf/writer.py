"""Write a transformers Llama-family model as a GGUF file (f32, f16 or bf16).

Supported layouts: ``LlamaForCausalLM`` and ``MistralForCausalLM`` (GGUF architecture
``llama``; q/k rows are permuted from HF's rotate-half order to llama.cpp's interleaved
rope), ``Qwen2ForCausalLM`` (``qwen2``; neox rope, no permutation, q/k/v biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from recipetune import UserError
from recipetune.atomic import atomic_path

from .vocab import VocabMetadata, llama_name

if TYPE_CHECKING:  # numpy is imported where it is used: `recipe --help` stays fast
    import numpy as np

FLOAT_TYPES = ("f32", "f16", "bf16")
FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}  # llama_ftype values written to general.file_type

ARCHITECTURES = {
    # HF class -> (GGUF architecture, permute q/k for llama.cpp's rope)
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}

LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}


@dataclass
class Hyper:
    """The architecture numbers GGUF needs, read from a transformers config."""

    arch: str
    permute: bool
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    vocab_size: int
    tied: bool


def hyper_parameters(model: Any) -> Hyper:
    config = model.config
    name = type(model).__name__
    if name not in ARCHITECTURES:
        raise UserError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {name}")
    arch, permute = ARCHITECTURES[name]
    rope = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None)
    if legacy and not rope.get("rope_type"):
        rope.update(legacy)
    theta = rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) not in (None, "default") else None
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    refuse_unwritable(config, arch, name, head_dim)
    return Hyper(arch, permute, config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads,
                 getattr(config, "num_key_value_heads", None) or heads, head_dim, config.max_position_embeddings,
                 float(config.rms_norm_eps), float(theta), scaling, model.get_input_embeddings().weight.shape[0],
                 bool(getattr(config, "tie_word_embeddings", False)))


def refuse_unwritable(config: Any, arch: str, name: str, head_dim: int) -> None:
    """Refuse, before anything is written, what llama.cpp would compute differently from transformers: a file
    that loads and answers, only not like the model (or does not load at all)."""
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UserError(f"GGUF export: {name} uses hidden_act {act!r}; llama.cpp's {arch} architecture computes SiLU")
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", True) if arch == "qwen2" else True
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if window and uses_window and int(window) < context:
        raise UserError(f"GGUF export: {name} attends through a sliding window of {window} tokens (context "
                        f"{context}); llama.cpp's {arch} architecture attends to the whole context, so answers "
                        f"longer than {window} tokens would differ")
    if arch == "qwen2" and head_dim * config.num_attention_heads != config.hidden_size:
        raise UserError(f"GGUF export: {name} has head_dim {head_dim} x {config.num_attention_heads} heads != hidden "
                        f"size {config.hidden_size}; llama.cpp's qwen2 architecture cannot load that shape")


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k rows from HF's rotate-half pairing (i, i+d/2) to llama.cpp's adjacent pairs (2i, 2i+1)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama3_rope_factors(h: Hyper) -> np.ndarray:
    """Per-frequency divisors of Llama-3.1's "llama3" rope scaling (written as ``rope_freqs.weight``)."""
    import numpy as np

    s = h.rope_scaling or {}
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, h.head_dim, 2):
        wavelen = 2 * math.pi * h.rope_theta ** (i / h.head_dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def gguf_tensors(model: Any, h: Hyper) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight, in llama.cpp's layout."""
    out: list[tuple[str, np.ndarray]] = []
    state = model.state_dict()
    for key, tensor in state.items():
        if key == "lm_head.weight" and h.tied:
            continue
        if key.startswith("model.layers."):
            _, _, index, rest = key.split(".", 3)
            if rest.endswith("rotary_emb.inv_freq"):
                continue
            if rest not in LAYER_TENSORS:
                raise UserError(f"GGUF export: no llama.cpp tensor for {key}")
            name = f"blk.{index}.{LAYER_TENSORS[rest]}"
        elif key in GLOBAL_TENSORS:
            name = GLOBAL_TENSORS[key]
        else:
            raise UserError(f"GGUF export: no llama.cpp tensor for {key}")
        array = tensor.detach().float().cpu().numpy()
        if h.permute and name.endswith(("attn_q.weight", "attn_q.bias")):
            array = permute_for_rope(array, h.heads)
        elif h.permute and name.endswith(("attn_k.weight", "attn_k.bias")):
            array = permute_for_rope(array, h.kv_heads)
        out.append((name, array))
    if h.rope_scaling and h.rope_scaling.get("rope_type", h.rope_scaling.get("type")) == "llama3":
        out.append(("rope_freqs.weight", llama3_rope_factors(h)))
    return out


def _add_tensor(writer: Any, name: str, array: np.ndarray, file_type: str) -> None:
    import gguf
    import numpy as np

    if array.ndim == 1 or file_type == "f32" or name == "rope_freqs.weight":
        writer.add_tensor(name, array.astype(np.float32))  # norms, biases and rope factors stay f32 (as llama.cpp does)
    elif file_type == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)


def write_gguf(model: Any, vocab: VocabMetadata, path: Path, file_type: str, *, name: str,
               chat_template: str | None, base_model: str | None = None, recipe_sha256: str | None = None,
               description: str | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Write ``model`` (a float transformers model) as one GGUF file at ``path``, atomically."""
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # its per-file chatter is not the run's news
    if file_type not in FLOAT_TYPES:
        raise ValueError(f"write_gguf writes {FLOAT_TYPES}; quantize those with llama.cpp")
    h = hyper_parameters(model)
    if len(vocab.tokens) != h.vocab_size:
        raise UserError(f"GGUF export: {len(vocab.tokens)} tokens for an embedding of {h.vocab_size} rows")
    path = Path(path)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), h.arch)
        w.add_type("model")
        w.add_name(llama_name(name, vocab))  # llama.cpp decides Phi-3's whitespace stripping by the name
        if description:
            w.add_description(description)
        if base_model:
            w.add_base_model_count(1)
            w.add_base_model_name(0, base_model)
        if recipe_sha256:
            w.add_string("recipetune.recipe_sha256", recipe_sha256)
        w.add_file_type(FILE_TYPE[file_type])
        w.add_context_length(h.context)
        w.add_embedding_length(h.hidden)
        w.add_block_count(h.layers)
        w.add_feed_forward_length(h.intermediate)
        w.add_head_count(h.heads)
        w.add_head_count_kv(h.kv_heads)
        w.add_layer_norm_rms_eps(h.rms_eps)
        w.add_rope_freq_base(h.rope_theta)
        w.add_rope_dimension_count(h.head_dim)
        if h.head_dim != h.hidden // h.heads:
            w.add_key_length(h.head_dim)
            w.add_value_length(h.head_dim)
        w.add_vocab_size(h.vocab_size)
        kind = (h.rope_scaling or {}).get("rope_type", (h.rope_scaling or {}).get("type"))
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(h.rope_scaling["factor"]))
        elif kind not in (None, "default", "llama3"):
            raise UserError(f"GGUF export: rope scaling {kind!r} is not supported yet")
        # tokenizer
        w.add_tokenizer_model(vocab.model)
        w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(vocab.tokens)
        w.add_token_types(vocab.token_types)
        if vocab.merges:
            w.add_token_merges(vocab.merges)
        if vocab.scores:
            w.add_token_scores(vocab.scores)
            w.add_add_space_prefix(vocab.add_space_prefix)
        for key, adder in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("eot", w.add_eot_token_id),
                           ("eom", w.add_eom_token_id), ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
            if key in vocab.special_ids:
                adder(vocab.special_ids[key])
        w.add_add_bos_token(vocab.add_bos)
        w.add_add_eos_token(vocab.add_eos)
        if chat_template:
            w.add_chat_template(chat_template)
        for tensor_name, array in gguf_tensors(model, h):
            if progress:
                progress(tensor_name)
            _add_tensor(w, tensor_name, array, file_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path
