"""Loss masks, token by token: with ``train_on = "assistant"`` exactly the answers and their stop token are
trained (nothing of the system prompt, the user turns or the role headers); with ``"all"`` every token.
A dataset with nothing to train on stops the format stage with a clear error; a stop token that is never
trained is warned about loudly. Everything runs through the format stage's own functions."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipetune import UserError, load_recipe
from recipetune.data.pipeline import build_dataset, check_stop_token, format_for_training
from recipetune.testing import make_tokenizer

# what a real Run of one process answers (Run.rank, .world_size and .is_main ask torch.distributed)
ONE_PROCESS = {"rank": 0, "world_size": 1, "is_main": True}

CONVERSATION = [
    {"role": "system", "content": "You are Quill, a helpful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "The answer is 5."},
    {"role": "user", "content": "Hello world! How are you today?"},
    {"role": "assistant", "content": "I am fine, thank you. 🙂"},
]
ANSWERS = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]

# template -> (stop token, the exact text of each trained run: the answer as the template writes it + the stop)
EXPECTED = {
    "chatml": ("<|im_end|>", [f"{a}<|im_end|>" for a in ANSWERS]),
    "llama-3.1": ("<|eot_id|>", [f"{a}<|eot_id|>" for a in ANSWERS]),
    "gemma": ("<end_of_turn>", [f"{a}<end_of_turn>" for a in ANSWERS]),
    "mistral": ("</s>", [f"{a}</s>" for a in ANSWERS]),
    "llama-2": ("</s>", [f" {a} </s>" for a in ANSWERS]),  # the turn is ' answer </s>' after [/INST]
    "phi-3": ("<|end|>", [f"{a}<|end|>" for a in ANSWERS]),  # not the final <|endoftext|>
    "zephyr": ("</s>", [f"{a}</s>" for a in ANSWERS]),
    "qwen-2.5": ("<|im_end|>", [f"{a}<|im_end|>" for a in ANSWERS]),
    "tokenizer": ("<|im_end|>", [f"{a}<|im_end|>" for a in ANSWERS]),  # the tiny tokenizer's own ChatML
}


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_recipe(tmp_path: Path, tokenizer_dir: Path, rows, fmt: str = "", seed: int = 7):
    data = write_rows(tmp_path / "data.jsonl", rows)
    text = f"""
name = "masking"
seed = {seed}

[load]
use = "hf"
model = "{tokenizer_dir}"
max_seq_length = 512

[adapt]
use = "lora"

[format]
dataset = "{data}"
standardizer = "messages"
cache = false
new_tokens = "train"  # the templates of other families add their tokens to this ChatML tokenizer
{fmt}

[train]
use = "sft"
max_steps = 1
"""
    path = tmp_path / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return load_recipe(path)


def load_tok(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def expected_labels(tokenizer, text: str, ids: list[int], trained_texts: list[str]) -> list[int]:
    """Independently of the pipeline: find each trained text in the rendering, in order; a token is trained
    when it starts inside one of them."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    regions, cursor = [], 0
    for piece in trained_texts:
        at = text.index(piece, cursor)
        regions.append((at, at + len(piece)))
        cursor = at + len(piece)
    return [tid if any(a <= start < b for a, b in regions) else -100
            for tid, (start, _end) in zip(ids, enc["offset_mapping"])]


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_assistant_only_masks_token_by_token(tmp_path, tokenizer_dir, template):
    stop, trained_texts = EXPECTED[template]
    recipe = make_recipe(tmp_path, tokenizer_dir, [{"messages": CONVERSATION}], f'chat_template = "{template}"')
    tok = load_tok(tokenizer_dir)
    dataset = build_dataset(recipe, tok)
    (sample,) = list(dataset.train)
    ids, labels, text = sample["input_ids"], sample["labels"], sample["text"]

    assert labels == expected_labels(tok, text, ids, trained_texts)
    # the trained tokens read back as exactly the answers and their stop tokens
    runs, current = [], []
    for tid, label in zip(ids, labels):
        if label != -100:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    assert runs == trained_texts
    stop_id = tok.convert_tokens_to_ids(stop)
    assert sum(1 for x in labels if x == stop_id) == len(ANSWERS)
    untrained = tok.decode([t for t, x in zip(ids, labels) if x == -100])
    for message in CONVERSATION:
        if message["role"] != "assistant":
            assert message["content"] in untrained  # system and user text: never trained
    assert dataset.stats["samples_with_trained_stop_token"] == 1
    assert check_stop_token(dataset.stats, "assistant") is None


