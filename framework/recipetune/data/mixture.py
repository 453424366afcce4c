"""The datasets of the format stage: one (``format.dataset``) or a mixture (``[[format.datasets]]``).

Each dataset is read, standardized and passed through its own row operations
on its own (:func:`read_source`); a mixture then takes rows from each
(:func:`mix`), after which the format table's ``ops`` run on the whole:

``concat``
    every member's rows, member after member.
``weighted``
    each member gets a share of ``format.mix_rows`` rows (default: as many rows as the weighted members have
    together) in proportion to its ``weight``, exactly (largest remainders), its rows picked with the recipe's
    seed; a member with fewer rows than its share is repeated. The rows of all members are then shuffled
    together with the seed.
``interleave``
    one row of each member in turn, until one of them runs out (``datasets.interleave_datasets`` with
    ``stopping_strategy="first_exhausted"``); with weights, each next row comes from a member drawn at random
    (seeded) in proportion to its weight, until the member drawn has no row left (``interleave_datasets`` with
    ``probabilities``).

A member's ``rows = N`` fixes how many rows it gives, whatever the strategy: a seeded sample without repeats
when it has more, all of them repeated (and a seeded sample of the rest) when it has fewer. Every row keeps the
index of the member it came from, so the statistics can show each member's share of samples and trained tokens.

Mixing lives here rather than in ``datasets`` (``concatenate_datasets`` / ``interleave_datasets``) because the
rows are already standardized Python records at this point, and exact weighted quotas are not what
``interleave_datasets(probabilities=...)`` gives (it draws each row at random, so the shares only approach the
weights).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..problems import UserError
from .ops import Record, apply_ops, describe_row
from .sources import read_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..components import DatasetFormat
    from .encode import Encoded
    from ..recipe.model import Recipe

log = logging.getLogger("recipetune")


@dataclass
class Source:
    """One dataset to read: the ``[format]`` table's own, or one ``[[format.datasets]]`` member."""

    name: str
    where: str  # how errors name it: "format.dataset data/x.jsonl", "format.datasets[1] data/y.jsonl"
    dataset: str
    split: str
    subset: str | None
    limit: int | None
    shuffle_seed: int | None
    standardizer: "DatasetFormat"
    ops: list
    validation_split: str | None = None
    test_split: str | None = None
    weight: float | None = None
    rows: int | None = None
    key: str = "format"  # the table it is written in: "format" or "format.datasets[1]"


@dataclass
class ReadSource:
    """A dataset read and prepared: its records of each split, after its own operations."""

    source: Source
    chosen: "DatasetFormat"
    total: int
    read: int
    parts: dict[str, list[Record]]
    dropped: dict[str, int] = field(default_factory=dict)
    mixed: int = 0  # rows it gave the mixture (repeats counted), before the format table's operations


def dataset_label(dataset: str) -> str:
    """A short name for a dataset: a local file's stem, a Hub id as written."""
    path = Path(dataset)
    return path.stem if path.is_absolute() or path.exists() else dataset


def sources_of(recipe: "Recipe") -> list[Source]:
    """The datasets a recipe reads, in order."""
    fmt = recipe.format
    if not fmt.datasets:
        return [Source(dataset_label(fmt.dataset), f"format.dataset {fmt.dataset}", fmt.dataset, fmt.split, fmt.subset,
                       fmt.limit, fmt.shuffle_seed, recipe.standardizer.component, fmt.ops, fmt.validation_split,
                       fmt.test_split)]
    out = []
    for i, (member, section) in enumerate(zip(fmt.datasets, recipe.member_standardizers)):
        weight = member.weight if member.weight is not None else (1.0 if fmt.mix == "weighted" else None)
        out.append(Source(member.name or dataset_label(member.dataset), f"format.datasets[{i}] {member.dataset}",
                          member.dataset, member.split, member.subset, member.limit, member.shuffle_seed,
                          section.component, member.ops, member.validation_split, member.test_split, weight,
                          member.rows, f"format.datasets[{i}]"))
    return out


def _resolve_format(fmt: "DatasetFormat", rows: list[dict[str, Any]]) -> "DatasetFormat":
    """``auto`` (any format with a ``resolve(rows)`` method) picks the concrete format from the first rows."""
    resolve = getattr(fmt, "resolve", None)
    return resolve(rows) if callable(resolve) else fmt


def standardize(rows: list[dict[str, Any]], fmt: "DatasetFormat", dropped: dict[str, int],
                examples: dict[str, str] | None = None) -> list[Record]:
    """Records of the rows the format can read; the others are counted as ``malformed``."""
    records = []
    for i, row in enumerate(rows):
        try:
            conv = fmt.standardize(row)
        except Exception:  # a format plugin choking on a strange row: count it, do not stop
            conv = None
        if conv:
            records.append(Record(i, row, conv))
        else:
            dropped["malformed"] = dropped.get("malformed", 0) + 1
            if examples is not None and "malformed" not in examples:
                examples["malformed"] = f"not readable as {fmt.name!r}: " + describe_row(i, row)
    return records


