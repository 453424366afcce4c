"""bench.jsonl -> a markdown table per model size, with ratios against the raw Unsloth loop.

    python bench/gpu/summarize.py /tmp/bench-out/bench.jsonl
"""

from __future__ import annotations

import json
import sys

ORDER = ["raw_unsloth", "recipe_unsloth", "raw_hf", "recipe_hf"]
GOAL_SPEED, GOAL_MEMORY = 0.97, 1.03


def ratio(a, b):
    return f"{a / b:.3f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def main(path: str) -> None:
    latest: dict[tuple[str, str], dict] = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            latest[(r.get("size", "?"), r["path"])] = r
    sizes = sorted({s for s, _ in latest}, key=lambda s: (len(s), s))
    for size in sizes:
        base = latest.get((size, "raw_unsloth"), {})
        print(f"\n### Llama-3.2-{size.upper()} architecture (random init), QLoRA r=16, seq 2048, batch 2\n")
        print("| path | tokens/s | × raw Unsloth | median step ms | peak allocated GiB | × | peak reserved GiB | × | "
              "time to first step s | first losses |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in ORDER + sorted({p for s, p in latest if s == size} - set(ORDER)):
            r = latest.get((size, name))
            if r is None:
                continue
            if "error" in r:
                print(f"| {name} | failed ({r['error']}) | | | | | | | | |")
                continue
            print(f"| {name} | {r.get('tokens_per_s')} | {ratio(r.get('tokens_per_s'), base.get('tokens_per_s'))} | "
                  f"{r.get('median_step_ms')} | {r.get('peak_allocated_gib')} | "
                  f"{ratio(r.get('peak_allocated_gib'), base.get('peak_allocated_gib'))} | {r.get('peak_reserved_gib')} | "
                  f"{ratio(r.get('peak_reserved_gib'), base.get('peak_reserved_gib'))} | {r.get('time_to_first_step_s')} | "
                  f"{', '.join(str(x) for x in r.get('first_losses') or [])} |")
        ours = latest.get((size, "recipe_unsloth"))
        if ours and base and "error" not in ours and "error" not in base and base.get("tokens_per_s"):
            speed = ours["tokens_per_s"] / base["tokens_per_s"]
            mem = ours["peak_reserved_gib"] / base["peak_reserved_gib"]
            alloc = ours["peak_allocated_gib"] / base["peak_allocated_gib"]
            print(f"\nrecipe_unsloth vs raw_unsloth: throughput {speed:.3f}× (goal ≥ {GOAL_SPEED}: "
                  f"{'met' if speed >= GOAL_SPEED else 'MISSED'}), peak reserved {mem:.3f}× / allocated {alloc:.3f}× "
                  f"(goal ≤ {GOAL_MEMORY}: {'met' if max(mem, alloc) <= GOAL_MEMORY else 'MISSED'})")
    any_r = next((r for r in latest.values() if "versions" in r), None)
    if any_r:
        print(f"\nGPU: {any_r.get('gpu')}; versions: " + ", ".join(f"{k} {v}" for k, v in any_r["versions"].items()))


if __name__ == "__main__":
    main(sys.argv[1])
