"""Reporter ``rouge``: ROUGE-1/2/L of greedy answers to the test split's prompts, before and after training.

The prompts and reference answers come from the format stage's test split (``format.test_fraction`` or
``format.test_split``): each sample's prompt is everything before its last trained span (the last assistant
answer, as the chat template rendered it, generation prompt included), and the reference is that answer. The model
answers every prompt greedily, in batches (left-padded), up to ``max_new_tokens``, once after the format stage
(before training) and once after training (the weights the run keeps, see ``train.keep``). Scores are the
F-measures of Google's ``rouge-score`` package (the reference implementation), averaged over the samples; the
report shows both, the change, and the worst answers after training. ``rouge.json`` in the run folder holds every
answer and score.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field

from recipetune import Options, Problem, ReportBlock, Reporter, hookimpl
from recipetune.atomic import write_json

from .generation import fast_class, generation_mode, stop_ids

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
IGNORE = -100


class RougeOptions(Options):
    split: Literal["test", "validation"] = "test"
    """Which held-out split's prompts to answer (``format.test_fraction`` / ``test_split``, or the validation set)."""
    max_samples: int | None = Field(default=200, ge=1)
    """Answer at most this many samples of the split (its first ones; generation is the slow part). Unset: all."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Longest answer generated, in tokens."""
    batch_size: int = Field(default=8, ge=1)
    """Prompts generated together (left-padded)."""
    before: bool = True
    """Also answer before training (the base model's score, for comparison)."""
    worst: int = Field(default=3, ge=0)
    """How many of the worst answers after training (by ROUGE-L) the report shows."""
    use_stemmer: bool = True
    """Porter-stem words before matching (rouge-score's ``use_stemmer``)."""


def prompt_and_reference(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]] | None:
    """Split a sample at its last trained span: (prompt ids, answer ids), or None when nothing is trained."""
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    if not trained:
        return None
    end = trained[-1]
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    if start == 0:
        return None  # the whole sample is trained (plain text): there is no prompt to answer
    return ids[:start], ids[start:end + 1]


def generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy answers to token-id prompts, left-padded into one batch."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop_ids(model, tokenizer), pad_token_id=pad, use_cache=True)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out.tolist()]


def mean_scores(per_sample: list[dict[str, float]]) -> dict[str, float]:
    if not per_sample:
        return {k: 0.0 for k in ROUGE_TYPES}
    return {k: sum(s[k] for s in per_sample) / len(per_sample) for k in ROUGE_TYPES}


def _cell(text: str | None, limit: int = 220) -> str:
    text = (text or "").replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= limit else text[:limit] + "…"


