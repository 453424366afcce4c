"""A hand-written QLoRA training loop, without recipetune: the baselines of the benchmark.

    python bench/gpu/raw_loop.py --path raw_unsloth --model DIR --samples samples.json --steps 35 --warmup 5
    python bench/gpu/raw_loop.py --path raw_hf      --model DIR --samples samples.json --steps 35 --warmup 5

``raw_hf``: transformers + bitsandbytes nf4 (double quant, bf16 compute) + peft LoRA, prepared with
peft's ``prepare_model_for_kbit_training`` and non-reentrant gradient checkpointing.
``raw_unsloth``: ``FastLanguageModel.from_pretrained(load_in_4bit=True)`` +
``get_peft_model(use_gradient_checkpointing="unsloth")``, as Unsloth's notebooks do.

Both: r=16, alpha=16, dropout 0, the seven projections, batch 2, no gradient accumulation, bitsandbytes
AdamW8bit (lr 2e-4, weight decay 0.01), gradient clipping at 1.0, bf16 autocast (what the Trainer does
with bf16=True), the samples of ``samples.json`` in file order. One JSON line per run (common.Meter).
"""

from __future__ import annotations

import argparse
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--path", choices=["raw_hf", "raw_unsloth"], required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--samples", required=True)
ap.add_argument("--size", default="?")
ap.add_argument("--steps", type=int, default=35)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--batch-size", type=int, default=2)
ap.add_argument("--max-seq-length", type=int, default=2048)
ap.add_argument("--cpu-dry-run", action="store_true", help="no GPU: full precision, no 4-bit (checks the script only)")
args = ap.parse_args()

if args.path == "raw_unsloth":
    import unsloth  # noqa: F401  (first: it patches transformers and peft)
    from unsloth import FastLanguageModel

import contextlib  # noqa: E402

import torch  # noqa: E402

from common import SEVEN, Meter, batches, load_samples  # noqa: E402

meter = Meter(args.path, args.size, args.warmup)
gpu = torch.cuda.is_available() and not args.cpu_dry_run
if args.path == "raw_unsloth":
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=args.model, max_seq_length=args.max_seq_length,
                                                         dtype=None, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, target_modules=SEVEN, lora_alpha=16, lora_dropout=0.0,
                                             bias="none", use_gradient_checkpointing="unsloth", random_state=3407,
                                             use_rslora=False, loftq_config=None)
    FastLanguageModel.for_training(model)
else:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    kwargs = {"dtype": torch.bfloat16 if gpu else torch.float32, "attn_implementation": "sdpa"}
    if gpu:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    model.config.use_cache = False
    if gpu:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(3407)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=SEVEN,
                                             task_type="CAUSAL_LM"))
    model.train()

params = [p for p in model.parameters() if p.requires_grad]
meter.extra["trainable_parameters"] = sum(p.numel() for p in params)
if gpu:
    import bitsandbytes as bnb

    optimizer = bnb.optim.AdamW8bit(params, lr=2e-4, weight_decay=0.01)
else:
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
samples = load_samples(args.samples)
device = "cuda" if gpu else "cpu"
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
if gpu:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    meter.extra["at_train_start"] = {"allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
                                     "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 3)}
for step, (batch, tokens) in enumerate(batches(samples, args.batch_size, pad_id, args.steps), start=1):
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast:
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    meter.step(step, loss.item(), tokens)  # .item() waits for the GPU
    if step == 1:
        print(f"{args.path}: first step done, loss {meter.steps[0]['loss']:.4f}", flush=True)
result = meter.write()
print(f"{args.path} {args.size}: {result['tokens_per_s']} tokens/s, peak allocated {result.get('peak_allocated_gib')} GiB",
      file=sys.stderr)
