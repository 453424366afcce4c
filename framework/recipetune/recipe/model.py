"""The validated recipe: top-level fields, one resolved component per stage, the format table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.ops import Op

from .sweep_table import SweepTable
from .types import PathOrHubId, RecipePath

if TYPE_CHECKING:  # pragma: no cover
    from ..components import Component
    from ..registry import Entry


class DistributedTable(BaseModel):
    """``[distributed]``: how one run spreads over several processes / GPUs (``docs/distributed.md``).

    ``recipe run RECIPE --nproc-per-node N`` (or ``nproc_per_node`` here) starts the processes through
    ``torch.distributed.run``; ``torchrun -m recipetune run`` and ``accelerate launch -m recipetune run`` work too.
    One process ignores this table.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True)

    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """``ddp``: every GPU holds the whole model and a share of each batch; ``fsdp``: FSDP2 shards weights, gradients
    and optimizer state per decoder layer (QLoRA: 4-bit weights stored in the compute dtype so they shard);
    ``deepspeed``: ZeRO through Accelerate (needs the deepspeed package)."""
    nproc_per_node: int | None = Field(default=None, ge=1)
    """Processes to start on this machine (one per GPU) when ``recipe run`` launches; ``--nproc-per-node`` wins."""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage: 2 shards gradients and optimizer state, 3 the weights too."""
    cpu_offload: bool = False
    """Keep sharded parameters (fsdp) or optimizer state (deepspeed) in CPU memory: slower, fits larger models."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Communication backend: ``auto`` is NCCL on GPUs and gloo on CPUs."""
    timeout_minutes: int = Field(default=30, ge=1)
    """How long a rank waits for the others in one collective (rank 0 formatting the data included) before failing."""


class RecipeHeader(BaseModel):
    """The top-level keys of a recipe (besides the stage tables)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
    """Run name; the run folder is ``runs/<name>/<timestamp>`` unless ``output_dir`` is set."""
    description: str = ""
    """Free text shown in the report."""
    seed: int = 3407
    """Seed for Python, NumPy and torch; a CPU run with the same seed repeats exactly."""
    output_dir: RecipePath | None = None
    """Run folder (relative to the recipe file). Default: ``runs/<name>/<timestamp>`` under the working directory."""
    distributed: DistributedTable = Field(default_factory=DistributedTable)
    """``[distributed]``: several processes / GPUs (see below)."""
    sweep: SweepTable | None = None
    """``[sweep]``: the grid of runs ``recipe sweep`` makes of this recipe; ``recipe run`` ignores it (see below)."""


class DatasetMember(BaseModel):
    """One ``[[format.datasets]]`` table: a dataset of a mixture, read, standardized and operated on by itself."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True)

    dataset: PathOrHubId
    """A local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``; relative to the recipe) or a Hub dataset id."""
    name: str | None = None
    """Its name in the statistics; default: the file's stem or the Hub id."""
    split: str = "train"
    """Split to read (Hub datasets, or a key of a ``.json`` table of splits)."""
    subset: str | None = None
    """Dataset configuration name on the Hub, when it has several."""
    standardizer: Any = None
    """Its dataset format (a name or a table with ``use``); default: ``format.standardizer``."""
    ops: list[Op] = Field(default_factory=list)
    """Its own row operations (``[[format.datasets.ops]]``), before mixing; ``format.ops`` run after, on the mixture."""
    weight: float | None = Field(default=None, gt=0)
    """Its share of a ``mix = "weighted"`` mixture, relative to the others' (default 1); with ``mix = "interleave"``,
    how likely each next row is to come from it."""
    rows: int | None = Field(default=None, ge=1)
    """Exactly this many of its rows (a seeded sample, or repeats when it has fewer), whatever the mix."""
    limit: int | None = Field(default=None, ge=1)
    """Read at most this many rows (after shuffling, when ``shuffle_seed`` is set; before ``ops``)."""
    shuffle_seed: int | None = None
    """Shuffle its rows with this seed before ``limit``."""
    validation_split: str | None = None
    """A named split of this dataset to add to the validation set."""
    test_split: str | None = None
    """A named split of this dataset to add to the test set."""

    @model_validator(mode="after")
    def _check(self) -> "DatasetMember":
        if self.weight is not None and self.rows is not None:
            raise ValueError("set weight or rows, not both")
        return self


