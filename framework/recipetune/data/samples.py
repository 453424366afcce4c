"""Tokenized samples stored compactly: one flat array of token ids and one of labels.

100k conversations of ~700 tokens are ~70M tokens: as Python lists of ints
they would take gigabytes, as int32 arrays a few hundred megabytes.
:class:`SampleTable` keeps the arrays and builds the dict the trainer reads
(``input_ids``, ``attention_mask``, ``labels``, ``text``) when a sample is
taken, so it is used like a list of such dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np

IGNORE = -100


class SampleTable(Sequence):
    """A read-only list of samples backed by flat ``int32`` arrays."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, texts: list[str],
                 sources: np.ndarray | None = None):
        self.ids = ids
        self.labels = labels
        self.offsets = offsets  # len(texts) + 1 positions into ids/labels
        self.texts = texts
        self.sources = sources  # for a mixture: the index of the dataset each sample came from

    @classmethod
    def empty(cls) -> "SampleTable":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(1, np.int64), [])

    @classmethod
    def concat(cls, parts: list["SampleTable"]) -> "SampleTable":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        sources = (np.concatenate([p.sources for p in parts]) if all(p.sources is not None for p in parts)
                   else None)
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate([p.labels for p in parts]), offsets,
                   [t for p in parts for t in p.texts], sources)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.select(range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        ids = self.ids[a:b].tolist()
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": self.labels[a:b].tolist(),
                "text": self.texts[index]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def trained_counts(self) -> np.ndarray:
        """Trained tokens (labels not -100) per sample: one pass over the labels (no int64 copy of them, which
        for 100k samples was 400 MB and most of the time of a mixture's statistics)."""
        lengths = self.lengths
        if len(lengths) == 0:
            return np.zeros(0, np.int64)
        if (lengths == 0).any():  # reduceat cannot give 0 for an empty segment
            sums = np.concatenate([[0], np.cumsum(self.labels != IGNORE, dtype=np.int64)])
            return sums[self.offsets[1:]] - sums[self.offsets[:-1]]
        return np.add.reduceat(self.labels != IGNORE, self.offsets[:-1], dtype=np.int64)

    def select(self, indices) -> "SampleTable":
        indices = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        if len(indices) == 0:
            return SampleTable.empty()
        if len(indices) == len(self) and (indices == np.arange(len(self))).all():
            return self
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = ends - starts
        offsets = np.zeros(len(indices) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # token positions to take: each sample's run starts - new start + 0..total
        take = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        return SampleTable(self.ids[take], self.labels[take], offsets, [self.texts[i] for i in indices.tolist()],
                           None if self.sources is None else self.sources[indices])

    # ------------------------------------------------------------ the cache file
    def save(self, path: Path, **extra: np.ndarray) -> None:
        """Write the table to an uncompressed ``.npz`` (texts as one UTF-8 blob)."""
        encoded = [t.encode("utf-8") for t in self.texts]
        text_offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=text_offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        if self.sources is not None:
            extra = {**extra, "sources": self.sources}
        with path.open("wb") as fh:
            np.savez(fh, ids=self.ids, labels=self.labels, offsets=self.offsets, text_blob=blob,
                     text_offsets=text_offsets, **extra)

    @classmethod
    def load(cls, path: Path) -> tuple["SampleTable", dict[str, np.ndarray]]:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        blob = arrays.pop("text_blob").tobytes()
        text_offsets = arrays.pop("text_offsets")
        texts = [blob[a:b].decode("utf-8") for a, b in zip(text_offsets[:-1].tolist(), text_offsets[1:].tolist())]
        table = cls(arrays.pop("ids"), arrays.pop("labels"), arrays.pop("offsets"), texts, arrays.pop("sources", None))
        return table, arrays
