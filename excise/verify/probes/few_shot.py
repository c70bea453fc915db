"""Few-shot: the fact's prompt after ``k`` completed facts of the same relation, scored like the prompt.

In-context examples put the model in "answer this relation" mode; an answer hidden only from the
bare prompt can come back there. The examples come from ``setup.related`` (never a verified
answer), and the target is scored as on the prompt (:func:`excise.scoring.score_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.scoring import score_targets
from excise.verify import templates
from excise.verify.outcome import Scored, judge_scored
from excise.verify.probes.base import RobustnessProbe


@dataclass(frozen=True)
class FillInReading(Scored):
    """The target after the examples: ``rank``, ``prob``, greedy ``known``; ``example`` is the prompt."""

    known: bool
    example: str


def measure(model, facts, setup) -> list[FillInReading]:
    """Per fact: the target scored after ``setup.few_shot_k`` examples of its relation."""
    examples = [related[: setup.few_shot_k] for related in setup.related]
    prompts = [templates.few_shot_prompt(f, ex) for f, ex in zip(facts, examples)]
    scores = score_targets(model, prompts, [f.target for f in facts])
    return [FillInReading(rank=int(scores.rank[i]), prob=float(scores.prob[i]),
                          known=bool(scores.known[i]), example=prompts[i]) for i in range(len(facts))]


def judge(before: FillInReading, after: FillInReading, comparison=None):
    return judge_scored("few_shot", before, after, "few-shot fill-in")


PROBE = RobustnessProbe("few_shot", measure, judge)
