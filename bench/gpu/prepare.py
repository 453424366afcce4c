"""Build what every benchmark path reads: random-init Llama-3.2 folders, FineTome-shaped data, and the
tokenized samples the raw loops train on (made by recipetune's own format stage, so all four paths
see the same tokens and loss masks).

    python bench/gpu/prepare.py --out /tmp/bench --sizes 1b,3b --rows 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import finetome_rows, make_model, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "llama32_finetome.toml"


def tokenized_samples(model_dir: Path, data: Path, max_seq_length: int) -> tuple[list[dict], dict]:
    from transformers import AutoTokenizer

    from recipetune import load_recipe
    from recipetune.data.pipeline import build_dataset

    recipe = load_recipe(RECIPE, [f"load.model={model_dir}", f"format.dataset={data}", "load.use=hf",
                                  f"load.max_seq_length={max_seq_length}"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = build_dataset(recipe, tokenizer, None, max_seq_length, use_cache=False, progress=False)
    return [{"input_ids": list(map(int, s["input_ids"])), "labels": list(map(int, s["labels"]))} for s in dataset.train], dataset.stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="1b,3b")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--max-seq-length", type=int, default=2048)
    args = ap.parse_args()
    started = time.time()
    data = write_jsonl(args.out / "data" / "finetome_like.jsonl", finetome_rows(args.rows))
    for size in args.sizes.split(","):
        t = time.time()
        folder = make_model(args.out / f"llama-3.2-{size}-random", size)
        print(f"prepare: model {size} -> {folder} in {time.time() - t:.1f} s", flush=True)
    # One tokenizer for every size: tokenize once.
    samples, stats = tokenized_samples(args.out / f"llama-3.2-{args.sizes.split(',')[0]}-random", data, args.max_seq_length)
    (args.out / "data" / "samples.json").write_text(json.dumps(samples))
    lengths = [len(s["input_ids"]) for s in samples]
    trained = [sum(1 for x in s["labels"] if x != -100) for s in samples]
    print(f"prepare: {len(samples)} samples, lengths {min(lengths)}..{max(lengths)}, trained tokens "
          f"{min(trained)}..{max(trained)} per sample, truncated {stats.get('truncated')}; {time.time() - started:.1f} s",
          flush=True)
    if min(lengths) != args.max_seq_length:
        print("prepare: WARNING some samples are shorter than max_seq_length: batches will have padding", file=sys.stderr)


if __name__ == "__main__":
    main()
