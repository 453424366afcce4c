"""Packing benchmark (issue 11): four ways to train the same long-tailed chat data, interleaved in one process.

    python bench/gpu/packing_bench.py --work /tmp/bench --size 1b --pairs 3 --steps 14 --warmup 3 --out $OUT/packing.jsonl

One process per size loads the random-initialised Llama-3.2 model once (Unsloth, 4-bit, LoRA r=16 on the seven
projections, Unsloth gradient checkpointing, as the seed notebook) and trains it again and again from the same
LoRA initialisation, one path after another, ``--pairs`` rounds (the order rotates each round so drift does not
favour one path):

  a_seed          raw Unsloth + TRL SFTTrainer: batch 2, padded, gradient accumulation 4 (the notebook's setup)
  b_trl_packing   raw Unsloth + TRL with its own ``packing=True`` (best-fit decreasing, padding-free rows)
  c_recipe        recipetune's sft trainer with its defaults (train.packing = "auto", batch 2 x accumulation 4)
  d_recipe_best   recipetune's sft trainer, packing on, batch 8 x accumulation 1 (the same rows per optimizer step)

The recipetune paths call the ``sft`` component's ``train`` (the code ``recipe run`` runs in its train stage) on the
already-loaded model: loading (~30-60 s of Unsloth import, quantization and compilation per process) is the same for
every path and is left out, so the machine's time goes into repeats. Measured per run: real tokens per second
(non-pad tokens: the attention-mask sum of padded batches, every token of a packed row) over the steps after
``--warmup``, peak allocated and reserved CUDA memory from a reset after ``torch.cuda.empty_cache()`` before the run,
and the loss of every step with the real tokens seen so far (loss curves against tokens).
``--cpu-dry-run``: transformers + peft instead of Unsloth, tiny model, fp32 (checks the plumbing only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

ap = argparse.ArgumentParser()
ap.add_argument("--work", type=Path, default=Path("/tmp/bench"))
ap.add_argument("--size", default="1b")
ap.add_argument("--rows", type=int, default=600)
ap.add_argument("--pairs", type=int, default=3)
ap.add_argument("--steps", type=int, default=14)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--paths", default="a_seed,b_trl_packing,c_recipe,d_recipe_best")
ap.add_argument("--max-seq-length", type=int, default=2048)
ap.add_argument("--out", type=Path, default=Path("/tmp/bench-out/packing.jsonl"))
ap.add_argument("--cpu-dry-run", action="store_true")
args = ap.parse_args()

if not args.cpu_dry_run:
    import unsloth  # noqa: F401  (first: it patches transformers, peft and TRL)
    from unsloth import FastLanguageModel

import torch  # noqa: E402

from common import SEVEN, longtail_rows, make_model, versions, write_jsonl  # noqa: E402

GPU = torch.cuda.is_available() and not args.cpu_dry_run
SEQ = args.max_seq_length


def prepare() -> tuple[Path, list[dict], dict]:
    """The model folder and the tokenized samples (recipetune's format stage on the generated rows)."""
    from prepare import tokenized_samples

    model_dir = args.work / f"llama-3.2-{args.size}-random"
    if not (model_dir / "config.json").exists():
        make_model(model_dir, args.size)
    data = args.work / "data" / f"longtail-{args.rows}.jsonl"
    if not data.exists():
        write_jsonl(data, longtail_rows(args.rows))
    samples, stats = tokenized_samples(model_dir, data, SEQ)
    return model_dir, samples, {"data": str(data), **{k: stats.get(k) for k in ("samples", "tokens", "trained_tokens", "truncated")}}


def length_summary(samples: list[dict]) -> dict:
    lengths = sorted(len(s["input_ids"]) for s in samples)
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]
    edges = [0, 128, 256, 512, 1024, 1536, SEQ + 1]
    hist = {f"{a}-{b - 1}": sum(a <= n < b for n in lengths) for a, b in zip(edges, edges[1:])}
    return {"n": len(lengths), "p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9), "max": lengths[-1],
            "mean": round(sum(lengths) / len(lengths), 1), "histogram": hist, "lengths": lengths}


def load_model(model_dir: Path):
    if not args.cpu_dry_run:
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=SEQ, dtype=None,
                                                             load_in_4bit=True)
        model = FastLanguageModel.get_peft_model(model, r=16, target_modules=SEVEN, lora_alpha=16, lora_dropout=0.0,
                                                 bias="none", use_gradient_checkpointing="unsloth", random_state=3407)
        return model, tokenizer, "unsloth"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(3407)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=SEVEN, task_type="CAUSAL_LM"))
    return model, tokenizer, "hf"


class Probe:
    """Real tokens of each training forward (pre-hook), and the time, loss and tokens of each logged step."""

    def __init__(self, model):
        self.tokens = 0
        self.steps: list[dict] = []
        self.seen = 0

        def count(module, a, kw):
            if not module.training:
                return
            mask, ids = kw.get("attention_mask"), kw.get("input_ids", a[0] if a else None)
            self.tokens += int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel())

        model.register_forward_pre_hook(count, with_kwargs=True)

    def start(self):
        self.tokens, self.seen, self.steps = 0, 0, []
        self.t0 = time.perf_counter()

    def log(self, loss):
        if GPU:
            torch.cuda.synchronize()
        new, self.seen = self.tokens - self.seen, self.tokens
        self.steps.append({"t": time.perf_counter(), "loss": loss, "tokens": new, "cum_tokens": self.tokens})


