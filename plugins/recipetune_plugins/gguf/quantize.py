"""Quantize a GGUF file with llama.cpp's own quantizer, as shipped in llama-cpp-python.

No llama.cpp checkout and no compiler: ``llama_cpp.llama_model_quantize`` is the
same C++ code as llama.cpp's ``llama-quantize``. Tensors whose rows a k-quant
cannot take (a width not divisible by 256) fall back to another type inside
llama.cpp; :func:`tensor_types` reads the written file so the report can say which.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from recipetune import UserError
from recipetune.atomic import atomic_path

QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
"""The types ``quantization`` accepts besides f32/f16/bf16, and llama.cpp's name for each."""

K_QUANTS = {name for name in QUANT_TYPES if "_k" in name}


def quantize(source: Path, target: Path, qtype: str, threads: int | None = None) -> Path:
    """Write ``target`` as ``qtype`` from the float GGUF ``source`` (atomically)."""
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - the gguf extra installs it
        raise UserError('quantizing GGUF needs llama-cpp-python: pip install "recipetune[gguf]"') from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype])
    params.nthread = threads or os.cpu_count() or 1
    with atomic_path(target) as tmp:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if status != 0:
            raise RuntimeError(f"llama.cpp's quantizer returned {status} for {qtype} ({source.name})")
    return target


def tensor_types(path: Path) -> dict[str, tuple[str, int, int]]:
    """GGUF tensor name -> (ggml type name such as ``Q4_K``, row width, number of dims), read back with ``gguf``."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, int(t.shape[0]), len(t.shape)) for t in reader.tensors}


def fallbacks(types: dict[str, tuple[str, int, int]], qtype: str) -> dict[str, str]:
    """Matrices a k-quant could not take (row width not a multiple of 256) and the type llama.cpp used instead."""
    if qtype not in K_QUANTS:
        return {}
    return {name: kind for name, (kind, width, ndim) in types.items()
            if ndim == 2 and width % 256 != 0 and not kind.endswith("_K")}


def type_summary(types: dict[str, tuple[str, int, int]]) -> str:
    """``Q4_K ×12, Q6_K ×2, F32 ×5`` (most common first)."""
    return ", ".join(f"{kind} ×{n}" for kind, n in Counter(kind for kind, _, _ in types.values()).most_common())
