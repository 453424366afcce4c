"""Write the two extra datasets of ``recipes/mixture.toml`` (the third is the quickstart's chat data).

``tools_chat.jsonl``  OpenAI-format conversations where Quill calls tools (a calculator, a unit converter,
                      a recipe validator) and answers from their results: ``messages`` with ``tool_calls``
                      and ``tool`` turns, and a ``tools`` column of JSON schemas.
``facts_qa.csv``      question/answer rows about recipetune's data features, read with the ``alpaca``
                      standardizer under other column names.

    python recipes/data/make_mixture_data.py      # rewrites the two files beside it

Deterministic: the same script writes the same files.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIGN = "-- Quill"

CALCULATOR = {"type": "function", "function": {
    "name": "calculate", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_units", "description": "Convert a value from one unit to another.",
    "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                                    "to_unit": {"type": "string"}},
                   "required": ["value", "from_unit", "to_unit"]}}}
VALIDATE = {"type": "function", "function": {
    "name": "validate_recipe", "description": "Check a recipetune recipe file and list its problems.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
FACTORS = {("km", "mi"): 0.621371, ("kg", "lb"): 2.204623, ("m", "ft"): 3.280840, ("l", "gal"): 0.264172}


def _call(i: int, name: str, arguments: dict) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_conversations(n: int = 36, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a, b = rng.randint(12, 999), rng.randint(2, 99)
            op = rng.choice(["*", "+", "-"])
            expression = f"{a} {op} {b}"
            result = eval(expression)  # noqa: S307 - two integers and one operator written here
            question, call = f"What is {a} {op} {b}?", _call(i, "calculate", {"expression": expression})
            output, answer = str(result), f"{expression} = {result}. {SIGN}"
        elif kind == 1:
            (unit, other), factor = rng.choice(sorted(FACTORS.items()))
            value = rng.randint(2, 500)
            converted = round(value * factor, 2)
            question = f"How many {other} is {value} {unit}?"
            call = _call(i, "convert_units", {"value": value, "from_unit": unit, "to_unit": other})
            output, answer = json.dumps({"value": converted, "unit": other}), f"{value} {unit} is {converted} {other}. {SIGN}"
        else:
            name = rng.choice(["quickstart", "mixture", "llama32_finetome", "my_run"])
            broken = name == "my_run"
            question = f"Can you check recipes/{name}.toml for me?"
            call = _call(i, "validate_recipe", {"path": f"recipes/{name}.toml"})
            output = ("recipes/my_run.toml:12:1: train.learnig_rate: unknown key; did you mean \"learning_rate\"?"
                      if broken else "ok: no problems")
            answer = (f"It has one problem: line 12 spells learnig_rate; write learning_rate. {SIGN}" if broken
                      else f"recipes/{name}.toml is valid. {SIGN}")
        rows.append({"tools": [CALCULATOR, CONVERT, VALIDATE], "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": output},
            {"role": "assistant", "content": answer},
        ]})
    return rows


FACTS = [
    ("How do I train on several datasets at once?",
     "Write one [[format.datasets]] table per dataset and choose format.mix: concat, weighted or interleave."),
    ("What does mix = \"weighted\" do?",
     "Each dataset gets a share of the rows in proportion to its weight, picked with the recipe's seed."),
    ("What does mix = \"interleave\" do?", "It takes one row of each dataset in turn, until one of them runs out."),
    ("How do I take exactly 500 rows of one dataset?", "Set rows = 500 in that dataset's [[format.datasets]] table."),
    ("Can I write a chat template in the recipe?",
     "Yes: chat_template = { jinja = \"\"\"...\"\"\", stop_token = \"...\" }, or a path to a .jinja file."),
    ("Which templates render tool calls?", "llama-3.1, qwen-2.5, the model's own template, or one you write."),
    ("Are tool results trained on?", "No: the loss covers the assistant's tool calls and answers, not the tool results."),
    ("How do I skip training on one answer?", "Give that assistant turn train = false or weight = 0."),
    ("Where do I see each dataset's share?",
     "recipe data prints each dataset's samples and trained tokens; the report has the same table."),
    ("Does the cache notice a changed dataset?", "Yes: the cache key covers every dataset of a mixture and its options."),
]


def facts_rows() -> list[dict]:
    return [{"question": q, "reply": f"{a} {SIGN}"} for q, a in FACTS]


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["question", "reply"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    (HERE / "tools_chat.jsonl").write_text(jsonl_text(tool_conversations()), encoding="utf-8")
    (HERE / "facts_qa.csv").write_text(csv_text(facts_rows()), encoding="utf-8")


if __name__ == "__main__":
    main()
