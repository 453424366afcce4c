"""Check a GGUF file against the transformers model it came from, on the CPU.

For each fixed prompt, rendered with the chat template: the token ids of both
tokenizers, the greedy continuation of both models, and next-token top-1
agreement along transformers' greedy answer (teacher-forced). Tokenizer parity
is also checked on strings chosen to break tokenizers (unicode, whitespace
runs, digits, special tokens).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .vocab import answer_token_ids

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Count from 1 to 10: 1, 2, 3,",
    "Résumé of a naïve café — 数字 12345 and 3.14159, tabs\tand  double  spaces.",
]

PARITY_STRINGS = [
    "Hello world", " leading space", "trailing space ", "  two leading spaces", "multiple   inner    spaces",
    "tabs\tand\nnewlines\n\n\nand\r\nwindows", "digits 0 12 345 6789 1234567890 3.14159 -42 1e-5",
    "Ünïcödé àéîõü ß Ø œ", "emoji 🙂👍🏽🚀 and ZWJ 👩‍💻", "中文 日本語 한국어 العربية עברית हिन्दी",
    "code: def f(x):\n    return x ** 2  # comment", "URLs https://example.com/a?b=c&d=e#f", "punctuation!?...;:'\"()[]{}<>",
    "it's they're we've I'm you'll he'd", "CamelCaseWords and snake_case_words", "",
]

FLOAT_TIE_MARGIN = {"f32": 0.02, "f16": 0.05, "bf16": 0.25}
"""A float file may take a different greedy token only where transformers' logits for the two tokens are
closer than this many standard deviations of that position's logits (rounding noise scales with them)."""

MIN_TOP1 = {"q8_0": 0.95, "q6_k": 0.93, "q5_k_m": 0.90, "q5_k_s": 0.90, "q5_0": 0.90, "q4_k_m": 0.85,
            "q4_k_s": 0.85, "q4_0": 0.85, "q3_k_m": 0.75, "q2_k": 0.60}
"""Stated tolerance for quantized files: minimum next-token top-1 agreement with transformers."""


@dataclass
class PromptCheck:
    prompt: str
    tokens_equal: bool
    greedy_equal: bool
    top1_agreement: float
    hf_answer: str
    gguf_answer: str
    first_difference: int | None = None
    near_tie: bool = False
    hf_ids: list[int] = field(default_factory=list, repr=False)
    gguf_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class Verification:
    file: str
    type: str
    prompts: list[PromptCheck]
    parity_failures: list[str]
    top1_agreement: float
    passed: bool
    required: str
    missing_stops: list[str] = field(default_factory=list)
    """Tokens that end an answer in transformers but not in llama.cpp, and that the chat template writes inside
    answers (the "never stops" failure)."""
    unreached_stops: list[str] = field(default_factory=list)
    """Stop tokens of transformers that llama.cpp does not end at, which the chat template never writes inside an
    answer (Phi-3's ``<|assistant|>``): a trained answer ends before them, so they fail nothing."""

    @property
    def greedy_equal(self) -> int:
        return sum(p.greedy_equal for p in self.prompts)

    def summary(self) -> str:
        tie = sum(p.near_tie for p in self.prompts)
        tok = f"tokenizer parity {len(PARITY_STRINGS) - len(self.parity_failures)}/{len(PARITY_STRINGS)} strings"
        stops = f", llama.cpp does not stop at {', '.join(self.missing_stops)}" if self.missing_stops else ""
        if self.unreached_stops:
            stops += (f", llama.cpp does not stop at {', '.join(self.unreached_stops)} (the chat template never writes "
                      "it inside an answer: not needed)")
        return (f"greedy equal on {self.greedy_equal}/{len(self.prompts)} prompts"
                + (f" ({tie} differ only at a near-tie)" if tie else "")
                + f", top-1 agreement {self.top1_agreement:.3f}, {tok}{stops}; required: {self.required} -> "
                + ("PASS" if self.passed else "FAIL"))

    def cause(self) -> str:
        """What failed, in words: the tokenizer, the stop tokens or the answers."""
        causes = []
        if self.parity_failures:
            causes.append("llama.cpp's tokenizer splits " + ", ".join(repr(s) for s in self.parity_failures[:3])
                          + " differently from the model's tokenizer")
        if self.missing_stops:
            causes.append(f"{', '.join(self.missing_stops)} ends an answer in transformers but is not an "
                          "end-of-generation token in llama.cpp")
        if any(not p.tokens_equal for p in self.prompts):
            causes.append("the rendered prompts tokenize differently")
        if not causes:
            causes.append("its answers differ from the model's")
        return "; ".join(causes)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for p in data["prompts"]:
            p.pop("hf_ids"), p.pop("gguf_ids")
        return data


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence what llama.cpp's C++ code prints on file descriptors 1 and 2."""
    import sys

    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1), os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


