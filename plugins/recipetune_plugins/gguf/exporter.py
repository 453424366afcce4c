"""Exporter ``gguf``: the trained model as GGUF files for llama.cpp / Ollama, each checked against transformers."""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from recipetune import Artifact, Exporter, Options, Problem, UserError, hookimpl

from ..model_sources import local_model_path
from .quantize import QUANT_TYPES
from .writer import FLOAT_TYPES

GgufType = Literal["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0",
                   "q3_k_m", "q2_k"]
assert set(GgufType.__args__) == set(FLOAT_TYPES) | set(QUANT_TYPES)

PRECISION_ORDER = list(GgufType.__args__)
"""Most precise first; ``recipe generate RUN_FOLDER`` picks the first that exists."""


class GgufOptions(Options):
    quantization: list[GgufType] = Field(default_factory=lambda: ["q8_0"])
    """GGUF type(s) to write, a string or a list: f32, f16, bf16 (written directly) or q8_0, q6_k, q5_k_m, q4_k_m ... (llama.cpp's quantizer)."""
    name: str | None = None
    """File name stem: files are <name>-<type>.gguf. Default: the recipe's name."""
    folder: str = "gguf"
    """Folder under the run's artifacts/."""
    verify: bool = True
    """Load each file with llama.cpp and compare it with transformers on fixed prompts (a failed f16/f32 check fails the export)."""
    verify_prompts: list[str] | None = None
    """User prompts for the check (rendered with the chat template). Default: four built-in prompts."""
    verify_max_tokens: int = Field(default=24, ge=1, le=512)
    """Greedy tokens compared per prompt."""
    strict: bool = False
    """Also fail the export when a quantized file is below its stated top-1 agreement tolerance (default: warn)."""
    modelfile: bool = True
    """Write an Ollama Modelfile (template, stop tokens, parameters) for the first listed type."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for quantizing and checking. Default: all cores."""

    @field_validator("quantization", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    def types(self) -> list[str]:
        return list(dict.fromkeys(self.quantization))


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed (needed to quantize and to check files, not to write f16/bf16/f32)."""
    return importlib.util.find_spec("llama_cpp") is not None


def recipe_sha256(recipe) -> str:
    """A hash of the recipe text and its command-line overrides: which recipe made this file."""
    return hashlib.sha256("\n".join([recipe.text, *recipe.overrides]).encode()).hexdigest()


class GgufExporter(Exporter):
    """GGUF files for llama.cpp (f32/f16/bf16 written here, quantized by llama.cpp's own code), verified."""

    name = "gguf"
    Options = GgufOptions

    def _path(self, recipe) -> str:
        for i, section in enumerate(recipe.export or []):
            if section.component is self:
                return f"export[{i}]"
        return "export"

    def preflight(self, recipe):
        where = f"{self._path(recipe)}.use"
        if importlib.util.find_spec("gguf") is None:
            yield Problem(where, "GGUF export needs gguf: pip install 'recipetune[gguf]'")
        if llama_cpp_available():
            return
        quantized = [t for t in self.options.types() if t not in FLOAT_TYPES]
        if quantized:
            yield Problem(f"{self._path(recipe)}.quantization",
                          f"quantizing to {', '.join(quantized)} needs llama-cpp-python (llama.cpp's quantizer): "
                          "pip install 'recipetune[gguf]', or list only f16, bf16 or f32 (written without it)")
        elif self.options.verify:
            yield Problem(where, "llama-cpp-python is not installed, so the GGUF files are written unchecked; check them "
                          "later where it is installed with: recipe export RUN_FOLDER --check (or set verify = false)",
                          severity="warning")

    def describe_plan(self, recipe):
        o = self.options
        stem = o.name or recipe.name
        return [f"{', '.join(f'{stem}-{t}.gguf' for t in o.types())}"
                + (" checked against transformers with llama.cpp" if o.verify else " (unchecked)")]

    def export(self, run, loaded, result):
        from recipetune.atomic import write_text

        from ..exporters import merged_model
        from ..generation import stop_ids
        from .modelfile import chat_context, modelfile_text
        from .quantize import fallbacks, quantize, tensor_types, type_summary
        from .verify import quiet_native_output, verify_gguf
        from .vocab import vocab_metadata
        from .writer import write_gguf

        o = self.options
        types = o.types()
        model = merged_model(loaded, "float32")
        tokenizer = loaded.tokenizer
        stops = set(stop_ids(model, tokenizer))
        stop_token = tokenizer.eos_token
        vocab = vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], stop_token, stops=stops)
        folder = run.artifacts_dir / o.folder
        folder.mkdir(parents=True, exist_ok=True)
        stem = o.name or run.recipe.name
        local = local_model_path(loaded.model_name)
        base = local.name if local is not None else loaded.model_name  # a local model by its name, not this machine's path
        meta = dict(name=stem, chat_template=tokenizer.chat_template, base_model=base,
                    recipe_sha256=recipe_sha256(run.recipe), description=f"{stem}: fine-tuned with recipetune")
        floats = [t for t in types if t in FLOAT_TYPES]
        artifacts: list[Artifact] = []
        written: dict[str, Path] = {}
        seconds: dict[str, float] = {}
        for t in floats:
            started = time.perf_counter()
            run.logger.info("gguf: writing %s-%s.gguf", stem, t)
            written[t] = write_gguf(model, vocab, folder / f"{stem}-{t}.gguf", t, **meta)
            seconds[t] = time.perf_counter() - started
        quants = [t for t in types if t not in FLOAT_TYPES]
        temporary: Path | None = None
        if quants:
            source = next((written[t] for t in ("f32", "bf16", "f16") if t in written), None)
            if source is None:
                started = time.perf_counter()
                temporary = write_gguf(model, vocab, folder / f".{stem}-f32.source.gguf", "f32", **meta)
                source, source_s = temporary, time.perf_counter() - started
            else:
                source_s = 0.0
            try:
                for t in quants:
                    started = time.perf_counter()
                    run.logger.info("gguf: quantizing %s-%s.gguf with llama.cpp", stem, t)
                    with quiet_native_output():
                        written[t] = quantize(source, folder / f"{stem}-{t}.gguf", t, o.threads)
                    seconds[t] = time.perf_counter() - started + source_s
            finally:
                if temporary is not None:
                    temporary.unlink(missing_ok=True)
        failures: list[str] = []
        for t in types:
            path = written[t]
            details: dict = {"type": t, "bytes": path.stat().st_size, "export_s": round(seconds[t], 2)}
            notes = [f"`{path.name}` ({path.stat().st_size / 2**20:.1f} MiB, {seconds[t]:.1f} s)"]
            choice = loaded.extras.get("tokenizer_choice")  # which tokenizer this file reproduces (model_sources)
            if choice is not None:
                notes.append(choice.describe())
                details["tokenizer"] = {"used": choice.used, "rebuilt_class": choice.rebuilt_class,
                                        "differences": [list(d) for d in choice.differences]}
            if t in QUANT_TYPES:
                kinds = tensor_types(path)
                fell_back = fallbacks(kinds, t)
                details["tensor_types"] = type_summary(kinds)
                notes.append(f"tensor types: {details['tensor_types']}")
                if fell_back:
                    details["fallbacks"] = fell_back
                    notes.append(f"{len(fell_back)} matrices have rows not divisible by 256, so llama.cpp used "
                                 f"{type_summary({k: (v, 0, 0) for k, v in fell_back.items()})} for them instead of {t}")
            if not (o.verify and llama_cpp_available()):
                why = "verify = false" if not o.verify else "llama-cpp-python is not installed here"
                details["verification"] = {"checked": False, "reason": why}
                notes.append(f"unchecked ({why}); where llama-cpp-python is installed, check it against the trained "
                             f"model with: recipe export {run.output_dir} --check")
                (run.logger.warning if o.verify else run.logger.info)(
                    "gguf: %s is unchecked (%s); check it later with: recipe export %s --check", path.name, why, run.output_dir)
            else:
                run.logger.info("gguf: checking %s against transformers with llama.cpp", path.name)
                check = verify_gguf(path, t, model, tokenizer, stops, prompts=o.verify_prompts,
                                    max_new_tokens=o.verify_max_tokens, threads=o.threads)
                details["verification"] = check.as_dict()
                notes.append("check: " + check.summary())
                for p in check.prompts:
                    if not p.greedy_equal:
                        notes.append(f"  - {p.prompt[:40]!r}: transformers {p.hf_answer[:60]!r} vs llama.cpp {p.gguf_answer[:60]!r}"
                                     f" (first difference at token {p.first_difference}{', a near-tie' if p.near_tie else ''})")
                if check.parity_failures:
                    notes.append(f"  - tokenizers differ on: {', '.join(repr(s) for s in check.parity_failures[:5])}")
                if not check.passed and (t in FLOAT_TYPES or o.strict):
                    failures.append(f"{path.name}: {check.cause()} ({check.summary()})")
                elif not check.passed:
                    run.logger.warning("gguf: %s is below its tolerance: %s", path.name, check.summary())
            artifacts.append(Artifact("gguf", path, f"GGUF {t} for llama.cpp", details, report="\n".join(notes)))
        if o.modelfile:
            first = written[types[0]]
            stop_tokens = [tokenizer.convert_ids_to_tokens(i) for i in sorted(stops)]
            context = chat_context(loaded.max_seq_length, getattr(model.config, "max_position_embeddings", None))
            text = modelfile_text(first.name, tokenizer.chat_template, stop_tokens, context)
            artifacts.append(Artifact("modelfile", write_text(folder / "Modelfile", text), f"Ollama Modelfile for {first.name}"))
        if failures:
            run.artifacts.extend(artifacts)  # written files stay listed even when the check fails
            raise UserError("the GGUF file does not answer like the trained model: " + "; ".join(failures)
                            + f" (files kept in {folder})")
        return artifacts


@hookimpl
def register_exporters(register):
    register(GgufExporter)
