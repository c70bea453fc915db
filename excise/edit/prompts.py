"""The prompts an edit is computed on: a fact's templates, bare and after short context prefixes.

ROME's "context templates": a key or value computed on one exact wording generalises poorly, so
the fact's prompt is also evaluated after each of a few short texts that the model itself writes
from varied openings (:func:`context_prefixes`). :func:`fact_templates` adds the fact's
paraphrases, so that the edit covers other wordings of the relation.
"""

from __future__ import annotations

import torch

from excise.generation import sample_texts

OPENINGS = ("The", "Therefore", "Because", "I", "You", "It is", "In the", "When", "A", "We")


def openings(n: int) -> list[str]:
    """``n`` openings, cycling through :data:`OPENINGS`."""
    return [OPENINGS[i % len(OPENINGS)] for i in range(n)]


@torch.no_grad()
def context_prefixes(model, n: int = 6, length: int = 8, seed: int = 0) -> list[str]:
    """``n`` short texts (``length`` tokens) the model samples from :data:`OPENINGS`.

    Cached on the model object (they depend only on the model and the arguments).
    """
    cache = model.__dict__.setdefault("_excise_prefixes", {})
    key = (n, length, seed)
    if key not in cache:
        prefixes = []
        for text in sample_texts(model, openings(n), length, seed):
            text = " ".join(text.replace("{", "(").replace("}", ")").split())
            prefixes.append(text.rstrip(".") + ".")
        cache[key] = prefixes
    return cache[key]


def rewriting_prompts(model, template: str, n_prefixes: int = 6) -> list[str]:
    """The template itself and the template after each context prefix (all with one ``{}``)."""
    return [template, *(f"{p} {template}" for p in context_prefixes(model, n_prefixes))]


def fact_templates(model, fact, n_prefixes: int = 4, paraphrases: bool = True) -> list[str]:
    """Templates a fact is edited on: its prompt (bare and after ``n_prefixes`` context prefixes)
    and, with ``paraphrases``, each paraphrase bare and after one prefix (round-robin).

    Editing on several wordings of the relation is what makes the edit generalise to wordings
    it never saw; the prefixes keep it from depending on the subject opening the text.
    """
    templates = rewriting_prompts(model, fact.prompt, n_prefixes)
    if paraphrases and fact.paraphrases:
        prefixes = context_prefixes(model, max(1, n_prefixes))
        for i, para in enumerate(fact.paraphrases):
            templates += [para, f"{prefixes[i % len(prefixes)]} {para}"]
    return templates