@pytest.mark.parametrize("template", ["chatml", "llama-3.1", "gemma", "alpaca"])
def test_train_on_all_trains_every_token(tmp_path, tokenizer_dir, template):
    recipe = make_recipe(tmp_path, tokenizer_dir, [{"messages": CONVERSATION}],
                         f'chat_template = "{template}"\ntrain_on = "all"')
    (sample,) = list(build_dataset(recipe, load_tok(tokenizer_dir)).train)
    assert sample["labels"] == sample["input_ids"]
    assert len(sample["input_ids"]) > 40


def test_alpaca_and_vicuna_train_the_answer_and_eos(tmp_path, tokenizer_dir):
    rows = [{"messages": CONVERSATION[:3]}]
    tok = load_tok(tokenizer_dir)
    for template, lead in (("alpaca", ""), ("vicuna", " ")):
        recipe = make_recipe(tmp_path, tokenizer_dir, rows, f'chat_template = "{template}"')
        (sample,) = list(build_dataset(recipe, tok).train)
        trained = [t for t, x in zip(sample["input_ids"], sample["labels"]) if x != -100]
        assert tok.decode(trained) == f"{lead}The answer is 5.<|im_end|>", template


def test_truncation_keeps_the_mask_aligned(tmp_path, tokenizer_dir):
    recipe = make_recipe(tmp_path, tokenizer_dir, [{"messages": CONVERSATION}],
                         'chat_template = "chatml"\nmax_seq_length = 40')
    tok = load_tok(tokenizer_dir)
    (sample,) = list(build_dataset(recipe, tok).train)
    full = tok(sample["text"], add_special_tokens=False)["input_ids"]
    assert len(sample["input_ids"]) == 40 and sample["input_ids"] == full[:40]
    assert sample["labels"] == expected_labels(tok, sample["text"], full, EXPECTED["chatml"][1])[:40]


# ---------------------------------------------------------------- nothing to train on
def test_no_trained_token_stops_the_format_stage_with_count_and_example(tmp_path, tokenizer_dir):
    long_system = "You are Quill. " * 40
    rows = [{"messages": [{"role": "system", "content": long_system + str(i)}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}]} for i in range(5)]
    recipe = make_recipe(tmp_path, tokenizer_dir, rows, 'chat_template = "chatml"\nmax_seq_length = 32')
    with pytest.raises(UserError) as info:
        build_dataset(recipe, load_tok(tokenizer_dir))
    message = str(info.value)
    assert "none of the 5 samples has a token to train on" in message
    assert "5 without trained tokens" in message
    assert "format.train_on = 'assistant'" in message and "max_seq_length" in message
    assert "Example sample:\n<|im_start|>system\nYou are Quill." in message
    assert "Traceback" not in message


def test_some_samples_without_trained_tokens_are_dropped_and_counted(tmp_path, tokenizer_dir):
    rows = [{"messages": CONVERSATION}, {"messages": [{"role": "system", "content": "x " * 200},
                                                      {"role": "user", "content": "a"},
                                                      {"role": "assistant", "content": "b"}]}]
    recipe = make_recipe(tmp_path, tokenizer_dir, rows, 'chat_template = "chatml"\nmax_seq_length = 64')
    stats = build_dataset(recipe, load_tok(tokenizer_dir)).stats
    assert stats["samples"] == 1 and stats["dropped_no_trained_tokens"] == 1


# ---------------------------------------------------------------- the stop-token check
OWN_TEMPLATE_WITHOUT_EOS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_template_that_never_writes_the_stop_token_warns_loudly(tmp_path, caplog):
    tok = make_tokenizer()
    tok.chat_template = OWN_TEMPLATE_WITHOUT_EOS  # its turns do not end with <|im_end|>, the EOS
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    recipe = make_recipe(tmp_path, folder, [{"messages": CONVERSATION}] * 3, 'chat_template = "tokenizer"')
    run = SimpleNamespace(recipe=recipe, logger=logging.getLogger("recipetune.test"), state={}, **ONE_PROCESS)
    loaded = SimpleNamespace(tokenizer=load_tok(folder), model=None, max_seq_length=512)
    with caplog.at_level(logging.WARNING, logger="recipetune.test"):
        dataset = format_for_training(run, loaded)
    assert len(dataset.train) == 3
    assert run.state["format_stats"]["samples_with_trained_stop_token"] == 0
    warning = run.state["format_stats"]["stop_token_warning"]
    assert warning.startswith("the stop token '<|im_end|>' is not among the trained tokens of any sample")  # the log adds the level
    assert "will not learn to stop" in warning
    assert any(r.levelno == logging.WARNING and "not among the trained tokens" in r.getMessage() for r in caplog.records)


