"""``verify``: measure an edited model against its original and return a :class:`Report`.

The "before" state is either a separate ``original`` model or the edited model itself with its
recorded edits (``model.excise_edits``) temporarily reverted, newest first. Both states get the
same measurements (scores of prompt, paraphrases, neighbours and same-subject facts; the logit
lens, format and linear probes; perplexity and fluency); the relearning attack runs on the edited
state only and leaves its weights untouched. Probes that need *other facts of the same relation*
(few-shot context, multiple-choice distractors, relearning data, linear-probe training) draw them
from :func:`related_probes`: never the verified facts, never a fact sharing a verified answer.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from excise.facts import Fact, Probe
from excise.verify import metrics, outcome
from excise.verify import probes as P
from excise.verify.report import FactReport, Report

log = logging.getLogger(__name__)

PROBES = ("logit_lens", "formats", "relearn", "linear_probe")
FORMATS = ("question", "multiple_choice", "few_shot")


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


def verify(edited, fact_or_facts, original=None, probes=PROBES, relearn_steps: int = 20,
           relearn_lr: float = 5e-5, relearn_facts: int = 16, pool=None, fluency_tokens: int = 30, perplexity: bool = True,
           few_shot_k: int = 3, mc_orders: int = 3, circuits: bool = False,
           progress: bool = True) -> Report:
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
    """
    facts = [fact_or_facts] if isinstance(fact_or_facts, Fact) else list(fact_or_facts)
    if not facts:
        raise ValueError("verify needs at least one fact")
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; choose from {PROBES}")
    pool = _default_pool(facts) if pool is None else list(pool)
    targets, ids = {f.target for f in facts}, {f.id for f in facts}
    related = [related_probes(f, pool, targets, ids) for f in facts]
    settings = dict(probes=list(probes), relearn_steps=relearn_steps, relearn_lr=relearn_lr,
                    relearn_facts=relearn_facts,
                    fluency_tokens=fluency_tokens, few_shot_k=few_shot_k, mc_orders=mc_orders)

    def measure(model) -> dict:
        return _measure(model, facts, related, probes, fluency_tokens, perplexity, few_shot_k,
                        mc_orders, circuits, progress)

    after = measure(edited)
    edits = list(getattr(edited, "excise_edits", []) or [])
    if original is not None:
        before, source = measure(original), "original model"
    elif edits:
        with ExitStack() as stack:
            for edit in reversed(edits):
                stack.enter_context(edit.reverted(edited))
            before = measure(edited)
        source = f"edited model with its {len(edits)} edit(s) reverted"
    else:
        log.warning("no original model and no recorded edits: 'before' equals 'after'")
        before, source = after, "same model (no edit recorded)"
    relearned = _relearn(edited, facts, [r[:relearn_facts] for r in related], relearn_steps, relearn_lr,
                             progress) \
        if "relearn" in probes else {}
    reports = [_fact_report(i, f, before, after, relearned, related[i], probes)
               for i, f in enumerate(facts)]
    settings["before"] = source
    return Report(facts=reports, before=_quality(before), after=_quality(after), settings=settings,
                  model=getattr(edited, "excise_name", type(edited).__name__),
                  edits=[_edit_summary(e) for e in edits], circuits=_circuits(before, after))


def _measure(model, facts, related, probes, fluency_tokens, perplexity, k, orders, circuits, progress):
    state = {"scores": metrics.score_facts(model, facts)}
    if "logit_lens" in probes:
        state["logit_lens"] = P.logit_lens(model, facts)
    if "formats" in probes:
        state["question"] = P.question(model, facts)
        with_mc = [i for i, r in enumerate(related) if len({p.target.strip() for p in r}) >= 3]
        mc = P.multiple_choice(model, [facts[i] for i in with_mc],
                               [[p.target for p in related[i]] for i in with_mc], orders)
        state["multiple_choice"] = dict(zip(with_mc, mc))
        state["few_shot"] = P.few_shot(model, facts, [r[:k] for r in related])
    if "linear_probe" in probes:
        from excise.verify.linear_probe import probe

        state["linear_probe"] = {}
        for i, fact in enumerate(facts):
            try:
                state["linear_probe"][i] = probe(model, fact, related[i])
            except ValueError as err:
                state["linear_probe"][i] = str(err)
    state["quality"] = metrics.model_quality(model, [f.text for f in facts], fluency_tokens, perplexity)
    if circuits:
        from excise.verify.circuits import trace_facts

        state["circuits"] = trace_facts(model, facts, progress=progress)
    return state


