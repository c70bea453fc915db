"""Relearning attack: fine-tune briefly on *related* facts and see whether the forgotten one returns.

Knowledge that an edit only hid (rather than removed) tends to come back after a few gradient
steps on neighbouring data, even data that never mentions the forgotten fact (Lynch et al. 2024;
Deeb & Roger 2024). We fine-tune every parameter with Adam on facts of the same relation (the
caller guarantees they neither state the forgotten fact nor share its answer) and record the
forgotten target's probability along the way. One run serves two budgets: the status is judged
after ``setup.relearn_steps`` steps, and the same run continues to ``setup.relearn_long_steps``,
whose result the reading and the reason record too (a fact that returns only then is hidden
more deeply, not removed).

A return alone does not show that *this* fact came back: the attack may just teach the relation's
frequent answers. So the same run also watches a control: the fact's prompt with made-up subjects
the model never knew (:mod:`excise.verify.control`), with the same answer. If
the answer rises as much for them, the attack taught the answer, not the fact, and the probe says
nothing about the edit (:func:`judge_relearn`).

The attacked model is the edited model itself: all parameters are snapshot before training and
written back afterwards (in a ``finally``), so the model leaves this module bit-for-bit as it came.
Being an attack, the probe runs once, on the edited state; facts sharing their training data share
one attack. :mod:`.relearn_lora` and :mod:`.relearn_split` reuse this module's training loop,
readings and judgement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from excise.facts import Probe
from excise.interrupt import checkpoint
from excise.scoring import answer_logprobs, build_batch, score_targets
from excise.verify.control import control_explains, control_probes
from excise.verify.outcome import ProbeOutcome, Scored, judge_scored, returns
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
class AtBudget:
    """The attack's result after ``steps`` steps: the target's ``rank``/``prob`` and the
    control's mean ``control_prob`` (made-up subjects, same answer) at that step."""

    steps: int
    rank: int
    prob: float
    control_prob: float


@dataclass(frozen=True)
class RelearnReading(Scored):
    """The forgotten target after ``judged_steps`` steps of the attack (``rank``, ``prob``; the
    curve's last step when ``None``), its ``curve`` along the way and its result at every
    recorded ``budgets`` (the judged one included)."""

    curve: FactCurve
    budgets: list[AtBudget] = field(default_factory=list)
    judged_steps: int | None = None


def train_and_watch(model, params: list[torch.nn.Parameter], train, watch, steps: int, lr: float,
                    record_at: Sequence[int], progress: bool = False,
                    desc: str = "relearning attack") -> Curve:
    """Adam on ``params`` for ``steps`` steps on ``train`` probes, scoring ``watch`` at step 0 and
    at each step of ``record_at``; the caller makes ``params`` trainable and restores them.

    Adam runs fused (:func:`adam`): the per-parameter loop's update to float rounding, in one
    kernel per step.
    """
    batch = build_batch(model, [p.prompt for p in train], [p.target for p in train])
    record_at = set(record_at)
    curve = Curve(steps=[], prob=[], rank=[], train_loss=[])

    def record(step: int) -> None:
        scores = score_targets(model, [w.prompt for w in watch], [w.target for w in watch])
        curve.steps.append(step)
        curve.prob.append(scores.prob.tolist())
        curve.rank.append(scores.rank.tolist())

    optimizer = adam(params, lr)
    record(0)
    with torch.enable_grad():
        for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress):
            checkpoint("a relearning step")
            optimizer.zero_grad(set_to_none=True)
            loss = -answer_logprobs(model, batch).mean()
            loss.backward()
            optimizer.step()
            curve.train_loss.append(float(loss.detach()))
            if step in record_at:
                record(step)
    optimizer.zero_grad(set_to_none=True)
    return curve


