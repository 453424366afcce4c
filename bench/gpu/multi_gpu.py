"""recipetune on 1 and 2 GPUs (issue 14): throughput, memory per GPU, equal losses, time to first step.

One job on a 2-GPU machine (nvidia-h200-x2), random-initialised Llama-3.2-3B and Llama-3.1-8B architectures,
QLoRA (4-bit) and bf16 LoRA, long-tailed chat data. Every path is an ordinary ``recipe run`` of the same
recipe and the same global batch (``train.global_batch_size``): 1 GPU, then 2 GPUs with ``ddp`` and ``fsdp``
(and ``deepspeed`` ZeRO-3 when installed), launched by ``recipe run --nproc-per-node``. A probe plugin
(bench/gpu/multi_gpu_probe.py) writes each rank's peak memory and stage times.

    bench/gpu/multi_gpu.sh                       # the whole job (sources setup_env.sh, NVLink multicast off)
    python3 bench/gpu/multi_gpu.py prepare --work /tmp/mgpu --sizes 3b,8b
    python3 bench/gpu/multi_gpu.py run --work /tmp/mgpu --out /tmp/mgpu-out --sizes 3b,8b --modes qlora,lora16
    python3 bench/gpu/multi_gpu.py summarize --out /tmp/mgpu-out      # table + loss PNG + ratios

CPU dry run of the plumbing (tiny model, 2 gloo processes; fsdp runs as ddp there):
    BENCH_NO_KIT=1 python3 bench/gpu/multi_gpu.py prepare --work /tmp/mgpu --sizes tiny --rows 24 --max-seq-length 256
    BENCH_NO_KIT=1 python3 bench/gpu/multi_gpu.py run --work /tmp/mgpu --out /tmp/mgpu-out --sizes tiny --modes lora16 \\
        --steps 4 --warmup 1 --global-batch 4 --per-device 2 --max-seq-length 256 --cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# config.json values of meta-llama/Llama-3.1-8B-Instruct (architecture only), beside common's 1B/3B
common.CONFIGS.setdefault("8b", {**common._LLAMA32, "hidden_size": 4096, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "head_dim": 128, "intermediate_size": 14336,
                                 "tie_word_embeddings": False,
                                 "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}})

RECIPE = """name = "mgpu-{label}"
seed = 3407

[load]
use = "hf"
model = "{model}"
max_seq_length = {seq}
load_in_4bit = {four_bit}
dtype = "{dtype}"

[adapt]
use = "lora"
r = 16
alpha = 16
gradient_checkpointing = true

[format]
dataset = "{data}"
standardizer = "sharegpt"
chat_template = "llama-3.1"

[train]
use = "sft"
max_steps = {steps}
per_device_train_batch_size = {per_device}
global_batch_size = {global_batch}
warmup_steps = 2
learning_rate = 2e-4
optim = "adamw_torch"
logging_steps = 1
save_steps = 0

