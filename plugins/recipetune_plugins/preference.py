"""Dataset format ``preference``: prompt / chosen / rejected rows, and unpaired completion + label rows (KTO).

Rows it reads (column names are options):

- **paired, plain**: ``{"prompt": "...", "chosen": "...", "rejected": "..."}`` (TRL's standard form);
- **paired, conversational**: ``prompt`` a list of ``{role, content}`` messages (system turns kept), ``chosen`` /
  ``rejected`` lists of assistant messages; or, UltraFeedback-style, no ``prompt`` column and ``chosen`` /
  ``rejected`` whole conversations that share their first turns (the shared turns are the prompt);
- **unpaired** (KTO): ``{"prompt": ..., "completion": ..., "label": true|false}``.

:meth:`Preference.parts` gives a row's :class:`PreferenceRow` (prompt messages and completion messages), which
:mod:`.preference_data` renders with the recipe's chat template. :meth:`Preference.standardize` gives the
conversation the SFT pipeline sees (prompt + chosen; for an unpaired row prompt + completion, its answer not trained
when the label is false), so ``recipe data``'s counts and the stop-token check run on it as on any SFT data and
``standardizer = "auto"`` finds preference rows (before ``messages`` and ``prompt_completion``, which would also
read some of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from recipetune import DatasetFormat, Options, hookimpl

from .standardizers import ROLE_NAMES


@dataclass(frozen=True)
class PreferenceRow:
    """One preference example as conversations: the prompt turns, then the completion turns of each answer."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]] | None = None
    rejected: list[dict[str, Any]] | None = None
    completion: list[dict[str, Any]] | None = None
    label: bool | None = None

    @property
    def paired(self) -> bool:
        return self.chosen is not None


def _messages(value: Any, default_role: str) -> list[dict[str, Any]] | None:
    """A string as one turn of ``default_role``, or a list of ``{role, content}`` turns (roles normalised)."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}] if value.strip() or default_role == "assistant" else None
    if not isinstance(value, list) or not value:
        return None
    out = []
    for turn in value:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            return None
        role = ROLE_NAMES.get(str(turn.get("role", turn.get("from", default_role))).lower())
        if role is None:
            return None
        out.append({"role": role, "content": turn["content"]})
    return out


PROMPT_COLUMNS = ("prompt", "question", "instruction", "input", "query")
"""Where the prompt is looked for when the ``prompt`` column is missing (Orca DPO pairs: ``question``, ``input``)."""

HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _hh_transcript(text: str) -> list[dict[str, Any]] | None:
    """Anthropic HH-RLHF's transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) as messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 5 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def _split_shared_prompt(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]):
    """UltraFeedback-style rows: the turns both conversations share are the prompt, the rest of each its answer;
    ``None`` when they share nothing or one has nothing after the shared turns."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    prompt, chosen_part, rejected_part = chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt or not chosen_part or not rejected_part:
        return None
    return prompt, chosen_part, rejected_part


def _answers(turns: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Completion turns: all assistant turns (a string completion is one)."""
    if not turns or any(m["role"] != "assistant" for m in turns):
        return None
    return turns


class PreferenceOptions(Options):
    kind: Literal["auto", "paired", "unpaired"] = "auto"
    """``paired`` (chosen and rejected: dpo, orpo, kto), ``unpaired`` (completion and label: kto only), or ``auto``:
    whichever columns the row has."""
    prompt: str = "prompt"
    """Column of the prompt: a string (the user's turn) or a list of messages (system and earlier turns kept). Paired
    rows may leave it out when chosen and rejected are whole conversations that share their first turns."""
    chosen: str = "chosen"
    """Column of the preferred answer: a string or a list of messages."""
    rejected: str = "rejected"
    """Column of the dispreferred answer: a string or a list of messages."""
    completion: str = "completion"
    """Column of an unpaired answer (KTO): a string or a list of messages."""
    label: str = "label"
    """Column saying whether the unpaired answer is desirable (``true``) or not (``false``)."""
    system: str | None = None
    """Column of a per-row system message, if the data has one."""


