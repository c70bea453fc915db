"""The relearning attack: fine-tune briefly on *related* facts and see whether the forgotten one returns.

Knowledge that an edit only hid (rather than removed) tends to come back after a few gradient
steps on neighbouring data, even data that never mentions the forgotten fact (Lynch et al. 2024;
Deeb & Roger 2024). We fine-tune every parameter with Adam for a small fixed budget on facts of
the same relation (the caller guarantees they neither state the forgotten fact nor share its
answer) and record the forgotten target's probability along the way.

A return alone does not show that *this* fact came back: the attack may just teach the relation's
frequent answers. So the same run also watches a control: the fact's prompt with made-up subjects
the model never knew (:data:`CONTROL_SUBJECTS`, :func:`control_probes`), with the same answer. If
the answer rises as much for them, the attack taught the answer, not the fact, and the probe says
nothing about the edit.

The attacked model is the edited model itself: all parameters are snapshot before training and
written back afterwards (in a ``finally``), so the model leaves this module bit-for-bit as it came.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from excise.scoring import build_batch, score_targets, target_logprobs

log = logging.getLogger(__name__)

CONTROL_SUBJECTS = ("Zorbla Quaxton", "Vennick Throale", "Mirabet Oskelund")


def control_probes(fact, subjects=CONTROL_SUBJECTS) -> list:
    """``fact``'s prompt about made-up subjects, with ``fact``'s answer: what relearning would
    raise for a fact the model never knew."""
    from excise.facts import Probe

    return [Probe(fact.prompt.format(subject), fact.target) for subject in subjects]


def relearn(model, train, watch, steps: int = 20, lr: float = 5e-5, record_every: int | None = None,
            progress: bool = False) -> dict:
    """Fine-tune on ``train`` probes for ``steps`` Adam steps; track the ``watch`` probes.

    Args:
        train: :class:`excise.facts.Probe` items (filled-in prompt, target) to learn.
        watch: probes whose probability we follow (the forgotten facts' prompts).
        steps, lr: the attack's budget.
        record_every: measure ``watch`` every this many steps (default ``steps // 5``).

    Returns ``{"steps": [s...], "prob": [[p per watch] per s], "rank": [[...]], "train_loss": [...]}``;
    the last entry is after ``steps`` steps. ``model``'s weights are restored on return.
    """
    if not train:
        raise ValueError("relearning needs at least one training fact of the same relation")
    record_every = record_every or max(1, steps // 5)
    params = [p for p in model.original_model.parameters()]
    saved = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    batch = build_batch(model, [p.prompt for p in train], [p.target for p in train])
    curve = {"steps": [], "prob": [], "rank": [], "train_loss": []}

    def record(step: int) -> None:
        scores = score_targets(model, [w.prompt for w in watch], [w.target for w in watch])
        curve["steps"].append(step)
        curve["prob"].append(scores.prob.tolist())
        curve["rank"].append(scores.rank.tolist())

    try:
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=lr)
        record(0)
        with torch.enable_grad():
            for step in tqdm(range(1, steps + 1), desc="relearning attack", disable=not progress):
                optimizer.zero_grad(set_to_none=True)
                loss = -target_logprobs(model(batch.tokens).float(), batch).mean()
                loss.backward()
                optimizer.step()
                curve["train_loss"].append(float(loss.detach()))
                if step % record_every == 0 or step == steps:
                    record(step)
        del optimizer
    finally:
        with torch.no_grad():
            for p, original, flag in zip(params, saved, flags):
                p.copy_(original)
                p.grad = None
                p.requires_grad_(flag)
    log.info("relearning: %d steps on %d facts, watched prob %s -> %s", steps, len(train),
             curve["prob"][0], curve["prob"][-1])
    return curve