class RougeReporter(Reporter):
    """ROUGE-1/2/L of greedy answers to the test split's prompts, before and after training (rouge-score)."""

    name = "rouge"
    Options = RougeOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.items: list[dict[str, Any]] = []  # prompt, reference (text and ids)
        self.results: dict[str, dict[str, Any]] = {}  # when -> {"answers", "scores", "mean"}

    # ------------------------------------------------------------ checks
    def check(self, recipe):
        index = next((i for i, s in enumerate(recipe.report) if s.component is self), 0)
        fmt = recipe.format
        if fmt is None:
            yield Problem(f"report[{index}].use", "the rouge reporter answers the test split's prompts, and this "
                                                  "recipe has no [format] table")
            return
        members = getattr(fmt, "datasets", None) or []
        if self.options.split == "test":
            has = fmt.test_fraction or fmt.test_split or any(getattr(m, "test_split", None) for m in members)
            if not has:
                yield Problem(f"report[{index}].use", "the rouge reporter needs a test split: set format.test_fraction "
                                                      "(e.g. 0.15) or format.test_split")
        else:
            has = fmt.validation_fraction or fmt.validation_split or any(getattr(m, "validation_split", None) for m in members)
            if not has:
                yield Problem(f"report[{index}].split", "split = \"validation\" needs a validation set: set "
                                                        "format.validation_fraction or format.validation_split")
        if fmt.train_on != "assistant":
            yield Problem(f"report[{index}].use", "the rouge reporter splits each sample into prompt and answer where the "
                                                  "trained tokens start: it needs format.train_on = \"assistant\"")
        if recipe.standardizer is not None and recipe.standardizer.use == "text":
            yield Problem(f"report[{index}].use", "plain text (standardizer \"text\") has no prompts and answers to "
                                                  "score with ROUGE")

    def preflight(self, recipe):
        if importlib.util.find_spec("rouge_score") is None:
            index = next((i for i, s in enumerate(recipe.report) if s.component is self), 0)
            yield Problem(f"report[{index}].use", "the rouge reporter needs rouge-score: pip install 'recipetune[rouge]' "
                                                  "(or pip install rouge-score)")

    # ------------------------------------------------------------ stages
    def on_stage_end(self, run, stage, result):
        if stage == "format":
            self._collect(run, result)
            if self.options.before and self.items:
                self._answer(run, "before")
        elif stage == "train" and self.items:
            self._answer(run, "after")

    def _collect(self, run, dataset) -> None:
        table = getattr(dataset, self.options.split, None) or []
        tokenizer = run.loaded.tokenizer
        skipped = 0
        for sample in table:
            if self.options.max_samples is not None and len(self.items) >= self.options.max_samples:
                break
            split = prompt_and_reference(sample["input_ids"], sample["labels"])
            if split is None:
                skipped += 1
                continue
            prompt, answer = split
            self.items.append({"prompt_ids": prompt,
                               "prompt": tokenizer.decode(prompt, skip_special_tokens=True).strip(),
                               "reference": tokenizer.decode(answer, skip_special_tokens=True).strip()})
        if not self.items:
            run.logger.warning("rouge: the %s split has no sample with a prompt and an answer; nothing to score",
                               self.options.split)
        elif skipped:
            run.logger.info("rouge: %d %s samples without a trained answer skipped", skipped, self.options.split)

    def _answer(self, run, when: str) -> None:
        import time

        from rouge_score import rouge_scorer

        loaded = run.loaded
        started = time.perf_counter()
        order = sorted(range(len(self.items)), key=lambda i: len(self.items[i]["prompt_ids"]))  # less padding
        answers: list[str] = [""] * len(self.items)
        size = self.options.batch_size
        with generation_mode(loaded.model, fast_class(loaded)):
            for start in range(0, len(order), size):
                batch = order[start:start + size]
                texts = generate_batch(loaded.model, loaded.tokenizer, [self.items[i]["prompt_ids"] for i in batch],
                                       self.options.max_new_tokens)
                for i, text in zip(batch, texts):
                    answers[i] = text
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=self.options.use_stemmer)
        scores = []
        for item, answer in zip(self.items, answers):
            result = scorer.score(item["reference"], answer)
            scores.append({k: result[k].fmeasure for k in ROUGE_TYPES})
        mean = mean_scores(scores)
        seconds = time.perf_counter() - started
        self.results[when] = {"answers": answers, "scores": scores, "mean": mean, "seconds": round(seconds, 2)}
        run.logger.info("rouge %s training: %s (%d samples, %.1f s)", when,
                        ", ".join(f"{LABELS[k]} {v:.4f}" for k, v in mean.items()), len(self.items), seconds)
        run.state["rouge"] = {w: r["mean"] for w, r in self.results.items()}
        self._write(run)

    def _write(self, run) -> None:
        examples = []
        for i, item in enumerate(self.items):
            entry = {"prompt": item["prompt"], "reference": item["reference"]}
            for when, result in self.results.items():
                entry[when] = {"answer": result["answers"][i], **result["scores"][i]}
            examples.append(entry)
        write_json(run.output_dir / "rouge.json", {
            "split": self.options.split, "samples": len(self.items), "max_new_tokens": self.options.max_new_tokens,
            "use_stemmer": self.options.use_stemmer,
            **{when: {**result["mean"], "seconds": result["seconds"]} for when, result in self.results.items()},
            "examples": examples})

    # ------------------------------------------------------------ report
    def render(self, run):
        if not self.results:
            return None
        lines = [f"{len(self.items)} {self.options.split} samples, greedy answers of at most "
                 f"{self.options.max_new_tokens} tokens, F-measure of rouge-score"
                 f"{' (stemmed)' if self.options.use_stemmer else ''}; every answer is in `rouge.json`.", "",
                 "| | " + " | ".join(LABELS[k] for k in ROUGE_TYPES) + " |", "|---|" + "---:|" * len(ROUGE_TYPES)]
        for when in ("before", "after"):
            if when in self.results:
                mean = self.results[when]["mean"]
                lines.append(f"| {when} training | " + " | ".join(f"{mean[k]:.4f}" for k in ROUGE_TYPES) + " |")
        if "before" in self.results and "after" in self.results:
            b, a = self.results["before"]["mean"], self.results["after"]["mean"]
            lines.append("| change | " + " | ".join(f"{a[k] - b[k]:+.4f}" for k in ROUGE_TYPES) + " |")
        last = "after" if "after" in self.results else "before"
        worst = sorted(range(len(self.items)), key=lambda i: self.results[last]["scores"][i]["rougeL"])
        worst = worst[: self.options.worst]
        if worst:
            lines += ["", f"Worst answers {last} training (ROUGE-L):", "",
                      "| ROUGE-L | prompt (end) | reference | answer |", "|---:|---|---|---|"]
            for i in worst:
                item = self.items[i]
                prompt = item["prompt"][-160:]
                lines.append(f"| {self.results[last]['scores'][i]['rougeL']:.3f} | {_cell(prompt)} | "
                             f"{_cell(item['reference'])} | {_cell(self.results[last]['answers'][i])} |")
        data = {when: result["mean"] for when, result in self.results.items()}
        return ReportBlock("ROUGE on the test split" if self.options.split == "test" else "ROUGE on the validation split",
                           "\n".join(lines), files=[run.output_dir / "rouge.json"], data=data)


@hookimpl
def register_reporters(register):
    register(RougeReporter)
