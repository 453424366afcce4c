"""Read dataset rows from a local file or the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..problems import UserError

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(dataset: str, split: str = "train", subset: str | None = None) -> list[dict[str, Any]]:
    """All rows of a local file (``.jsonl``/``.json``/``.parquet``/``.csv``) or of a Hub dataset split."""
    path = Path(dataset)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.exists():
            raise UserError(f"dataset file not found: {path}")
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
                data = data.get(split) or data.get("data") or next(iter(data.values()))
            return list(data)
        from datasets import load_dataset

        kind = LOCAL_SUFFIXES.get(path.suffix)
        if kind is None:
            raise UserError(f"cannot read {path}: expected .jsonl, .json, .parquet or .csv")
        return list(load_dataset(kind, data_files=str(path), split="train"))
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset, subset, split=split)
    except Exception as exc:  # network, missing dataset, bad split
        raise UserError(f"cannot load dataset {dataset!r} (split {split!r}) from the Hugging Face Hub: {exc}") from exc
    return list(ds)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    return rows