SINGLE_DATASET_KEYS = ("split", "subset", "limit", "shuffle_seed", "validation_split", "test_split")
"""Keys of ``[format]`` that describe its one ``dataset``; a mixture sets them on each ``[[format.datasets]]``."""


class FormatTable(BaseModel):
    """``[format]``: where the data comes from and how it becomes training samples.

    Rows are read, standardized into conversations, passed through ``ops`` in
    order, rendered with the chat template, tokenized with loss masks, checked
    and split (see ``docs/data.md``).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True)

    dataset: PathOrHubId | None = None
    """A local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``; relative to the recipe) or a Hub dataset id.
    For several datasets, write ``[[format.datasets]]`` tables instead."""
    datasets: list[DatasetMember] = Field(default_factory=list)
    """A mixture: one ``[[format.datasets]]`` table per dataset (each with its own source, split, standardizer,
    ops, and weight or rows), mixed as ``mix`` says."""
    mix: Literal["concat", "weighted", "interleave"] = "concat"
    """How a mixture's datasets are mixed: ``concat`` (one after another), ``weighted`` (shares in proportion to
    each ``weight``, rows picked with the recipe's seed), ``interleave`` (a row of each in turn, or of one drawn by
    weight, until one runs out)."""
    mix_rows: int | None = Field(default=None, ge=1)
    """Rows of a weighted mixture; default: as many as its weighted datasets have together."""
    split: str = "train"
    """Split to read (Hub datasets; local files have one split, ``train``)."""
    subset: str | None = None
    """Dataset configuration name on the Hub, when it has several."""
    limit: int | None = Field(default=None, ge=1)
    """Keep at most this many rows (after shuffling, when ``shuffle_seed`` is set; before ``ops``)."""
    shuffle_seed: int | None = None
    """Shuffle rows with this seed before ``limit``; unset keeps file order."""
    standardizer: Any = "sharegpt"
    """Dataset format: a name (``"sharegpt"``, ``"auto"``...) or a table ``{use = "alpaca", ...}`` with that format's options."""
    chat_template: Any = "tokenizer"
    """Chat template: a name (``"llama-3.1"``, ``"tokenizer"`` keeps the model's own) or a table with ``use``."""
    ops: list[Op] = Field(default_factory=list)
    """Row operations, in order (``[[format.ops]]`` tables with ``op = ...``): system_prompt, filter, drop_empty,
    dedupe, shuffle, limit."""
    train_on: Literal["assistant", "all"] = "assistant"
    """Take the loss on assistant turns only (default) or on every token."""
    max_seq_length: int | None = Field(default=None, ge=8)
    """Longest sample in tokens; default: ``load.max_seq_length``."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """What happens to a sample longer than ``max_seq_length``: cut it, or drop it (both are counted)."""
    new_tokens: Literal["train", "map", "refuse"] | None = None
    """What happens when the chat template needs tokens the tokenizer lacks (``zephyr`` on a ChatML model):
    ``train`` adds them and trains their rows (under LoRA only those rows, saved with the adapter), ``map`` adds
    none (the stop token becomes the tokenizer's own end token, other markers plain text), ``refuse`` stops with an
    error naming them. Default: ``refuse`` under an adapter (LoRA does not train new embedding rows), ``train`` for
    full fine-tuning. See ``docs/data.md``."""
    validation_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Hold out this fraction of samples (seeded by ``split_seed``) as a validation set."""
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Hold out this fraction of samples (seeded by ``split_seed``) as a test set (not trained on)."""
    validation_split: str | None = None
    """Use this named split of the dataset (e.g. ``"test"``) as the validation set instead of a fraction."""
    test_split: str | None = None
    """Use this named split of the dataset as the test set instead of a fraction."""
    split_seed: int | None = None
    """Seed of the train/validation/test split by fraction; default: the recipe's ``seed``."""
    num_proc: int | None = Field(default=None, ge=1)
    """Processes that render and tokenize (default: every core, at most 8)."""
    cache: bool = True
    """Reuse the formatted data of an earlier run with the same data, format options and tokenizer."""

    @model_validator(mode="after")
    def _check_splits(self) -> "FormatTable":
        if self.dataset is None and not self.datasets:
            raise ValueError("name the data: dataset = \"...\" (one dataset) or [[format.datasets]] tables (a mixture)")
        if self.dataset is not None and self.datasets:
            raise ValueError("set dataset (one dataset) or [[format.datasets]] (a mixture), not both")
        if self.datasets:
            single = [k for k in SINGLE_DATASET_KEYS if k in self.model_fields_set]
            if single:
                raise ValueError(f"{', '.join(single)} describe(s) one dataset: with [[format.datasets]] set "
                                 "it on each dataset's table")
            if self.mix == "concat" and any(m.weight is not None for m in self.datasets):
                raise ValueError('a dataset has a weight but mix = "concat": weights need mix = "weighted" or '
                                 '"interleave" (rows = N fixes a dataset\'s count with any mix)')
            names = [m.name or _label(m.dataset) for m in self.datasets]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"two datasets are named {', '.join(twice)}: give each a name = \"...\"")
        if self.mix_rows is not None and self.mix != "weighted":
            raise ValueError('mix_rows is the size of a mix = "weighted" mixture')
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must leave rows to train on (sum < 1)")
        if self.validation_split and self.validation_fraction:
            raise ValueError("set validation_split or validation_fraction, not both")
        if self.test_split and self.test_fraction:
            raise ValueError("set test_split or test_fraction, not both")
        return self


