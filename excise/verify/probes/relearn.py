"""Relearning attack: fine-tune briefly on *related* facts and see whether the forgotten one returns.

Knowledge that an edit only hid (rather than removed) tends to come back after a few gradient
steps on neighbouring data, even data that never mentions the forgotten fact (Lynch et al. 2024;
Deeb & Roger 2024). We fine-tune every parameter with Adam for a small fixed budget on facts of
the same relation (the caller guarantees they neither state the forgotten fact nor share its
answer) and record the forgotten target's probability along the way.

A return alone does not show that *this* fact came back: the attack may just teach the relation's
frequent answers. So the same run also watches a control: the fact's prompt with made-up subjects
the model never knew (:mod:`excise.verify.control`), with the same answer. If
the answer rises as much for them, the attack taught the answer, not the fact, and the probe says
nothing about the edit (:func:`judge_relearn`).

The attacked model is the edited model itself: all parameters are snapshot before training and
written back afterwards (in a ``finally``), so the model leaves this module bit-for-bit as it came.
Being an attack, the probe runs once, on the edited state; facts sharing their training data share
one attack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from excise.facts import Probe
from excise.scoring import build_batch, score_targets, target_logprobs
from excise.verify.control import control_explains, control_probes
from excise.verify.outcome import ProbeOutcome, Scored, judge_scored
from excise.verify.probes.base import RobustnessProbe, Skipped

log = logging.getLogger(__name__)

NO_DATA = "no other facts of this relation to relearn on"


@dataclass(frozen=True)
class Curve:
    """What :func:`relearn` recorded: at each of ``steps`` ``[s]``, ``prob`` and ``rank``
    ``[s][watch]`` of the watched probes; ``train_loss`` ``[steps]`` per optimisation step."""

    steps: list[int]
    prob: list[list[float]]
    rank: list[list[int]]
    train_loss: list[float]


@dataclass(frozen=True)
class FactCurve:
    """One fact along the attack: its target's ``prob``/``rank`` ``[s]`` at ``steps``, the
    control's mean ``control_prob`` ``[s]`` over ``control_prompts``, on ``n_train`` facts."""

    steps: list[int]
    prob: list[float]
    rank: list[int]
    train_loss: list[float]
    n_train: int
    control_prob: list[float]
    control_prompts: list[str]


@dataclass(frozen=True)
class RelearnReading(Scored):
    """The forgotten target after the attack (``rank``, ``prob``) and its ``curve`` along the way."""

    curve: FactCurve


def relearn(model, train, watch, steps: int = 20, lr: float = 5e-5, record_every: int | None = None,
            progress: bool = False) -> Curve:
    """Fine-tune on ``train`` probes for ``steps`` Adam steps; track the ``watch`` probes.

    Args:
        train: :class:`excise.facts.Probe` items (filled-in prompt, target) to learn.
        watch: probes whose probability we follow (the forgotten facts' prompts).
        steps, lr: the attack's budget.
        record_every: measure ``watch`` every this many steps (default ``steps // 5``).

    The last record is after ``steps`` steps. ``model``'s weights are restored on return.
    """
    if not train:
        raise ValueError("relearning needs at least one training fact of the same relation")
    record_every = record_every or max(1, steps // 5)
    params = [p for p in model.original_model.parameters()]
    saved = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    batch = build_batch(model, [p.prompt for p in train], [p.target for p in train])
    curve = Curve(steps=[], prob=[], rank=[], train_loss=[])

    def record(step: int) -> None:
        scores = score_targets(model, [w.prompt for w in watch], [w.target for w in watch])
        curve.steps.append(step)
        curve.prob.append(scores.prob.tolist())
        curve.rank.append(scores.rank.tolist())

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
                curve.train_loss.append(float(loss.detach()))
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
             curve.prob[0], curve.prob[-1])
    return curve


