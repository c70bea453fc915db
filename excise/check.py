"""Which facts does a model know? Score each fact's prompt and paraphrases in batches."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from excise.facts import Fact
from excise.interrupt import checkpoint
from excise.scoring import score_targets


@dataclass(frozen=True)
class FactCheck:
    """One fact's scores: main prompt rank/probability, whether it is known, paraphrase tally."""

    fact: Fact
    rank: int
    prob: float
    known: bool
    paraphrases_known: int
    n_paraphrases: int


def check_facts(model, facts: list[Fact], batch_size: int = 32, progress: bool = True) -> list[FactCheck]:
    """Score every fact; a fact is known when greedy decoding produces its whole target."""
    prompts, targets, owner = [], [], []
    for i, fact in enumerate(facts):
        for text in (fact.text, *fact.paraphrase_texts):
            prompts.append(text)
            targets.append(fact.target)
            owner.append(i)
    ranks, probs, known = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="facts check", disable=not progress):
        checkpoint("a batch of the facts check")
        scores = score_targets(model, prompts[start:start + batch_size], targets[start:start + batch_size],
                               batch_size=batch_size)
        ranks += scores.rank.tolist()
        probs += scores.prob.tolist()
        known += scores.known.tolist()
    rows, cursor = [], 0
    for fact in facts:
        n = 1 + len(fact.paraphrases)
        rows.append(FactCheck(
            fact=fact, rank=ranks[cursor], prob=probs[cursor], known=known[cursor],
            paraphrases_known=sum(known[cursor + 1:cursor + n]), n_paraphrases=n - 1,
        ))
        cursor += n
    return rows


def round_robin(facts: list[Fact]) -> list[Fact]:
    """``facts`` reordered one relation at a time (first of each relation, then second, ...), so that
    any prefix of the result spans the relations."""
    by_relation: dict[str | None, list[Fact]] = {}
    for fact in facts:
        by_relation.setdefault(fact.relation, []).append(fact)
    rounds = max((len(v) for v in by_relation.values()), default=0)
    return [group[i] for i in range(rounds) for group in by_relation.values() if i < len(group)]


def known_facts(model, facts: list[Fact], limit: int, batch_size: int = 32) -> list[Fact]:
    """The first ``limit`` facts of :func:`round_robin` order that the model knows (greedy decoding
    produces the whole target after the prompt): what the benches edit."""
    chosen = []
    order = round_robin(facts)
    for start in range(0, len(order), batch_size):
        if len(chosen) >= limit:
            break
        part = order[start:start + batch_size]
        known = score_targets(model, [f.text for f in part], [f.target for f in part], batch_size=batch_size).known
        chosen += [f for f, ok in zip(part, known.tolist()) if ok]
    return chosen[:limit]
