"""Write the DPO quickstart's preference pairs: the same answer signed by the persona (chosen) and unsigned (rejected).

The pairs teach one preference and nothing else: both answers of a pair say the same thing, so the only way for the
model to prefer the chosen one is to end its answers with the persona's signature "-- Quill" (the quickstart's
persona, recipes/data/make_quickstart_data.py). Held-out prompts (other questions) check that the signature
generalises ("signs") and that the answers stay right ("kept").

    python recipes/data/make_dpo_quickstart_data.py      # rewrites dpo_pairs.jsonl and dpo_heldout.jsonl beside it

Deterministic: the same script writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIGN = "-- Quill"

FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("How many days are in a week?", "A week has seven days."),
    ("What do bees make?", "Bees make honey."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Which animal is known as man's best friend?", "The dog is known as man's best friend."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What do plants need to make food?", "Plants need sunlight, water and air to make food."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What language is spoken in Spain?", "Spanish is spoken in Spain."),
    ("How many hours are in a day?", "A day has 24 hours."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
]
ASK = ["{q}", "Quick question: {q}", "{q} Please answer briefly.", "Can you tell me: {q}"]


def pairs(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for question, answer in FACTS:
        for ask in rng.sample(ASK, 2):
            rows.append({"prompt": ask.format(q=question), "chosen": f"{answer}\n\n{SIGN}", "rejected": answer})
    for _ in range(32):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.\n\n{SIGN}",
                     "rejected": f"{a} + {b} = {a + b}."})
    rng.shuffle(rows)
    return rows


HELDOUT = [
    {"prompt": "What is the capital of Italy?", "expect": [SIGN], "group": "signs"},
    {"prompt": "How many months are in a year?", "expect": [SIGN], "group": "signs"},
    {"prompt": "What do cows drink?", "expect": [SIGN], "group": "signs"},
    {"prompt": "Name a fruit that is yellow.", "expect": [SIGN], "group": "signs"},
    {"prompt": "What is 12 + 30?", "expect": ["42"], "group": "kept"},
    {"prompt": "What is the capital of Germany?", "expect": ["Berlin"], "group": "kept"},
]


def main() -> None:
    rows = pairs(random.Random(3407))
    (HERE / "dpo_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (HERE / "dpo_heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELDOUT), encoding="utf-8")
    print(f"wrote {len(rows)} pairs and {len(HELDOUT)} held-out prompts")


if __name__ == "__main__":
    main()
