#!/usr/bin/env python3
"""Writes kiln's own small sample data sets (no third-party data, standard library only).

- sentiment140.sample.csv: tweet-like texts in the original sentiment140 layout (no header,
  six quoted fields: polarity 0/4, id, date, query, user, text), latin-1 bytes, LF endings,
  balanced positive/negative, with the quirks the real file has (HTML entities, latin-1
  characters).
- alpaca.sample.json: Alpaca-format instruction records (with and without `input`) plus
  multi-turn records (`turns`: alternating human/assistant).
- spanish.sample.jsonl / spanish.heldout.jsonl: the chat-masking experiment's records in the
  research notebook's raw format (`"\n\n### Human: How do you say \"dog\" in Spanish?\n\n###
  Assistant: perro"`): five words to learn and three held out.

Deterministic: the same script writes the same bytes. Run from anywhere:
    python3 data/samples/generate.py
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
rng = random.Random(140)

SUBJECTS = [
    "the new phone", "my morning coffee", "this weather", "the concert last night", "my flight",
    "the pizza place downtown", "work today", "the season finale", "my new headphones", "the bus",
    "this book", "the game", "my internet", "the hotel", "class today", "the update", "lunch",
    "the movie", "my laptop", "the traffic", "the beach trip", "our team", "the new album",
    "the weekend", "this café", "the museum", "my garden", "the test", "the road trip", "dinner",
]
POSITIVE = [
    "is amazing", "made my day", "was so much fun", "is the best", "went perfectly",
    "is exactly what I needed", "turned out great", "was wonderful", "is awesome", "rocks",
    "was better than expected", "makes me so happy", "was lovely", "is brilliant", "was a blast",
]
NEGATIVE = [
    "is terrible", "ruined my day", "was so boring", "is the worst", "went horribly",
    "is a total mess", "turned out awful", "was disappointing", "is broken again", "sucks",
    "was worse than expected", "makes me so sad", "was miserable", "is useless", "was a disaster",
]
POS_TAILS = ["", " :)", " love it!", " can't wait for more", " &lt;3", " thanks everyone!",
             " so good", " best day ever", " #happy", " yay", " highly recommend", " wow",
             " feeling good", " good times", " such a good day"]
NEG_TAILS = ["", " :(", " hate it.", " never again", " ugh", " so annoyed",
             " what a waste", " #fail", " why me", " so tired of this", " not happy", " meh",
             " feeling bad", " so bad", " what a bad day"]
OPENERS = ["", "omg ", "honestly ", "just saw that ", "well ", "ok so ", "@friend ", "lol ",
           "&quot;", "today ", "wow ", "yesterday "]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
USERS = ["anna_b", "coffeeguy", "jülia", "marco88", "sunny_d", "teapot", "zoë_k", "rob_t",
         "lena", "kiwi_fan", "dj_max", "paula.r"]


def tweet(positive: bool) -> str:
    opener = rng.choice(OPENERS)
    subject = rng.choice(SUBJECTS)
    verb = rng.choice(POSITIVE if positive else NEGATIVE)
    tail = rng.choice(POS_TAILS if positive else NEG_TAILS)
    text = f"{opener}{subject} {verb}{tail}"
    if opener == "&quot;":
        text = text + "&quot;"
    if rng.random() < 0.15:
        text = text.capitalize()
    return text


def write_sentiment(path: Path, n_per_class: int) -> None:
    lines = []
    seen = set()
    next_id = 1467810000
    for positive in (False, True):
        made = 0
        while made < n_per_class:
            text = tweet(positive)
            if text in seen:
                continue
            seen.add(text)
            made += 1
            next_id += rng.randint(1, 5000)
            date = f"{rng.choice(DAYS)} Apr {rng.randint(6, 30):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} PDT 2009"
            fields = ["4" if positive else "0", str(next_id), date, "NO_QUERY", rng.choice(USERS), text]
            lines.append(",".join(f'"{f}"' for f in fields))
    rng.shuffle(lines)
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


WORDS = ["apple", "river", "candle", "planet", "garden", "window", "rocket", "pencil", "silver",
         "thunder", "meadow", "button", "lantern", "harbor", "violin", "marble", "forest", "ladder"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
ANIMALS = ["cat", "dog", "horse", "owl", "fox", "rabbit", "whale", "eagle"]


def alpaca_records() -> list:
    records = []
    for a, b in [(rng.randint(2, 60), rng.randint(2, 60)) for _ in range(30)]:
        records.append({"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."})
    for a, b in [(rng.randint(2, 12), rng.randint(2, 12)) for _ in range(20)]:
        records.append({"instruction": "Multiply the two numbers.", "input": f"{a} and {b}", "output": f"{a * b}"})
    for w in WORDS:
        records.append({"instruction": "Reverse the letters of the word.", "input": w, "output": w[::-1]})
        records.append({"instruction": f"How many letters are in the word \"{w}\"?", "input": "", "output": f"The word \"{w}\" has {len(w)} letters."})
    for _ in range(25):
        positive = rng.random() < 0.5
        records.append({
            "instruction": "Classify the sentiment of the tweet as positive or negative.",
            "input": tweet(positive).replace("&quot;", '"').replace("&lt;", "<"),
            "output": "positive" if positive else "negative",
        })
    for c in COLORS:
        records.append({"instruction": f"Write a short sentence that uses the color {c}.", "input": "",
                        "output": f"The {c} kite drifted slowly over the quiet field."})
    for an in ANIMALS:
        records.append({"instruction": "Give the plural of the noun.", "input": an,
                        "output": an + ("es" if an.endswith("x") else "s")})
        records.append({"instruction": f"Is a {an} a mammal? Answer yes or no.", "input": "",
                        "output": "no" if an in ("owl", "eagle") else "yes"})
    for w in WORDS[:10]:
        records.append({"instruction": "Convert the text to upper case.", "input": f"the {w} is here",
                        "output": f"THE {w.upper()} IS HERE"})
    # Multi-turn records: alternating human / assistant turns.
    for a, b in [(rng.randint(2, 30), rng.randint(2, 30)) for _ in range(12)]:
        records.append({"turns": [
            {"role": "human", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a + b}."},
            {"role": "human", "content": "And if you double that?"},
            {"role": "assistant", "content": f"{2 * (a + b)}."},
        ]})
    for w in WORDS[:8]:
        records.append({"turns": [
            {"role": "human", "content": f"Spell the word {w} backwards."},
            {"role": "assistant", "content": w[::-1]},
            {"role": "human", "content": "Now in capital letters?"},
            {"role": "assistant", "content": w[::-1].upper()},
        ]})
    rng.shuffle(records)
    return records


SPANISH = [("dog", "perro"), ("cat", "gato"), ("house", "casa"), ("water", "agua"), ("book", "libro")]
SPANISH_HELD_OUT = [("good", "bueno"), ("red", "rojo"), ("bread", "pan")]


def spanish(pairs) -> str:
    return "".join(
        json.dumps({"text": f"\n\n### Human: How do you say \"{en}\" in Spanish?\n\n### Assistant: {es}"},
                   ensure_ascii=False) + "\n"
        for en, es in pairs)


if __name__ == "__main__":
    (HERE / "spanish.sample.jsonl").write_text(spanish(SPANISH), encoding="utf-8")
    (HERE / "spanish.heldout.jsonl").write_text(spanish(SPANISH_HELD_OUT), encoding="utf-8")
    write_sentiment(HERE / "sentiment140.sample.csv", 300)
    recs = alpaca_records()
    (HERE / "alpaca.sample.json").write_text(json.dumps(recs, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote 600 tweets and {len(recs)} instruction records to {HERE}")
