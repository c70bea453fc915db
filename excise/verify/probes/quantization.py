"""Quantization attack: does the forgotten answer come back when the edited model is quantized?

Deployed models are often quantized to 8 or 4 bits. An edit made of weight changes smaller than
the quantization step can be rounded away, and with it the forgetting: Zhang et al. (ICLR 2025)
found most "unlearned" knowledge back after 4-bit quantization. For each bit width of
``setup.quant_bits`` the edited model's block weights are round-to-nearest quantized
(:func:`excise.quantize.quantized`, groups of ``setup.quant_group`` columns below 8 bits), the
fact's prompt is scored, and the weights are restored bit for bit.

Every bit width is judged against the prompt's score before the edit (``comparison.before``, as
the relearning attack is), with the forgetting criterion of :mod:`excise.criteria` in reverse.
Quantization also damages knowledge by itself (a small model at 4 bits loses some facts it knows
in float), and a bit width at which the *unedited* model loses the fact cannot show that the edit
hid it. So the probe also reads a *reference*: the unedited model quantized the same way, on the
edited model with its recorded edits (``model.excise_edits``) temporarily reverted. Where no edit
is recorded (``verify(edited, original=...)``) there is no reference and every bit width counts as
informative. Per bit width:

* "uninformative" when the reference forgets the fact by the criterion (quantization alone
  loses it);
* "recovered" when the edited, quantized model does not forget it
  (:func:`~excise.verify.outcome.returns`: ranked first, or above 10% of its probability before
  the edit) and the control (the prompt about made-up subjects, :mod:`excise.verify.control`, in
  the same quantized model) does not reach half of its probability;
* "explained" when the answer returns but the control explains it; "forgotten" otherwise.

The probe's outcome is "recovered" at any recovered bit width, else "forgotten" at any forgotten
one, else "uninformative" (the fact was not found before the edit, rank > 0 and p < 0.05, or no
bit width is informative).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from excise.facts import Probe
from excise.quantize import quantized
from excise.scoring import score_targets
from excise.verify.control import control_explains, control_probes
from excise.verify.outcome import ProbeOutcome, Scored, returns
from excise.verify.probes.base import RobustnessProbe

KNOWN_PROB = 0.05
"""Before the edit, a target below this probability (and not ranked first) was not known."""


@dataclass(frozen=True)
class QuantReading(Scored):
    """The edited model quantized to each of ``bits``: the target's ``bit_rank``/``bit_prob``
    ``[bits]`` and the control's mean ``control_prob`` ``[bits]``; the same unquantized
    (``float_*``); the unedited model quantized alike (``reference_rank``/``reference_prob``
    ``[bits]``, None when no edit was recorded). ``rank``/``prob``: the best over ``bits``."""

    bits: list[int]
    group_size: int
    bit_rank: list[int]
    bit_prob: list[float]
    control_prob: list[float]
    float_rank: int
    float_prob: float
    float_control_prob: float
    reference_rank: list[int] | None
    reference_prob: list[float] | None


@torch.no_grad()
def _score(model, facts) -> tuple[list[int], list[float], list[float]]:
    """Per fact: its prompt's target rank and prob, and the mean prob over its control prompts."""
    controls = [control_probes(f) for f in facts]
    probes = [Probe(f.text, f.target) for f in facts] + [p for c in controls for p in c]
    scores = score_targets(model, [p.prompt for p in probes], [p.target for p in probes])
    n, prob = len(facts), scores.prob.tolist()
    control, start = [], n
    for c in controls:
        control.append(sum(prob[start:start + len(c)]) / len(c))
        start += len(c)
    return scores.rank[:n].tolist(), prob[:n], control


