"""Before and after an edit: one fact's probe groups, scored on both states, judged by the criteria.

Every place that asks "was the fact forgotten and the rest kept?" (verification, the CLI's
``forget --report``, the benches, the notebooks) builds a :class:`Comparison` here:

* the **groups** of a fact (:data:`GROUPS`): its prompt, paraphrases and held-out paraphrases
  (wordings no editor reads) (to forget), its neighbours (other subjects of the relation),
  same-subject facts (other relations of the subject) and same-answer facts (other subjects with
  the same answer) (to keep), as ``(prompt, target)`` pairs (:func:`fact_pairs`);
* each group scored on the state before and the state after (:mod:`excise.scoring`);
* ``forgotten(group)`` / ``kept(group)`` / ``weakened(group)`` by :mod:`excise.criteria`; a probe
  to keep only counts when the model knew its answer before the edit.

Facts edited together are compared together: a neighbour or same-subject probe that states
another fact of the batch is meant to be forgotten too, so it is left out of the probes to keep.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from excise.criteria import forgotten, kept, weakened
from excise.scoring import Scores, score_targets

GROUPS = ("prompt", "paraphrases", "held_out_paraphrases", "neighbors", "same_subject", "same_answer")
TO_FORGET = ("prompt", "paraphrases", "held_out_paraphrases")
TO_KEEP = ("neighbors", "same_subject", "same_answer")


def fact_pairs(fact, others=()) -> dict[str, list[tuple[str, str]]]:
    """The (prompt, target) pairs of each group for ``fact``.

    ``others``: the other facts edited together with ``fact``. A pair to keep that states one of
    them is meant to be forgotten too, so it is left out.
    """
    def keep(pairs):
        return [(p, t) for p, t in pairs if not states_one_of(p, t, others)]

    return {
        "prompt": [(fact.text, fact.target)],
        "paraphrases": [(p, fact.target) for p in fact.paraphrase_texts],
        "held_out_paraphrases": [(p, fact.target) for p in fact.held_out_texts],
        **{group: keep((p.prompt, p.target) for p in getattr(fact, group)) for group in TO_KEEP},
    }


def states_one_of(prompt: str, target: str, facts) -> bool:
    """Whether ``(prompt, target)`` states one of ``facts``: its subject and the same answer."""
    return any(f.subject in prompt and f.target.strip() == target.strip() for f in facts)


def score_groups(model, facts, batch_size: int = 32) -> list[dict[str, Scores]]:
    """Per fact, a :class:`Scores` per group (see :data:`GROUPS`), from one batched scoring run.

    Facts scored together are taken to be edited together (see :func:`fact_pairs`).
    """
    prompts, targets, slots = [], [], []
    for i, fact in enumerate(facts):
        others = [f for j, f in enumerate(facts) if j != i]
        for group, pairs in fact_pairs(fact, others).items():
            for prompt, target in pairs:
                prompts.append(prompt)
                targets.append(target)
                slots.append((i, group))
    scores = score_targets(model, prompts, targets, batch_size=batch_size)
    out = [{g: [] for g in GROUPS} for _ in facts]
    for row, (i, group) in enumerate(slots):
        out[i][group].append(row)
    return [{g: scores.take(rows) for g, rows in per.items()} for per in out]


@dataclass
class Comparison:
    """One fact's groups scored before and after an edit.

    ``pairs[group]`` lists the ``(prompt, target)`` pairs; ``before[group]`` / ``after[group]``
    their :class:`~excise.scoring.Scores` in the same order.
    """

    fact: object
    pairs: dict[str, list[tuple[str, str]]]
    before: dict[str, Scores]
    after: dict[str, Scores]

    def forgotten(self, group: str) -> torch.Tensor:
        """``[n]`` bool per pair of ``group``: forgotten by :func:`excise.criteria.forgotten`."""
        return forgotten(self.before[group], self.after[group])

    def kept(self, group: str) -> torch.Tensor:
        """``[n]`` bool per pair of ``group``: still produced after the edit (:func:`excise.criteria.kept`)."""
        return kept(self.after[group])

    def weakened(self, group: str) -> torch.Tensor:
        """``[n]`` bool per pair of ``group``: kept, but its probability more than halved
        (:func:`excise.criteria.weakened`)."""
        return weakened(self.before[group], self.after[group])

    def weakened_tally(self) -> tuple[int, int]:
        """``(weakened, kept)`` over every group to keep, among the pairs known before the edit:
        how much of what :meth:`tally` calls kept lost more than half its probability."""
        groups = [g for g in TO_KEEP if g in self.before]  # a report saved before a group existed
        hits = sum(int((self.weakened(g) & self.known_before(g)).sum()) for g in groups)
        return hits, sum(self.tally(g)[0] for g in groups)

    def known_before(self, group: str) -> torch.Tensor:
        """``[n]`` bool: the model produced the answer before the edit."""
        return self.before[group].known.bool()

    def tally(self, group: str) -> tuple[int, int]:
        """``(hits, total)``: pairs forgotten of ``group`` (to forget), or pairs kept among those
        known before (to keep)."""
        if group in TO_FORGET:
            gone = self.forgotten(group)
            return int(gone.sum()), len(gone)
        was = self.known_before(group)
        return int((self.kept(group).bool() & was).sum()), int(was.sum())

    def tally_known(self, group: str) -> tuple[int, int]:
        """``(forgotten, known)`` for a group to forget: of its pairs the model produced before the
        edit, those forgotten. :meth:`tally` counts every pair, so there a wording whose answer the
        model never stated (ranked second, say) counts against the edit unless its probability
        still falls by :data:`~excise.criteria.PROB_DROP`; this count leaves such wordings out."""
        if group not in TO_FORGET:
            raise ValueError(f"tally_known counts a group to forget ({', '.join(TO_FORGET)}), not {group!r}; "
                             "use tally for the groups to keep")
        was = self.known_before(group)
        return int((self.forgotten(group).bool() & was).sum()), int(was.sum())

    @property
    def prompt_forgotten(self) -> bool:
        return bool(self.forgotten("prompt")[0])

    def rows(self) -> list[dict]:
        """One JSON-able record per pair: ``kind`` (its group), prompt, target, scores before/after, verdicts."""
        out = []
        for group in GROUPS:
            gone, still, weak = self.forgotten(group), self.kept(group), self.weakened(group)
            b, a = self.before[group], self.after[group]
            for i, (prompt, target) in enumerate(self.pairs[group]):
                out.append({"fact": self.fact.id, "kind": group, "prompt": prompt, "target": target,
                            "prob_before": float(b.prob[i]), "prob_after": float(a.prob[i]),
                            "rank_before": int(b.rank[i]), "rank_after": int(a.rank[i]),
                            "forgotten": bool(gone[i]), "kept": bool(still[i]), "weakened": bool(weak[i])})
        return out


def compare(model, facts, before: AbstractContextManager | None = None,
            before_model=None) -> list[Comparison]:
    """A :class:`Comparison` per fact of ``facts`` (edited together) between two model states.

    "After" is ``model`` as it is. "Before" is ``before_model`` when given, else ``model`` inside
    the ``before`` context (e.g. ``edit.reverted(model)``), which must restore it on exit.
    """
    facts = list(facts)
    after = score_groups(model, facts)
    if before_model is not None:
        earlier = score_groups(before_model, facts)
    elif before is not None:
        with before:
            earlier = score_groups(model, facts)
    else:
        raise ValueError("compare() needs the state before the edit: before= or before_model=")
    return [Comparison(fact, fact_pairs(fact, [f for f in facts if f is not fact]), b, a)
            for fact, b, a in zip(facts, earlier, after)]