def _relearn(edited, facts, related, steps, lr, progress) -> dict[int, dict]:
    """One attack per group of facts sharing their training data; returns per-fact curves, each
    with the mean probability of the answer for made-up subjects (the control) along the way."""
    from excise.verify.relearn import control_probes, relearn

    groups: dict[tuple, list[int]] = {}
    for i, rel in enumerate(related):
        groups.setdefault(tuple(p.prompt for p in rel), []).append(i)
    out = {}
    for members in groups.values():
        train = related[members[0]]
        if not train:
            for i in members:
                out[i] = "no other facts of this relation to relearn on"
            continue
        controls = [control_probes(facts[i]) for i in members]
        watch = [Probe(facts[i].text, facts[i].target) for i in members]
        curve = relearn(edited, train, watch + [p for c in controls for p in c], steps=steps, lr=lr,
                        progress=progress)
        start = len(members)
        for j, i in enumerate(members):
            stop = start + len(controls[j])
            out[i] = {"steps": curve["steps"], "prob": [p[j] for p in curve["prob"]],
                      "rank": [r[j] for r in curve["rank"]], "train_loss": curve["train_loss"],
                      "n_train": len(train),
                      "control_prob": [sum(p[start:stop]) / len(controls[j]) for p in curve["prob"]],
                      "control_prompts": [p.prompt for p in controls[j]]}
            start = stop
    return out


def _fact_report(i, fact, before, after, relearned, related, probes) -> FactReport:
    from excise.verify.criteria import forgotten, kept

    b, a = before["scores"][i], after["scores"][i]
    prompt_gone = bool(forgotten(b["prompt"], a["prompt"])[0])
    para_gone = forgotten(b["paraphrases"], a["paraphrases"]) if len(a["paraphrases"]) else None
    outcomes = _outcomes(i, before, after, relearned, b, probes)
    n_para = len(a["paraphrases"])
    gone = int(para_gone.sum()) if para_gone is not None else 0
    label, reason = outcome.verdict(prompt_gone, (gone, n_para), outcomes, int(a["prompt"].rank[0]),
                                    float(a["prompt"].prob[0]), float(b["prompt"].prob[0]))
    scores = {group: {"before": metrics.scores_dict(b[group]), "after": metrics.scores_dict(a[group])}
              for group in metrics.GROUPS}
    summary = {
        "prompt_forgotten": prompt_gone,
        "paraphrases_forgotten": f"{gone}/{n_para}",
        "neighbors_kept": _share(kept(a["neighbors"]), kept(b["neighbors"])),
        "same_subject_kept": _share(kept(a["same_subject"]), kept(b["same_subject"])),
    }
    return FactReport(fact=fact.to_dict(), verdict=label, reason=reason, summary=summary,
                      scores=scores, probes=outcomes, n_related=len(related))


def _share(after_known, before_known) -> str:
    """``"kept/known-before"``: among items known before the edit, how many are still known."""
    was = before_known.bool()
    return f"{int((after_known.bool() & was).sum())}/{int(was.sum())}"


def _outcomes(i, before, after, relearned, b, probes) -> list[outcome.ProbeOutcome]:
    out = []
    if "logit_lens" in probes:
        lb, la = before["logit_lens"][i], after["logit_lens"][i]
        out.append(outcome.judge_scored(
            "logit_lens", {**lb, "rank": lb["best_rank"], "prob": lb["best_prob"]},
            {**la, "rank": la["best_rank"], "prob": la["best_prob"]},
            f"logit lens at layer {la['best_layer']}"))
    if "formats" in probes:
        out.append(outcome.judge_known("question", before["question"][i], after["question"][i],
                                       f"question ({after['question'][i]['question']!r})"))
        if i in after["multiple_choice"]:
            mb, ma = before["multiple_choice"][i], after["multiple_choice"][i]
            out.append(outcome.judge_known("multiple_choice", mb, ma,
                                           f"multiple choice ({ma['correct']}/{ma['orders']} orders right)"))
        else:
            out.append(outcome.skipped("multiple_choice", "fewer than 3 other answers of the relation"))
        out.append(outcome.judge_scored("few_shot", before["few_shot"][i], after["few_shot"][i],
                                        "few-shot fill-in"))
    if "linear_probe" in probes:
        pb, pa = before["linear_probe"][i], after["linear_probe"][i]
        if isinstance(pa, str) or isinstance(pb, str):
            out.append(outcome.skipped("linear_probe", pa if isinstance(pa, str) else pb))
        else:
            out.append(outcome.judge_known("linear_probe", pb, pa,
                                           f"linear probe (rank {pa['rank']} of {pa['n_candidates']} "
                                           f"at layer {pa['layer']})"))
    if "relearn" in probes:
        curve = relearned.get(i)
        if isinstance(curve, dict):
            before_num = {"rank": int(b["prompt"].rank[0]), "prob": float(b["prompt"].prob[0])}
            after_num = {"rank": curve["rank"][-1], "prob": curve["prob"][-1], "curve": curve}
            out.append(outcome.judge_relearn(
                before_num, after_num,
                f"relearning: probability returns to {curve['prob'][-1]:.2f} after "
                f"{curve['steps'][-1]} steps on {curve['n_train']} other facts"))
        else:
            out.append(outcome.skipped("relearn", curve or "not run"))
    return out


def _quality(state) -> dict:
    return state["quality"]


def _circuits(before, after):
    if "circuits" not in after:
        return None
    from excise.verify.circuits import pair_states

    return pair_states(before["circuits"], after["circuits"])


def _edit_summary(edit) -> dict:
    return {"method": getattr(edit, "method", type(edit).__name__),
            "components": [getattr(c, "key", str(c)) for c in getattr(edit, "components", [])],
            "fact_ids": list(getattr(edit, "fact_ids", []))}
