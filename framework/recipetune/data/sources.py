"""Read dataset rows from a local file or the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..problems import UserError

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(dataset: str, split: str = "train", subset: str | None = None) -> list[dict[str, Any]]:
    """All rows of a local file (``.jsonl``/``.json``/``.parquet``/``.csv``) or of a Hub dataset split.

    A local file has one split, ``train``, except a ``.json`` file holding a table of splits
    (``{"train": [...], "validation": [...]}``). Every row must be an object (a table of columns).
    """
    path = Path(dataset)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.exists():
            raise UserError(f"dataset file not found: {path}")
        if path.suffix == ".json":
            return _read_json(path, split)
        if split != "train":
            raise UserError(f"{path}: a local {path.suffix or 'data'} file has one split, \"train\"; it has no split "
                            f"{split!r} (hold rows out with format.validation_fraction / test_fraction, or use a .json "
                            f"file of splits: {{\"train\": [...], \"{split}\": [...]}})")
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".csv":
            return _read_csv(path)
        from datasets import load_dataset

        kind = LOCAL_SUFFIXES.get(path.suffix)
        if kind is None:
            raise UserError(f"cannot read {path}: expected .jsonl, .json, .parquet or .csv")
        try:
            return list(load_dataset(kind, data_files=str(path), split="train"))
        except Exception as exc:  # a damaged parquet/csv file
            raise UserError(f"{path}: cannot read it as {path.suffix[1:]}: {exc}") from None
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset, subset, split=split)
    except Exception as exc:  # network, missing dataset, bad split
        raise UserError(f"cannot load dataset {dataset!r} (split {split!r}) from the Hugging Face Hub: {exc}") from exc
    return list(ds)


def _read_json(path: Path, split: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if isinstance(data, dict):  # {"train": [...], "validation": [...]} or {"data": [...]}
        if split in data:
            data = data[split]
        elif split == "train" and ("data" in data or len(data) == 1):
            data = data.get("data", next(iter(data.values())))
        else:
            raise UserError(f"{path}: no split {split!r}; the file's splits are: {', '.join(map(str, data)) or '(none)'}")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of rows (or a table of splits), got {type(data).__name__}")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i} (split {split!r}) is {_kind(row)}, not an object of columns")
    return data


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file with a header line, every cell the text written there (a column of digits stays text:
    an answer "4" is not the number 4.0)."""
    import csv

    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: cannot read it as csv: {exc}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected one JSON object per line, got {_kind(row)}")
            rows.append(row)
    return rows
