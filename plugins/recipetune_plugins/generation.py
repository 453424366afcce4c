"""Greedy generation from a transformers model with a chat template rendered in the sandbox."""

from __future__ import annotations

from typing import Any

from recipetune.data.templating import render


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return render(tokenizer.chat_template, messages, add_generation_prompt=True,
                  bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    gen = getattr(model, "generation_config", None)
    ids = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate_greedy(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 48) -> str:
    """The model's greedy answer to ``messages`` (stopping at the stop token)."""
    import torch

    prompt = chat_prompt(tokenizer, messages)
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids(model, tokenizer),
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True)
    finally:
        if was_training:
            model.train()
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