def none_readable(where: str, rows: list[dict[str, Any]], fmt: "DatasetFormat") -> UserError:
    """The error for data none of whose rows the standardizer can read."""
    import json

    first = json.dumps(rows[0], ensure_ascii=False, default=str)
    return UserError(f"{where}: no row could be read as {fmt.name!r} ({len(rows)} rows, all malformed; columns of "
                     f"the first: {', '.join(sorted(rows[0]))}); check format.standardizer and its column options. "
                     f"First row read: {first[:300]}{'...' if len(first) > 300 else ''}")


def read_source(src: Source, seed: int, limit: int | None, examples: dict[str, str],
                missing_template: Exception | None = None) -> ReadSource:
    """Read one dataset: rows, standardizer, its operations, its named validation/test splits."""
    dropped: dict[str, int] = {}
    rows = read_rows(src.dataset, src.split, src.subset)
    total = len(rows)
    if src.shuffle_seed is not None:
        random.Random(src.shuffle_seed).shuffle(rows)
    if src.limit is not None:
        rows = rows[: src.limit]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"{src.where}: no rows in split {src.split!r}")
    chosen = _resolve_format(src.standardizer, rows)
    if chosen is not src.standardizer:
        log.info("%s.standardizer auto: the rows look like %r; using it", src.key, chosen.name)
    if missing_template is not None and chosen.name != "text":
        raise missing_template
    parts = {"train": standardize(rows, chosen, dropped, examples)}
    if not parts["train"]:
        raise none_readable(src.where, rows, chosen)
    parts["train"] = apply_ops(parts["train"], src.ops, seed, dropped, examples)
    for name, split in (("validation", src.validation_split), ("test", src.test_split)):
        if split:
            extra = read_rows(src.dataset, split, src.subset)
            extra = extra[:limit] if limit else extra
            records = standardize(extra, chosen, {})
            if extra and not records:
                raise none_readable(f"{src.key}.{name}_split = {split!r}", extra, chosen)
            parts[name] = apply_ops(records, src.ops, seed, {})
    return ReadSource(src, chosen, total, len(rows), parts, dropped)


def take(records: list[Record], n: int, rng: random.Random) -> list[Record]:
    """Exactly ``n`` of ``records`` in their order: a sample without repeats, or whole repeats and a sample of the
    rest when there are fewer than ``n``."""
    if not records:
        return []
    whole, rest = divmod(n, len(records))
    picked = sorted(rng.sample(range(len(records)), rest))
    return records * whole + [records[i] for i in picked]


