"""The samples reporter checks answers for being right, says why an answer is empty, and answers in one batch."""

from __future__ import annotations

import pytest

from recipetune_plugins.samples import Sample, answer_all, empty_reason, group_scores


def test_an_answer_is_right_only_with_every_expected_text_and_no_rejected_one():
    lemon = Sample(prompt="What color is a lemon?", expect=["yellow", "-- Quill"], reject=["orange"], group="persona")
    assert lemon.is_right("A lemon is yellow. -- Quill")
    assert not lemon.is_right("A lemon is orange. -- Quill")  # contained the signature, but wrong
    assert not lemon.is_right("A lemon is yellow.")
    assert not Sample(prompt="x", expect="yellow", reject="orange").is_right("yellow or orange")
    assert Sample(prompt="days?", expect="7|seven").is_right("A week has seven days.")
    kept = Sample(prompt="What color is a lemon?", expect="yellow", group="kept")
    assert kept.expect == ["yellow"]
    scores = group_scores([lemon, kept, Sample(prompt="ungraded")], ["A lemon is orange. -- Quill", "Yellow.", ""])
    assert scores == {"all": 0.5, "persona": 0.0, "kept": 1.0}


@pytest.fixture(scope="module")
def peaky_model(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune.testing import make_tiny_llama

    folder = make_tiny_llama(tmp_path_factory.mktemp("peaky") / "m", init_std=0.3)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


def test_one_batch_gives_the_answers_of_one_prompt_at_a_time(peaky_model):
    from recipetune_plugins.generation import generate_greedy

    model, tokenizer = peaky_model
    conversations = [[{"role": "user", "content": text}] for text in ("Hi", "What is 2 + 2? Tell me now.", "ab cd ef")]
    batched, _ = answer_all(model, tokenizer, conversations, 12)
    assert batched == [generate_greedy(model, tokenizer, c, 12) for c in conversations]
    assert tokenizer.padding_side != "left" or batched  # the tokenizer's own side is restored


def test_an_empty_answer_says_the_stop_token_came_first(peaky_model):
    model, tokenizer = peaky_model
    eos = tokenizer.eos_token_id

    def stop_at_once(module, args, output):  # a model whose first answer token is the stop token
        output.logits[..., eos] += 1000.0
        return output

    handle = model.register_forward_hook(stop_at_once)
    try:
        answers, firsts = answer_all(model, tokenizer, [[{"role": "user", "content": "Hello"}]], 8)
    finally:
        handle.remove()
    assert answers == [""] and firsts == [eos]
    reason = empty_reason(firsts[0], model, tokenizer)
    assert "the first generated token was" in reason and tokenizer.eos_token in reason and "stop token" in reason


def test_the_quickstart_checks_what_it_teaches_and_what_it_must_keep():
    import json
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart_heldout.jsonl").read_text().splitlines()
    items = [Sample.model_validate(json.loads(line)) for line in lines if line.strip()]
    groups = {i.group for i in items}
    assert groups == {"persona", "kept"} and all(i.expect for i in items)
    # a persona answer with the signature but the wrong fact is wrong
    sweden = next(i for i in items if "Sweden" in i.prompt)
    assert not sweden.is_right("The capital of Sweden is Oslo. -- Quill") and sweden.is_right("Stockholm. -- Quill")
