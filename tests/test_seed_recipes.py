"""The seeds' runs as recipes: each shipped recipe smoke-runs on the tiny stand-in model via overrides.

Nothing is downloaded: ``load.model`` is the tiny model built by the test session and ``format.dataset`` a local
file written here; 4-bit loading and paged/8-bit optimizers need a GPU, so the overrides turn them off (the
recipes themselves keep them; ``test_recipes.py`` validates them as shipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

from recipetune import load_recipe
from recipetune.plugins import get_plugin_manager
from recipetune.runner import execute, prepare_run

CPU = ["load.load_in_4bit=false", "load.dtype=float32", "load.max_seq_length=128", "train.optim=adamw_torch",
       "adapt.gradient_checkpointing=false", "train.logging_steps=1"]
"""What a CPU without a GPU needs instead of the recipes' GPU settings."""


def run_shipped(name: str, out: Path, overrides: list[str]):
    pm = get_plugin_manager()
    recipe = load_recipe(ROOT / "recipes" / name, overrides, pm=pm)
    return execute(prepare_run(recipe, pm, out))


def write_lmsys_like(path: Path, english: int = 40, other: int = 10) -> Path:
    """Rows shaped like lmsys-chat-1m (``conversation`` of role/content, a ``language`` column); every English
    answer is the same sentence, so a few steps teach it and ROUGE must rise."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(english + other):
            english_row = i % 5 != 4 if other else True
            conversation = [{"role": "user", "content": f"What is {i} + {i}?"},
                            {"role": "assistant", "content": "Quill says hello." if english_row else f"Das ist {2 * i}."}]
            fh.write(json.dumps({"conversation_id": str(i), "language": "English" if english_row else "German",
                                 "conversation": conversation}) + "\n")
    return path


@pytest.mark.slow
def test_qlora_lmsys_rouge_recipe_filters_prompts_splits_evaluates_keeps_best_and_scores(tmp_path, tiny_model_dir):
    data = write_lmsys_like(tmp_path / "lmsys.jsonl")
    run = run_shipped("qlora_lmsys_rouge.toml", tmp_path / "run", [
        f"load.model={tiny_model_dir}", f"format.dataset={data}", *CPU, "train.max_steps=12", "train.eval_steps=4",
        "train.save_steps=4", "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=1",
        "train.learning_rate=2e-2", "report[1].max_new_tokens=8", "report[1].batch_size=4", "export[0].dtype=float32"])
    out = run.output_dir
    stats = run.state["format_stats"]
    assert stats["dropped_filtered"] == 10, "the German rows are filtered out"
    assert (stats["samples"], stats["validation"], stats["test"]) == (28, 6, 6), "70 / 15 / 15 of 40 rows"
    assert all("You are a helpful, honest and concise assistant." in t for t in run.state["test_dataset"].texts)

    metrics = run.read_metrics()
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    assert [s for s, _ in evals] == [4, 8, 12], "eval loss every train.eval_steps, in metrics.jsonl"
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["value"] == pytest.approx(min(v for _, v in evals)) and best["step"] == min(evals, key=lambda e: e[1])[0]

    rouge = json.loads((out / "rouge.json").read_text())
    assert rouge["samples"] == 6
    assert rouge["after"]["rougeL"] > rouge["before"]["rougeL"], "training on the answer must raise ROUGE"
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for example in rouge["examples"]:
        assert example["reference"] == "Quill says hello."
        assert example["after"]["rougeL"] == pytest.approx(scorer.score(example["reference"], example["after"]["answer"])["rougeL"].fmeasure)
    assert rouge["after"]["rougeL"] == pytest.approx(sum(e["after"]["rougeL"] for e in rouge["examples"]) / 6)
    report = (out / "report.md").read_text()
    assert "## ROUGE on the test split" in report and "Worst answers after training" in report
    merged = next(a for a in run.artifacts if a.kind == "merged")
    assert merged.details["weights"] == "best" and (merged.path / "model.safetensors").exists()


@pytest.mark.slow
def test_llama32_1b_finetome_epochs_recipe_trains_three_epochs_with_checkpoints(tmp_path, tiny_model_dir, sharegpt_file):
    from recipetune_plugins.sweep_report import loss_per_epoch

    run = run_shipped("llama32_1b_finetome_epochs.toml", tmp_path / "run", [
        "load.use=hf", f"load.model={tiny_model_dir}", f"format.dataset={sharegpt_file}", "format.chat_template=tokenizer",
        *CPU, "train.save_steps=1"])  # 16 short rows (packed when train.packing is auto): a step or two an epoch
    epochs = loss_per_epoch(run.read_metrics())
    assert [e for e, _ in epochs] == [1, 2, 3], "three epochs, each with its mean loss"
    last = max(m["step"] for m in run.read_metrics())
    assert last % 3 == 0 and run.read_metrics()[-1]["epoch"] == pytest.approx(3.0)
    kept = sorted(int(p.name.split("-")[1]) for p in run.checkpoints_dir.glob("checkpoint-*"))
    assert kept[-1] == last and len(kept) == min(3, last), "a checkpoint every train.save_steps, save_total_limit kept"
    assert (run.output_dir / "artifacts" / "lora" / "adapter_model.safetensors").exists()


def write_guanaco_like(path: Path, rows: int = 12) -> Path:
    """Rows shaped like guanaco-llama2-1k: one ``text`` column in Llama-2's [INST] format."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"text": f"<s>[INST] What is {i} + {i}? [/INST] {i} + {i} = {2 * i}. </s>"}) + "\n")
    return path


@pytest.mark.slow
def test_llama2_guanaco_recipe_trains_on_text_and_writes_tensorboard_events(tmp_path, tiny_model_dir):
    data = write_guanaco_like(tmp_path / "guanaco.jsonl")
    run = run_shipped("llama2_guanaco.toml", tmp_path / "run", [
        f"load.model={tiny_model_dir}", f"format.dataset={data}", *CPU, "train.precision=auto", "train.max_steps=3",
        "train.warmup_steps=0", "export[1].dtype=float32"])
    stats = run.state["format_stats"]
    assert stats["samples"] == 12 and stats["trained_tokens"] >= 0.9 * stats["tokens"], "loss on every token"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run.output_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3]
    assert {a.kind for a in run.artifacts} == {"lora", "merged"}