[distributed]
strategy = "{strategy}"
"""

PATHS = ("1gpu", "ddp", "fsdp", "deepspeed")


def long_tailed_rows(n: int, seed: int = 3407) -> list[dict]:
    """Chat rows whose answer lengths have a long tail (lognormal words, median ~250, a few past 2,000):
    the shape of real chat data, where padded batches waste most of their tokens."""
    rng, vocab = random.Random(seed), common.words()
    rows = []
    for i in range(n):
        conv = [{"from": "system", "value": common.sentence(rng, vocab, 20)}] if i % 4 == 0 else []
        answer = int(min(2600, max(10, rng.lognormvariate(math.log(250), 0.9))))
        conv += [{"from": "human", "value": common.sentence(rng, vocab, rng.randint(10, 120))},
                 {"from": "gpt", "value": common.sentence(rng, vocab, answer)}]
        rows.append({"conversations": conv})
    return rows


def prepare(args) -> None:
    work = Path(args.work)
    data = common.write_jsonl(work / "data" / "long_tailed.jsonl", long_tailed_rows(args.rows))
    print(f"prepare: {args.rows} rows -> {data}", flush=True)
    for size in args.sizes.split(","):
        folder = work / f"llama-{size}-random"
        if (folder / "config.json").exists():
            continue
        started = time.time()
        common.make_model(folder, size)
        print(f"prepare: model {size} -> {folder} in {time.time() - started:.1f} s", flush=True)


def paths_to_run(requested: str, cpu: bool) -> list[str]:
    out = []
    for path in requested.split(","):
        if path == "deepspeed" and (cpu or importlib.util.find_spec("deepspeed") is None):
            print("run: deepspeed is not installed (or no GPU): skipping its path", flush=True)
            continue
        out.append(path)
    return out


def run(args) -> int:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for size in args.sizes.split(","):
        for mode in args.modes.split(","):
            for path in paths_to_run(args.paths, args.cpu):
                label = f"{size}-{mode}-{path}"
                folder = out / "runs" / label
                recipe = out / "recipes" / f"{label}.toml"
                recipe.parent.mkdir(parents=True, exist_ok=True)
                four_bit = mode == "qlora" and not args.cpu
                recipe.write_text(RECIPE.format(
                    label=label, model=work / f"llama-{size}-random", seq=args.max_seq_length,
                    four_bit=str(four_bit).lower(), dtype="float32" if args.cpu else "bfloat16",
                    data=work / "data" / "long_tailed.jsonl", steps=args.steps, per_device=args.per_device,
                    global_batch=args.global_batch, strategy="ddp" if path == "1gpu" else path))
                nproc = "1" if path == "1gpu" else "2"
                command = [sys.executable, "-m", "recipetune", "run", str(recipe), "--output-dir", str(folder), "--fresh",
                           "--nproc-per-node", nproc]
                env = {**os.environ, "MGPU_LABEL": label, "MGPU_OUT": str(out), "MGPU_T0": str(time.time()),
                       # NVLink multicast stays off in every process started here (the device README asks so)
                       "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
                print(f"== {label} {time.strftime('%H:%M:%S')}: {' '.join(command[2:])}", flush=True)
                with (out / "runs.log").open("a") as log:
                    log.write(f"== {label}\n")
                    log.flush()
                    try:
                        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              timeout=args.timeout)
                        code = done.returncode
                    except subprocess.TimeoutExpired:
                        code = 124
                print(f"   {label}: exit {code}", flush=True)
                status = status or code
                record(out, label, folder, code, args.warmup)
    return status


def record(out: Path, label: str, folder: Path, code: int, warmup: int) -> None:
    """One JSON line per path: real-token throughput after warm-up, losses, memory per rank, stage times."""
    size, mode, path = label.split("-", 2)
    row: dict = {"label": label, "size": size, "mode": mode, "path": path, "exit": code}
    metrics_file = folder / "metrics.jsonl"
    metrics = [json.loads(l) for l in metrics_file.read_text().splitlines() if l.strip()] if metrics_file.exists() else []
    steps = [m for m in metrics if "loss" in m and "num_tokens" in m]
    if len(steps) > warmup + 1:
        a, b = steps[warmup], steps[-1]
        row["tokens_per_second"] = round((b["num_tokens"] - a["num_tokens"]) / (b["time"] - a["time"]), 1)
        row["measured_steps"] = b["step"] - a["step"]
    row["losses"] = [[m["step"], m["loss"]] for m in steps]
    resolved = folder / "resolved.json"
    if resolved.exists():
        doc = json.loads(resolved.read_text())
        row["distributed"] = {k: v for k, v in (doc.get("distributed") or {}).items() if k != "ranks"}
        row["timings"] = doc.get("timings")
    probes = sorted(out.glob(f"probe/{label}.rank*.json"))
    row["ranks"] = [json.loads(p.read_text()) for p in probes]
    with (out / "multi_gpu.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def summarize(args) -> None:
    out = Path(args.out)
    rows = {}
    for line in (out / "multi_gpu.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["label"]] = row  # the last run of a label wins
    lines = ["| model | mode | path | exit | real tokens/s | x 1 GPU | peak alloc / reserved GiB per GPU | "
             "launch→step 1 s (load, adapt, format, train→step 1) |", "|---|---|---|---|---|---|---|---|"]
    best: dict = {}
    for row in rows.values():
        one = rows.get(f"{row['size']}-{row['mode']}-1gpu", {})
        ratio = (row.get("tokens_per_second") or 0) / one["tokens_per_second"] if one.get("tokens_per_second") else None
        if row["path"] != "1gpu" and ratio:
            key = (row["size"], row["mode"])
            best[key] = max(best.get(key, (0, "")), (ratio, row["path"]))
        memory = ", ".join(f"{r['peak_allocated_gib']:.1f} / {r['peak_reserved_gib']:.1f}" for r in row["ranks"]) or "?"
        first = row["ranks"][0].get("first_step_s") if row["ranks"] else None
        stages = row["ranks"][0].get("stages", {}) if row["ranks"] else {}
        split = ", ".join(f"{stages.get(s, 0):.0f}" for s in ("load", "adapt", "format", "train_to_first_step"))
        lines.append(f"| {row['size']} | {row['mode']} | {row['path']} | {row['exit']} | "
                     f"{row.get('tokens_per_second', '?')} | {f'{ratio:.2f}x' if ratio else ''} | {memory} | "
                     f"{f'{first:.0f}' if first else '?'} ({split}) |")
    lines.append("")
    for (size, mode), (ratio, path) in sorted(best.items()):
        goal = " (goal >= 1.85x: met)" if ratio >= 1.85 else " (goal >= 1.85x: NOT met)"
        lines.append(f"- {size} {mode}: best 2-GPU strategy {path}, {ratio:.2f}x one GPU{goal if size == '8b' else ''}")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    plot_losses(out, rows)


def plot_losses(out: Path, rows: dict) -> None:
    """Loss per step of every path of a model and mode, overlaid: 1 and 2 GPUs on the same tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["size"], r["mode"]) for r in rows.values()})
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.5), dpi=110, squeeze=False)
    for ax, (size, mode) in zip(axes[0], groups):
        for path in PATHS:
            row = rows.get(f"{size}-{mode}-{path}")
            if row and row["losses"]:
                steps, losses = zip(*row["losses"])
                ax.plot(steps, losses, label=f"{path} ({'1' if path == '1gpu' else '2'} GPU)", alpha=0.8,
                        linestyle="-" if path == "1gpu" else "--")
        ax.set_title(f"{size} {mode}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "losses_1_vs_2_gpus.png")
    print(f"plot: {out / 'losses_1_vs_2_gpus.png'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", required=True)
    p.add_argument("--sizes", default="3b,8b")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--max-seq-length", type=int, default=2048)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--sizes", default="3b,8b")
    r.add_argument("--modes", default="qlora,lora16")
    r.add_argument("--paths", default=",".join(PATHS))
    r.add_argument("--steps", type=int, default=30)
    r.add_argument("--warmup", type=int, default=5, help="logged steps left out of the throughput")
    r.add_argument("--per-device", type=int, default=4)
    r.add_argument("--global-batch", type=int, default=16)
    r.add_argument("--max-seq-length", type=int, default=2048)
    r.add_argument("--timeout", type=int, default=900, help="seconds per path")
    r.add_argument("--cpu", action="store_true", help="a CPU dry run: fp32, no 4-bit, gloo")
    s = sub.add_parser("summarize")
    s.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.command == "prepare":
        prepare(args)
        return 0
    if args.command == "run":
        return run(args)
    summarize(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
