"""Multiple choice: the fact as a lettered question; the right letter must outscore the others.

Options A-D are the target and three other answers of the relation, shuffled
(:func:`excise.verify.templates.multiple_choice`). The answer counts as known only when the
right letter wins in more of the ``setup.mc_orders`` shuffles than guessing would plausibly give:
the chance of doing at least as well by picking a letter at random must be below
:data:`CHANCE_LEVEL` (with three shuffles: all three right; a majority, 2 of 3, happens by chance
one time in six). A small model at chance on the format is then "uninformative", not a recovery.
A fact with fewer than three other answers of its relation is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from excise.tokens import encode_target
from excise.verify import templates
from excise.verify.outcome import Answered, judge_known
from excise.verify.probes.base import RobustnessProbe, Skipped

TOO_FEW = "fewer than 3 other answers of the relation"
CHANCE_LEVEL = 0.05
"""Largest chance of scoring as well by guessing for which the answer still counts as known."""


def chance_of_at_least(correct: int, orders: int, options: int = len(templates.LETTERS)) -> float:
    """P(at least ``correct`` of ``orders`` shuffles right) when guessing one of ``options``."""
    p = 1 / options
    return sum(math.comb(orders, k) * p ** k * (1 - p) ** (orders - k) for k in range(correct, orders + 1))


@dataclass(frozen=True)
class ChoiceReading(Answered):
    """``correct`` of ``orders`` shuffles right (``known``: better than chance, see the module);
    ``prob``: the right letter's probability renormalised over the four letters, averaged over
    shuffles."""

    correct: int
    orders: int
    prob: float
    example: str


@torch.no_grad()
def measure(model, facts, setup) -> list[ChoiceReading | Skipped]:
    """Per fact: the shuffles answered right, with distractors from ``setup.related``."""
    letters = [encode_target(model, " " + letter)[0] for letter in templates.LETTERS]
    readings = []
    for fact, related in zip(facts, setup.related):
        if len({p.target.strip() for p in related}) < 3:
            readings.append(Skipped(TOO_FEW))
            continue
        wrong = [p.target for p in related]
        questions = [templates.multiple_choice(fact, wrong, seed) for seed in range(setup.mc_orders)]
        correct, probs = 0, []
        for mc in questions:
            logits = model(model.to_tokens(mc.prompt))[0, -1, letters].float()  # [4]
            correct += int(logits.argmax()) == mc.answer
            probs.append(float(logits.softmax(-1)[mc.answer]))
        orders = setup.mc_orders
        known = correct > 0 and chance_of_at_least(correct, orders) < CHANCE_LEVEL
        readings.append(ChoiceReading(known=known, correct=correct, orders=orders,
                                      prob=sum(probs) / orders, example=questions[0].prompt))
    return readings


def judge(before: ChoiceReading, after: ChoiceReading, comparison=None):
    return judge_known("multiple_choice", before, after,
                       f"multiple choice ({after.correct}/{after.orders} orders right)")


PROBE = RobustnessProbe("multiple_choice", measure, judge)
