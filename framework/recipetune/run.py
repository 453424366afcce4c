"""A run: the resolved recipe, its folder, its logger, metrics and artifacts."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import atomic

if TYPE_CHECKING:  # pragma: no cover
    from .components import Artifact, Loaded, ReportBlock
    from .plugins import PluginManager
    from .recipe.model import Recipe, Section

STAGES = ("load", "adapt", "format", "train", "report", "export")


def default_output_dir(recipe: "Recipe", base: Path | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (base or Path.cwd()) / "runs" / recipe.name / stamp


@dataclass
class Run:
    """Everything a stage needs: the recipe, the plugin manager and the run folder.

    Folder layout: ``recipe.toml`` (as given), ``resolved.json``, ``metrics.jsonl``,
    ``report.md`` and its PNGs, ``checkpoints/``, ``artifacts/``, ``run.log``.
    """

    recipe: "Recipe"
    pm: "PluginManager"
    output_dir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("recipetune"))
    timings: dict[str, float] = field(default_factory=dict)
    artifacts: list["Artifact"] = field(default_factory=list)
    report_blocks: list["ReportBlock"] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space shared by components of one run (e.g. samples taken before training)."""
    resume: bool = False
    """True when continuing the run its folder holds (``recipetune.run_folder``)."""
    resume_from: Path | None = None
    """The complete checkpoint a resumed run continues from (None: from the first step)."""
    loaded: "Loaded | None" = None
    """The model and tokenizer once the load stage ran (updated by adapt)."""

    @property
    def artifacts_dir(self) -> Path:
        return self.output_dir / "artifacts"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def log_path(self) -> Path:
        """``run.log``; with several processes, ranks other than 0 log to ``run.rank<N>.log``."""
        return self.output_dir / ("run.log" if self.is_main else f"run.rank{self.rank}.log")

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    @property
    def registry(self):
        return self.pm.registry

    @property
    def rank(self) -> int:
        """This process's rank in a job of several (``docs/distributed.md``); 0 for one process."""
        from . import distributed

        return distributed.rank()

    @property
    def world_size(self) -> int:
        """Processes training this run together (1 for one process)."""
        from . import distributed

        return distributed.world_size()

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder: metrics, report, artifacts (rank 0 only)."""
        return self.rank == 0

    def section(self, stage: str) -> "Section | None":
        return getattr(self.recipe, stage)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line to ``metrics.jsonl`` and tell observers (``on_metrics``); rank 0 only (every rank
        logs the same, already averaged, values)."""
        if not self.is_main:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        line = json.dumps({"step": int(step), "time": round(time.time(), 3), **clean})
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self.pm.hook.on_metrics(run=self, step=int(step), metrics=clean)

    def read_metrics(self) -> list[dict[str, float]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, data: Any) -> Path:
        return atomic.write_json(self.output_dir / name, data)

    def write_text(self, name: str, text: str) -> Path:
        return atomic.write_text(self.output_dir / name, text)