def adam(params: list[torch.nn.Parameter] | list[dict], lr: float) -> torch.optim.Adam:
    """Adam at ``lr`` over ``params`` (tensors or parameter groups), fused where the parameters'
    device supports it (CPU and CUDA do), else the multi-tensor (``foreach``) implementation, which
    matches the per-parameter loop bit for bit."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, foreach=True)


def record_steps(steps: int, record_every: int | None = None, budgets: Sequence[int] = ()) -> list[int]:
    """The steps a run of ``steps`` steps records: every ``record_every`` (default ``steps // 5``),
    every budget and the last step."""
    every = record_every or max(1, steps // 5)
    return sorted({*range(every, steps + 1, every), *(b for b in budgets if 0 < b <= steps), steps})


def relearn(model, train, watch, steps: int = 20, lr: float = 5e-5, record_every: int | None = None,
            progress: bool = False, budgets: Sequence[int] = ()) -> Curve:
    """Fine-tune every parameter on ``train`` probes for ``steps`` Adam steps; track ``watch``.

    Args:
        train: :class:`excise.facts.Probe` items (filled-in prompt, target) to learn.
        watch: probes whose probability we follow (the forgotten facts' prompts).
        steps, lr: the attack's budget.
        record_every: measure ``watch`` every this many steps (default ``steps // 5``).
        budgets: steps at which ``watch`` is measured too (each budget read off the one run).

    The last record is after ``steps`` steps. ``model``'s weights are restored on return.
    """
    if not train:
        raise ValueError("relearning needs at least one training fact of the same relation")
    params = list(model.original_model.parameters())
    saved = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        curve = train_and_watch(model, params, train, watch, steps, lr,
                                record_steps(steps, record_every, budgets), progress)
    finally:
        with torch.no_grad():
            for p, original, flag in zip(params, saved, flags):
                p.copy_(original)
                p.grad = None
                p.requires_grad_(flag)
    log.info("relearning: %d steps on %d facts, watched prob %s -> %s", steps, len(train),
             curve.prob[0], curve.prob[-1])
    return curve


def fact_curves(curve: Curve, n_facts: int, controls: list[list[Probe]], n_train: int) -> list[FactCurve]:
    """Split a run that watched ``n_facts`` prompts, then each one's ``controls``, into one
    :class:`FactCurve` per fact."""
    out, start = [], n_facts
    for j in range(n_facts):
        stop = start + len(controls[j])
        out.append(FactCurve(
            steps=curve.steps, prob=[p[j] for p in curve.prob], rank=[r[j] for r in curve.rank],
            train_loss=curve.train_loss, n_train=n_train,
            control_prob=[sum(p[start:stop]) / len(controls[j]) for p in curve.prob],
            control_prompts=[p.prompt for p in controls[j]]))
        start = stop
    return out


def reading(curve: FactCurve, budgets: Sequence[int], judged: int) -> RelearnReading:
    """The reading judged after ``judged`` steps, with the result at every one of ``budgets``."""
    at = [AtBudget(s, curve.rank[k], curve.prob[k], curve.control_prob[k])
          for s in sorted(set(budgets)) for k in [curve.steps.index(s)]]
    k = curve.steps.index(judged)
    return RelearnReading(rank=curve.rank[k], prob=curve.prob[k], curve=curve, budgets=at,
                          judged_steps=judged)


def watched(model, facts, members: list[int], train, run: Callable, budgets: Sequence[int],
            judged: int) -> dict[int, RelearnReading]:
    """One attack ``run(model, train, watch) -> Curve`` for the facts ``members``, watching each
    one's prompt and made-up-subject controls; their readings by fact index."""
    controls = [control_probes(facts[i]) for i in members]
    watch = [Probe(facts[i].text, facts[i].target) for i in members]
    curve = run(model, train, watch + [p for c in controls for p in c])
    curves = fact_curves(curve, len(members), controls, len(train))
    return {i: reading(c, budgets, judged) for i, c in zip(members, curves)}


def related_groups(setup) -> tuple[list[list[Probe]], list[list[int]]]:
    """Each fact's training data (``setup.related``, at most ``setup.relearn_facts``) and the groups
    of fact indices sharing it: one attack per group."""
    related = [r[: setup.relearn_facts] for r in setup.related]
    groups: dict[tuple, list[int]] = {}
    for i, rel in enumerate(related):
        groups.setdefault(tuple(p.prompt for p in rel), []).append(i)
    return related, list(groups.values())


def measure(model, facts, setup) -> list[RelearnReading | Skipped]:
    """One attack per group of facts sharing their training data, run to the long budget and
    judged at ``setup.relearn_steps``; per fact, its target and its control along the way
    (recorded every tenth of the run and at both budgets)."""
    steps = max(setup.relearn_steps, setup.relearn_long_steps)
    budgets = sorted({setup.relearn_steps, steps})

    def run(model, train, watch):
        return relearn(model, train, watch, steps=steps, lr=setup.relearn_lr,
                       record_every=max(1, steps // 10), progress=setup.progress,
                       budgets=budgets)

    return attack_groups(model, facts, setup, run, budgets, setup.relearn_steps)


def attack_groups(model, facts, setup, run, budgets, judged_steps) -> list[RelearnReading | Skipped]:
    """``run`` once per group of facts sharing their training data; each fact's reading judged at
    ``judged_steps`` (a fact with no training data is skipped)."""
    related, groups = related_groups(setup)
    out: dict[int, RelearnReading | Skipped] = {}
    for members in groups:
        train = related[members[0]]
        if not train:
            out.update({i: Skipped(NO_DATA) for i in members})
            continue
        out.update(watched(model, facts, members, train, run, budgets, judged_steps))
    return [out[i] for i in range(len(facts))]


def judge_relearn(before: Scored, after: RelearnReading, what: str, probe: str = "relearn") -> ProbeOutcome:
    """:func:`~excise.verify.outcome.judge_scored` for a relearning attack, read against its control.

    ``after.curve.control_prob`` is the answer's mean probability for made-up subjects during the
    same attack. A return counts as "recovered" only when the answer comes back for this subject
    clearly more than for subjects the model never knew (the control, at the judged step, stays
    below :data:`~excise.verify.control.CONTROL_SHARE` of the fact's probability); otherwise the
    attack taught the answer, not the fact, and the probe is "uninformative". The reason also
    states the result at every other budget in ``after.budgets`` (not part of the status).
    """
    curve = after.curve
    k = curve.steps.index(_judged_steps(after))
    control = curve.control_prob
    what = f"{what}; made-up subjects: p={control[0]:.3f} -> {control[k]:.3f}"
    judged = judge_scored(probe, before, after, what)
    if judged.status == "recovered" and control_explains(after.prob, control[k]):
        judged.status = "uninformative"
        judged.reason = (f"{judged.reason}: the attack raises the answer for subjects the model "
                         "never knew about as much, so it says nothing about this fact")
    others = [b for b in after.budgets if b.steps != curve.steps[k]]
    if others:
        judged.reason += "; " + "; ".join(_budget_words(before, b) for b in others)
    return judged


def _budget_words(before: Scored, at: AtBudget) -> str:
    """One budget's result in words: rank, probability, whether it returns, and the control."""
    if returns(before.rank, before.prob, at.rank, at.prob):
        word = ("returns, but as much for made-up subjects" if control_explains(at.prob, at.control_prob)
                else "returns")
    else:
        word = "stays forgotten"
    return (f"after {at.steps} steps: rank {at.rank}, p={at.prob:.3f} ({word}; made-up subjects "
            f"p={at.control_prob:.3f})")


def judge(before, after: RelearnReading, comparison) -> ProbeOutcome:
    """The attack's result against the prompt's score before the edit (``before`` is unused)."""
    prompt = comparison.before["prompt"]
    return judge_relearn(Scored(rank=int(prompt.rank[0]), prob=float(prompt.prob[0])), after,
                         f"relearning: probability returns to {after.prob:.2f} after "
                         f"{_judged_steps(after)} steps on {after.curve.n_train} other facts")


def _judged_steps(after: RelearnReading) -> int:
    return after.curve.steps[-1] if after.judged_steps is None else after.judged_steps


def curve_figure(fact_report, probe: str, title: str):
    """Forgotten target's probability during the attack ``probe``, with the control, its original
    level and the judged budget."""
    import plotly.graph_objects as go

    o = fact_report.probe(probe)
    curve = o.after.curve
    fig = go.Figure(go.Scatter(x=curve.steps, y=curve.prob, mode="lines+markers",
                               name="p(target) during the attack"))
    fig.add_trace(go.Scatter(x=curve.steps, y=curve.control_prob, mode="lines+markers",
                             line_dash="dash", name="same answer, made-up subjects (control)"))
    fig.add_hline(y=o.before.prob, line_dash="dot", annotation_text="before the edit")
    judged = getattr(o.after, "judged_steps", None)
    if judged is not None and judged != curve.steps[-1]:
        fig.add_vline(x=judged, line_dash="dot", annotation_text="judged here")
    fig.update_layout(title=f"{title}: {fact_report.id}", xaxis_title="fine-tuning step",
                      yaxis_title="p(target)", height=380,
                      legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    return fig


def figure(fact_report):
    """Forgotten target's probability during the relearning attack, with its original level."""
    return curve_figure(fact_report, "relearn", "Relearning attack")


PROBE = RobustnessProbe("relearn", measure, judge, figure, title="Relearning attack", attack=True)
