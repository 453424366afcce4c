"""Packing keeps conversations apart: a packed batch trains exactly what the same conversations train unpacked.

Tolerances (float32 on a CPU): per-conversation losses within 1e-5 absolute; gradients within 1e-4 of the largest
gradient entry (relative). The attention must stay inside each conversation: a control run of the same packed row
with positions that do not restart (one long causal sequence) must differ, or the test could not fail.
"""

from __future__ import annotations

import random

import pytest

from recipetune_plugins.packing import PackedCollator, decide, pack

LOSS_TOL = 1e-5
GRAD_REL_TOL = 1e-4


def conversations(n: int, vocab: int, seed: int = 1, lengths=(5, 40)) -> list[dict]:
    """Random token conversations; labels mask a random prompt prefix, as the format stage does."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(*lengths)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def test_best_fit_decreasing_keeps_every_conversation_whole_and_reports_cuts():
    samples = conversations(40, 100, lengths=(3, 60)) + [{"input_ids": list(range(3, 83)), "labels": list(range(3, 83))}]
    packed, stats = pack(samples, window=64)
    rows = list(packed)
    assert all(sum(r["seq_lengths"]) == len(r["input_ids"]) <= 64 for r in rows)
    # every conversation appears once, whole (the one of 80 tokens is cut to the window and counted)
    pieces = sorted(tuple(r["input_ids"][s:s + n]) for r in rows
                    for s, n in zip([sum(r["seq_lengths"][:i]) for i in range(len(r["seq_lengths"]))], r["seq_lengths"]))
    expected = sorted(tuple(s["input_ids"][:64]) for s in samples)
    assert pieces == expected
    assert stats.truncated == 1 and stats.truncated_tokens == 16 and stats.conversations == 41
    lengths = [min(len(s["input_ids"]), 64) for s in samples]
    # best fit decreasing uses at most 11/9 of the optimal rows + 1 (no two conversations over half a row share one)
    optimal_at_least = max(-(-sum(lengths) // 64), sum(n > 32 for n in lengths))
    assert stats.rows <= 11 * optimal_at_least // 9 + 1
    assert "cut" in stats.describe()


def test_collator_restarts_positions_and_masks_each_boundary():
    batch = PackedCollator(send_lengths=True)([
        {"input_ids": [11, 12, 13, 21, 22], "labels": [-100, 12, 13, 21, 22], "seq_lengths": [3, 2]},
        {"input_ids": [31, 32, 33], "labels": [31, 32, 33], "seq_lengths": [3]},
    ])
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32, 33]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 12, 13, -100, 22, -100, 32, 33]]
    assert batch["packed_seq_lengths"].tolist() == [3, 2, 3]
    assert "attention_mask" not in batch


def test_auto_packs_llama_with_padding_and_says_why():
    short = [20, 50, 90, 30, 200, 45] * 10
    assert decide("auto", "hf", "llama", "sdpa", short, 4, 256).on
    assert not decide("auto", "hf", "qwen2", "sdpa", short, 4, 256).on  # not proven here: padded, with the reason
    assert "qwen2" in decide("auto", "hf", "qwen2", "sdpa", short, 4, 256).reason
    assert not decide("auto", "hf", "llama", "sdpa", [256] * 20, 4, 256).on  # full rows: nothing to save
    assert decide(True, "hf", "qwen2", "sdpa", short, 4, 256).on
    assert not decide(False, "hf", "llama", "sdpa", short, 4, 256).on


def _token_losses(model, batch):
    import torch

    logits = model(**batch).logits.float()
    labels = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_and_gradients_equal_unpacked(tiny_model_dir, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    samples = conversations(7, model.config.vocab_size, seed=5)
    packed, stats = pack(samples, window=96)
    assert stats.rows < len(samples)  # several conversations share a row
    batch = PackedCollator()(list(packed))
    assert batch["input_ids"].shape[0] == 1

    # The packed batch: one forward, per-token losses split back into conversations.
    token_losses = _token_losses(model, batch)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    ids = batch["input_ids"][0].tolist()
    packed_losses = {}
    for a, b in zip(starts, starts[1:]):
        packed_losses[tuple(ids[a:b])] = token_losses[a:b].sum()

    # The same conversations one by one.
    for s in samples:
        key = tuple(s["input_ids"])
        single = {"input_ids": torch.tensor([s["input_ids"]]), "labels": torch.tensor([s["labels"]])}
        alone = _token_losses(model, single).sum()
        together = packed_losses[key]
        assert abs(alone.item() - together.item()) < LOSS_TOL * max(1.0, abs(alone.item()))
        g_alone = torch.autograd.grad(alone, params)
        g_together = torch.autograd.grad(together, params, retain_graph=True)
        scale = max(g.abs().max().item() for g in g_alone)
        worst = max((x - y).abs().max().item() for x, y in zip(g_alone, g_together))
        assert worst <= GRAD_REL_TOL * scale, f"gradient differs by {worst:.2e} (largest entry {scale:.2e})"

    # Control: the same row as one causal sequence (positions not restarting) mixes conversations.
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    leaked = _token_losses(model, leaky)
    assert (leaked - token_losses).abs().max().item() > 1e-3


@pytest.mark.slow
def test_a_packed_run_trains_the_same_first_step_as_an_unpacked_one(tmp_path, tiny_model_dir, sharegpt_file):
    """Through a real run (TRL's trainer, its loss normalisation, our collator): with every conversation in the one
    batch of step 1, the packed and the padded run log the same loss and gradient norm."""
    from recipetune import load_recipe_text
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import execute, prepare_run
    from recipetune.testing import tiny_recipe_text

    results = {}
    pm = get_plugin_manager()
    for packing in ("true", "false"):
        overrides = [f"train.packing={packing}", "train.max_steps=1", "train.per_device_train_batch_size=16",
                     "train.packing_length=128"]
        recipe = load_recipe_text(tiny_recipe_text(tiny_model_dir, sharegpt_file), recipe_dir=tmp_path,
                                  overrides=overrides, pm=pm)
        run = execute(prepare_run(recipe, pm, tmp_path / f"run-{packing}"))
        assert run.state["packing"]["on"] is (packing == "true")
        results[packing] = [m for m in run.read_metrics() if "loss" in m][0]
    assert results["true"]["loss"] == pytest.approx(results["false"]["loss"], rel=1e-4)
    assert results["true"]["grad_norm"] == pytest.approx(results["false"]["grad_norm"], rel=1e-3)


def _has_cuda() -> bool:
    import importlib.util

    if importlib.util.find_spec("unsloth") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU and Unsloth")
def test_unsloth_packed_losses_and_gradients_equal_unpacked(tmp_path):
    """The unsloth path: Unsloth's fast Llama forward (its own varlen attention from packed_seq_lengths) on a packed
    micro-batch from our collator. bf16 on a GPU: per-conversation losses within 2% and LoRA gradients within 5% of
    the largest entry (relative), both far below what attention across conversations changes (the control)."""
    import unsloth  # noqa: F401  (first: it patches transformers and peft)
    from unsloth import FastLanguageModel

    import torch

    from recipetune.testing import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "m", hidden_size=128, heads=4, kv_heads=2, intermediate_size=256, init_std=0.1)
    model, _tok = FastLanguageModel.from_pretrained(str(folder), max_seq_length=256, dtype=torch.bfloat16,
                                                    load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             use_gradient_checkpointing=False, random_state=0)
    FastLanguageModel.for_training(model)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter so its gradients are informative
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    params = [p for p in model.parameters() if p.requires_grad]
    samples = conversations(6, model.config.vocab_size, seed=9)
    packed, _stats = pack(samples, window=96)
    batch = {k: v.cuda() for k, v in PackedCollator(send_lengths=True)(list(packed)).items()}

    def token_losses(inputs):
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()
        labels = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:]
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")[0]

    losses = token_losses(batch)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    ids = batch["input_ids"][0].tolist()
    together = {tuple(ids[a:b]): losses[a:b].sum() for a, b in zip(starts, starts[1:])}
    for s in samples:
        single = {"input_ids": torch.tensor([s["input_ids"]]).cuda(), "labels": torch.tensor([s["labels"]]).cuda()}
        alone = token_losses(single).sum()
        mine = together[tuple(s["input_ids"])]
        assert abs(alone.item() - mine.item()) <= 0.02 * abs(alone.item())
        g_alone = torch.autograd.grad(alone, params)
        g_mine = torch.autograd.grad(mine, params, retain_graph=True)
        scale = max(g.abs().max().item() for g in g_alone)
        assert max((x - y).abs().max().item() for x, y in zip(g_alone, g_mine)) <= 0.05 * scale
    leaky = {"input_ids": batch["input_ids"], "labels": batch["labels"]}  # one causal sequence: must differ
    assert (token_losses(leaky) - losses).abs().max().item() > 0.05


def _tiny_run(tmp_path, model_dir, data, overrides):
    from recipetune import load_recipe_text
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import prepare_run
    from recipetune.testing import tiny_recipe_text

    pm = get_plugin_manager()
    recipe = load_recipe_text(tiny_recipe_text(model_dir, data), recipe_dir=tmp_path, overrides=overrides, pm=pm)
    return prepare_run(recipe, pm, tmp_path / "run")


def test_auto_micro_batch_fills_a_gpu_and_keeps_the_effective_batch(tmp_path, tiny_model_dir, sharegpt_file, monkeypatch):
    """The GPU is mocked (this machine has none): 80 GiB free. 'auto' puts the 2 x 4 rows of an optimizer step into one
    micro-batch; on a CPU it changes nothing; an integer caps the tokens."""
    import torch

    from recipetune_plugins.packing import micro_batch

    run = _tiny_run(tmp_path, tiny_model_dir, sharegpt_file, [])
    assert micro_batch(run, 2, 4, 128, "auto") == (2, 4, None)  # no GPU here
    assert micro_batch(run, 2, 4, 128, 512)[:2] == (4, 2)  # 512 tokens: 4 rows of 128, twice
    assert micro_batch(run, 2, 4, 128, None) == (2, 4, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0)
    rows, accumulation, why = micro_batch(run, 2, 4, 128, "auto")
    assert (rows, accumulation) == (8, 1) and "the same 8 rows per optimizer step" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(0.01 * 2**30), 80 * 2**30))  # almost full
    assert micro_batch(run, 2, 4, 128, "auto")[:2] == (2, 4)  # never below the recipe's own


@pytest.mark.slow
def test_fewer_fuller_micro_batches_train_the_same_steps(tmp_path, tiny_model_dir, sharegpt_file):
    """2 rows x 4 accumulation and 4 rows x 2 (train.tokens_per_batch = 512 on 128-token rows) log the same losses."""
    from recipetune.runner import execute

    logged = {}
    for tokens in ("512", "none"):
        folder = tmp_path / tokens
        folder.mkdir()
        run = execute(_tiny_run(folder, tiny_model_dir, sharegpt_file, [
            "train.packing=true", "train.max_steps=2", "train.per_device_train_batch_size=2",
            "train.gradient_accumulation_steps=4", "train.packing_length=128",
            *([f"train.tokens_per_batch={tokens}"] if tokens != "none" else [])]))  # auto on a CPU: 2 x 4
        assert run.state["packing"]["rows_per_micro_batch"] == (4 if tokens == "512" else 2)
        logged[tokens] = [(m["loss"], m["grad_norm"]) for m in run.read_metrics() if "loss" in m]
    assert len(logged["512"]) == 2
    for (a_loss, a_norm), (b_loss, b_norm) in zip(logged["512"], logged["none"]):
        assert a_loss == pytest.approx(b_loss, rel=1e-4) and a_norm == pytest.approx(b_norm, rel=1e-3)
