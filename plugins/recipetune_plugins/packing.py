"""Packing: several conversations in one row, each attending only to itself.

The format stage hands over conversations already tokenized and masked (``input_ids``, ``labels``).
Packing places them in rows of ``window`` tokens by best-fit decreasing (TRL's ``pack_dataset(...,
strategy="bfd")``, run over the whole dataset at once so every row is filled from all conversations),
never splitting a conversation unless it is longer than the window (then it is cut, and counted).

The collator here is ours, not TRL's ``DataCollatorForLanguageModeling``: that collator rebuilds labels
from ``input_ids`` and completion masks, while ours keeps the format stage's labels exactly. Each
micro-batch becomes one flat row with no padding at all:

- ``position_ids`` restart at 0 for every conversation and no ``attention_mask`` is sent. transformers
  (``masking_utils.find_packed_sequence_indices``) then builds a block-diagonal causal mask for SDPA /
  eager attention and uses the variable-length kernel for flash-attention; Unsloth infers its
  ``packed_seq_lengths`` from the same position ids, and on the unsloth backend we send them too.
- The first label of every conversation is -100: the model's shifted loss would otherwise train the
  last token of one conversation to predict the first token of the next. Unpacked, that first label
  is never used either (nothing predicts position 0), so the trained tokens are exactly the same.

``tests/test_packing.py`` proves, on a tiny Llama, that per-conversation losses and gradients of a
packed batch equal those of the same conversations run one by one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .sft import expected_pad_fraction

IGNORE = -100

PROVEN_MODEL_TYPES = frozenset({"llama"})
"""Model types whose packed attention is proven equal to unpacked (tests/test_packing.py on the hf backend,
tests/test_packing.py's GPU test on unsloth). Other types pack only when ``train.packing = true``."""

MASKED_ATTENTION = frozenset({None, "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"})
"""hf attention implementations that keep packed conversations apart given restarting position ids."""

MIN_PAD_FRACTION = 0.05
"""Below this expected fraction of pad tokens in padded batches, "auto" leaves packing off: nothing to save."""


@dataclass
class PackingDecision:
    on: bool
    reason: str


@dataclass
class PackingStats:
    """What packing did, for the log, the plan and the report."""

    conversations: int
    rows: int
    window: int
    tokens: int
    truncated: int
    truncated_tokens: int

    @property
    def fill(self) -> float:
        return self.tokens / (self.rows * self.window) if self.rows else 0.0

    def describe(self) -> str:
        cut = (f"; {self.truncated} conversation(s) longer than the window were cut ({self.truncated_tokens} tokens lost)"
               if self.truncated else "; no conversation cut")
        return (f"packed {self.conversations} conversations into {self.rows} rows of {self.window} tokens "
                f"({self.conversations / max(self.rows, 1):.1f} per row, {100 * self.fill:.0f}% full){cut}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fill": round(self.fill, 4)}


def decide(option: bool | str, backend: str, model_type: str | None, attn_implementation: str | None,
           lengths: list[int], batch_size: int, window: int) -> PackingDecision:
    """Whether to pack, and why (shown in the log and the plan)."""
    if option is True:
        if backend == "hf" and attn_implementation not in MASKED_ATTENTION:
            return PackingDecision(False, f"train.packing = true, but attention {attn_implementation!r} is not one that "
                                          "keeps packed conversations apart (sdpa, eager, flash_attention_2): padded batches")
        return PackingDecision(True, "train.packing = true")
    if option is False:
        return PackingDecision(False, "train.packing = false")
    if backend not in ("hf", "unsloth"):
        return PackingDecision(False, f"auto: packing is proven for the hf and unsloth backends, not {backend!r}")
    if model_type not in PROVEN_MODEL_TYPES:
        return PackingDecision(False, f"auto: packed attention is proven for {', '.join(sorted(PROVEN_MODEL_TYPES))} "
                                      f"models, not {model_type!r} (train.packing = true packs anyway)")
    if backend == "hf" and attn_implementation not in MASKED_ATTENTION:
        return PackingDecision(False, f"auto: attention {attn_implementation!r} does not keep packed conversations apart")
    if not lengths:
        return PackingDecision(False, "auto: no training samples")
    pad = expected_pad_fraction(lengths, batch_size)
    mean = sum(lengths) / len(lengths)
    if pad < MIN_PAD_FRACTION and mean > window / 2:
        return PackingDecision(False, f"auto: batches hold {100 * pad:.1f}% padding and samples fill the window; "
                                      "packing would save nothing")
    return PackingDecision(True, f"auto: padded batches would be {100 * pad:.0f}% padding and a {window}-token row "
                                 f"holds {window / mean:.1f} average samples")


def pack(samples: list[dict[str, Any]], window: int):
    """``samples`` (dicts with ``input_ids`` and ``labels``) packed best-fit decreasing into rows of at most
    ``window`` tokens: a ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``seq_lengths``, and its stats."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    rows = [{"input_ids": list(s["input_ids"]), "labels": list(s["labels"])} for s in samples if len(s["input_ids"])]
    long = [len(r["input_ids"]) for r in rows if len(r["input_ids"]) > window]
    data = Dataset.from_list(rows)
    # One map batch over the whole dataset: best fit looks at every conversation, not chunks of 1000.
    packed = pack_dataset(data, window, strategy="bfd", map_kwargs={"batch_size": max(len(rows), 1)})
    tokens = sum(min(len(r["input_ids"]), window) for r in rows)
    stats = PackingStats(conversations=len(rows), rows=len(packed), window=window, tokens=tokens,
                         truncated=len(long), truncated_tokens=sum(n - window for n in long))
    return packed, stats


class PackedCollator:
    """Flattens a micro-batch of packed rows into one row: position ids restart per conversation, the first
    label of each conversation is masked, no padding and no attention mask.

    ``send_lengths``: also send ``packed_seq_lengths`` (Unsloth's name for the conversation lengths).
    """

    def __init__(self, send_lengths: bool = False):
        self.send_lengths = send_lengths

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lengths: list[int] = []
        for row in rows:
            row_ids, row_labels = list(row["input_ids"]), list(row["labels"])
            seq_lengths = [int(n) for n in (row.get("seq_lengths") or [len(row_ids)])]
            if sum(seq_lengths) != len(row_ids):
                raise ValueError(f"packed row of {len(row_ids)} tokens with conversation lengths summing to {sum(seq_lengths)}")
            start = 0
            for n in seq_lengths:
                ids += row_ids[start:start + n]
                labels += [IGNORE] + row_labels[start + 1:start + n]
                positions += range(n)
                lengths.append(n)
                start += n
        batch = {"input_ids": torch.tensor([ids], dtype=torch.long),
                 "labels": torch.tensor([labels], dtype=torch.long),
                 "position_ids": torch.tensor([positions], dtype=torch.long)}
        if self.send_lengths:
            batch["packed_seq_lengths"] = torch.tensor(lengths, dtype=torch.int32)
        return batch


@dataclass
class PackedTraining:
    """What the sft trainer needs to train packed: datasets, collator, SFTConfig overrides and the stats."""

    train: Any
    validation: Any
    collator: PackedCollator
    config: dict[str, Any]
    stats: PackingStats
    decision: PackingDecision


def model_facts(model: Any) -> tuple[str | None, str | None]:
    """The model's type and attention implementation (under a peft wrapper too)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    attn = getattr(config, "_attn_implementation", None) or getattr(config, "attn_implementation", None)
    return model_type, attn


def sample_limit(run: Any, loaded: Any) -> int:
    """The longest a sample may be: the format stage's cut (format.max_seq_length) or load.max_seq_length."""
    return max(filter(None, [loaded.max_seq_length, run.state.get("format_stats", {}).get("max_seq_length")]))


AUTO_MAX_TOKENS = 16384
"""The largest micro-batch "auto" makes: 8 rows of 2048, measured 1.8x the throughput of 2 rows x 4 accumulation on an
H200 at 1B with the same losses (docs/benchmarks.md); beyond it the gain is small and activation memory grows."""


def micro_batch(run: Any, rows: int, accumulation: int, window: int, tokens_per_batch: int | str | None,
                ) -> tuple[int, int, str | None]:
    """(rows per micro-batch, accumulation steps, why) keeping rows x accumulation, the effective batch, unchanged.

    "auto" on a GPU: as many rows as fit (the memory estimate against this GPU's memory, up to
    :data:`AUTO_MAX_TOKENS` tokens); on a CPU or without an estimate: the recipe's own. An integer: at most that many
    tokens per micro-batch."""
    effective = rows * accumulation
    if tokens_per_batch is None:
        return rows, accumulation, None
    if tokens_per_batch == "auto":
        import torch

        if not torch.cuda.is_available():
            return rows, accumulation, None
        from .memory_estimate import recipe_estimate

        est = recipe_estimate(run.recipe, on_gpu=True)
        if est is None:
            return rows, accumulation, "train.tokens_per_batch auto: no memory estimate for this model; the recipe's batch"
        free, _total = torch.cuda.mem_get_info()
        capacity = (free + torch.cuda.memory_reserved()) / 2**30  # what this process can hold in all
        limit = min(AUTO_MAX_TOKENS, est.max_tokens(capacity))
        source = f"auto (fits ~{est.max_tokens(capacity)} tokens in {capacity:.0f} GiB, capped at {AUTO_MAX_TOKENS})"
    else:
        limit, source = int(tokens_per_batch), f"{tokens_per_batch}"
    fit = max(1, limit // window)
    best = max(d for d in range(1, effective + 1) if effective % d == 0 and d <= fit)
    if tokens_per_batch == "auto" and best <= rows:
        return rows, accumulation, None  # auto never shrinks the recipe's micro-batch: the fit check covers that
    return best, effective // best, (f"train.tokens_per_batch {source}: {best} rows x {effective // best} accumulation "
                                     f"(was {rows} x {accumulation}; the same {effective} rows per optimizer step)")


def prepare(run: Any, loaded: Any, dataset: Any, options: Any) -> PackedTraining | None:
    """Pack the format stage's samples when ``options.packing`` says so (``None`` when training stays unpacked).

    ``options``: the sft trainer's (packing, packing_length, per_device_train_batch_size, gradient_accumulation_steps,
    tokens_per_batch). Rows are ``packing_length`` tokens (default: the longest a sample may be, so none is cut).
    """
    option, batch_size = options.packing, options.per_device_train_batch_size
    max_length = sample_limit(run, loaded)
    window = options.packing_length or max_length
    lengths = [len(s["input_ids"]) for s in dataset.train]
    model_type, attn = model_facts(loaded.model)
    decision = decide(option, loaded.backend, model_type, attn, lengths, batch_size, window)
    run.logger.info("train.packing: %s (%s)", "on" if decision.on else "off", decision.reason)
    run.state["packing"] = {"on": decision.on, "reason": decision.reason}
    if not decision.on:
        return None
    train, stats = pack(dataset.train, window)
    validation = pack(dataset.validation, window)[0] if dataset.validation else None
    from .distributed import accumulation_steps  # train.global_batch_size sets it for the processes there are

    rows, accumulation, why = micro_batch(run, batch_size, accumulation_steps(run, options), window,
                                          getattr(options, "tokens_per_batch", None))
    run.logger.info("train.packing: %s; %d rows per micro-batch", stats.describe(), rows)
    if why:
        run.logger.info("%s", why)
    if stats.truncated:
        run.logger.warning("train.packing: %d conversation(s) are longer than the %d-token window and were cut; "
                           "raise train.packing_length to keep them whole", stats.truncated, window)
    run.state["packing"].update(stats.as_dict(), rows_per_micro_batch=rows, accumulation=accumulation)
    # remove_unused_columns=False: the trainer must hand seq_lengths to the collator. packing/padding_free False:
    # the rows are packed already, and TRL/Unsloth must not pack or re-collate them again.
    config = {"packing": False, "padding_free": False, "remove_unused_columns": False, "max_length": max(window, max_length),
              "per_device_train_batch_size": rows, "gradient_accumulation_steps": accumulation}
    return PackedTraining(train, validation, PackedCollator(send_lengths=loaded.backend == "unsloth"), config, stats,
                          decision)


def plan_line(recipe: Any, options: Any) -> str:
    """What the plan says about packing before the data is read (``recipe plan`` shows the decision for the data)."""
    if options.packing is False:
        return "packing off (train.packing = false): padded batches"
    window = options.packing_length or (recipe.format.max_seq_length if recipe.format is not None and
                                        recipe.format.max_seq_length else getattr(recipe.load.options, "max_seq_length", None))
    when = ("on" if options.packing is True else
            f"auto: on for {', '.join(sorted(PROVEN_MODEL_TYPES))} models on hf/unsloth when padded batches would hold "
            f"padding (proven equal to unpacked training)")
    micro = {"auto": "as many rows per micro-batch as fit on a GPU", None: "rows = per_device_train_batch_size"}.get(
        options.tokens_per_batch, f"at most {options.tokens_per_batch} tokens per micro-batch")
    return f"packing {when}; rows of {window} tokens; {micro}"
