"""Summarize bench/gpu/packing_bench.py results: a Markdown table per size (median tokens/s, spread, ratios, peak
memory, loss at the end) and a PNG of loss against real tokens seen and of the data's length histogram.

    python bench/gpu/summarize_packing.py packing.jsonl --png packing.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NAMES = {"a_seed": "(a) raw Unsloth+TRL, padded, 2x4", "b_trl_packing": "(b) raw Unsloth+TRL packing=True",
         "c_recipe": "(c) recipetune defaults", "d_recipe_best": "(d) recipetune packed 8x1"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    lines = [json.loads(l) for l in args.results.read_text().splitlines() if l.strip()]
    setups = {l["size"]: l for l in lines if l.get("kind") == "setup"}
    runs = [l for l in lines if l.get("kind") != "setup"]
    for size in sorted({r["size"] for r in runs}):
        s = setups.get(size, {}).get("lengths", {})
        print(f"\n### Llama-3.2-{size.upper()} architecture (random weights), {runs[0].get('gpu', '?')}\n")
        if s:
            print(f"Data: {s['n']} conversations, tokens p10 {s['p10']} / p50 {s['p50']} / p90 {s['p90']} / max {s['max']} "
                  f"(mean {s['mean']}); histogram {s['histogram']}\n")
        print("| path | runs | real tokens/s (median) | spread (min–max) | × (a) | × (b) | peak alloc GiB | "
              "peak reserved GiB | loss first → last | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        med = {}
        for path in NAMES:
            ok = [r for r in runs if r["size"] == size and r["path"] == path and r.get("tokens_per_s")]
            if ok:
                med[path] = statistics.median(r["tokens_per_s"] for r in ok)
        for path, name in NAMES.items():
            mine = [r for r in runs if r["size"] == size and r["path"] == path]
            ok = [r for r in mine if r.get("tokens_per_s")]
            errors = len(mine) - len(ok)
            if not ok:
                if mine:
                    print(f"| {name} | {len(mine)} | – | – | – | – | – | – | – | {mine[0].get('error', '?')[:120]} |")
                continue
            speeds = [r["tokens_per_s"] for r in ok]
            ratio = lambda base: f"{med[path] / med[base]:.2f}×" if base in med else "–"
            alloc = max(r.get("peak_allocated_gib") or 0 for r in ok)
            reserved = max(r.get("peak_reserved_gib") or 0 for r in ok)
            loss = f"{ok[0]['losses'][0]:.3f} → {statistics.median(r['losses'][-1] for r in ok):.3f}"
            print(f"| {name} | {len(ok)} | {med[path]:.0f} | {min(speeds):.0f}–{max(speeds):.0f} | {ratio('a_seed')} | "
                  f"{ratio('b_trl_packing')} | {alloc:.2f} | {reserved:.2f} | {loss} | {errors or ''} |")
    if args.png:
        plot(runs, setups, args.png)


def plot(runs, setups, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in runs})
    fig, axes = plt.subplots(2, len(sizes), figsize=(6 * len(sizes), 8), squeeze=False)
    for col, size in enumerate(sizes):
        ax = axes[0][col]
        for path, name in NAMES.items():
            ok = [r for r in runs if r["size"] == size and r["path"] == path and r.get("losses")]
            if ok:
                r = ok[0]
                ax.plot(r["cum_tokens"], r["losses"], marker=".", label=name)
        ax.set_title(f"{size}: loss against real tokens trained (round 0)")
        ax.set_xlabel("real tokens")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        lengths = setups.get(size, {}).get("lengths", {}).get("lengths")
        if lengths:
            axes[1][col].hist(lengths, bins=40)
            axes[1][col].set_title("conversation lengths (tokens)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
