"""``recipe generate`` and ``recipe chat``: run a fine-tuned model on the CPU.

MODEL is a ``.gguf`` file (llama.cpp through llama-cpp-python), a run folder (its
most precise GGUF, else its merged weights, else its LoRA adapter), a folder of GGUF
files, an HF model folder (transformers), or a LoRA adapter folder (its base model
loaded with transformers and the adapter merged in memory). With GGUF the chat template embedded in the file is
rendered in recipetune's sandbox, the thread count is set explicitly and the
model's end-of-generation tokens end the answer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click

from recipetune import UserError, hookimpl

from .adapter_folders import is_adapter_folder, load_with_adapter

PRECISION_ORDER = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0",
                   "q3_k_m", "q2_k"]


@dataclass
class ModelRef:
    kind: str  # "gguf", "hf" or "adapter"
    path: Path


def _gguf_rank(path: Path) -> int:
    kind = path.stem.rsplit("-", 1)[-1].lower()
    return PRECISION_ORDER.index(kind) if kind in PRECISION_ORDER else len(PRECISION_ORDER)


def resolve_model(ref: str, gguf_type: str | None = None) -> ModelRef:
    """The file or folder MODEL names, as ``ModelRef``; a clear error when it names nothing usable."""
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef("gguf", path)
    if not path.is_dir():
        raise UserError(f"{ref}: not a .gguf file or a folder (expected a GGUF file, a run folder, an HF model folder "
                        "or a LoRA adapter folder)")
    resolved = path / "resolved.json"
    if resolved.exists():
        artifacts = json.loads(resolved.read_text(encoding="utf-8")).get("artifacts", [])
        ggufs = [Path(a["path"]) for a in artifacts if a.get("kind") == "gguf" and Path(a["path"]).exists()]
        merged = [Path(a["path"]) for a in artifacts if a.get("kind") == "merged" and Path(a["path"]).exists()]
        adapters = [Path(a["path"]) for a in artifacts if a.get("kind") == "lora" and Path(a["path"]).exists()]
        if ggufs or merged:
            return _pick(ggufs, gguf_type, ref) if ggufs else ModelRef("hf", merged[0])
        if adapters and not gguf_type:
            return ModelRef("adapter", adapters[0])
        if adapters:
            raise UserError(f"{ref}: this run folder has no {gguf_type} GGUF file; write it from the run's adapter with: "
                            f"recipe export {ref} --to gguf -q {gguf_type}")
        raise UserError(f"{ref}: this run folder has no gguf, merged or lora artifact; add [[export]] use = \"gguf\" "
                        "(or \"lora\") to the recipe")
    if is_adapter_folder(path):
        return ModelRef("adapter", path)
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return _pick(ggufs, gguf_type, ref)
    if (path / "config.json").exists():
        return ModelRef("hf", path)
    raise UserError(f"{ref}: no .gguf files, resolved.json or config.json in this folder")


def _pick(ggufs: list[Path], gguf_type: str | None, ref: str) -> ModelRef:
    if gguf_type:
        chosen = [p for p in ggufs if p.stem.lower().endswith(f"-{gguf_type.lower()}")]
        if not chosen:
            raise UserError(f"{ref}: no {gguf_type} GGUF here (found {', '.join(p.name for p in ggufs)})")
        return ModelRef("gguf", chosen[0])
    return ModelRef("gguf", min(ggufs, key=_gguf_rank))


class GgufChat:
    """A GGUF model in llama.cpp with its own chat template."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 4096, seed: int = 0):
        from .gguf.verify import open_llama

        self.llm = open_llama(path, n_ctx=n_ctx, threads=threads)
        self.llm.set_seed(seed)
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        self.bos = self._text(self.llm.token_bos())
        self.eos = self._text(self.llm.token_eos())

    def _text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        from recipetune.data.templating import render

        if not self.template:  # no template: plain completion of the last message
            return self.llm.tokenize(messages[-1]["content"].encode(), add_bos=True, special=False)
        text = render(self.template, messages, add_generation_prompt=True, bos_token=self.bos, eos_token=self.eos)
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def stream(self, messages: list[dict[str, str]], max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        ids = self.prompt_ids(messages)
        for chunk in self.llm.create_completion(ids, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                                top_p=1.0 if temperature == 0 else 0.95, stream=True):
            yield chunk["choices"][0]["text"]

    def close(self) -> None:
        self.llm.close()


class HFChat:
    """An HF model folder in transformers on the CPU (slower than GGUF; for checking a merged export)."""

    def __init__(self, path: Path, threads: int, seed: int = 0, adapter: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        from .model_sources import load_tokenizer

        torch.set_num_threads(threads)
        if adapter:  # a LoRA folder: its base model with the adapter merged in memory
            model, self.tokenizer, _ = load_with_adapter(path, "float32")
            self.model = model.eval()
            return
        self.tokenizer = load_tokenizer(str(path))[0]  # a LlamaTokenizer folder as trained: its tokenizer.json
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()

    def stream(self, messages: list[dict[str, str]], max_tokens: int, temperature: float, seed: int) -> Iterator[str]:
        import threading

        import torch
        from transformers import TextIteratorStreamer

        from .generation import chat_prompt, stop_ids

        torch.manual_seed(seed)
        text = chat_prompt(self.tokenizer, messages) if self.tokenizer.chat_template else messages[-1]["content"]
        enc = self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template, return_tensors="pt")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
        kwargs = dict(**enc, max_new_tokens=max_tokens, eos_token_id=stop_ids(self.model, self.tokenizer),
                      pad_token_id=self.tokenizer.pad_token_id, streamer=streamer, **sampling)
        worker = threading.Thread(target=lambda: self.model.generate(**kwargs), daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    def close(self) -> None:
        pass


def open_chat(model: str, gguf_type: str | None, threads: int | None, seed: int, n_ctx: int):
    ref = resolve_model(model, gguf_type)
    threads = threads or os.cpu_count() or 1
    if ref.kind == "gguf":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise UserError('running a GGUF file needs llama-cpp-python: pip install "recipetune[gguf]"') from None
        return ref, GgufChat(ref.path, threads, n_ctx=n_ctx, seed=seed)
    return ref, HFChat(ref.path, threads, seed=seed, adapter=ref.kind == "adapter")


_model_argument = click.argument("model", metavar="MODEL")
_common = [
    click.option("--type", "gguf_type", help="Which GGUF of a run folder (q4_k_m, f16 ...). Default: the most precise."),
    click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores)."),
    click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--ctx", "n_ctx", type=click.IntRange(min=64), default=4096, show_default=True, help="Context length."),
    click.option("--system", help="A system message."),
]


def _with_common(fn):
    for option in reversed(_common):
        fn = option(fn)
    return _model_argument(fn)


@hookimpl
def register_commands(cli):
    @cli.command("generate")
    @_with_common
    @click.option("--prompt", required=True, help="The user message.")
    @click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
                  help="0 is greedy (repeatable).")
    @click.option("--stats", is_flag=True, help="Print tokens and tokens/s to stderr.")
    def generate(model, gguf_type, threads, max_tokens, seed, n_ctx, system, prompt, temperature, stats):
        """Print one completion of PROMPT by MODEL (a .gguf file, a run folder, an HF folder or a LoRA adapter folder)."""
        try:
            ref, chat = open_chat(model, gguf_type, threads, seed, n_ctx)
        except (UserError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        pieces: list[str] = []
        started = time.perf_counter()
        first: float | None = None
        try:
            for piece in chat.stream(messages, max_tokens, temperature, seed):
                first = first or time.perf_counter()
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:
            chat.close()
        elapsed = time.perf_counter() - started
        sys.stdout.write("\n")
        if stats:
            count = len(pieces)
            click.echo(json.dumps({"model": str(ref.path), "kind": ref.kind, "chunks": count, "seconds": round(elapsed, 4),
                                   "first_token_s": round((first or started) - started, 4),
                                   "chunks_per_s": round(count / elapsed, 2) if elapsed else None}), err=True)

    @cli.command("chat")
    @_with_common
    @click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
    def chat(model, gguf_type, threads, max_tokens, seed, n_ctx, system, temperature):
        """Chat with MODEL in the terminal, streaming. /reset clears the history, /exit (or Ctrl-D) leaves."""
        try:
            ref, session = open_chat(model, gguf_type, threads, seed, n_ctx)
        except (UserError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{ref.path.name} ({ref.kind}) · /reset clears the history · /exit or Ctrl-D leaves", err=True)
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        base = list(history)
        try:
            while True:
                try:
                    line = input("you> ")
                except (EOFError, KeyboardInterrupt):
                    click.echo("", err=True)
                    break
                if line.strip() in ("/exit", "/quit"):
                    break
                if line.strip() == "/reset":
                    turns = sum(1 for m in history if m["role"] == "user")
                    history = list(base)
                    click.echo(f"(history cleared: {turns} exchange{'s' if turns != 1 else ''} forgotten"
                               + (", the system message kept)" if base else ")"), err=True)
                    continue
                if not line.strip():
                    continue
                history.append({"role": "user", "content": line})
                sys.stdout.write("model> ")
                answer = []
                for piece in session.stream(history, max_tokens, temperature, seed):
                    answer.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                sys.stdout.write("\n")
                history.append({"role": "assistant", "content": "".join(answer).strip()})
        finally:
            session.close()
