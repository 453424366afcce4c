"""dtype choices shared by backends and trainers: ``auto`` follows the hardware."""

from __future__ import annotations


def auto_dtype_name() -> str:
    """bf16 on Ampere or newer GPUs, fp16 on older GPUs, fp32 on a CPU."""
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def resolve_dtype(name: str):
    import torch

    return getattr(torch, auto_dtype_name() if name == "auto" else name)
