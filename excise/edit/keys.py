"""The key side of an edit: what an MLP output projection reads at a subject's last token.

A rank-one or least-squares edit of an MLP output projection ``W`` (``out = k @ W``) is addressed
by *keys* ``k`` ``[d_mlp]``, the projection's input (``blocks.L.mlp.hook_post``):

* :func:`mlp_keys`: the keys at chosen positions of a token batch;
* :func:`subject_key` / :func:`balanced_key`: a subject's key, averaged over running-text
  prompts, and the mean of that and the key of the subject opening the text;
* contrast keys (:func:`contrast_subjects`, :func:`contrast_batch`, :func:`contrast_keys`,
  :func:`with_contrast`): the keys of *other* subjects in the fact's prompt, which an edit adds to
  its key statistics so that its update spares them (MEMIT's idea of adding the keys to preserve,
  aimed at a fact's neighbours).
"""

from __future__ import annotations

import functools

import torch

from excise.components import mlp_out_module
from excise.edit.other_subjects import other_subjects
from excise.hooks import forward_until, trace
from excise.scoring import build_batch
from excise.tokens import subject_last_position

CONTRAST_SUBJECTS = 32
CONTRAST_WEIGHT = 10.0
BLANK_TARGET = " ."
"""The target appended to key prompts: keys are read before it, so it only pads the batch."""


def subject_batch(model, templates: list[str], subjects: list[str], targets: list[str]):
    """Right-padded batch of ``template.format(subject) + target`` and subject positions ``[batch]``."""
    prompts = [t.format(s) for t, s in zip(templates, subjects)]
    batch = build_batch(model, prompts, targets)
    positions = [subject_last_position(model, t, s) for t, s in zip(templates, subjects)]
    return batch, torch.tensor(positions, device=batch.tokens.device)


