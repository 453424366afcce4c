"""Problems found in a recipe, rendered like a compiler's diagnostics.

A :class:`Problem` knows *where* it is (a dotted path into the recipe, and once
located a file, line and column, or the command-line override that set it) and
*what* is wrong. The core collects every problem before it reports any, so a
user fixes a recipe in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass
class Problem:
    """One thing wrong (or worth a warning) in a recipe.

    ``path`` is the dotted path of the field (``train.learning_rate``,
    ``export[0].use``); ``message`` says what was expected.
    """

    path: str
    message: str
    severity: Severity = "error"
    file: str | None = None
    line: int | None = None
    column: int | None = None
    override: str | None = field(default=None)

    def render(self) -> str:
        """``FILE:LINE:COL: path: message`` (or ``<command line>: key=value: message``)."""
        prefix = "" if self.severity == "error" else "warning: "
        if self.override is not None:
            return f"<command line>: {self.override}: {prefix}{self.message}"
        where = self.file or "<recipe>"
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        subject = f"{self.path}: " if self.path else ""
        return f"{where}: {prefix}{subject}{self.message}"


class RecipeError(Exception):
    """Raised when a recipe has problems; carries all of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


class StageError(Exception):
    """A stage failed at run time; names the stage, the component and its plugin."""

    def __init__(self, stage: str, component: str | None, plugin: str | None, cause: BaseException):
        self.stage, self.component, self.plugin, self.cause = stage, component, plugin, cause
        who = ""
        if component:
            who = f" in {component}"
            if plugin:
                who += f" (plugin {plugin})"
        super().__init__(f"stage '{stage}' failed{who}: {type(cause).__name__}: {cause}")


class UserError(Exception):
    """A mistake the user can fix (bad option for this machine, missing file...).

    Components raise it for conditions that are not bugs; the CLI prints its
    message without a traceback.
    """


class NoChatTemplate(UserError):
    """``chat_template = "tokenizer"`` and the tokenizer has none (raised where a template is needed)."""
