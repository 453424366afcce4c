"""Greedy generation from a transformers model with a chat template rendered in the sandbox."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

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


@contextmanager
def generation_mode(model: Any, fast: Any = None) -> Iterator[None]:
    """Put ``model`` in inference mode for the block, then back.

    ``fast`` is Unsloth's ``FastLanguageModel`` (``Loaded.extras["unsloth"]``) when the
    model came from the unsloth backend: its ``for_inference`` turns on the fast
    generation path and ``for_training`` turns it off again (a model left in
    inference mode would train on the generation path). Otherwise ``eval()`` and
    back to ``train()`` when it was training.
    """
    was_training = model.training
    if fast is not None:
        fast.for_inference(model)
    else:
        model.eval()
    try:
        yield
    finally:
        if fast is not None:
            fast.for_training(model)
            if not was_training:
                model.eval()
        elif was_training:
            model.train()


def generate_greedy(model: Any, tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int = 48,
                    fast: Any = None) -> str:
    """The model's greedy answer to ``messages`` (stopping at the stop token).

    ``fast``: Unsloth's ``FastLanguageModel`` for a model of the unsloth backend (see :func:`generation_mode`).
    """
    import torch

    prompt = chat_prompt(tokenizer, messages)
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
    with generation_mode(model, fast), torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids(model, tokenizer),
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def fast_class(loaded: Any) -> Any:
    """Unsloth's ``FastLanguageModel`` when ``loaded`` came from the unsloth backend, else None."""
    if loaded is None or getattr(loaded, "backend", None) != "unsloth":
        return None
    return (getattr(loaded, "extras", None) or {}).get("unsloth")