def trl_callback(probe: Probe):
    from transformers import TrainerCallback

    class Log(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                probe.log(float(logs["loss"]))

    return Log()


def train_trl(model, tokenizer, samples, probe, packing: bool, out: str):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples])
    config = SFTConfig(output_dir=out, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                       max_steps=args.steps, warmup_steps=args.warmup, learning_rate=2e-4,
                       optim="adamw_8bit" if GPU else "adamw_torch", weight_decay=0.01, lr_scheduler_type="linear",
                       seed=3407, logging_steps=1, save_strategy="no", report_to="none", bf16=GPU,
                       use_cpu=not GPU, max_length=SEQ, packing=packing, padding_free=packing)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[trl_callback(probe)])
    trainer.train()


def train_recipetune(model, tokenizer, samples, probe, overrides: list[str], out: str, model_dir: Path, backend: str):
    from recipetune import FormattedDataset, Loaded, hookimpl, load_recipe
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import prepare_run

    class OnMetrics:
        @hookimpl
        def on_metrics(self, run, step, metrics):
            if "loss" in metrics:
                probe.log(float(metrics["loss"]))

    pm = get_plugin_manager(extra_plugins=[(OnMetrics(), "bench-probe-inprocess")])
    recipe = load_recipe(ROOT / "recipes" / "llama32_finetome.toml",
                         [f"load.use={backend}", f"load.model={model_dir}", f"load.max_seq_length={SEQ}",
                          f"train.max_steps={args.steps}", f"train.warmup_steps={args.warmup}", "export=[]", "report=[]",
                          *([] if GPU else ["load.load_in_4bit=false", "train.optim=adamw_torch"]), *overrides], pm=pm)
    run = prepare_run(recipe, pm, Path(out))
    run.state["format_stats"] = {"max_seq_length": SEQ}
    loaded = Loaded(model=model, tokenizer=tokenizer, backend=backend, model_name=str(model_dir),
                    device="cuda" if GPU else "cpu", max_seq_length=SEQ, quantized="4bit" if GPU else None,
                    extras={"unsloth": FastLanguageModel} if backend == "unsloth" else {})
    dataset = FormattedDataset(train=[{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples])
    recipe.train.component.train(run, loaded, dataset)
    return run.state.get("packing")


def result(path: str, probe: Probe, round_: int, extra: dict) -> dict:
    s = probe.steps
    measured = s[args.warmup:]
    span = measured[-1]["t"] - s[args.warmup - 1]["t"] if measured and args.warmup > 0 else float("nan")
    tokens = sum(m["tokens"] for m in measured)
    out = {"path": path, "size": args.size, "round": round_, "steps": len(s), "measured_steps": len(measured),
           "tokens_per_s": round(tokens / span, 1) if measured and span > 0 else None,
           "tokens_per_step": round(tokens / len(measured)) if measured else None,
           "losses": [round(m["loss"], 4) for m in s], "cum_tokens": [m["cum_tokens"] for m in s], **extra}
    if GPU:
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def main() -> None:
    started = time.time()
    model_dir, samples, data_stats = prepare()
    lengths = length_summary(samples)
    print(f"bench: {len(samples)} samples, lengths p50 {lengths['p50']} p90 {lengths['p90']} max {lengths['max']}; "
          f"{time.time() - started:.0f} s", flush=True)
    model, tokenizer, backend = load_model(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    probe = Probe(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps({"kind": "setup", "size": args.size, "data": data_stats, "lengths": lengths,
                             "versions": versions(), "load_s": round(time.time() - started, 1),
                             "args": {k: str(v) for k, v in vars(args).items()}}) + "\n")
    paths = args.paths.split(",")
    for round_ in range(args.pairs):
        order = paths[round_ % len(paths):] + paths[:round_ % len(paths)]
        for path in order:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in init:
                        p.copy_(init[n])
            model.zero_grad(set_to_none=True)
            if GPU:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            probe.start()
            extra: dict = {}
            out = tempfile.mkdtemp(prefix=f"{path}-")
            try:
                if path == "a_seed":
                    train_trl(model, tokenizer, samples, probe, packing=False, out=out)
                elif path == "b_trl_packing":
                    train_trl(model, tokenizer, samples, probe, packing=True, out=out)
                elif path == "c_recipe":
                    extra["packing"] = train_recipetune(model, tokenizer, samples, probe, [], out, model_dir, backend)
                elif path == "d_recipe_best":
                    extra["packing"] = train_recipetune(model, tokenizer, samples, probe,
                                                        ["train.packing=true", "train.per_device_train_batch_size=8",
                                                         "train.gradient_accumulation_steps=1"], out, model_dir, backend)
                line = result(path, probe, round_, extra)
            except Exception as exc:  # noqa: BLE001 - one failed path must not lose the others' results
                import traceback

                traceback.print_exc()
                line = {"path": path, "size": args.size, "round": round_, "error": f"{type(exc).__name__}: {exc}"[:500]}
            with args.out.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            print(f"bench: {path} round {round_}: {line.get('tokens_per_s')} tokens/s, peak reserved "
                  f"{line.get('peak_reserved_gib')} GiB, loss {line.get('losses', ['-'])[:1]} -> "
                  f"{line.get('losses', ['-'])[-1:]} {line.get('error', '')}", flush=True)
    print(f"bench: done in {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
