"""A third-party plugin, written the way a user would write one: a ``qa`` dataset format.

Rows look like ``{"q": "...", "a": "...", "context": "..."}``; the optional
context becomes a system message.
"""

from __future__ import annotations

from recipetune import DatasetFormat, Options, hookimpl


class QAOptions(Options):
    question: str = "q"
    """Column with the question."""
    answer: str = "a"
    """Column with the answer."""
    context: str | None = "context"
    """Column with optional context, sent as a system message."""


class QuestionAnswer(DatasetFormat):
    """One question, one answer, an optional context."""

    name = "qa"
    Options = QAOptions

    def detect(self, row):
        return self.options.question in row and self.options.answer in row

    def standardize(self, row):
        q, a = row.get(self.options.question), row.get(self.options.answer)
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            return None
        messages = []
        ctx = row.get(self.options.context) if self.options.context else None
        if isinstance(ctx, str) and ctx.strip():
            messages.append({"role": "system", "content": ctx})
        return messages + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@hookimpl
def register_dataset_formats(register):
    register(QuestionAnswer)
