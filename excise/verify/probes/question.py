"""Question: ask the fact as a question and check the model's greedy answer for the target.

The question's wording depends on the relation (:data:`excise.verify.templates.QUESTIONS`) and is
put in the chat frame (:func:`~excise.verify.templates.question_prompt`). An edit keyed to the
fact's own sentence can miss the same fact asked this way.
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.generation import generate
from excise.verify import templates
from excise.verify.outcome import Answered, judge_known
from excise.verify.probes.base import RobustnessProbe


@dataclass(frozen=True)
class QuestionReading(Answered):
    """The question asked, the greedy ``answer``, and ``known``: it contains the target."""

    question: str
    answer: str


def measure(model, facts, setup=None, max_new_tokens: int = 12) -> list[QuestionReading]:
    """Per fact: the greedy answer to the fact's question (``max_new_tokens`` long)."""
    prompts = [templates.question_prompt(f) for f in facts]
    answers = generate(model, prompts, max_new_tokens)
    return [QuestionReading(known=f.target.strip().lower() in a.lower(),
                            question=templates.question_text(f), answer=a)
            for f, a in zip(facts, answers)]


def judge(before: QuestionReading, after: QuestionReading, comparison=None):
    return judge_known("question", before, after, f"question ({after.question!r})")


PROBE = RobustnessProbe("question", measure, judge)