EXTRA_BUFFERS_VARIABLE = "RECIPETUNE_LLAMA_EXTRA_BUFFERS"


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU reports Intel AMX tiles (``amx_tile`` in ``/proc/cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    return any(line.startswith("flags") and "amx_tile" in line.split() for line in cpuinfo.splitlines())


def use_extra_buffers(environ: dict[str, str] | None = None, cpuinfo: str | None = None) -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX, AVX-512 repacking).

    On by default, as in llama.cpp, except on a CPU with AMX: there llama.cpp's AMX matrix kernels run tile
    instructions on worker threads that never received the tile state, and the process dies with SIGILL on
    the first quantized matrix product (ggml-org/llama.cpp#26954; seen with llama-cpp-python 0.3.36 built
    natively on a Xeon with AMX). ``RECIPETUNE_LLAMA_EXTRA_BUFFERS=1`` or ``=0`` decides either way.
    """
    value = (os.environ if environ is None else environ).get(EXTRA_BUFFERS_VARIABLE, "").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    return not cpu_has_amx(cpuinfo)


@contextmanager
def _model_params(extra_buffers: bool) -> Iterator[None]:
    """Make ``llama_cpp.Llama`` build its model parameters with ``use_extra_bufts`` set as asked
    (``Llama`` takes no argument for it; it reads ``llama_model_default_params()`` when it loads)."""
    import llama_cpp.llama_cpp as native

    default = native.llama_model_default_params
    if extra_buffers or not any(name == "use_extra_bufts" for name, *_ in native.llama_model_params._fields_):
        yield
        return

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        native.llama_model_default_params = default


def open_llama(path: Path, n_ctx: int = 1024, threads: int | None = None, logits_all: bool = False):
    """A llama-cpp-python model on the CPU with the thread count set explicitly (and, on a CPU with AMX,
    without llama.cpp's extra buffer types: see :func:`use_extra_buffers`)."""
    import llama_cpp

    with quiet_native_output(), _model_params(use_extra_buffers()):
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count() or 1,
                               n_threads_batch=threads or os.cpu_count() or 1, n_gpu_layers=0,
                               logits_all=logits_all, verbose=False, seed=0)


def _greedy_llama(llm: Any, prompt_ids: list[int], max_new: int, stops: set[int]) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(max_new):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stops:
            break
        llm.eval([token])
    return out


def _greedy_hf(model: Any, prompt_ids: list[int], max_new: int, stops: set[int], pad_id: int | None) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(stops),
                             pad_token_id=pad_id if pad_id is not None else sorted(stops)[0])
    return out[0, len(prompt_ids):].tolist()


def llama_stop_ids(llm: Any) -> set[int]:
    """The token ids llama.cpp ends generation at (its end-of-generation set, as ``recipe generate`` stops)."""
    import llama_cpp

    vocab = llm._model.vocab
    return {i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}


def verify_prompt(tokenizer: Any, text: str) -> str:
    """A check prompt rendered with the chat template; the bare text for a model without one (a base model)."""
    from ..generation import chat_prompt

    if not getattr(tokenizer, "chat_template", None):
        return text
    return chat_prompt(tokenizer, [{"role": "user", "content": text}])


