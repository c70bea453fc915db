"""The editor's own probes of *other* subjects that share the fact's answer.

Forgetting "France -> Paris" must keep "The Louvre is in the city of" -> Paris, but a user lists
few such facts, if any. The editor finds some itself: it asks the unedited model the bundled
relations' prompts about other subjects (the bundled facts' subjects and
:mod:`excise.edit.other_subjects`) and keeps those where the model answers the fact's target.
Only relations whose bundled facts can have that answer are asked (Paris: the landmarks' city;
Europe: every country's continent), so the probe costs one batched forward of a few hundred short
prompts at most. Subjects that the fact's own probes name are left out, so that verification's
same-answer probes stay held out.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict

import torch

from excise.edit.keys import BLANK_TARGET, bundled_facts, probe_text, stands_apart, subject_batch
from excise.edit.other_subjects import OTHER_SUBJECTS, RELATION_KINDS
from excise.scoring import first_answer_logprobs
from excise.tokens import encode_target

MIN_CONFIDENCE = 0.1
"""A probe counts as stating the same answer where the model's top answer is the target's first
token with at least this probability."""
CHUNK = 64
"""Prompts per forward while probing."""


@functools.cache
def _relation_templates() -> dict[str, tuple[str, dict[str, str]]]:
    """Each bundled relation's most common prompt and its facts' answers by subject."""
    facts = defaultdict(list)
    for fact in bundled_facts():
        facts[fact.relation].append(fact)
    return {relation: (Counter(f.prompt for f in group).most_common(1)[0][0],
                       {f.subject: f.target.strip() for f in group})
            for relation, group in facts.items()}


def candidates(fact) -> list[tuple[str, str]]:
    """``(template, subject)`` pairs to ask: the relations where another bundled fact has the
    fact's answer, each with its subjects and the other subjects of its kind."""
    named = probe_text(fact)
    answer = fact.target.strip()
    pairs = []
    for relation, (template, answers) in _relation_templates().items():
        if not any(a == answer and s != fact.subject for s, a in answers.items()):
            continue
        pool = (*answers, *OTHER_SUBJECTS.get(RELATION_KINDS.get(relation), ()))
        for subject in dict.fromkeys(pool):
            if stands_apart(subject, fact, named):
                pairs.append((template, subject))
    return pairs


@torch.no_grad()
def answer_probes(model, fact, limit: int, min_confidence: float = MIN_CONFIDENCE) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(template, subject)`` pairs, most confident first, where the unedited
    model answers ``fact.target`` about another subject."""
    pairs = candidates(fact)
    if not pairs or limit <= 0:
        return []
    target_id = encode_target(model, fact.target)[0]
    found = []
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start:start + CHUNK]
        batch, _ = subject_batch(model, [t for t, _ in chunk], [s for _, s in chunk], [BLANK_TARGET] * len(chunk))
        top_prob, top_id = first_answer_logprobs(model, batch).exp().max(-1)  # [chunk]
        found += [(p, pair) for pair, p, i in zip(chunk, top_prob.tolist(), top_id.tolist())
                  if i == target_id and p >= min_confidence]
    found.sort(key=lambda item: -item[0])
    return [pair for _, pair in found[:limit]]