@torch.no_grad()
def mlp_keys(model, layer: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``[batch, d_mlp]``: input of the layer's MLP output projection at ``positions[b]``, in the
    model's dtype, on the layer's device (which a ``device_map`` may set apart from the tokens')."""
    module = mlp_out_module(model, layer)
    with trace({layer: module}, inputs=True) as seen:
        forward_until(model, tokens, [module])
    inputs = seen[layer].input  # [batch, pos, d_mlp]
    rows = torch.arange(tokens.shape[0], device=inputs.device)
    return inputs[rows, positions.to(inputs.device)]


def mlp_keys_batched(model, layer: int, batch, positions: torch.Tensor, size: int = 32) -> torch.Tensor:
    """:func:`mlp_keys` over a :class:`~excise.scoring.PromptBatch` in chunks of ``size`` rows."""
    parts = [mlp_keys(model, layer, batch.tokens[s:s + size], positions[s:s + size])
             for s in range(0, len(positions), size)]
    return torch.cat(parts)


def subject_key(model, layer: int, templates: list[str], subject: str) -> torch.Tensor:
    """``[d_mlp]``: the key at the subject's last token, averaged over ``templates``."""
    batch, positions = subject_batch(model, templates, [subject] * len(templates),
                                     [BLANK_TARGET] * len(templates))
    return mlp_keys(model, layer, batch.tokens, positions).mean(0)


def balanced_key(model, layer: int, templates: list[str], subject: str) -> torch.Tensor:
    """``[d_mlp]``: ``k*``, the mean of the subject's key in running text and at the text's start.

    Right after BOS a token's MLP key is very different from its key in running text (the
    first position is where attention sinks), so a key averaged over prefixed prompts has a
    small ``k . u`` for a prompt that *opens* with the subject ("{} was written by"): the edit
    would barely reach it. Averaging the two halves (``templates`` and the bare subject) lifts
    it for most subjects. For some (the countries among the bundled facts) the key right after
    BOS is mostly what other subjects of their kind share there; the protected direction
    (:func:`~excise.edit.rank_one.protected_direction`) then spares it like the other subjects'
    keys, and subject-first wordings ("France's capital is") keep a small ``k . u``
    (``bench/key_reach.py`` measures it; forcing it to 1 makes the edit fire on other subjects
    that open a text).
    """
    running = subject_key(model, layer, templates, subject)
    start = subject_key(model, layer, ["{}"], subject)
    return 0.5 * (running + start)


def contrast_subjects(fact, limit: int = CONTRAST_SUBJECTS, avoid=()) -> list[str]:
    """Up to ``limit`` other subjects: the bundled facts' subjects (those of ``fact``'s relation
    first), then :mod:`excise.edit.other_subjects` (those of its kind first).

    Subjects named in ``fact``'s own neighbour, same-subject or same-answer prompts (or in the facts ``avoid``
    and their probes) are left out, so those probes stay held out when an edit is verified.
    """
    return candidate_subjects(fact, avoid)[:limit]


def candidate_subjects(fact, avoid=()) -> list[str]:
    """Every other subject that :func:`contrast_subjects` may use, in its order, each once."""
    probes = probe_text(fact, avoid)
    bundled = sorted(bundled_facts(), key=lambda f: f.relation != fact.relation)
    pool = dict.fromkeys([*(f.subject for f in bundled), *other_subjects(fact.relation)])
    return [subject for subject in pool if stands_apart(subject, fact, probes)]


def probe_text(fact, avoid=()) -> str:
    """The prompts of ``fact``'s (and ``avoid``'s) neighbour, same-subject and same-answer probes,
    and ``avoid``'s subjects, joined: a subject named there is left out of the editor's own
    contrast keys and probes of other subjects, so that verification's probes stay held out."""
    probes = " ".join(p.prompt for f in (fact, *avoid) for p in (*f.neighbors, *f.same_subject, *f.same_answer))
    return probes + " " + " ".join(f.subject for f in avoid)


def stands_apart(subject: str, fact, probes: str) -> bool:
    """Whether ``subject`` may stand in as *another* subject for ``fact``: neither part of the
    fact's subject nor containing it, and not named in ``probes`` (:func:`probe_text`)."""
    return subject not in probes and fact.subject not in subject and subject not in fact.subject


@functools.cache
def bundled_facts() -> tuple:
    """Every bundled fact (loaded once)."""
    from excise.facts import load_facts

    return tuple(load_facts("all"))


def contrast_batch(model, facts, per_fact: int, avoid=()):
    """``((batch, positions), subjects)``: each fact's prompt with ``per_fact`` of its
    :func:`contrast_subjects`; ``(None, [])`` when there are none."""
    templates, subjects = [], []
    for fact in facts:
        for subject in contrast_subjects(fact, per_fact, avoid):
            templates.append(fact.prompt)
            subjects.append(subject)
    if not subjects:
        return None, []
    return subject_batch(model, templates, subjects, [BLANK_TARGET] * len(subjects)), subjects


def contrast_keys(model, layer: int, fact, limit: int, avoid=()) -> tuple[torch.Tensor, list[str]]:
    """Keys ``[n, d_mlp]`` of :func:`contrast_subjects` in ``fact``'s prompt, and the subjects."""
    rows, subjects = contrast_batch(model, [fact], limit, avoid)
    if rows is None:
        return torch.zeros(0, model.cfg.d_mlp), []
    batch, positions = rows
    return mlp_keys(model, layer, batch.tokens, positions), subjects


def nearest_contrast_keys(model, layer: int, fact, limit: int, direction: torch.Tensor,
                          avoid=(), skip=()) -> tuple[torch.Tensor, list[str]]:
    """Keys ``[n, d_mlp]`` of the ``limit`` other subjects that an edit along ``direction``
    ``[d_mlp]`` would reach most (largest ``|k_o . u|`` in ``fact``'s prompt), and the subjects.

    The candidates are :func:`candidate_subjects`, of any kind, so the
    protected keys are those of the subjects nearest the fact's own (another play by the same
    author, a neighbouring country's currency) rather than the first of the relation's kind.
    Subjects in ``skip`` (already protected) are not candidates.
    """
    pool = [s for s in candidate_subjects(fact, avoid) if s not in skip]
    if not pool or limit <= 0:
        return torch.zeros(0, model.cfg.d_mlp), []
    batch, positions = subject_batch(model, [fact.prompt] * len(pool), pool, [BLANK_TARGET] * len(pool))
    keys = mlp_keys_batched(model, layer, batch, positions, size=64)  # [pool, d_mlp]
    reach = (keys.float() @ direction.to(keys.device, torch.float32)).abs()  # [pool]
    top = reach.topk(min(limit, len(pool))).indices.tolist()
    return keys[top], [pool[i] for i in top]


def with_contrast(second_moment: torch.Tensor, others: torch.Tensor, weight: float) -> torch.Tensor:
    """``C + weight * mean(k_o k_o^T)``: the key statistics with other subjects' keys ``others``
    ``[n, d_mlp]`` counted as if they were ``weight`` times the whole text sample."""
    others = others.to(second_moment.device, second_moment.dtype)
    return second_moment + weight * (others.T @ others) / len(others)
