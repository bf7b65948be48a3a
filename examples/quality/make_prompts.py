"""Writes prompts.jsonl: 200 teacher prompts, some of them made to be left out, one way each
(the simulator's markers: simulator/answers.py)."""

import json
import random

TOPICS = [
    "photosynthesis",
    "binary search",
    "compound interest",
    "volcanoes",
    "the immune system",
    "supply and demand",
    "black holes",
    "sourdough bread",
    "plate tectonics",
    "recursion",
]
FORMS = [
    "Explain {} to a curious twelve-year-old.",
    "What are the most common misconceptions about {}?",
    "Write a short history of how people came to understand {}.",
    "Give three everyday examples that involve {}.",
    "How would you teach {} with a drawing?",
    "What question about {} is still open, and why?",
    "Compare {} with an idea it is often confused with.",
    "Summarise {} in one paragraph for a newspaper.",
    "Which numbers matter most when talking about {}?",
    "Describe an experiment that shows {} at work.",
    "What goes wrong when people ignore {}?",
    "List the words a beginner must know before studying {}.",
    "Tell a story in which {} saves the day.",
    "Why should a busy adult care about {}?",
    "Design a quiz of five questions on {}.",
]
rng = random.Random(17)
rows = []
for form in FORMS:
    for topic in TOPICS:
        rows.append({"prompt": form.format(topic), "metadata": {"topic": topic}})
rows += [dict(r) for r in rows[:6]]  # asked again word for word: exact duplicates
rows += [
    {"prompt": r["prompt"].upper().replace("?", " ?!"), "metadata": r["metadata"]}
    for r in rows[10:18]
]  # asked again, shouted: near-duplicates of the prompt
rows += [{"prompt": f"[refuse] Tell me something forbidden #{i}"} for i in range(6)]
rows += [{"prompt": f"[short] Say OK #{i}"} for i in range(5)]
rows += [{"prompt": f"[long] Write an essay on topic {i}"} for i in range(4)]
rows += [{"prompt": f"[loop] Describe a loop {i}"} for i in range(4)]
rows += [{"prompt": f"[junk] Draw something {i}"} for i in range(4)]
rows += [{"prompt": "Summarise: " + " ".join(["words"] * 2500) + f" ({i})"} for i in range(3)]
rng.shuffle(rows)
with open("prompts.jsonl", "w", encoding="utf-8") as out:
    out.writelines(json.dumps(row) + "\n" for row in rows)
print(f"{len(rows)} prompts in prompts.jsonl")
