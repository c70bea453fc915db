"""Logit lens: is the forgotten answer still readable from the residual stream mid-stack?

Decode the residual stream after every layer at the prompt's last position with the model's own
final norm and unembedding, and record the target's rank and probability per layer. An edit that
only suppresses the answer at the output (the last layers) leaves it visible in the layers before.
The probe reads the best layer and judges it like the prompt (:func:`~excise.verify.outcome.judge_scored`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.hooks import act_name
from excise.tokens import encode_target
from excise.verify.outcome import Scored, judge_scored
from excise.verify.probes.base import RobustnessProbe


@dataclass(frozen=True)
class LensReading(Scored):
    """The first target token per layer (``layer_rank``, ``layer_prob`` ``[layer]``; the last
    entry is the model's own output); ``rank``/``prob`` are the best over layers and
    ``best_layer`` is the layer of the best probability."""

    best_layer: int
    layer_rank: list[int]
    layer_prob: list[float]


@torch.no_grad()
def measure(model, facts, setup=None) -> list[LensReading]:
    """Per fact, the target in the lens of ``blocks.{l}.hook_resid_post`` for every layer ``l``."""
    names = [act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]
    readings = []
    for fact in facts:
        tokens = model.to_tokens(fact.text)  # [1, pos]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        resid = torch.stack([cache[n][0, -1] for n in names])  # [layer, d_model]
        logits = model.unembed(model.ln_final(resid[None]))[0].float()  # [layer, d_vocab]
        target = encode_target(model, fact.target)[0]
        ranks = (logits > logits[:, target, None]).sum(-1)  # [layer]
        probs = logits.softmax(-1)[:, target]  # [layer]
        readings.append(LensReading(rank=int(ranks.min()), prob=float(probs.max()),
                                    best_layer=int(probs.argmax()), layer_rank=ranks.tolist(),
                                    layer_prob=probs.tolist()))
    return readings


def judge(before: LensReading, after: LensReading, comparison=None):
    return judge_scored("logit_lens", before, after, f"logit lens at layer {after.best_layer}")


def figure(fact_report):
    """Target probability and rank per layer of the residual stream, before and after the edit."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    o = fact_report.probe("logit_lens")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("p(target) in the logit lens", "rank of target"))
    for state, dash in (("before", "dot"), ("after", "solid")):
        reading = getattr(o, state)
        layers = list(range(len(reading.layer_prob)))
        fig.add_trace(go.Scatter(x=layers, y=reading.layer_prob, name=f"p, {state}", line_dash=dash), 1, 1)
        fig.add_trace(go.Scatter(x=layers, y=[r + 1 for r in reading.layer_rank], name=f"rank+1, {state}",
                                 line_dash=dash), 1, 2)
    fig.update_yaxes(title_text="p(target)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="rank of target + 1 (log scale)", row=1, col=2)
    fig.update_xaxes(title_text="layer (residual stream after it)")
    fig.update_layout(title=f"Logit lens: {fact_report.id}", height=380,
                      legend={"x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})
    return fig


PROBE = RobustnessProbe("logit_lens", measure, judge, figure, title="Logit lens")
