"""What the model answers about subjects it never knew: a forgetting target that leaves less to relearn.

By default the value optimisation forgets towards the model's own answer distribution with the
target removed, so the rest of what the model would say about this subject stays the aim.
``ValueSettings(toward_unknown=True)`` aims instead at the answers the same prompts get about
made-up subjects (:data:`UNKNOWN_SUBJECTS`), minus the target: what the model would say had it
never learned the subject.

The made-up subjects differ from those of the verification's control
(:mod:`excise.verify.control`), so the attacks' control stays independent of the edit.
"""

from __future__ import annotations

import math

import torch

from excise.scoring import build_batch, first_answer_logprobs
from excise.tokens import fill_prompt

UNKNOWN_SUBJECTS = ("Trelvan Ospick", "Quillon Marvath", "Dabrisk Yulenne")
"""Made-up names the default model has no facts about (not the verification's control subjects)."""


@torch.no_grad()
def unknown_answer_logprobs(model, templates: list[str], answer: str,
                            subjects: tuple[str, ...] = UNKNOWN_SUBJECTS) -> torch.Tensor:
    """``[n_templates, d_vocab]`` float32 log of the mean next-token distribution after each of
    ``templates`` (``{}`` where the subject goes) filled with each of ``subjects``; one batch."""
    texts = [fill_prompt(template, subject)[0] for template in templates for subject in subjects]
    batch = build_batch(model, texts, [answer] * len(texts))
    logprobs = first_answer_logprobs(model, batch)  # [n_templates * n_subjects, d_vocab]
    per_subject = logprobs.view(len(templates), len(subjects), -1)
    return (per_subject.logsumexp(1) - math.log(len(subjects))).float()
