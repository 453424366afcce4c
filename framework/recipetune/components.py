"""The component classes plugins subclass, and the values passed between stages.

Every component has a ``name`` (what a recipe writes after ``use =``), a nested
``Options`` pydantic model (``extra="forbid"``; attribute docstrings become help
text and the JSON schema's descriptions) and one method for its stage. The core
creates one instance per use in a recipe: ``component = Cls(options)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from .problems import Problem
    from .run import Run


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors, and values keep their TOML types (``"10"`` is
    not a number, ``"false"`` not a boolean, ``1e3`` not an integer; an integer is a float)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, protected_namespaces=(), strict=True)


class Component:
    """Base of all components. Subclasses set ``name`` and may override ``Options``."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    also_known_as: ClassVar[tuple[str, ...]] = ()
    """Names other tools use for this component (``openai`` for ``messages``): a recipe that writes one is told
    which name to use."""

    def __init__(self, options: Options | None = None):
        self.options = options if options is not None else self.Options()

    def check(self, recipe: Any) -> Iterable["Problem"]:
        """Problems this component finds with the rest of the recipe (cross-section checks)."""
        return ()

    def preflight(self, recipe: Any) -> Iterable["Problem"]:
        """Problems with *this machine* for this component (no GPU, a missing package).

        ``recipe run`` calls it before anything is loaded; ``recipe validate`` does
        not, so a GPU recipe validates on a laptop.
        """
        return ()

    def describe_plan(self, recipe: Any) -> list[str]:
        """Lines for ``recipe plan``/``validate``: what this component will do."""
        return []


# ---------------------------------------------------------------- values between stages
@dataclass
class Loaded:
    """What ``load`` returns and ``adapt`` refines: the model and its tokenizer."""

    model: Any
    tokenizer: Any
    backend: str
    model_name: str
    device: str = "cpu"
    dtype: str = "float32"
    max_seq_length: int = 2048
    quantized: str | None = None  # "4bit", "8bit" or None
    adapter: str | None = None  # name of the adapter applied, if any
    source_dir: Path | None = None  # a local HF folder holding the base weights, when there is one
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class FormattedDataset:
    """What ``format`` returns: tokenized samples with their loss masks.

    ``train`` (and ``validation`` when present) are lists of dicts with
    ``input_ids``, ``attention_mask``, ``labels`` (``-100`` where no loss is
    taken) and ``text`` (the rendered sample).
    """

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]] | None = None
    chat_template: "ChatTemplate | None" = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What ``train`` returns."""

    steps: int
    train_loss: float | None
    runtime_s: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoint_dir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifact:
    """One thing an exporter wrote (a folder or a file) under ``run.artifacts_dir``."""

    kind: str  # "lora", "merged", "gguf", ...
    path: Path
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    report: str = ""
    """Markdown shown under this artifact in ``report.md`` (e.g. the checks an exporter ran)."""


@dataclass
class ReportBlock:
    """A reporter's contribution to ``report.md``: a title, markdown, and files beside it."""

    title: str
    markdown: str
    files: list[Path] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the component kinds
class Backend(Component):
    """Loads a model and its tokenizer (``[load]``)."""

    kind = "backend"

    def load(self, run: "Run") -> Loaded:
        raise NotImplementedError


class Adapter(Component):
    """Makes a loaded model trainable (``[adapt]``): LoRA, QLoRA, full fine-tuning."""

    kind = "adapter"

    def adapt(self, run: "Run", loaded: Loaded) -> Loaded:
        raise NotImplementedError


class DatasetFormat(Component):
    """Turns one raw dataset row into a conversation (``[format] standardizer``).

    ``standardize`` returns a list of ``{"role": ..., "content": ...}`` dicts
    with roles ``system``, ``user`` and ``assistant``, or ``None`` to drop a row
    it cannot read. It must be a pure function of the row: the core may call it
    from several processes.
    """

    kind = "dataset_format"

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        raise NotImplementedError

    def detect(self, row: dict[str, Any]) -> bool:
        """Whether a row looks like this format (used by ``standardizer = "auto"``)."""
        return False


class ChatTemplate(Component):
    """A chat template (``[format] chat_template``): Jinja text plus its special tokens.

    ``template`` is rendered in a sandboxed Jinja environment with ``messages``,
    ``add_generation_prompt``, ``bos_token`` and ``eos_token``. ``stop_token`` is
    the token that ends an assistant turn; it is trained on and written into the
    tokenizer, the generation config and every export. A template of ``None``
    keeps the tokenizer's own template.
    """

    kind = "chat_template"
    template: ClassVar[str | None] = None
    bos_token: ClassVar[str | None] = None
    eos_token: ClassVar[str | None] = None
    stop_token: ClassVar[str | None] = None
    special_tokens: ClassVar[tuple[str, ...]] = ()

    def template_for(self, tokenizer: Any) -> str:
        """The Jinja text to use with this tokenizer."""
        if self.template is not None:
            return self.template
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            from .problems import NoChatTemplate

            raise NoChatTemplate("format.chat_template: the tokenizer has no chat template of its own (a base model?); "
                                 'name one, such as chat_template = "chatml" or "llama-3.1", or use '
                                 'standardizer = "text" for plain text')
        return own

    def stop_token_for(self, tokenizer: Any) -> str | None:
        return self.stop_token or getattr(tokenizer, "eos_token", None)


class Trainer(Component):
    """Trains the adapted model on the formatted dataset (``[train]``)."""

    kind = "trainer"

    def train(self, run: "Run", loaded: Loaded, dataset: FormattedDataset) -> TrainResult:
        raise NotImplementedError


class Reporter(Component):
    """Observes a run and writes a block of ``report.md`` (``[[report]]``).

    The core calls the ``on_*`` methods around stages and for each logged
    training step, then ``render`` once in the report stage.
    """

    kind = "reporter"

    def on_stage_start(self, run: "Run", stage: str) -> None:
        pass

    def on_stage_end(self, run: "Run", stage: str, result: Any) -> None:
        pass

    def on_metrics(self, run: "Run", step: int, metrics: dict[str, float]) -> None:
        pass

    def render(self, run: "Run") -> ReportBlock | None:
        return None


class Exporter(Component):
    """Writes the trained model somewhere under ``run.artifacts_dir`` (``[[export]]``)."""

    kind = "exporter"

    def export(self, run: "Run", loaded: Loaded, result: TrainResult | None) -> list[Artifact]:
        raise NotImplementedError


KINDS: dict[str, type[Component]] = {
    cls.kind: cls
    for cls in (Backend, Adapter, DatasetFormat, ChatTemplate, Trainer, Reporter, Exporter)
}
"""Component kinds by name, in stage order."""

KIND_LABELS: dict[str, str] = {
    "backend": "backend",
    "adapter": "adapter",
    "dataset_format": "dataset format",
    "chat_template": "chat template",
    "trainer": "trainer",
    "reporter": "reporter",
    "exporter": "exporter",
}
