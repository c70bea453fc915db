"""The edit's scores on one model state: efficacy, paraphrases, neighbours, the subject's other facts.

For every fact we score, in one batched pass, its prompt, its paraphrases, its neighbours (other
subjects of the relation) and its same-subject facts (other relations of the subject), and keep
rank / probability / greedy-known for each (:mod:`excise.scoring`). Whether the fact is forgotten
and the rest kept is decided later against the other state with :mod:`excise.verify.criteria`.
Model-level quality (perplexity on held-out text, fluency of generations) is measured once per
state in :func:`model_quality`.
"""

from __future__ import annotations

from excise.scoring import Scores, score_targets

GROUPS = ("prompt", "paraphrases", "neighbors", "same_subject")


def fact_pairs(fact, others=()) -> dict[str, list[tuple[str, str]]]:
    """The (prompt, target) pairs of each group for ``fact``.

    ``others``: the other facts edited together with ``fact``. A neighbour or same-subject pair
    that states one of them is meant to be forgotten too, so it is left out of the pairs to keep.
    """
    def keep(pairs):
        return [(p, t) for p, t in pairs if not states_one_of(p, t, others)]

    return {
        "prompt": [(fact.text, fact.target)],
        "paraphrases": [(p, fact.target) for p in fact.paraphrase_texts],
        "neighbors": keep((p.prompt, p.target) for p in fact.neighbors),
        "same_subject": keep((p.prompt, p.target) for p in fact.same_subject),
    }


def states_one_of(prompt: str, target: str, facts) -> bool:
    """Whether ``(prompt, target)`` states one of ``facts``: its subject and the same answer."""
    return any(f.subject in prompt and f.target.strip() == target.strip() for f in facts)


def score_facts(model, facts, batch_size: int = 32) -> list[dict[str, Scores]]:
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


def scores_dict(scores: Scores) -> dict:
    """JSON-able lists of a :class:`Scores`."""
    return {"rank": scores.rank.tolist(), "prob": scores.prob.tolist(), "known": scores.known.tolist()}


def model_quality(model, prompts: list[str], fluency_tokens: int = 30, perplexity: bool = True) -> dict:
    """Held-out perplexity and n-gram-entropy fluency of greedy and sampled continuations.

    ``fluency_tokens=0`` or ``perplexity=False`` skip the (costly) parts.
    """
    from excise.text import perplexity as ppl
    from excise.verify.generation import fluency

    quality = {}
    if perplexity:
        quality["perplexity"] = ppl(model)
    if fluency_tokens:
        quality["fluency"] = fluency(model, prompts, fluency_tokens)
    return quality
