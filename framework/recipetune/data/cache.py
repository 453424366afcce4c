"""The formatted-data cache: a second run with the same data, format options and tokenizer reuses the result.

The key hashes everything the samples depend on: the dataset, or every dataset
of a mixture (a local file's path, size and modification time; a Hub id with
its split and subset), the resolved ``[format]`` table (standardizer and
template options included, every mixture member's with its weight, rows and
operations, the mixing strategy), the
template text and its variables, the tokenizer (its full serialisation, added
tokens included), ``max_seq_length``, the seed and this module's format
version. Files live in ``$RECIPETUNE_CACHE/data`` (default
``~/.cache/recipetune/data``) as uncompressed ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .samples import SampleTable

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe.model import Recipe

VERSION = 4
"""Bump when the way samples are built changes: old cache files are then ignored."""
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


def cache_dir() -> Path:
    root = os.environ.get("RECIPETUNE_CACHE") or str(Path.home() / ".cache" / "recipetune")
    return Path(root) / "data"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer as it tokenizes (vocabulary, merges, normalizer, added tokens)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(repr((type(tokenizer).__name__, tokenizer.bos_token, tokenizer.eos_token,
                   getattr(tokenizer, "chat_template", None))).encode())
    return h.hexdigest()


def _dataset_identity(dataset: str) -> Any:
    path = Path(dataset)
    if path.exists():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return dataset


def cache_key(recipe: "Recipe", tokenizer_key: str, template_text: str, variables: dict[str, Any], max_len: int,
              limit: int | None) -> str:
    resolved = recipe.resolved().get("format") or {}
    resolved = {k: v for k, v in resolved.items() if k not in ("cache", "num_proc")}
    material = {
        "version": VERSION, "format": resolved,
        "dataset": ([_dataset_identity(m.dataset) for m in recipe.format.datasets] if recipe.format.datasets
                    else _dataset_identity(recipe.format.dataset)),
        "tokenizer": tokenizer_key, "template": template_text, "variables": variables, "max_len": max_len,
        "seed": recipe.seed, "limit": limit,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return cache_dir() / f"{key}.npz"


def load(key: str) -> tuple[dict[str, SampleTable], dict[str, Any]] | None:
    path = _path(key)
    if not path.exists():
        return None
    try:
        table, extra = SampleTable.load(path)
        stats = json.loads(bytes(extra["stats"]).decode("utf-8"))
        split = extra["split"]
    except Exception:  # a damaged or foreign file: rebuild it
        return None
    tables = {name: table.select(list((split == code).nonzero()[0])) for name, code in SPLIT_CODES.items()}
    return tables, stats


def save(key: str, tables: dict[str, SampleTable], stats: dict[str, Any]) -> Path | None:
    """Write atomically; a cache that cannot be written is skipped, never an error."""
    import numpy as np

    try:
        path = _path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = [n for n in SPLIT_CODES if n in tables]
        table = SampleTable.concat([tables[n] for n in names])
        split = np.concatenate([np.full(len(tables[n]), SPLIT_CODES[n], np.int8) for n in names])
        stats_blob = np.frombuffer(json.dumps(stats, default=str).encode("utf-8"), dtype=np.uint8)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        table.save(tmp, split=split, stats=stats_blob)
        os.replace(tmp, path)
        return path
    except OSError:
        return None
