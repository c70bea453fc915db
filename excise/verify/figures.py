"""Figures of a verification report; each is a pure function returning a ``go.Figure``.

The report-wide figures live here: the facts x probes outcome matrix and the before/after circuit
figures. A probe's own figure lives in its module (``PROBE.figure``, reached through
:meth:`excise.verify.report.FactReport.figure`).
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from excise.verify.outcome import STATUSES

_STATUS_VALUE = {s: i for i, s in enumerate(STATUSES)}
_COLORS = ["#d62728", "#2ca02c", "#bbbbbb", "#eeeeee"]


def probe_matrix(report) -> go.Figure:
    """Facts x probes heat map of probe status (red: recovered, green: forgotten)."""
    probes = list(dict.fromkeys(o.probe for f in report.facts for o in f.probes))
    z, text = [], []
    for f in report.facts:
        status = {o.probe: o.status for o in f.probes}
        z.append([_STATUS_VALUE.get(status.get(p, "skipped")) for p in probes])
        text.append([status.get(p, "skipped") for p in probes])
    n = len(STATUSES)
    scale = [[edge, c] for i, c in enumerate(_COLORS) for edge in (i / n, (i + 1) / n)]
    fig = go.Figure(go.Heatmap(z=z, x=probes, y=[f.id for f in report.facts], text=text,
                               texttemplate="%{text}", colorscale=scale, zmin=-0.5, zmax=n - 0.5,
                               showscale=False))
    fig.update_layout(title="Does any probe still find the forgotten answer?",
                      height=160 + 40 * len(report.facts), yaxis_autorange="reversed")
    return fig


def circuit_diff(before: dict, after: dict) -> go.Figure:
    """Causal traces (``[layer, position]`` probabilities) before, after, and after - before."""
    import numpy as np

    b, a = np.array(before["scores"]), np.array(after["scores"])
    labels = before["labels"]["position"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("before", "after", "after - before"))
    for col, (z, scale) in enumerate(((b, "Purples"), (a, "Purples"), (a - b, "RdBu")), start=1):
        fig.add_trace(go.Heatmap(z=z.T, x=list(range(z.shape[0])), y=labels, colorscale=scale,
                                 zmid=0 if col == 3 else None, showscale=col != 2), 1, col)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title=f"Causal trace ({before.get('site')}): {before.get('prompt') or ''}",
                      height=380)
    return fig


def attribution_diff(before: dict, after: dict) -> go.Figure:
    """Direct logit attribution to the target: heads ``[layer, head]`` and top neurons, before/after."""
    import numpy as np

    b, a = np.array(before["heads"]), np.array(after["heads"])
    fig = make_subplots(rows=2, cols=3, vertical_spacing=0.18,
                        specs=[[{}, {}, {}], [{"colspan": 3}, None, None]],
                        subplot_titles=("heads, before", "heads, after", "heads, after - before",
                                        "top neurons, before vs after"))
    limit = float(max(np.abs(b).max(), np.abs(a).max(), 1e-9))
    for col, z in enumerate((b, a, a - b), start=1):
        hover = [[f"head {layer}.{h}: {z[layer, h]:+.3f}" for h in range(z.shape[1])]
                 for layer in range(z.shape[0])]
        fig.add_trace(go.Heatmap(z=z.T, x=list(range(z.shape[0])), y=list(range(z.shape[1])),
                                 text=np.array(hover, dtype=object).T, hoverinfo="text",
                                 colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit,
                                 showscale=col == 3), 1, col)
    names = [f"L{layer}.N{i}" for layer, i in before["neurons"]["index"]]
    for state, data, color in (("before", before, "#999"), ("after", after, "#1f77b4")):
        fig.add_trace(go.Bar(x=names, y=data["neurons"]["scores"], name=state, marker_color=color), 2, 1)
    fig.update_xaxes(title_text="layer", row=1)
    fig.update_yaxes(title_text="head", row=1, col=1)
    fig.update_yaxes(title_text="logit share", row=2, col=1)
    fig.update_layout(title="Direct logit attribution to the target (last prompt position)", height=620,
                      barmode="group")
    return fig


def attention_change(before: dict, after: dict, k: int = 2) -> go.Figure:
    """Last-position attention, before vs after, of the located heads and the ``k`` that changed most."""
    from excise.verify.circuits import changed_heads, located_heads

    heads = list(dict.fromkeys(located_heads(before, k) + changed_heads(before, after, k)))
    labels = before["labels"]["position"]
    fig = make_subplots(rows=1, cols=len(heads), subplot_titles=[f"head {a}.{b}" for a, b in heads])
    for col, (layer, head) in enumerate(heads, start=1):
        for state, data in (("before", before), ("after", after)):
            fig.add_trace(go.Bar(x=labels, y=data["attention"][layer][head], name=state,
                                 showlegend=col == 1, marker_color="#999" if state == "before" else "#1f77b4"),
                          1, col)
    fig.update_layout(title="Attention from the last token: located heads and heads that changed most",
                      height=350, barmode="group")
    return fig