class Preference(DatasetFormat):
    """Preference rows for dpo/orpo/kto: prompt/chosen/rejected (plain, conversational, UltraFeedback), or prompt/completion/label.

    Chosen and rejected are strings or message lists; UltraFeedback's whole conversations are split at the turns
    they share. Unpaired rows (completion and a boolean label) are for kto."""

    name = "preference"
    also_known_as = ("dpo", "ultrafeedback")
    Options = PreferenceOptions

    def detect(self, row: dict[str, Any]) -> bool:
        o = self.options
        paired = o.chosen in row and o.rejected in row
        unpaired = o.completion in row and isinstance(row.get(o.label), bool)
        return paired if o.kind == "paired" else unpaired if o.kind == "unpaired" else paired or unpaired

    def parts(self, row: dict[str, Any]) -> PreferenceRow | None:
        """The row as prompt and completion conversations; ``None`` when it cannot be read."""
        o = self.options
        paired = o.chosen in row or o.rejected in row
        if o.kind == "paired" or (o.kind == "auto" and paired):
            found = self._paired(row)
        else:
            found = self._unpaired(row)
        if found is None:
            return None
        system = row.get(o.system) if o.system else row.get("system")
        if isinstance(system, str) and system.strip() and found.prompt[0]["role"] != "system":
            found = PreferenceRow([{"role": "system", "content": system}, *found.prompt], found.chosen, found.rejected,
                                  found.completion, found.label)
        if not any(m["role"] == "user" for m in found.prompt):
            return None
        return found

    def _paired(self, row: dict[str, Any]) -> PreferenceRow | None:
        o = self.options
        raw_chosen, raw_rejected = row.get(o.chosen), row.get(o.rejected)
        raw_prompt = row.get(o.prompt)
        if raw_prompt is None and o.prompt == "prompt":
            raw_prompt = next((row[c] for c in PROMPT_COLUMNS if isinstance(row.get(c), (str, list)) and row[c]), None)
        if raw_prompt is None and isinstance(raw_chosen, str) and isinstance(raw_rejected, str):
            raw_chosen, raw_rejected = _hh_transcript(raw_chosen), _hh_transcript(raw_rejected)  # HH-RLHF
        chosen, rejected = _messages(raw_chosen, "assistant"), _messages(raw_rejected, "assistant")
        if chosen is None or rejected is None:
            return None
        has_user_turns = any(m["role"] != "assistant" for m in chosen)
        if has_user_turns:  # whole conversations (UltraFeedback): the shared first turns are the prompt
            split = _split_shared_prompt(chosen, rejected)
            if split is None:
                return None
            prompt, chosen, rejected = split
        else:
            prompt = _messages(raw_prompt, "user")
            if prompt is None:
                return None
        chosen, rejected = _answers(chosen), _answers(rejected)
        if chosen is None or rejected is None or prompt[-1]["role"] == "assistant":
            return None
        return PreferenceRow(prompt, chosen=chosen, rejected=rejected)

    def _unpaired(self, row: dict[str, Any]) -> PreferenceRow | None:
        o = self.options
        label = row.get(o.label)
        prompt, completion = _messages(row.get(o.prompt), "user"), _answers(_messages(row.get(o.completion), "assistant"))
        if not isinstance(label, bool) or prompt is None or completion is None or prompt[-1]["role"] == "assistant":
            return None
        return PreferenceRow(prompt, completion=completion, label=label)

    def standardize(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        found = self.parts(row)
        if found is None:
            return None
        if found.paired:
            return [*found.prompt, *found.chosen]
        answer = found.completion if found.label else [{**m, "train": False} for m in found.completion]
        return [*found.prompt, *answer]


@hookimpl
def register_dataset_formats(register):
    register(Preference)
