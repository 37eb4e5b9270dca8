#!/usr/bin/env python3
"""A small English-like corpus made offline from a seeded grammar, for tests and the CPU demo.

Documents are paragraphs of templated sentences over a fixed vocabulary, with recurring
phrases, so a tiny model's loss visibly falls within a few dozen steps. It is not natural
text: use it to see the pipeline work, never to compare models.

    python3 data/synthetic_text.py --docs 2000 --out corpus.jsonl [--seed 0]
"""
import argparse
import json
import random

SUBJECTS = ["the old farmer", "a young engineer", "my neighbour", "the small dog", "our teacher",
            "the city council", "a tired student", "the river", "her brother", "the company"]
VERBS = ["built", "found", "painted", "sold", "carried", "watched", "opened", "repaired",
         "described", "remembered"]
OBJECTS = ["a wooden bridge", "the red door", "an empty house", "two green boxes", "the long road",
           "a quiet garden", "the broken clock", "three new books", "the village market", "a warm coat"]
PLACES = ["near the station", "in the morning", "after the storm", "before dinner",
          "behind the school", "on Sunday", "by the lake", "during the winter"]
REASONS = ["because it was cheap", "so that everyone could see it", "although nobody asked",
           "while the others slept", "since the weather was fine"]
PHRASES = ["As everyone knows,", "In the end,", "Later that year,", "To be honest,", "Once again,"]


def sentence(rng: random.Random) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
    if rng.random() < 0.4:
        s += f" {rng.choice(REASONS)}"
    if rng.random() < 0.3:
        s = f"{rng.choice(PHRASES)} {s}"
    s = s[0].upper() + s[1:] + "."
    if rng.random() < 0.1:
        s += f" It cost {rng.randint(2, 99)} dollars."
    return s


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSONL file to write")
    args = ap.parse_args(argv)
    with open(args.out, "w", encoding="utf-8") as f:
        for d in documents(args.docs, args.seed):
            f.write(json.dumps({"text": d}) + "\n")
    print(f"{args.docs} documents -> {args.out}")


if __name__ == "__main__":
    main()
