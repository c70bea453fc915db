"""Add ``held_out_paraphrases`` and ``same_answer`` probes to the bundled fact files (maintainers' tool).

    .venv/bin/python assets/facts/add_probes.py [--write]

* ``held_out_paraphrases``: per relation, wordings of three kinds that no editor reads (subject
  first, a question, a longer sentence; :data:`HELD_OUT`), written independently of the fact's
  prompt and paraphrases. A wording is kept for a fact when it differs from the fact's own
  templates and the default model ranks the target's first token in its top 5 after it (as the
  bundled paraphrases were chosen).
* ``same_answer``: up to 4 other bundled facts whose target is the same answer (other subjects;
  forgetting France -> Paris must keep the Eiffel Tower in Paris), each stated by its main prompt,
  kept only where the model produces the whole answer by greedy decoding.

Without ``--write`` it prints what it would add.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from excise.facts import load_facts
from excise.model import load_model
from excise.scoring import score_targets

FOLDER = Path(__file__).resolve().parent
TOP = 5
MAX_SAME_ANSWER = 4

HELD_OUT = {
    "capital": ["{}'s capital is", "Q: What is the capital of {}?\nA:",
                "Question: Which city is the capital of {}?\nAnswer:",
                "If you travel to {}, you will surely visit its capital,",
                "Everyone who studies the geography of {} learns that its capital is"],
    "language": ["{}'s official language is", "Q: What language do people speak in {}?\nA:",
                 "Question: What is the official language of {}?\nAnswer:",
                 "When I moved to {}, I had to learn to speak",
                 "The people who live in {} mostly speak"],
    "currency": ["{}'s currency is the", "Q: What is the currency of {}?\nA: The",
                 "When you go shopping in {}, you pay with the",
                 "Prices in {} are given in the local currency, the"],
    "continent": ["{} is a country located in", "Q: On which continent is {}?\nA:",
                  "Looking at a map of the world, you will find {} on the continent of",
                  "{} lies on the continent of"],
    "landmark_city": ["[The]{} is a famous sight of the city of", "Q: In which city is [the]{}?\nA:",
                      "Tourists who want to see [the]{} travel to the city of",
                      "Last summer we saw [the]{} on our trip to the city of"],
    "city_country": ["{} is a city located in", "Q: In which country is the city of {}?\nA:",
                     "Last year I flew to {}, a city in the country of", "{} belongs to the country of"],
    "profession": ["Q: What was the profession of {}?\nA: A",
                   "Throughout history, {} has been remembered as a famous",
                   "Many people admire {}, who was a great"],
    "author": ["Q: Who wrote {}?\nA:", "The author of {} is", "Many readers love {}, which was written by",
               "{} is a book whose author is"],
    "company_country": ["Q: Which country is {} from?\nA:", "{} has its headquarters in the country of",
                        "The famous company {} originally comes from the country of"],
    "sport": ["Q: Which sport does {} play?\nA:", "{} became famous playing the sport of",
              "Fans around the world know {} as a star of the sport of"],
}


def held_out_templates(fact) -> list[str]:
    """The relation's held-out wordings, with the article of the fact's own prompt ("the {}")."""
    article = "the " if "the {}" in fact.prompt.lower() else ""
    own = {fact.prompt, *fact.paraphrases}
    templates = [t.replace("[The]", article.capitalize()).replace("[the]", article)
                 for t in HELD_OUT.get(fact.relation, [])]
    return [t for t in templates if t not in own]


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the JSONL files in place")
    args = parser.parse_args()
    model = load_model(device="cpu")
    facts = load_facts("all")
    by_answer = defaultdict(list)
    for fact in facts:
        by_answer[fact.target.strip()].append(fact)

    wordings = [(fact, t) for fact in facts for t in held_out_templates(fact)]
    ranks = score_targets(model, [t.format(f.subject) for f, t in wordings], [f.target for f, _ in wordings]).rank
    held_out = defaultdict(list)
    for (fact, template), rank in zip(wordings, ranks.tolist()):
        if rank < TOP:
            held_out[fact.id].append(template)

    candidates = [(fact, other) for fact in facts for other in by_answer[fact.target.strip()]
                  if other.subject != fact.subject and other.subject not in fact.subject
                  and fact.subject not in other.subject]
    known = score_targets(model, [o.text for _, o in candidates], [o.target for _, o in candidates]).known
    same_answer = defaultdict(list)
    for (fact, other), ok in zip(candidates, known.tolist()):
        if ok and len(same_answer[fact.id]) < MAX_SAME_ANSWER:
            same_answer[fact.id].append({"prompt": other.text, "target": other.target})

    for path in sorted(FOLDER.glob("*.jsonl")):
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            record.pop("held_out_paraphrases", None)
            record.pop("same_answer", None)
            if held_out[record["id"]]:
                record["held_out_paraphrases"] = held_out[record["id"]]
            if same_answer[record["id"]]:
                record["same_answer"] = same_answer[record["id"]]
            lines.append(json.dumps(record, ensure_ascii=False))
        n_held = sum(bool(held_out[json.loads(x)["id"]]) for x in lines)
        n_same = sum(bool(same_answer[json.loads(x)["id"]]) for x in lines)
        print(f"{path.name}: {len(lines)} facts, {n_held} with held-out wordings "
              f"({sum(len(held_out[json.loads(x)['id']]) for x in lines)} in all), {n_same} with same-answer facts")
        if args.write:
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
