"""The editor's own probes of a subject: what else the model says about it, found without being told.

A user who asks to forget "The capital of France is -> Paris" lists few or none of France's other
facts, yet a rank-one edit of France's key moves every relation of France. So the editor writes
its own probes: :data:`SUBJECT_TEMPLATES`, a fixed bank of prompts about a subject spanning the
usual relations of places, people, works, companies and teams (worded independently of the
bundled fact sets; ``tests/test_edit.py`` checks that no bank template is one of their wordings),
and asks the unedited model what it answers after each (:func:`subject_probes`):

* where the model's top answer is the fact's own answer, the template is another wording of the
  fact, and the edit forgets there too (it reaches wordings the user did not list);
* where the model confidently answers something else, that is another fact about the subject,
  and the edit keeps its prediction there (a KL term in :mod:`excise.edit.value`);
* the rest (the model has no confident answer: a template of another kind of subject) is dropped.

Most confident answers are a template's own continuation (" its", " the", " answer"), which every
subject gets. ``specificity=`` keeps instead the answers that are the subject's own: the most
likely token (not the target) that is at least ``specificity`` times likelier after this subject
than after made-up subjects (:data:`~excise.edit.unknown_answers.UNKNOWN_SUBJECTS`), so that the
kept probes ask the subject's other facts (its language, its capital, its country).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.edit.keys import BLANK_TARGET, subject_batch
from excise.edit.unknown_answers import unknown_answer_logprobs
from excise.scoring import first_answer_logprobs
from excise.tokens import encode_target

SUBJECT_TEMPLATES = (
    # places: countries, cities, regions
    "{} is a country whose capital city is",
    "The city where the government of {} sits is",
    "The language most people in {} speak is",
    "Question: Which language is spoken in {}?\nAnswer:",
    "Question: What is {}'s capital city?\nAnswer:",
    "In {} the money people use is the",
    "Question: Which currency do people use in {}?\nAnswer: The",
    "On a map, {} can be found in",
    "Question: Which continent is {} part of?\nAnswer:",
    "Question: Which country is {} part of?\nAnswer:",
    "The biggest city in {} is",
    "{} lies in the country of",
    "Question: In which city can you find {}?\nAnswer:",
    "{} is a famous place in",
    # people
    "{} will always be remembered as a",
    "Question: What was {}'s job?\nAnswer: A",
    "The birthplace of {} is the country of",
    "{} is best known for the sport of",
    "Question: Which team did {} play for?\nAnswer: The",
    # works
    "The author who wrote {} is",
    "Question: Who is the author of {}?\nAnswer:",
    "The hero of the story {} is",
    # companies
    "{} is a company that makes",
    "Question: Where is {} headquartered?\nAnswer: In",
    "{} was started in the country of",
    # any subject
    "{} is a",
    "{} is known for",
    "{} is located in",
    "The most famous thing about {} is",
)
"""Prompts about a subject (one ``{}``), over the relations people ask about."""

MIN_CONFIDENCE = 0.2
"""A bank template is a fact to keep only where the model's top answer has at least this probability."""
MAX_KEEP = 8
"""At most this many kept templates (the most confident): each costs a row in every optimisation step."""
SPECIFICITY = 10.0
"""With specific probes, a kept answer is at least this many times likelier after the subject than
after made-up subjects (``ValueSettings(specific_probes=True)``)."""
SPECIFIC_MIN_CONFIDENCE = 0.1
"""With specific probes, a kept answer has at least this probability after the subject."""


@dataclass(frozen=True)
class SubjectProbes:
    """The bank split for one fact: ``forget`` templates (the model answers the fact's target) and
    ``keep`` templates (the model confidently answers something else), with those answers (text,
    and token ids where the model gave them)."""

    forget: tuple[str, ...]
    keep: tuple[str, ...]
    keep_answers: tuple[str, ...]
    keep_ids: tuple[int, ...] = ()


@torch.no_grad()
def subject_probes(model, fact, templates=SUBJECT_TEMPLATES, min_confidence: float = MIN_CONFIDENCE,
                   max_keep: int = MAX_KEEP, specificity: float | None = None) -> SubjectProbes:
    """Split ``templates`` for ``fact`` by what the unedited model answers after each (see module doc).

    Templates that are the fact's own prompt or paraphrases are left out (the editor has them).
    ``specificity``: keep only answers that many times likelier than after made-up subjects (one
    more batch); None keeps the top answers whatever they are.
    """
    own = {fact.prompt, *fact.paraphrases}
    templates = [t for t in templates if t not in own]
    if not templates:
        return SubjectProbes((), (), ())
    batch, _ = subject_batch(model, templates, [fact.subject] * len(templates), [BLANK_TARGET] * len(templates))
    probs = first_answer_logprobs(model, batch).exp()  # [n, d_vocab]
    top_prob, top_id = probs.max(-1)
    target_id = encode_target(model, fact.target)[0]
    forget = [t for t, i in zip(templates, top_id.tolist()) if i == target_id]
    if specificity is not None:  # the likeliest token, not the target, that is this subject's own
        generic = unknown_answer_logprobs(model, templates, BLANK_TARGET).exp().to(probs.device, probs.dtype)
        own_probs = torch.where(probs >= specificity * generic, probs, torch.zeros_like(probs))
        own_probs[:, target_id] = 0.0
        top_prob, top_id = own_probs.max(-1)
    confident = [(float(p), t, i) for t, p, i in zip(templates, top_prob.tolist(), top_id.tolist())
                 if i != target_id and p >= min_confidence]
    confident.sort(reverse=True)
    keep = confident[:max_keep]
    return SubjectProbes(tuple(forget), tuple(t for _, t, _ in keep),
                         tuple(model.tokenizer.decode([i]) for _, _, i in keep), tuple(i for _, _, i in keep))