def inline_template_table(value: Any) -> Any:
    """``chat_template = "x.jinja"`` or ``{ jinja = "...", ... }`` / ``{ path = "x.jinja", ... }`` without ``use``:
    the ``inline`` template with those options."""
    if isinstance(value, str) and value.endswith(".jinja"):
        return {"use": "inline", "path": value}
    if isinstance(value, dict) and "use" not in value and ("jinja" in value or "path" in value):
        return {"use": "inline", **value}
    return value


def member_standardizer_values(raw_format: dict[str, Any]) -> list[tuple[int, Any]]:
    """Each ``[[format.datasets]]`` member's standardizer as written (default: the format table's), by index."""
    members = raw_format.get("datasets")
    default = raw_format.get("standardizer", FormatTable.model_fields["standardizer"].default)
    if not isinstance(members, list):
        return []
    return [(i, m["standardizer"] if m.get("standardizer") is not None else default)
            for i, m in enumerate(members) if isinstance(m, dict)]


def _label(dataset: str) -> str:
    from ..data.mixture import dataset_label

    return dataset_label(dataset)


@dataclass
class Section:
    """One use of a component in a recipe: ``[train] use = "sft"`` and its options."""

    kind: str
    path: str
    use: str
    options: Any
    entry: "Entry"
    _instance: "Component | None" = field(default=None, repr=False)

    @property
    def component(self) -> "Component":
        """The component instance (one per section, created on first use)."""
        if self._instance is None:
            self._instance = self.entry.cls(self.options)
        return self._instance

    def dump(self) -> dict[str, Any]:
        return {"use": self.use, **self.options.model_dump(mode="json")}


@dataclass
class Recipe:
    """A recipe whose every section is validated against the installed components."""

    header: RecipeHeader
    load: Section
    adapt: Section | None
    format: FormatTable | None
    standardizer: Section | None
    chat_template: Section | None
    train: Section | None
    report: list[Section]
    export: list[Section]
    member_standardizers: list[Section] = field(default_factory=list)
    """The standardizer of each ``[[format.datasets]]`` member, in order."""
    source: Path | None = None
    text: str = ""
    overrides: list[str] = field(default_factory=list)
    warnings: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def seed(self) -> int:
        return self.header.seed

    def sections(self) -> list[Section]:
        out = [self.load, self.adapt, self.standardizer, *self.member_standardizers, self.chat_template, self.train,
               *self.report, *self.export]
        return [s for s in out if s is not None]

    def resolved(self) -> dict[str, Any]:
        """Every value with its default filled in, as JSON-ready data."""
        data: dict[str, Any] = self.header.model_dump(mode="json")
        data["load"] = self.load.dump()
        data["adapt"] = self.adapt.dump() if self.adapt else None
        if self.format is not None:
            fmt = self.format.model_dump(mode="json")
            fmt["standardizer"] = self.standardizer.dump() if self.standardizer else None
            fmt["chat_template"] = self.chat_template.dump() if self.chat_template else None
            for member, section in zip(fmt.get("datasets") or [], self.member_standardizers):
                member["standardizer"] = section.dump()
            data["format"] = fmt
        data["train"] = self.train.dump() if self.train else None
        data["report"] = [s.dump() for s in self.report]
        data["export"] = [s.dump() for s in self.export]
        return data
