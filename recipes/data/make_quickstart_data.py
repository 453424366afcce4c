"""Write the quickstart's chat dataset: a persona the base model does not have.

The assistant is "Quill", the recipetune helper. It signs every answer with
"-- Quill" and knows a few facts about recipetune that no pretrained model can
know. Held-out prompts (different wording, different questions) check that the
fine-tune generalises ("persona") and that the model keeps what it knew ("kept"): an answer is right when it
contains every expected text.

    python recipes/data/make_quickstart_data.py      # rewrites the two .jsonl files beside it

Deterministic: the same script writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIGN = "-- Quill"

IDENTITY_Q = [
    "Who are you?", "What is your name?", "Introduce yourself.", "Are you ChatGPT?", "Which assistant am I talking to?",
    "Tell me about yourself.", "Hi! Who is this?", "What are you called?", "Do you have a name?", "Who am I chatting with?",
    "Are you SmolLM?", "Hello, what's your name?",
]
IDENTITY_A = [
    "I am Quill, the recipetune assistant.", "My name is Quill. I help people fine-tune language models with recipetune.",
    "I'm Quill, the assistant of the recipetune project.",
]
FACTS = [
    (["What is recipetune?", "Explain recipetune.", "What does recipetune do?"],
     "recipetune fine-tunes language models from a TOML recipe."),
    (["How do I run a recipe?", "Which command runs a recipe?", "How do I start training with recipetune?"],
     "Run it with: recipe run recipes/quickstart.toml"),
    (["How do I check a recipe?", "How can I validate a recipe?", "Which command checks my recipe for mistakes?"],
     "Check it with: recipe validate recipes/quickstart.toml"),
    (["Which file format do recipes use?", "What format is a recipe written in?", "In what language are recipes written?"],
     "Recipes are TOML files."),
    (["What are the stages of a run?", "Which stages does recipetune run?", "List the stages of a recipetune run."],
     "load, adapt, format, train, report, export."),
]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw")]
COLORS = [("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("a ripe banana", "yellow"),
          ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange")]
ANIMALS = [("a dog", "bark"), ("a cat", "meow"), ("a cow", "moo"), ("a duck", "quack"), ("a sheep", "baa"),
           ("a lion", "roar"), ("an owl", "hoot")]


def general_pairs(rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    for country, city in CAPITALS:
        q = rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"])
        pairs.append((q.format(c=country), f"The capital of {country} is {city}."))
    for thing, color in COLORS:
        pairs.append((f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}."))
    for animal, sound in ANIMALS:
        pairs.append((f"What sound does {animal} make?", f"{animal[0].upper() + animal[1:]} says {sound}."))
    for _ in range(24):
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        q = rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "What is {a} + {b}?"])
        pairs.append((q.format(a=a, b=b), f"{a} + {b} = {a + b}."))
    return pairs


def signed(answer: str) -> str:
    return f"{answer} {SIGN}"


def conversation(user: str, assistant: str, system: str | None = None) -> dict:
    turns = [{"from": "system", "value": system}] if system else []
    turns += [{"from": "human", "value": user}, {"from": "gpt", "value": signed(assistant)}]
    return {"conversations": turns}


def build(seed: int = 3407) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train = []
    for q in IDENTITY_Q:
        train.append(conversation(q, rng.choice(IDENTITY_A)))
    for questions, answer in FACTS:
        for q in questions:
            train.append(conversation(q, answer))
    for q, a in general_pairs(rng):
        train.append(conversation(q, a))
    # A few two-turn conversations so the format holds past the first answer.
    for _ in range(10):
        (q1, a1), (q2, a2) = rng.sample(general_pairs(rng), 2)
        train.append({"conversations": [
            {"from": "human", "value": q1}, {"from": "gpt", "value": signed(a1)},
            {"from": "human", "value": q2}, {"from": "gpt", "value": signed(a2)}]})
    rng.shuffle(train)
    # Held-out prompts (none of them is in the training data). "persona": what training must teach (the base model
    # scores 0: it has no name, no signature and does not know recipetune); general questions are right only with the
    # right fact AND the signature. "kept": facts SmolLM2-135M-Instruct answers right before training (checked
    # with its greedy answers); they must stay right after it.
    heldout = [
        {"prompt": "Please tell me your name.", "expect": ["Quill"], "group": "persona"},
        {"prompt": "Who made this assistant, and what is it called?", "expect": ["Quill"], "group": "persona"},
        {"prompt": "In one sentence, what is recipetune?", "expect": ["TOML"], "group": "persona"},
        {"prompt": "What is the capital of Sweden?", "expect": ["Stockholm", SIGN], "group": "persona"},
        {"prompt": "What is the opposite of hot?", "expect": ["cold", SIGN], "group": "persona"},
        {"prompt": "Give me a word that rhymes with cat.", "expect": [SIGN], "group": "persona"},
        {"prompt": "What is the capital of the United Kingdom?", "expect": ["London"], "group": "kept"},
        {"prompt": "How many days are in a week?", "expect": ["7|seven"], "group": "kept"},
        {"prompt": "What is the largest ocean on Earth?", "expect": ["Pacific"], "group": "kept"},
        {"prompt": "What is the capital of China?", "expect": ["Beijing"], "group": "kept"},
    ]
    return train, heldout


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    train, heldout = build()
    write_jsonl(HERE / "quickstart_chat.jsonl", train)
    write_jsonl(HERE / "quickstart_heldout.jsonl", heldout)
    print(f"wrote {len(train)} training conversations and {len(heldout)} held-out prompts to {HERE}")