def measure(model, facts, setup) -> list[RelearnReading | Skipped]:
    """One attack per group of facts sharing their training data (``setup.related``, at most
    ``setup.relearn_facts`` each); per fact, its target and its control along the way."""
    related = [r[: setup.relearn_facts] for r in setup.related]
    groups: dict[tuple, list[int]] = {}
    for i, rel in enumerate(related):
        groups.setdefault(tuple(p.prompt for p in rel), []).append(i)
    out: dict[int, RelearnReading | Skipped] = {}
    for members in groups.values():
        train = related[members[0]]
        if not train:
            out.update({i: Skipped(NO_DATA) for i in members})
            continue
        controls = [control_probes(facts[i]) for i in members]
        watch = [Probe(facts[i].text, facts[i].target) for i in members]
        curve = relearn(model, train, watch + [p for c in controls for p in c], steps=setup.relearn_steps,
                        lr=setup.relearn_lr, progress=setup.progress)
        start = len(members)
        for j, i in enumerate(members):
            stop = start + len(controls[j])
            fact_curve = FactCurve(
                steps=curve.steps, prob=[p[j] for p in curve.prob], rank=[r[j] for r in curve.rank],
                train_loss=curve.train_loss, n_train=len(train),
                control_prob=[sum(p[start:stop]) / len(controls[j]) for p in curve.prob],
                control_prompts=[p.prompt for p in controls[j]])
            out[i] = RelearnReading(rank=fact_curve.rank[-1], prob=fact_curve.prob[-1], curve=fact_curve)
            start = stop
    return [out[i] for i in range(len(facts))]


def judge_relearn(before: Scored, after: RelearnReading, what: str) -> ProbeOutcome:
    """:func:`~excise.verify.outcome.judge_scored` for the relearning attack, read against its control.

    ``after.curve.control_prob`` is the answer's mean probability for made-up subjects during the
    same attack. A return counts as "recovered" only when the answer comes back for this subject
    clearly more than for subjects the model never knew (the control ends below
    :data:`~excise.verify.control.CONTROL_SHARE` of the fact's probability); otherwise the attack taught the answer, not
    the fact, and the probe is "uninformative".
    """
    control = after.curve.control_prob
    what = f"{what}; made-up subjects: p={control[0]:.3f} -> {control[-1]:.3f}"
    judged = judge_scored("relearn", before, after, what)
    if judged.status == "recovered" and control_explains(after.prob, control[-1]):
        judged.status = "uninformative"
        judged.reason = (f"{judged.reason}: the attack raises the answer for subjects the model "
                         "never knew about as much, so it says nothing about this fact")
    return judged


def judge(before, after: RelearnReading, comparison) -> ProbeOutcome:
    """The attack's result against the prompt's score before the edit (``before`` is unused)."""
    prompt = comparison.before["prompt"]
    curve = after.curve
    return judge_relearn(Scored(rank=int(prompt.rank[0]), prob=float(prompt.prob[0])), after,
                         f"relearning: probability returns to {curve.prob[-1]:.2f} after "
                         f"{curve.steps[-1]} steps on {curve.n_train} other facts")


def figure(fact_report):
    """Forgotten target's probability during the relearning attack, with its original level."""
    import plotly.graph_objects as go

    o = fact_report.probe("relearn")
    curve = o.after.curve
    fig = go.Figure(go.Scatter(x=curve.steps, y=curve.prob, mode="lines+markers",
                               name="p(target) during relearning"))
    fig.add_trace(go.Scatter(x=curve.steps, y=curve.control_prob, mode="lines+markers",
                             line_dash="dash", name="same answer, made-up subjects (control)"))
    fig.add_hline(y=o.before.prob, line_dash="dot", annotation_text="before the edit")
    fig.update_layout(title=f"Relearning attack: {fact_report.id}", xaxis_title="fine-tuning step",
                      yaxis_title="p(target)", height=380,
                      legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    return fig


PROBE = RobustnessProbe("relearn", measure, judge, figure, title="Relearning attack", attack=True)