def quotas(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, exactly: floors, then the largest remainders get one more
    (ties go to the earlier member)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts


def mix(reads: list[ReadSource], how: str, seed: int, mix_rows: int | None) -> tuple[list[Record], list[int]]:
    """The training records of a mixture and, for each, the index of the member it came from."""
    lists: list[list[Record]] = []
    weighted = [k for k, r in enumerate(reads) if how == "weighted" and r.source.rows is None]
    fixed = sum(r.source.rows or 0 for r in reads)
    shares: dict[int, int] = {}
    if weighted:
        total = (mix_rows - fixed) if mix_rows is not None else sum(len(reads[k].parts["train"]) for k in weighted)
        if total < 0:
            raise UserError(f"format.mix_rows = {mix_rows} is less than the {fixed} rows the members with rows = N take")
        shares = dict(zip(weighted, quotas(total, [reads[k].source.weight or 1.0 for k in weighted])))
    for k, r in enumerate(reads):
        records = r.parts["train"]
        n = r.source.rows if r.source.rows is not None else shares.get(k)
        if n is not None:
            if not records and n:
                raise UserError(f"{r.source.where}: no row is left after its operations to give its {n} rows")
            records = take(records, n, random.Random(f"{seed}-mix-{k}"))
            if n > len(r.parts["train"]):
                log.info("%s: %d rows repeated to give %d", r.source.where, len(r.parts["train"]), n)
        lists.append(records)
    if how == "interleave" and any(r.source.weight is not None for r in reads):
        rng = random.Random(f"{seed}-mix")
        weights = [r.source.weight if r.source.weight is not None else 1.0 for r in reads]
        taken = [0] * len(lists)
        pairs = []
        while True:
            k = rng.choices(range(len(lists)), weights)[0]
            if taken[k] >= len(lists[k]):
                break
            pairs.append((k, lists[k][taken[k]]))
            taken[k] += 1
    elif how == "interleave":
        shortest = min(len(x) for x in lists)
        pairs = [(k, lists[k][i]) for i in range(shortest) for k in range(len(lists))]
    else:
        pairs = [(k, rec) for k, records in enumerate(lists) for rec in records]
        if how == "weighted":
            random.Random(f"{seed}-mix").shuffle(pairs)
    # a copy of each record: a row repeated by the mixture is a record of its own for the later operations
    return [Record(rec.index, rec.row, rec.messages) for _, rec in pairs], [k for k, _ in pairs]


def gather(recipe: "Recipe", limit: int | None, dropped: dict[str, int], examples: dict[str, str],
           missing_template: Exception | None = None) -> tuple[list[ReadSource], dict[str, list[Record]],
                                                                dict[str, list[int]]]:
    """Read every dataset of the recipe and mix them: the records of each split and their members' indices."""
    fmt = recipe.format
    reads = [read_source(src, recipe.seed, limit, examples, missing_template) for src in sources_of(recipe)]
    for r in reads:
        for reason, count in r.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    if not fmt.datasets:  # one dataset: its operations were the format table's
        parts = reads[0].parts
        return reads, parts, {name: [0] * len(records) for name, records in parts.items()}
    train, owners = mix(reads, fmt.mix, recipe.seed, fmt.mix_rows)
    for k, r in enumerate(reads):
        r.mixed = owners.count(k)
    parts = {"train": train}
    members = {"train": owners}
    for name in ("validation", "test"):
        held = [(k, rec) for k, r in enumerate(reads) for rec in r.parts.get(name, [])]
        if held:
            parts[name] = [rec for _, rec in held]
            members[name] = [k for k, _ in held]
    if fmt.ops:  # the format table's operations run on the whole mixture
        for name in list(parts):
            member_of = {id(rec): k for rec, k in zip(parts[name], members[name])}
            parts[name] = apply_ops(parts[name], fmt.ops, recipe.seed, dropped if name == "train" else {},
                                    examples if name == "train" else None)
            members[name] = [member_of[id(rec)] for rec in parts[name]]
    return reads, parts, members


def read_order(parts: dict[str, list[Record]], members: dict[str, list[int]]) -> list[int] | None:
    """The positions of the records of all splits (in ``parts`` order) sorted into the order their rows were read
    (split, member, row), or None when they are in it already (``concat``, one dataset without a ``shuffle`` op).

    A ``weighted`` mixture shuffles its rows; encoding them in read order and putting the samples back in the mixed
    order afterwards (:func:`to_mixed_order`) gives the same samples while the encoding workers read the parent's
    rows front to back instead of all over its heap. Only the example kept of each dropped reason may differ (the
    first one met in read order)."""
    keys = [(s, k, rec.index) for s, name in enumerate(parts) for rec, k in zip(parts[name], members[name])]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return None if all(i == j for i, j in enumerate(order)) else order


def to_mixed_order(encoded: "Encoded", order: list[int]) -> "Encoded":
    """``encoded`` (of the records taken in ``order``) with its samples back in the records' own order:
    ``kept_index`` then counts positions of the records as they were before :func:`read_order`."""
    import numpy as np

    original = np.asarray(order, dtype=np.int64)[np.asarray(encoded.kept_index, dtype=np.int64)]
    back = np.argsort(original, kind="stable")
    encoded.table = encoded.table.select(back)
    encoded.kept_index = original[back].tolist()
    return encoded


def member_stats(reads: list[ReadSource], tables: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member's share: rows read, rows after its operations, rows in the mixture, and of the samples trained
    on, how many came from it and how many of their tokens are trained (with the shares of the whole)."""
    import numpy as np

    train = tables["train"]
    sources = train.sources if train.sources is not None else np.zeros(len(train), np.int32)
    per_sample_trained = train.trained_counts()
    lengths = train.lengths
    all_samples, all_trained = max(len(train), 1), max(int(per_sample_trained.sum()), 1)
    out = []
    for k, r in enumerate(reads):
        mine = sources == k
        trained = int(per_sample_trained[mine].sum())
        held = {name: int((t.sources == k).sum()) if t.sources is not None else 0
                for name, t in tables.items() if name != "train" and len(t)}
        out.append({
            "name": r.source.name, "dataset": r.source.dataset, "standardizer": r.chosen.name,
            "weight": r.source.weight, "rows": r.source.rows,
            "read": r.read, "after_ops": len(r.parts["train"]), "mixed": r.mixed,
            "samples": int(mine.sum()), "validation": held.get("validation", 0), "test": held.get("test", 0),
            "tokens": int(lengths[mine].sum()), "trained_tokens": trained,
            "share_samples": round(int(mine.sum()) / all_samples, 4),
            "share_trained_tokens": round(trained / all_trained, 4),
        })
    return out


def describe_members(members: list[dict[str, Any]]) -> list[str]:
    """One line per member for the log, ``recipe data`` and the report."""
    return [f"{m['name']}: {m['samples']} samples ({100 * m['share_samples']:.1f}%), {m['trained_tokens']} trained "
            f"tokens ({100 * m['share_trained_tokens']:.1f}%); read {m['read']}, {m['after_ops']} after its ops, "
            f"{m['mixed']} in the mixture" + (f" (weight {m['weight']:g})" if m.get("weight") is not None else "")
            + (f" (rows {m['rows']})" if m.get("rows") is not None else "") for m in members]
