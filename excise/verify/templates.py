"""Other wordings of a fact: a question, a multiple-choice prompt and a few-shot fill-in.

Unlearning that holds on the edited prompt can fail on another format. The formats probe asks the
same fact three other ways; the wording of the question depends on the relation, so the table
:data:`QUESTIONS` maps each bundled relation to a question template (data, not ``if`` chains).
A relation missing from the table falls back to :data:`GENERIC_QUESTION`, which asks the model to
complete the fact's own prompt.

SmolLM2-135M-Instruct answers questions best in its chat format (measured on capitals: the chat
frame answers "The capital of Germany is Berlin." where a bare "Q:/A:" frame often drifts), so
questions are put in :data:`CHAT_FRAME` and the model's greedy answer is checked for the target.
A model without a chat template gets the same text; the frame is plain text either way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

QUESTIONS: dict[str, str] = {
    "capital": "What is the capital of {}?",
    "language": "What is the official language of {}?",
    "currency": "What is the currency of {}?",
    "continent": "On which continent is {}?",
    "landmark_city": "In which city is the {}?",
    "city_country": "In which country is the city of {}?",
    "company_country": "Which country is the company {} from?",
    "profession": "What is the profession of {}?",
    "author": "Who wrote {}?",
    "sport": "Which sport does {} play?",
}

GENERIC_QUESTION = 'Complete the sentence: "{}"'
CHAT_FRAME = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
MC_FRAME = "Question: {question}\n{options}Answer:"
LETTERS = "ABCD"


def question_text(fact) -> str:
    """The question asking for ``fact``'s target (relation template, or the generic fallback)."""
    template = QUESTIONS.get(fact.relation or "")
    if template is None:
        return GENERIC_QUESTION.format(fact.text + " ...")
    return template.format(fact.subject)


def question_prompt(fact) -> str:
    """The question in the chat frame, ready for generation."""
    return CHAT_FRAME.format(question=question_text(fact))


@dataclass(frozen=True)
class MultipleChoice:
    """A lettered multiple-choice prompt; ``answer`` is the index of the right option."""

    prompt: str
    options: tuple[str, ...]
    answer: int

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]


def multiple_choice(fact, distractors: list[str], seed: int = 0) -> MultipleChoice:
    """Options A-D: the target and three distractors (other answers of the relation), shuffled.

    ``distractors`` must hold at least three answers different from the target.
    """
    target = fact.target.strip()
    pool = sorted({d.strip() for d in distractors} - {target})
    if len(pool) < len(LETTERS) - 1:
        raise ValueError(
            f"fact {fact.id!r}: a multiple-choice prompt needs 3 distractors, got {pool}; "
            "give facts of the same relation (neighbors or a fact pool)"
        )
    rng = random.Random(f"{fact.id}/{seed}")
    options = rng.sample(pool, len(LETTERS) - 1) + [target]
    rng.shuffle(options)
    body = "".join(f"{letter}. {option}\n" for letter, option in zip(LETTERS, options))
    prompt = MC_FRAME.format(question=question_text(fact), options=body)
    return MultipleChoice(prompt, tuple(options), options.index(target))


def few_shot_prompt(fact, examples) -> str:
    """``k`` other facts of the relation as completed sentences, then the fact's prompt.

    ``examples`` are :class:`excise.facts.Probe` (filled-in prompt, target) pairs.
    """
    lines = [f"{p.prompt}{p.target}." for p in examples]
    return "\n".join([*lines, fact.text])
