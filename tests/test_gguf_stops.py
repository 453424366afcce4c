"""Where a GGUF stops, and which tokenizer it reproduces: Phi-3's stop tokens, Llama-2's tokenizer class.

A Phi-3 generation config lists ``<|endoftext|>``, ``<|assistant|>`` and ``<|end|>`` as EOS ids; llama.cpp
ends only at ``<|end|>`` and ``<|endoftext|>`` (it knows them by their text), so every Phi-3 export was
refused. A Llama-2 / Mistral / Phi-3 folder says ``tokenizer_class: LlamaTokenizer``, which transformers 5
rebuilds with a Metaspace pre-tokenizer, dropping the normalizer of the folder's tokenizer.json: training
and the GGUF disagreed on texts with leading spaces. The models here are tiny and random, with a
SentencePiece-style vocabulary carrying Phi-3's special tokens and flags (no download).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from recipetune_plugins.generation import stop_ids  # noqa: E402
from recipetune_plugins.gguf.verify import PARITY_STRINGS, open_llama, verify_gguf  # noqa: E402
from recipetune_plugins.gguf.vocab import answer_token_ids, vocab_metadata  # noqa: E402
from recipetune_plugins.gguf.writer import write_gguf  # noqa: E402
from recipetune_plugins.model_sources import load_tokenizer  # noqa: E402

PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] "
                 "+ '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
                 "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}"
                 "{% endif %}")
PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
PHI3_KEPT = {"<unk>", "<s>", "<|endoftext|>"}  # the special tokens of Phi-3 that do not eat the whitespace after them


def make_llama_tokenizer_folder(path: Path, phi3: bool = False) -> Path:
    """A SentencePiece-style tokenizer saved as Llama-2's and Phi-3's are: ``tokenizer_class: LlamaTokenizer``
    beside a tokenizer.json with the Prepend/Replace normalizer. ``phi3``: Phi-3's special tokens, each
    eating the whitespace after it (rstrip) as in microsoft/Phi-3-mini-4k-instruct, and its template."""
    from recipetune.testing import make_tokenizer

    tok = make_tokenizer(style="spm")
    if phi3:
        tok.add_special_tokens({"additional_special_tokens": PHI3_ADDED})
    tok.save_pretrained(path)
    spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    if phi3:
        for token in [*spec["added_tokens"], *config.get("added_tokens_decoder", {}).values()]:
            token["rstrip"] = token["content"] not in PHI3_KEPT
        config.update(eos_token="<|endoftext|>", pad_token="<|endoftext|>", chat_template=PHI3_TEMPLATE)
    config["tokenizer_class"] = "LlamaTokenizer"
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


def make_model_folder(path: Path, phi3: bool = False) -> Path:
    """A tiny random Llama-architecture model beside that tokenizer; with ``phi3``, Phi-3's generation config
    (EOS ids <|endoftext|>, <|assistant|>, <|end|>)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    make_llama_tokenizer_folder(path, phi3)
    tok = AutoTokenizer.from_pretrained(path)
    eos = tok.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>", "<|end|>"]) if phi3 else [tok.eos_token_id]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512, rms_norm_eps=1e-5,
                         initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=eos[0],
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path, safe_serialization=True)
    return path


def test_a_llama_tokenizer_class_is_read_from_the_folders_tokenizer_json(tmp_path):
    from transformers import AutoTokenizer

    folder = make_llama_tokenizer_folder(tmp_path / "tok")
    rebuilt = AutoTokenizer.from_pretrained(folder)
    tokenizer, choice = load_tokenizer(str(folder))
    written = json.loads((folder / "tokenizer.json").read_text())
    assert json.loads(tokenizer.backend_tokenizer.to_str())["normalizer"] == written["normalizer"]
    # transformers 5's LlamaTokenizer splits these differently; the choice names them, with both splits
    assert type(rebuilt).__name__ == "LlamaTokenizer" and choice is not None and choice.rebuilt_class == "LlamaTokenizer"
    differing = {text for text, _, _ in choice.differences}
    assert " leading space" in differing
    assert all(rebuilt(t, add_special_tokens=False)["input_ids"] != tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in differing)
    assert "' leading space'" in choice.describe() and "tokenizer.json" in choice.describe()
    assert tokenizer.chat_template == rebuilt.chat_template and tokenizer.eos_token == "</s>"
    # a folder transformers reads as it is keeps AutoTokenizer's tokenizer
    tokenizer.save_pretrained(tmp_path / "saved")
    again, none = load_tokenizer(str(tmp_path / "saved"))
    assert none is None
    assert all(again(t)["input_ids"] == tokenizer(t)["input_ids"] for t in PARITY_STRINGS)


