"""The metrics of the editing and unlearning papers, computed from our scores, so results compare.

Our own tallies (:mod:`excise.criteria`: forgotten / kept, per probe) are what the verdicts use.
Papers report other numbers; we compute them from the same scores:

* **Rewrite score** (Hase et al. 2023, "Does localization inform editing?"; used for deletion by
  Patil, Hase & Bansal 2024): per prompt ``(p_before - p_after) / p_before`` of the forgotten
  answer, 1 when it is gone, 0 when unchanged, negative when it rose; averaged over the prompt,
  the paraphrases and the held-out paraphrases.
* **Delta-accuracy** (Patil et al. 2024's "Neighborhood Delta-Acc"): for the probes to keep,
  accuracy after minus accuracy before, where accuracy is the share of probes whose answer greedy
  decoding produces; 0 is perfect, -1 lost everything.
* **CounterFact** (Meng et al. 2022, ROME), for facts with a counterfactual ``new_target`` (the
  CounterFact importer sets it): efficacy score ES = share of prompts with ``p(new) > p(true)``
  after the edit and its magnitude EM = mean ``p(new) - p(true)``; paraphrase score PS / PM the
  same on the paraphrases; neighbourhood score NS = share of CounterFact's neighbourhood prompts
  (other subjects with the same true answer: our ``same_answer`` group) that still prefer the true
  answer, ``p(true) > p(new)``, and NM its mean margin. These need ``p(new)``, scored by
  :func:`new_target_scores` on the same prompts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from excise.comparison import TO_FORGET, TO_KEEP, Comparison, fact_pairs
from excise.scoring import Scores, score_targets

COUNTERFACT_GROUPS = {"prompt": ("ES", "EM"), "paraphrases": ("PS", "PM"), "same_answer": ("NS", "NM")}
"""Our group each CounterFact score is taken on, and its (score, magnitude) names."""


@dataclass(frozen=True)
class PaperMetrics:
    """One fact's paper metrics; a group without probes is left out of its dict."""

    rewrite_score: dict[str, float]
    delta_acc: dict[str, float]
    counterfact: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def new_target_scores(model, facts) -> list[dict[str, Scores] | None]:
    """Per fact with a ``new_target``, the new target's :class:`Scores` on the prompts of
    :data:`COUNTERFACT_GROUPS` (None for a fact without one); one batched scoring run."""
    prompts, targets, slots = [], [], []
    for i, fact in enumerate(facts):
        if not getattr(fact, "new_target", None):
            continue
        others = [f for j, f in enumerate(facts) if j != i]
        pairs = fact_pairs(fact, others)
        for group in COUNTERFACT_GROUPS:
            for prompt, _ in pairs[group]:
                prompts.append(prompt)
                targets.append(fact.new_target)
                slots.append((i, group))
    out: list[dict | None] = [None] * len(facts)
    if not prompts:
        return out
    scores = score_targets(model, prompts, targets)
    rows: dict[int, dict[str, list[int]]] = {}
    for row, (i, group) in enumerate(slots):
        rows.setdefault(i, {g: [] for g in COUNTERFACT_GROUPS})[group].append(row)
    for i, per in rows.items():
        out[i] = {g: scores.take(r) for g, r in per.items()}
    return out


def paper_metrics(comparison: Comparison, new_after: dict[str, Scores] | None = None) -> PaperMetrics:
    """The metrics of one fact from its comparison (and, for CounterFact, the new target's scores
    after the edit from :func:`new_target_scores`)."""
    rewrite = {}
    for group in TO_FORGET:
        before, after = comparison.before[group].prob, comparison.after[group].prob
        if len(before):
            rewrite[group] = float(((before - after) / before.clamp_min(1e-12)).mean())
    delta = {}
    for group in TO_KEEP:
        before, after = comparison.before[group].known, comparison.after[group].known
        if len(before):
            delta[group] = float(after.float().mean() - before.float().mean())
    return PaperMetrics(rewrite, delta, None if new_after is None else _counterfact(comparison, new_after))


def _counterfact(comparison: Comparison, new_after: dict[str, Scores]) -> dict[str, float]:
    out = {}
    for group, (score, magnitude) in COUNTERFACT_GROUPS.items():
        true, new = comparison.after[group].prob, new_after[group].prob
        if not len(true):
            continue
        margin = new - true if group != "same_answer" else true - new  # [n] towards the goal
        out[score] = float((margin > 0).float().mean())
        out[magnitude] = float(margin.mean())
    return out


def mean_metrics(metrics: list[PaperMetrics]) -> dict[str, float]:
    """Each metric averaged over facts (``"rewrite_score.prompt"``, ``"counterfact.ES"``, ...),
    over the facts that have it."""
    sums: dict[str, list[float]] = {}
    for m in metrics:
        for family in ("rewrite_score", "delta_acc", "counterfact"):
            for name, value in (getattr(m, family) or {}).items():
                sums.setdefault(f"{family}.{name}", []).append(value)
    return {name: float(torch.tensor(values).mean()) for name, values in sums.items()}