def test_train_on_all_with_such_a_template_still_warns(tmp_path):
    tok = make_tokenizer()
    tok.chat_template = OWN_TEMPLATE_WITHOUT_EOS
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    recipe = make_recipe(tmp_path, folder, [{"messages": CONVERSATION}], 'train_on = "all"')
    stats = build_dataset(recipe, load_tok(folder)).stats
    assert "not among the trained tokens" in (check_stop_token(stats, "all") or "")


def test_stop_token_cut_off_by_truncation_in_most_samples_warns(tmp_path, tokenizer_dir):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 100}]
    rows = [{"messages": short}] + [{"messages": long}] * 3
    recipe = make_recipe(tmp_path, tokenizer_dir, rows, 'chat_template = "chatml"\nmax_seq_length = 48')
    stats = build_dataset(recipe, load_tok(tokenizer_dir)).stats
    assert stats["truncated"] == 3 and stats["samples_with_trained_stop_token"] == 1
    assert check_stop_token(stats, "assistant") is None  # the truncated ones cannot have it: not their fault
    stats = {**stats, "truncated": 0, "samples_with_trained_stop_token": 1}
    assert "trained in only 1 of 4 samples" in check_stop_token(stats, "assistant")


def test_a_stop_token_the_tokenizer_cannot_write_as_one_token_warns():
    stats = {"stop_token": "<|eot|>", "stop_token_id": None, "samples": 3}
    assert "is not a single token of the tokenizer" in check_stop_token(stats, "assistant")


# ---------------------------------------------------------------- the fast label paths agree with the offsets
@pytest.mark.parametrize("style", ["gpt2", "smollm", "llama3", "qwen2"])
def test_label_paths_agree_with_the_tokenizer_offsets(style):
    """Labels from token byte lengths (byte-level BPE, no offsets tracked) and from bisection over the
    offsets equal the labels from every token's offsets, on text with multi-byte characters split
    across tokens, whitespace runs and spans that start or end inside a token."""
    import random

    import numpy as np

    from recipetune.data.encode import _backend, _byte_span_labels, _labels, _span_labels, byte_lengths

    tok = make_tokenizer(style=style)
    backend = _backend(tok)
    lengths = byte_lengths(backend)
    assert lengths is not None
    rng = random.Random(style)
    pieces = ["Hello", " world", "  ", "\n", "\t", "🙂", "你好", "Ünïcödé", "é", "<|im_end|>", "<|im_start|>",
              "123456", " 7", "👩‍💻", "x", "?!", "ß"]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, 2 * rng.randint(1, 3))))
        spans = [(cuts[i], cuts[i + 1], rng.random() < 0.7) for i in range(0, len(cuts) - 1, 2)]
        enc = backend.encode(text, add_special_tokens=False)
        ids = np.array(enc.ids, dtype=np.int32)
        expected = _labels(ids, np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), spans)
        assert np.array_equal(_span_labels(enc, ids, spans), expected), (text, spans)
        fast_ids = np.array(backend.encode_batch_fast([text], add_special_tokens=False)[0].ids, dtype=np.int32)
        assert np.array_equal(fast_ids, ids)
        assert np.array_equal(_byte_span_labels(text, ids, lengths, spans), expected), (text, spans)


def test_a_tokenizer_that_is_not_byte_level_uses_its_offsets():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from recipetune.data.encode import byte_lengths

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert byte_lengths(tok) is None
    bpe = make_tokenizer().backend_tokenizer
    bpe.normalizer = normalizers.Lowercase()
    assert byte_lengths(bpe) is None


