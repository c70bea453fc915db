"""Convert ROME's public fact formats (CounterFact, known_1000) into excise ``Fact`` records.

CounterFact keeps its meaning: ``paraphrase_prompts`` are full prompts (the subject is already in
them, often after an unrelated prefix sentence), so we turn each into a template by replacing the
subject's last occurrence with ``{}``; paraphrases that do not contain the subject are dropped and
counted. ``neighborhood_prompts`` are other subjects whose *true* answer is the same as the edited
fact's true answer, so every neighbour gets ``target_true`` as its target. ``target_new`` becomes
``new_target``. known_1000 records carry no paraphrases or neighbours; neighbours are taken from
other records of the same relation.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from excise.facts import Fact, FactFormatError, Probe

log = logging.getLogger(__name__)

FORMATS = ("counterfact", "known1000")


def _answer(text: str) -> str:
    text = text.strip()
    return " " + text


def _template(full_prompt: str, subject: str) -> str | None:
    at = full_prompt.rfind(subject)
    if at < 0:
        return None
    escaped = [part.replace("{", "{{").replace("}", "}}") for part in
               (full_prompt[:at], full_prompt[at + len(subject):])]
    return escaped[0] + "{}" + escaped[1]


def _rome_template(prompt: str) -> str:
    """ROME templates already use ``{}`` for the subject; escape any other braces."""
    head, sep, tail = prompt.partition("{}")
    if not sep:
        raise FactFormatError(f"ROME prompt {prompt!r} has no '{{}}' for the subject")
    esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    return esc(head) + "{}" + esc(tail)


def from_counterfact(records: list[dict]) -> tuple[list[Fact], dict]:
    """CounterFact records -> Facts, and counts of what was dropped."""
    facts, dropped = [], defaultdict(int)
    for record in records:
        rewrite = record["requested_rewrite"]
        subject = rewrite["subject"]
        paraphrases = []
        for full in record.get("paraphrase_prompts", []):
            template = _template(full, subject)
            if template is None:
                dropped["paraphrase_without_subject"] += 1
            else:
                paraphrases.append(template)
        true_answer = _answer(rewrite["target_true"]["str"])
        neighbors = tuple(Probe(p, true_answer) for p in record.get("neighborhood_prompts", []))
        facts.append(Fact(
            id=f"counterfact-{record['case_id']}",
            subject=subject,
            prompt=_rome_template(rewrite["prompt"]),
            target=true_answer,
            paraphrases=tuple(paraphrases),
            neighbors=neighbors,
            relation=rewrite.get("relation_id"),
            new_target=_answer(rewrite["target_new"]["str"]),
        ))
    return facts, dict(dropped)


def from_known1000(records: list[dict], n_neighbors: int = 5) -> tuple[list[Fact], dict]:
    """known_1000 records -> Facts; neighbours are other subjects of the same relation."""
    by_relation = defaultdict(list)
    for record in records:
        by_relation[record["relation_id"]].append(record)
    facts = []
    for record in records:
        answer = _answer(record["attribute"])
        others = [r for r in by_relation[record["relation_id"]]
                  if r["subject"] != record["subject"] and _answer(r["attribute"]) != answer]
        neighbors = tuple(Probe(r["prompt"], _answer(r["attribute"])) for r in others[:n_neighbors])
        # "prompt" (the template plus the words GPT-2 XL continued with) is what ROME traces.
        template = _template(record["prompt"], record["subject"])
        if template is None:
            template = _rome_template(record["template"])
        facts.append(Fact(
            id=f"known-{record['known_id']}",
            subject=record["subject"],
            prompt=template,
            target=answer,
            neighbors=neighbors,
            relation=record["relation_id"],
        ))
    return facts, {}


def import_facts(path: str | Path, fmt: str) -> tuple[list[Fact], dict]:
    """Read a ROME-format JSON file and convert it; ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    with Path(path).open(encoding="utf-8") as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as err:
            raise FactFormatError(f"{path}: not a JSON file ({err.msg} at line {err.lineno}); "
                                  f"facts import reads ROME's {fmt} JSON (one list of records)") from err
    if not isinstance(records, list):
        raise FactFormatError(f"{path}: expected a JSON list of {fmt} records")
    convert = from_counterfact if fmt == "counterfact" else from_known1000
    try:
        return convert(records)
    except KeyError as err:
        raise FactFormatError(f"{path}: a record lacks the {fmt} field {err}; is this a {fmt} file?") from err
    except (TypeError, AttributeError) as err:
        raise FactFormatError(f"{path}: its records are not {fmt} records ({err}); is this a "
                              f"{fmt} file?") from err