def test_phi3_stops_llama_cpp_does_not_know_are_written_or_shown_to_be_unneeded(tmp_path):
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    folder = make_model_folder(tmp_path / "phi3", phi3=True)
    tokenizer, _ = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stops = set(stop_ids(model, tokenizer))
    endoftext, assistant, end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>", "<|end|>"])
    assert stops == {endoftext, assistant, end}
    # the template writes <|end|> inside answers (and <|endoftext|> after the last), <|assistant|> only before them
    in_answers = answer_token_ids(tokenizer)
    assert {end, endoftext} <= in_answers and assistant not in in_answers
    rows = model.get_input_embeddings().weight.shape[0]

    # the export: <|assistant|> goes into the EOM slot, so llama.cpp ends where transformers ends
    vocab = vocab_metadata(tokenizer, rows, tokenizer.eos_token, stops=stops)
    assert vocab.special_ids["eom"] == assistant and vocab.stops_left == [] and vocab.phi3_whitespace
    path = write_gguf(model, vocab, tmp_path / "tune-f32.gguf", "f32", name="tune", chat_template=tokenizer.chat_template)
    check = verify_gguf(path, "f32", model, tokenizer, stops, max_new_tokens=8)
    assert check.passed and not check.missing_stops and not check.unreached_stops, check.summary()
    assert all(p.tokens_equal for p in check.prompts)  # '<|user|>\n' eats its newline in both: the name says phi-3
    llm = open_llama(path, n_ctx=64)
    try:
        assert all(llama_cpp.llama_vocab_is_eog(llm._model.vocab, i) for i in stops)
        assert "phi-3" in llm.metadata["general.name"]
    finally:
        llm.close()

    # a file without that slot (as written before): the check names <|assistant|> as not needed and passes
    bare = vocab_metadata(tokenizer, rows, tokenizer.eos_token)
    path = write_gguf(model, bare, tmp_path / "bare-f32.gguf", "f32", name="bare", chat_template=tokenizer.chat_template)
    check = verify_gguf(path, "f32", model, tokenizer, stops, max_new_tokens=8)
    assert check.passed and check.unreached_stops == ["<|assistant|>"] and not check.missing_stops, check.summary()
    assert "never writes it inside an answer" in check.summary()


def test_a_stop_the_template_writes_in_answers_that_llama_cpp_would_not_end_at_fails(tmp_path):
    """The real "never stops" failure is still caught: the template ends answers with <|end_turn|>, llama.cpp
    does not know it and the file has no slot for it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune.testing import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "m", init_std=0.1)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok.add_special_tokens({"additional_special_tokens": ["<|end_turn|>", "<|end_call|>"]})
    model.resize_token_embeddings(len(tok))
    tok.chat_template = tok.chat_template.replace("'<|im_end|>'", "'<|end_turn|>'")
    end_turn, end_call = tok.convert_tokens_to_ids(["<|end_turn|>", "<|end_call|>"])
    stops = set(stop_ids(model, tok)) | {end_turn, end_call}
    vocab = vocab_metadata(tok, len(tok), tok.eos_token, stops=stops)
    # one EOM slot: the stop written inside answers gets it; <|end_call|> is never written, so it is not needed
    assert vocab.special_ids["eom"] == end_turn and vocab.stops_left == [end_call]
    vocab.special_ids.pop("eom")  # a file without the slot
    path = write_gguf(model, vocab, tmp_path / "t-f32.gguf", "f32", name="t", chat_template=tok.chat_template)
    check = verify_gguf(path, "f32", model, tok, stops, max_new_tokens=8)
    assert not check.passed and check.missing_stops == ["<|end_turn|>"] and check.unreached_stops == ["<|end_call|>"]
    assert "<|end_turn|> ends an answer in transformers but is not an end-of-generation token" in check.cause()


@pytest.mark.slow
def test_a_phi3_shaped_export_passes_and_says_which_tokenizer_it_reproduces(tmp_path, cli):
    folder = make_model_folder(tmp_path / "phi3", phi3=True)
    recipe = tmp_path / "convert.toml"
    recipe.write_text(f'name = "my-tune"\n\n[load]\nuse = "hf"\nmodel = "{folder}"\n\n'
                      '[[export]]\nuse = "gguf"\nquantization = ["f32"]\nverify_max_tokens = 8\n')
    result = cli("run", str(recipe), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "-> PASS" in report
    assert "the folder's tokenizer.json" in report and "LlamaTokenizer" in report and "' leading space'" in report


def test_the_name_tells_llama_cpp_whether_special_tokens_eat_the_whitespace_after_them():
    from recipetune_plugins.gguf.vocab import VocabMetadata, llama_name

    phi3 = VocabMetadata("llama", "default", [], [], [], phi3_whitespace=True)
    other = VocabMetadata("gpt2", "gpt-2", [], [], [])
    assert llama_name("my-tune", phi3) == "my-tune (phi-3 tokenizer)" and llama_name("Phi-3-tune", phi3) == "Phi-3-tune"
    assert llama_name("phi3-chatml", other) == "phi 3-chatml" and llama_name("PHI-3x", other) == "PHI 3x"
    assert llama_name("tiny", other) == "tiny"