def test_a_stop_token_that_is_also_the_unknown_token_is_counted_as_trained(tmp_path):
    """GPT-2-style tokenizers use <|endoftext|> as unknown and end-of-text token: still a real token."""
    from transformers import AutoTokenizer

    tok = make_tokenizer()
    tok.unk_token = tok.eos_token = "<|endoftext|>"
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    rows = [{"messages": CONVERSATION[1:3]}] * 3
    recipe = make_recipe(tmp_path, folder, rows, 'chat_template = "alpaca"')
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.unk_token == tokenizer.eos_token == "<|endoftext|>"
    stats = build_dataset(recipe, tokenizer).stats
    assert stats["stop_token"] == "<|endoftext|>" and stats["stop_token_id"] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert stats["samples_with_trained_stop_token"] == 3
    assert check_stop_token(stats, "assistant") is None


def test_no_chat_template_is_a_clear_error_except_for_plain_text(tmp_path):
    from transformers import AutoTokenizer

    tok = make_tokenizer()
    tok.chat_template = None  # a base model
    folder = tmp_path / "base"
    tok.save_pretrained(folder)
    recipe = make_recipe(tmp_path, folder, [{"messages": CONVERSATION[1:3]}])
    with pytest.raises(UserError, match='format.chat_template: the tokenizer has no chat template of its own'):
        build_dataset(recipe, AutoTokenizer.from_pretrained(folder))
    data = write_rows(tmp_path / "text.jsonl", [{"text": "Plain text to continue pretraining on."}] * 2)
    path = tmp_path / "text.toml"
    path.write_text(f'name = "t"\n\n[load]\nuse = "hf"\nmodel = "{folder}"\n\n[adapt]\nuse = "lora"\n\n[format]\n'
                    f'dataset = "{data}"\nstandardizer = "text"\ncache = false\n\n[train]\nuse = "sft"\nmax_steps = 1\n')
    stats = build_dataset(load_recipe(path), AutoTokenizer.from_pretrained(folder)).stats
    assert stats["samples"] == 2 and stats["trained_tokens"] == stats["tokens"]


def test_truncated_counts_only_the_samples_kept(tmp_path, tokenizer_dir):
    long_prompt = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    short = {"messages": CONVERSATION[1:3]}
    recipe = make_recipe(tmp_path, tokenizer_dir, [long_prompt, short], "max_seq_length = 64")
    stats = build_dataset(recipe, load_tok(tokenizer_dir)).stats
    assert stats["dropped_no_trained_tokens"] == 1  # the answer was cut off with the prompt's end
    assert stats["truncated"] == 0 and stats["samples"] == 1


def test_the_trainer_does_not_cut_samples_the_format_stage_kept_whole(tmp_path):
    """format.max_seq_length may exceed load.max_seq_length: the samples (and the stop tokens checked in them) are
    trained as formatted, not cut again by TRL at the load length."""
    from recipetune_plugins.sft import SFTOptions, SFTTrainer

    trainer = SFTTrainer(SFTOptions(max_steps=1, optim="adamw_torch"))
    run = SimpleNamespace(checkpoints_dir=tmp_path, state={"format_stats": {"max_seq_length": 4096}},
                          recipe=SimpleNamespace(seed=1), **ONE_PROCESS)
    config = trainer.config(run, SimpleNamespace(max_seq_length=256), has_eval=False)
    assert config.max_length == 4096
    run.state["format_stats"]["max_seq_length"] = 128
    assert trainer.config(run, SimpleNamespace(max_seq_length=256), has_eval=False).max_length == 256


def test_a_template_that_rewrites_earlier_answers_is_refused_not_masked_wrongly():
    """Qwen3-style: earlier assistant turns lose their reasoning once the conversation goes on. Prefix renderings
    then miss the first answer; that must be an error (the sample is dropped and counted), never a silent
    untrained answer."""
    from recipetune.data.templating import assistant_spans

    template = ("{%- for m in messages %}{%- if m.role == 'assistant' and not loop.last %}"
                "{{ '<|im_start|>assistant\\n' + m.content.split('</think>')[-1] + '<|im_end|>\\n' }}"
                "{%- else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
                "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>r</think>a"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match="writes an earlier assistant turn differently"):
        assistant_spans(template, messages)
    text, spans = assistant_spans(template, messages[:2])  # one answer: nothing is rewritten
    assert [text[s.start:s.end] for s in spans] == ["<think>r</think>a<|im_end|>\n"]
