"""The validated recipe: top-level fields, one resolved component per stage, the format table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.ops import Op

from .types import PathOrHubId, RecipePath

if TYPE_CHECKING:  # pragma: no cover
    from ..components import Component
    from ..registry import Entry


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


class FormatTable(BaseModel):
    """``[format]``: where the data comes from and how it becomes training samples.

    Rows are read, standardized into conversations, passed through ``ops`` in
    order, rendered with the chat template, tokenized with loss masks, checked
    and split (see ``docs/data.md``).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True)

    dataset: PathOrHubId
    """A local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``; relative to the recipe) or a Hub dataset id."""
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
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must leave rows to train on (sum < 1)")
        if self.validation_split and self.validation_fraction:
            raise ValueError("set validation_split or validation_fraction, not both")
        if self.test_split and self.test_fraction:
            raise ValueError("set test_split or test_fraction, not both")
        return self


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
        out = [self.load, self.adapt, self.standardizer, self.chat_template, self.train, *self.report, *self.export]
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
            data["format"] = fmt
        data["train"] = self.train.dump() if self.train else None
        data["report"] = [s.dump() for s in self.report]
        data["export"] = [s.dump() for s in self.export]
        return data
