"""``verify``: measure an edited model against its original and return a :class:`Report`.

The "before" state is either a separate ``original`` model or the edited model itself with its
recorded edits (``model.excise_edits``) temporarily reverted, newest first. Both states get the
same measurements: the scores of each fact's groups (prompt, paraphrases, held-out paraphrases,
neighbours, same-subject and same-answer facts; :mod:`excise.comparison`), every selected robustness probe
(:mod:`excise.verify.probes.registry`), perplexity and fluency. Attack probes (relearning) run on
the edited state only and leave its weights untouched. Probes that need *other facts of the same
relation* (few-shot context, multiple-choice distractors, relearning data, linear-probe training)
draw them from :func:`related_probes`: never the verified facts, never a fact sharing a verified
answer.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace

from tqdm.auto import tqdm

from excise.comparison import Comparison, fact_pairs, score_groups
from excise.export import weights_hash
from excise.facts import Fact, Probe
from excise.interrupt import checkpoint
from excise.scoring import Scores
from excise.verify import outcome
from excise.verify.paper_metrics import new_target_scores, paper_metrics
from excise.verify.probes.base import RobustnessProbe, Setup, Skipped
from excise.verify.probes.registry import PROBES, select
from excise.verify.quality import Quality, model_quality
from excise.verify.report import FactReport, Report, Summary
from excise.verify.state_cache import cached, hooked, remember, state_key

log = logging.getLogger(__name__)

__all__ = ["PROBES", "related_probes", "verify"]


def related_probes(fact: Fact, pool, exclude_targets: set[str], exclude_ids: set[str]) -> list[Probe]:
    """Other facts of ``fact``'s relation as probes: its neighbours, then same-relation pool facts.

    Facts whose id is verified or whose answer (first word, case-insensitive) equals a verified
    answer are dropped, so nothing built from these probes ever states a forgotten answer.
    """
    def key(target: str) -> str:
        return target.strip().lower()
    blocked = {key(t) for t in exclude_targets}
    items = list(fact.neighbors)
    if fact.relation:
        items += [Probe(f.text, f.target) for f in pool
                  if f.relation == fact.relation and f.id not in exclude_ids]
    seen, out = set(), []
    for item in items:
        if key(item.target) in blocked or item.prompt in seen:
            continue
        seen.add(item.prompt)
        out.append(item)
    return out


def _default_pool(facts) -> list[Fact]:
    from excise.facts import load_facts

    if not any(f.relation for f in facts):
        return []
    try:
        return load_facts("all")
    except FileNotFoundError:
        return []


@dataclass
class _State:
    """What one model state measured: ``scores[i][group]``, ``readings[probe][i]``, quality."""

    scores: list[dict[str, Scores]]
    readings: dict[str, list]
    quality: Quality
    circuits: list[dict] | None = None
    new_targets: list[dict[str, Scores] | None] | None = None


def verify(edited, fact_or_facts, original=None, probes=PROBES, relearn_steps: int = 20,
           relearn_lr: float = 5e-5, relearn_facts: int = 16, pool=None, fluency_tokens: int = 30,
           perplexity: bool = True, few_shot_k: int = 3, mc_orders: int = 3, circuits: bool = False,
           progress: bool = True, budgets: dict | None = None, reuse_before: bool = True) -> Report:
    """Verify that ``edited`` forgot ``fact_or_facts`` (a Fact or a list) and kept the rest.

    Args:
        original: the unedited model; default: ``edited`` with its ``excise_edits`` reverted.
        probes: any of :data:`PROBES`.
        relearn_steps, relearn_lr, relearn_facts: budget of the relearning attack (Adam on all
            parameters, on at most ``relearn_facts`` other facts of the relation).
        pool: facts to draw same-relation data from (default: every bundled fact set).
        fluency_tokens: tokens generated per prompt for fluency (0 skips fluency).
        perplexity: measure held-out perplexity.
        circuits: also record causal traces, head/neuron direct logit attributions and last-position
            attention before/after (slow: ~2 x n_layers forward batches per fact).
        budgets: other attack budgets by :class:`~excise.verify.probes.base.Setup` field name
            (``{"lora_steps": (10, 30), "quant_bits": (4,)}``); every budget is recorded in
            ``Report.settings``.
        reuse_before: when an earlier call measured the same "before" weights (bit-identical)
            on the same facts with the same probes and budgets, reuse those measurements
            (:mod:`excise.verify.state_cache`; the report's ``settings["before"]`` says so).
    """
    facts = [fact_or_facts] if isinstance(fact_or_facts, Fact) else list(fact_or_facts)
    if not facts:
        raise ValueError("verify needs at least one fact")
    chosen = select(probes)
    pool = _default_pool(facts) if pool is None else list(pool)
    setup = _setup(facts, pool, budgets, few_shot_k=few_shot_k, mc_orders=mc_orders,
                   relearn_steps=relearn_steps, relearn_lr=relearn_lr, relearn_facts=relearn_facts,
                   progress=progress)
    settings = dict(probes=list(probes), fluency_tokens=fluency_tokens, **setup.budgets())
    on_states = [p for p in chosen if not p.attack]
    per_state = 2 + len(on_states) + int(circuits)
    bar = tqdm(total=2 * per_state + len(chosen) - len(on_states), desc="verify", unit="step",
               disable=not progress)

    timings: dict[str, float] = {}

    def measure(model, state: str) -> _State:
        return _measure(model, facts, on_states, setup, fluency_tokens, perplexity, circuits,
                        _Step(bar, state, timings))

    def measure_before(model) -> tuple[_State, str]:
        reusable = reuse_before and not hooked(model)  # hooks change outputs, not weights
        weights = weights_hash(model) if reusable else None

        def key(with_circuits: bool) -> str | None:
            return state_key(model, weights, facts, [p.name for p in on_states], setup,
                             fluency_tokens=fluency_tokens, perplexity=perplexity,
                             circuits=with_circuits) if reusable else None
        state = cached(key(circuits))
        if state is None and not circuits:  # a state measured with circuits holds all the rest too
            state = cached(key(True))
            state = state and replace(state, circuits=None)
        if state is not None:
            bar.update(per_state)
            return state, " (measurements reused from an earlier verify of the same weights)"
        state = measure(model, "before")
        remember(key(circuits), state)
        return state, ""

    after = measure(edited, "after")
    edits = list(getattr(edited, "excise_edits", []) or [])
    if original is not None:
        before, reused = measure_before(original)
        source = "original model" + reused
    elif edits:
        with ExitStack() as stack:
            for edit in reversed(edits):
                stack.enter_context(edit.reverted(edited))
            before, reused = measure_before(edited)
        source = f"edited model with its {len(edits)} edit(s) reverted" + reused
    else:
        log.warning("no original model and no recorded edits: 'before' equals 'after'")
        before, source = after, "same model (no edit recorded)"
        bar.update(per_state)
    step = _Step(bar, "attack", timings)
    attacked = {p.name: step(p.name, p.measure, edited, facts, setup) for p in chosen if p.attack}
    bar.close()
    reports = [_fact_report(i, facts, before, after, attacked, chosen, len(setup.related[i]))
               for i in range(len(facts))]
    settings["before"] = source
    return Report(facts=reports, before=before.quality, after=after.quality, settings=settings,
                  model=getattr(edited, "excise_name", type(edited).__name__),
                  edits=[_edit_summary(e) for e in edits], circuits=_circuits(before, after),
                  timings=timings)


def _setup(facts, pool, budgets: dict | None, **named) -> Setup:
    """The probes' :class:`Setup`: related facts, the named budgets, then ``budgets`` over them."""
    budgets = dict(budgets or {})
    known = set(Setup.__dataclass_fields__) - {"related", "progress"}
    unknown = sorted(set(budgets) - known)
    if unknown:
        raise ValueError(f"unknown attack budget(s) {unknown}; choose from {sorted(known)}")
    targets, ids = {f.target for f in facts}, {f.id for f in facts}
    return Setup(related=[related_probes(f, pool, targets, ids) for f in facts], **{**named, **budgets})


class _Step:
    """Runs one verification step under the progress bar, naming it (``"after: logit_lens"``),
    and adds its seconds to ``timings[name]`` (both states together)."""

    def __init__(self, bar, state: str, timings: dict[str, float]):
        self.bar, self.state, self.timings = bar, state, timings

    def __call__(self, name: str, fn, *args, **kwargs):
        checkpoint(f"{self.state}: {name}")
        self.bar.set_postfix_str(f"{self.state}: {name}")
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            self.bar.update(1)


def _measure(model, facts, probes: list[RobustnessProbe], setup: Setup, fluency_tokens: int,
             perplexity: bool, circuits: bool, step: _Step) -> _State:
    scores, new_targets = step("scores", _scores, model, facts)
    readings = {p.name: step(p.name, p.measure, model, facts, setup) for p in probes}
    quality = step("quality", model_quality, model, [f.text for f in facts], fluency_tokens,
                   perplexity)
    traced = None
    if circuits:
        from excise.verify.circuits import trace_facts

        traced = step("circuits", trace_facts, model, facts, progress=setup.progress)
    return _State(scores, readings, quality, traced, new_targets)


def _scores(model, facts):
    """Each fact's groups scored, and its counterfactual target's scores where it has one."""
    return score_groups(model, facts), new_target_scores(model, facts)


def _fact_report(i: int, facts, before: _State, after: _State, attacked: dict[str, list],
                 probes: list[RobustnessProbe], n_related: int) -> FactReport:
    fact = facts[i]
    others = [f for j, f in enumerate(facts) if j != i]
    comparison = Comparison(fact, fact_pairs(fact, others), before.scores[i], after.scores[i])
    outcomes = [_judge(p, before, after, attacked, i, comparison) for p in probes]
    b, a = comparison.before["prompt"], comparison.after["prompt"]
    label, reason = outcome.verdict(comparison.prompt_forgotten, comparison.tally("paraphrases"),
                                    outcomes, int(a.rank[0]), float(a.prob[0]), float(b.prob[0]),
                                    comparison.tally("held_out_paraphrases"))
    metrics = paper_metrics(comparison, after.new_targets[i] if after.new_targets else None)
    return FactReport(fact=fact, verdict=label, reason=reason, summary=Summary.of(comparison),
                      comparison=comparison, probes=outcomes, n_related=n_related, metrics=metrics)


def _judge(probe: RobustnessProbe, before: _State, after: _State, attacked: dict[str, list], i: int,
           comparison: Comparison) -> outcome.ProbeOutcome:
    """One probe's outcome on fact ``i``: "skipped" (with the reason) when a reading is skipped."""
    if probe.attack:
        pair = (None, attacked[probe.name][i])
    else:
        pair = (before.readings[probe.name][i], after.readings[probe.name][i])
    skip = next((r for r in reversed(pair) if isinstance(r, Skipped)), None)
    if skip is not None:
        return outcome.skipped(probe.name, skip.reason)
    return probe.judge(*pair, comparison)


def _circuits(before: _State, after: _State) -> dict | None:
    if after.circuits is None:
        return None
    from excise.verify.circuits import pair_states

    return pair_states(before.circuits, after.circuits)


def _edit_summary(edit) -> dict:
    return {"method": getattr(edit, "method", type(edit).__name__),
            "components": [getattr(c, "key", str(c)) for c in getattr(edit, "components", [])],
            "fact_ids": list(getattr(edit, "fact_ids", []))}
