"""Reporter ``samples``: answers to held-out prompts before and after training, checked and scored.

Each prompt may carry ``expect`` (texts a right answer contains, all of them, case-insensitive) and
``reject`` (texts a right answer never contains): "What color is a lemon?" with ``expect =
["yellow"]`` and ``reject = ["orange"]`` fails "A lemon is orange.". Prompts may name a ``group``
("persona", "kept" ...): the report scores each group before and after training, so a run shows
what it taught and that it kept what the model knew. An empty answer says why (the first
generated token was the stop token, or only special tokens came out).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recipetune import ExistingRecipePath, Options, ReportBlock, Reporter, UserError, hookimpl

from .generation import chat_prompt, fast_class, generation_mode, stop_ids


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    """The user message."""
    expect: list[str] = Field(default_factory=list)
    """Texts a right answer contains, every one (case-insensitive); a single string is one text; "7|seven" accepts
    either spelling."""
    reject: list[str] = Field(default_factory=list)
    """Texts a right answer must not contain (case-insensitive): the wrong answers a model is likely to give."""
    group: str | None = None
    """Scored separately in the report (e.g. "persona" for what training teaches, "kept" for what it must not lose)."""
    system: str | None = None
    """Optional system message."""

    @field_validator("expect", "reject", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @property
    def graded(self) -> bool:
        return bool(self.expect or self.reject)

    def is_right(self, answer: str) -> bool:
        text = answer.lower()
        return (all(any(alt.strip().lower() in text for alt in e.split("|")) for e in self.expect)
                and not any(r.lower() in text for r in self.reject))


class SamplesOptions(Options):
    prompts: list[Sample] = Field(default_factory=list)
    """Inline prompts: [{prompt = "...", expect = ["..."], reject = ["..."], group = "..."}]."""
    prompts_file: ExistingRecipePath | None = None
    """A JSONL file of {prompt, expect, reject, group, system} lines (relative to the recipe)."""
    max_new_tokens: int = Field(default=48, ge=1)
    """Longest answer generated."""
    before: bool = True
    """Also answer before training (the baseline)."""


def empty_reason(first_token: int, model, tokenizer) -> str:
    """Why an answer decoded to no text, from the first token the model generated."""
    name = tokenizer.convert_ids_to_tokens(int(first_token))
    if int(first_token) in stop_ids(model, tokenizer):
        return f"the first generated token was {name!r}, the stop token: the model ended its answer at once"
    return f"only special tokens were generated (the first was {name!r})"


def answer_all(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
               fast=None) -> tuple[list[str], list[int]]:
    """Greedy answers to every conversation in one left-padded batch (one generate call instead of one per
    prompt), and the first token of each answer."""
    import torch

    if not conversations:
        return [], []
    prompts = [chat_prompt(tokenizer, messages) for messages in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    enc = enc.to(next(model.parameters()).device)
    with generation_mode(model, fast), torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id, use_cache=True)
    new = out[:, enc["input_ids"].shape[1]:]
    answers = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return answers, [int(row[0]) for row in new]


def group_scores(items: list[Sample], answers: list[str]) -> dict[str, float]:
    """The share of right answers per group ("all": every graded prompt)."""
    by_group: dict[str, list[bool]] = {}
    for item, answer in zip(items, answers):
        if item.graded:
            right = item.is_right(answer)
            by_group.setdefault("all", []).append(right)
            if item.group:
                by_group.setdefault(item.group, []).append(right)
    return {g: sum(v) / len(v) for g, v in by_group.items()}


class SamplesReporter(Reporter):
    """Greedy answers to held-out prompts before and after training, checked for being right."""

    name = "samples"
    Options = SamplesOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.answers: dict[str, list[str]] = {}
        self.empty_reasons: dict[str, dict[int, str]] = {}

    def samples(self) -> list[Sample]:
        items = list(self.options.prompts)
        if self.options.prompts_file is not None:
            try:
                lines = self.options.prompts_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UserError(f"report samples: cannot read {self.options.prompts_file}: {exc.strerror}") from None
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    items.append(Sample.model_validate(json.loads(line)))
                except ValueError as exc:
                    raise UserError(f"report samples: {self.options.prompts_file}:{number}: not a prompt line "
                                    f"({{prompt, expect, reject, group, system}}): {exc}") from None
        return items

    def _answer_all(self, run, loaded, when: str) -> None:
        items = self.samples()
        fast = fast_class(loaded)  # Unsloth: for_inference / for_training around the answers
        conversations = [([{"role": "system", "content": item.system}] if item.system else [])
                         + [{"role": "user", "content": item.prompt}] for item in items]
        answers, firsts = answer_all(loaded.model, loaded.tokenizer, conversations, self.options.max_new_tokens, fast)
        reasons = {}
        for i, (item, answer) in enumerate(zip(items, answers)):
            if not answer:
                reasons[i] = empty_reason(firsts[i], loaded.model, loaded.tokenizer)
                run.logger.warning("samples %s training: empty answer to %r: %s", when, item.prompt, reasons[i])
        self.answers[when], self.empty_reasons[when] = answers, reasons
        scores = group_scores(items, answers)
        if scores:
            run.logger.info("samples %s training: %s", when, ", ".join(f"{g} {s:.2f}" for g, s in scores.items()))
        run.state.setdefault("samples", {})[when] = {"answers": answers, "score": scores.get("all"), "scores": scores,
                                                     "empty": {items[i].prompt: r for i, r in reasons.items()}}

    @staticmethod
    def score(items: list[Sample], answers: list[str]) -> float | None:
        """The share of graded prompts answered right (None when no prompt is graded)."""
        return group_scores(items, answers).get("all")

    def on_stage_end(self, run, stage, result):
        # After "format" the tokenizer holds the run's chat template and stop token.
        if stage == "format" and self.options.before:
            self._answer_all(run, run.loaded, "before")
        elif stage == "train":
            self._answer_all(run, run.loaded, "after")

    def _cell(self, when: str, i: int) -> str:
        answers = self.answers.get(when)
        if answers is None:
            return ""
        reason = self.empty_reasons.get(when, {}).get(i)
        text = f"(empty: {reason})" if reason else answers[i]
        return text.replace("|", "\\|").replace("\n", " ")[:160]

    def render(self, run):
        if not self.answers:
            return None
        items = self.samples()
        before, after = self.answers.get("before"), self.answers.get("after")
        sb = group_scores(items, before) if before else {}
        sa = group_scores(items, after) if after else {}
        lines = []
        if sa or sb:
            lines += ["**Score** (share of answers that contain every expected text and no rejected one):", "",
                      "| prompts | before | after |", "|---|---|---|"]
            fmt = lambda v: f"{v:.2f}" if v is not None else "-"
            groups = [g for g in dict.fromkeys([*sb, *sa]) if g != "all"] + ["all"]
            for g in groups:
                count = sum(1 for i in items if i.graded and (g == "all" or i.group == g))
                lines.append(f"| {g} ({count}) | {fmt(sb.get(g))} | {fmt(sa.get(g))} |")
            lines.append("")
        cell = lambda s: (s or "").replace("|", "\\|").replace("\n", " ")[:160]
        lines += ["| prompt | group | expected | before | after |", "|---|---|---|---|---|"]
        for i, item in enumerate(items):
            want = ", ".join(item.expect) + (f"; not {', '.join(item.reject)}" if item.reject else "")
            marks = {w: ("" if not item.graded or self.answers.get(w) is None
                         else (" ✓" if item.is_right(self.answers[w][i]) else " ✗")) for w in ("before", "after")}
            lines.append(f"| {cell(item.prompt)} | {cell(item.group)} | {cell(want)} | {self._cell('before', i)}{marks['before']} "
                         f"| {self._cell('after', i)}{marks['after']} |")
        return ReportBlock("Samples before and after training", "\n".join(lines),
                           data={"score_before": sb.get("all"), "score_after": sa.get("all"),
                                 "scores_before": sb, "scores_after": sa})


@hookimpl
def register_reporters(register):
    register(SamplesReporter)