def measure(model, facts, setup) -> list[QuantReading]:
    """Score every fact with the edited model unquantized and quantized to each of
    ``setup.quant_bits``, and with its recorded edits reverted, quantized alike."""
    bits = list(setup.quant_bits)
    floats = _score(model, facts)
    edited = []
    for b in bits:
        with quantized(model, b, setup.quant_group):
            edited.append(_score(model, facts))
    reference = None
    edits = list(getattr(model, "excise_edits", []) or [])
    if edits:
        reference = []
        with ExitStack() as stack:
            for edit in reversed(edits):
                stack.enter_context(edit.reverted(model))
            for b in bits:
                with quantized(model, b, setup.quant_group):
                    reference.append(_score(model, facts))
    readings = []
    for i in range(len(facts)):
        ranks, probs = [e[0][i] for e in edited], [e[1][i] for e in edited]
        readings.append(QuantReading(
            rank=min(ranks), prob=max(probs), bits=bits, group_size=setup.quant_group,
            bit_rank=ranks, bit_prob=probs, control_prob=[e[2][i] for e in edited],
            float_rank=floats[0][i], float_prob=floats[1][i], float_control_prob=floats[2][i],
            reference_rank=None if reference is None else [r[0][i] for r in reference],
            reference_prob=None if reference is None else [r[1][i] for r in reference]))
    return readings


def bit_status(unedited: Scored, after: QuantReading, j: int) -> str:
    """The attack's result at ``after.bits[j]``, read against the prompt's score before the edit
    (``unedited``): "recovered", "forgotten", "explained" (a return the control reaches about as
    well) or "uninformative" (the unedited model quantized alike forgets the fact)."""
    if after.reference_rank is not None and not returns(unedited.rank, unedited.prob,
                                                        after.reference_rank[j], after.reference_prob[j]):
        return "uninformative"
    if not returns(unedited.rank, unedited.prob, after.bit_rank[j], after.bit_prob[j]):
        return "forgotten"
    return "explained" if control_explains(after.bit_prob[j], after.control_prob[j]) else "recovered"


def judge(before, after: QuantReading, comparison) -> ProbeOutcome:
    """The attack against the prompt's score before the edit (``before`` is unused: attack probe)."""
    prompt = comparison.before["prompt"]
    unedited = Scored(rank=int(prompt.rank[0]), prob=float(prompt.prob[0]))
    if unedited.rank != 0 and unedited.prob < KNOWN_PROB:
        return ProbeOutcome("quantization", "uninformative", "quantization: the answer was not found "
                            f"before the edit (rank {unedited.rank}, p={unedited.prob:.3f})", unedited, after)
    parts, statuses = [], []
    for j, b in enumerate(after.bits):
        status = bit_status(unedited, after, j)
        statuses.append(status)
        reference = "" if after.reference_prob is None else f"unedited {b}-bit p={after.reference_prob[j]:.3f}, "
        parts.append(f"{b}-bit: rank {after.bit_rank[j]}, p={after.bit_prob[j]:.3f} ({reference}"
                     f"made-up subjects p={after.control_prob[j]:.3f}) -> {_WORDS[status]}")
    status = next((s for s in ("recovered", "forgotten") if s in statuses), "uninformative")
    reason = (f"quantization (RTN, groups of {after.group_size} below 8 bits): " + "; ".join(parts)
              + f"; float after the edit p={after.float_prob:.3f}, before p={unedited.prob:.3f}")
    return ProbeOutcome("quantization", status, reason, unedited, after)


_WORDS = {"recovered": "recovered", "forgotten": "forgotten",
          "explained": "returns for made-up subjects too", "uninformative": "lost by quantization alone"}


def figure(fact_report):
    """Target probability of the edited model unquantized and at each bit width, with the
    made-up-subject control, the unedited quantized reference and the level before the edit."""
    import plotly.graph_objects as go

    o = fact_report.probe("quantization")
    r = o.after
    x = ["float"] + [f"{b}-bit" for b in r.bits]
    fig = go.Figure(go.Scatter(x=x, y=[r.float_prob, *r.bit_prob], mode="lines+markers",
                               name="p(target), edited model"))
    fig.add_trace(go.Scatter(x=x, y=[r.float_control_prob, *r.control_prob], mode="lines+markers",
                             line_dash="dash", name="same answer, made-up subjects (control)"))
    if r.reference_prob is not None:
        fig.add_trace(go.Scatter(x=x, y=[o.before.prob, *r.reference_prob], mode="lines+markers",
                                 line_dash="dot", name="p(target), unedited model quantized alike"))
    fig.add_hline(y=o.before.prob, line_dash="dot", annotation_text="before the edit (float)")
    fig.update_layout(title=f"Quantization attack: {fact_report.id}", xaxis_title="weight precision",
                      yaxis_title="p(target)", height=380,
                      legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    return fig


PROBE = RobustnessProbe("quantization", measure, judge, figure, title="Quantization attack", attack=True)
