"""Split relearning (Deeb & Roger 2024): relearn some forgotten facts, test the others.

When several facts of one relation are forgotten together, an attacker who knows some of them can
fine-tune on those and see whether the rest come back: if unlearning only hid the relation's
answers, relearning part of them restores the whole set. For each relation with at least two
verified facts we split its facts into two halves (the first half taking the odd one), fine-tune
every parameter on half A's own facts (their prompts and true answers; :func:`.relearn.relearn`,
``setup.relearn_steps`` Adam steps at ``setup.relearn_lr``) and test half B, then the reverse, so
each fact is tested once, by training on its siblings' forgotten facts. Facts whose relation has
fewer than two verified facts are skipped.

The judgement is :mod:`.relearn`'s: the test fact's probability against the prompt's score before
the edit, read against made-up subjects with the same answer watched in the same run (they catch a
sibling that shares the test fact's answer and so teaches it directly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from excise.facts import Probe
from excise.verify.outcome import ProbeOutcome, Scored
from excise.verify.probes.base import RobustnessProbe, Skipped
from excise.verify.probes.relearn import (
    RelearnReading,
    curve_figure,
    judge_relearn,
    relearn,
    watched,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitReading(RelearnReading):
    """A relearning reading whose training data were the verified facts ``trained_on`` (ids)."""

    trained_on: list[str] = field(default_factory=list)


def halves(facts) -> tuple[list[tuple[list[int], list[int]]], dict[int, str]]:
    """``(train, test)`` fact-index pairs, two per relation with at least two facts (A -> B, then
    B -> A), and the reason each other fact cannot be tested, by index."""
    by_relation: dict[str, list[int]] = {}
    skipped: dict[int, str] = {}
    for i, fact in enumerate(facts):
        if fact.relation:
            by_relation.setdefault(fact.relation, []).append(i)
        else:
            skipped[i] = "the fact has no relation, so there are no sibling facts to relearn on"
    pairs = []
    for relation, members in by_relation.items():
        if len(members) < 2:
            skipped[members[0]] = (f"only one verified fact of relation {relation!r}: split relearning "
                                   "needs at least 2 to train on some and test the others")
            continue
        half = (len(members) + 1) // 2
        a, b = members[:half], members[half:]
        pairs += [(a, b), (b, a)]
    return pairs, skipped


def measure(model, facts, setup) -> list[SplitReading | Skipped]:
    """Per relation, fine-tune on one half of its verified facts and watch the other half, both
    ways; each fact's reading comes from the run that trained on its siblings."""
    steps = setup.relearn_steps
    pairs, skipped = halves(facts)
    out: dict[int, SplitReading | Skipped] = {i: Skipped(reason) for i, reason in skipped.items()}

    def run(model, train, watch):
        return relearn(model, train, watch, steps=steps, lr=setup.relearn_lr, progress=setup.progress)

    for train_ids, test_ids in pairs:
        train = [Probe(facts[i].text, facts[i].target) for i in train_ids]
        names = [facts[i].id for i in train_ids]
        log.info("split relearning: training on %s, testing %s", names, [facts[i].id for i in test_ids])
        for i, r in watched(model, facts, test_ids, train, run, [steps], steps).items():
            out[i] = SplitReading(rank=r.rank, prob=r.prob, curve=r.curve, budgets=r.budgets,
                                  judged_steps=r.judged_steps, trained_on=names)
    return [out[i] for i in range(len(facts))]


def judge(before, after: SplitReading, comparison) -> ProbeOutcome:
    """The attack's result against the prompt's score before the edit (``before`` is unused)."""
    prompt = comparison.before["prompt"]
    return judge_relearn(Scored(rank=int(prompt.rank[0]), prob=float(prompt.prob[0])), after,
                         f"split relearning: probability returns to {after.prob:.2f} after "
                         f"{after.judged_steps} steps on {len(after.trained_on)} other forgotten facts "
                         f"({', '.join(after.trained_on)})", probe="relearn_split")


def figure(fact_report):
    """Forgotten target's probability while its siblings' forgotten facts are relearned."""
    return curve_figure(fact_report, "relearn_split", "Split relearning attack")


PROBE = RobustnessProbe("relearn_split", measure, judge, figure, title="Split relearning attack",
                        attack=True)
