"""Reporter ``samples``: answers to held-out prompts before and after training, with a score.

Each prompt may carry ``expect``: the answer scores when it contains that text
(case-insensitive). The report shows both answers side by side and the score
before and after, so a run shows what it taught.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from recipetune import ExistingRecipePath, Options, ReportBlock, Reporter, UserError, hookimpl

from .generation import fast_class, generate_greedy


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    """The user message."""
    expect: str | None = None
    """Text a good answer contains (case-insensitive)."""
    system: str | None = None
    """Optional system message."""


class SamplesOptions(Options):
    prompts: list[Sample] = Field(default_factory=list)
    """Inline prompts: [{prompt = "...", expect = "..."}]."""
    prompts_file: ExistingRecipePath | None = None
    """A JSONL file of {prompt, expect, system} lines (relative to the recipe)."""
    max_new_tokens: int = Field(default=48, ge=1)
    """Longest answer generated."""
    before: bool = True
    """Also answer before training (the baseline)."""


class SamplesReporter(Reporter):
    """Greedy answers to held-out prompts before and after training, scored by expected text."""

    name = "samples"
    Options = SamplesOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.answers: dict[str, list[str]] = {}

    def samples(self) -> list[Sample]:
        items = list(self.options.prompts)
        if self.options.prompts_file is not None:
            try:
                lines = self.options.prompts_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UserError(f"report samples: cannot read {self.options.prompts_file}: {exc.strerror}") from None
            items += [Sample.model_validate(json.loads(line)) for line in lines if line.strip()]
        return items

    def _answer_all(self, run, loaded, when: str) -> None:
        items = self.samples()
        answers = []
        fast = fast_class(loaded)  # Unsloth: for_inference / for_training around each answer
        for item in items:
            messages = ([{"role": "system", "content": item.system}] if item.system else []) + [{"role": "user", "content": item.prompt}]
            answers.append(generate_greedy(loaded.model, loaded.tokenizer, messages, self.options.max_new_tokens, fast=fast))
        self.answers[when] = answers
        score = self.score(items, answers)
        if score is not None:
            run.logger.info("samples %s training: score %.2f", when, score)
        run.state.setdefault("samples", {})[when] = {"answers": answers, "score": score}

    @staticmethod
    def score(items: list[Sample], answers: list[str]) -> float | None:
        graded = [(i, a) for i, a in zip(items, answers) if i.expect]
        if not graded:
            return None
        return sum(i.expect.lower() in a.lower() for i, a in graded) / len(graded)

    def on_stage_end(self, run, stage, result):
        # After "format" the tokenizer holds the run's chat template and stop token.
        if stage == "format" and self.options.before:
            self._answer_all(run, run.loaded, "before")
        elif stage == "train":
            self._answer_all(run, run.loaded, "after")

    def render(self, run):
        if not self.answers:
            return None
        items = self.samples()
        before, after = self.answers.get("before"), self.answers.get("after")
        lines = []
        sb, sa = (self.score(items, before) if before else None), (self.score(items, after) if after else None)
        if sa is not None:
            lines.append(f"**Score** (answer contains the expected text): before {sb if sb is not None else '-'} → after {sa:.2f}"
                         if sb is None else f"**Score** (answer contains the expected text): before {sb:.2f} → after {sa:.2f}")
            lines.append("")
        lines += ["| prompt | expected | before | after |", "|---|---|---|---|"]
        cell = lambda s: (s or "").replace("|", "\\|").replace("\n", " ")[:160]
        for i, item in enumerate(items):
            lines.append(f"| {cell(item.prompt)} | {cell(item.expect)} | {cell(before[i]) if before else ''} | {cell(after[i]) if after else ''} |")
        return ReportBlock("Samples before and after training", "\n".join(lines),
                           data={"score_before": sb, "score_after": sa})


@hookimpl
def register_reporters(register):
    register(SamplesReporter)