def verify_gguf(path: Path, file_type: str, model: Any, tokenizer: Any, stops: set[int], *,
                prompts: list[str] | None = None, max_new_tokens: int = 24, threads: int | None = None) -> Verification:
    """Compare the GGUF file at ``path`` with ``model`` (float32 transformers) and ``tokenizer``."""
    import numpy as np
    import torch

    prompts = prompts or DEFAULT_PROMPTS
    model.eval()
    llm = open_llama(path, n_ctx=2048, threads=threads, logits_all=True)
    try:
        llama_stops = llama_stop_ids(llm)
        in_answers = answer_token_ids(tokenizer)  # None: a base model, whose text may end at any stop
        not_ended = sorted(stops - llama_stops)
        needed = [i for i in not_ended if in_answers is None or i in in_answers]
        unreached = [i for i in not_ended if i not in needed]
        missing_stops = [tokenizer.convert_ids_to_tokens(i) for i in needed]
        unreached_stops = [tokenizer.convert_ids_to_tokens(i) for i in unreached]
        # transformers ends at an unreached stop too: compare the answers up to it (a random model may say it)
        llama_ends = llama_stops | set(unreached)
        parity = [s for s in PARITY_STRINGS + [t for t in tokenizer.all_special_tokens]
                  if tokenizer(s, add_special_tokens=False)["input_ids"] != llm.tokenize(s.encode(), add_bos=False, special=True)]
        checks: list[PromptCheck] = []
        agree_total = agree_hits = 0
        for text in prompts:
            rendered = verify_prompt(tokenizer, text)
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
            llama_ids = llm.tokenize(rendered.encode(), add_bos=False, special=True)
            hf_new = _greedy_hf(model, ids, max_new_tokens, stops, tokenizer.pad_token_id)
            gguf_new = _greedy_llama(llm, ids, max_new_tokens, llama_ends)
            sequence = ids + hf_new
            with torch.no_grad():
                ref = model(torch.tensor([sequence])).logits[0].float().numpy()
            llm.reset()
            llm.eval(sequence)
            got = np.asarray(llm.scores[: len(sequence)])
            positions = range(len(ids) - 1, len(sequence) - 1)
            hits = sum(int(ref[i].argmax() == got[i].argmax()) for i in positions)
            agree_hits += hits
            agree_total += len(positions)
            first = next((i for i, (a, b) in enumerate(zip(hf_new, gguf_new)) if a != b), None)
            if first is None and len(hf_new) != len(gguf_new):
                first = min(len(hf_new), len(gguf_new))
            near_tie = False
            if first is not None and first < len(hf_new) and first < len(gguf_new):
                row = ref[len(ids) - 1 + first]
                margin = FLOAT_TIE_MARGIN.get(file_type, 0.0) * float(row.std())
                near_tie = bool(row[hf_new[first]] - row[gguf_new[first]] <= margin)
            checks.append(PromptCheck(text, ids == llama_ids, first is None, hits / max(1, len(positions)),
                                      tokenizer.decode(hf_new, skip_special_tokens=True),
                                      tokenizer.decode(gguf_new, skip_special_tokens=True), first, near_tie, hf_new, gguf_new))
    finally:
        llm.close()
    agreement = agree_hits / max(1, agree_total)
    tokens_ok = not parity and not missing_stops and all(c.tokens_equal for c in checks)
    if file_type in FLOAT_TIE_MARGIN:
        required = "identical tokens and greedy answers (near-ties excepted)"
        passed = tokens_ok and all(c.greedy_equal or c.near_tie for c in checks)
    else:
        minimum = MIN_TOP1.get(file_type, 0.6)
        required = f"identical tokens, top-1 agreement >= {minimum}"
        passed = tokens_ok and agreement >= minimum
    return Verification(str(path), file_type, checks, parity, agreement, passed, required, missing_stops,
                        unreached_stops)
