"""Figures of a verification report; each is a pure function returning a ``go.Figure``.

The report-wide figures live here: the facts x probes outcome matrix and the before/after circuit
figures. A probe's own figure lives in its module (``PROBE.figure``, reached through
:meth:`excise.verify.report.FactReport.figure`). The layout rules (one titled colour bar per scale,
stacked right of the plot; legends clear of them; heights that grow with rows; subject tokens
marked; reference scores in the title) and their helpers are :mod:`excise.locate.plots`'.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from excise.locate.plots import (
    ROW_PX,
    colorbar,
    mark_subject,
    reference_scores,
    rows_height,
    subject_positions,
    token_text,
    token_ticks,
)
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
    fig.update_layout(title="Does any probe still find the forgotten answer?", xaxis_title="probe",
                      yaxis_title="fact", height=200 + 40 * len(report.facts), yaxis_autorange="reversed")
    return fig


def circuit_diff(before: dict, after: dict) -> go.Figure:
    """Causal traces (``[layer, position]`` probabilities) before, after, and after - before.

    ``before``/``after`` are :meth:`Localization.to_json` records (:func:`~excise.verify.circuits.
    trace_facts`). Before and after share one absolute p(target) scale (0 to 1), so a trace the
    edit emptied, or a fact the model barely knew, looks pale; the change has its own scale. The
    title states each state's clean and corrupted p(target); subject tokens are starred and
    outlined.
    """
    import numpy as np

    b, a = np.array(before["scores"]), np.array(after["scores"])  # [layer, position]
    tokens = before["labels"]["position"]
    subject = subject_positions(before.get("meta", {}))
    meta_b, meta_a = before.get("meta", {}), after.get("meta", {})
    clean = [f" (clean {m['clean_score']:.3f})" if "clean_score" in m else "" for m in (meta_b, meta_a)]
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=(f"before{clean[0]}", f"after{clean[1]}", "after - before"))
    rows = list(range(len(tokens)))
    for col, (z, axis) in enumerate(((b, "coloraxis"), (a, "coloraxis"), (a - b, "coloraxis2")), start=1):
        hover = [[f"MLP L{layer} @ {token_text(tok)}: {z[layer, p]:+.4f}" for layer in range(z.shape[0])]
                 for p, tok in enumerate(tokens)]
        fig.add_trace(go.Heatmap(z=z.T, x=list(range(z.shape[0])), y=rows, coloraxis=axis,
                                 text=hover, hoverinfo="text"), 1, col)
    mark_subject(fig, subject, [(f"x{c}" if c > 1 else "x", "y") for c in (1, 2, 3)])
    limit = float(max(np.abs(a - b).max(), 0.01))  # a change below 1% of p is not drawn as strong
    refs = "; ".join(f"{state}: {reference_scores(m)}" for state, m in (("before", meta_b), ("after", meta_a))
                     if reference_scores(m))
    fig.update_yaxes(autorange="reversed", tickvals=rows, ticktext=token_ticks(tokens, subject),
                     automargin=True, col=1)
    fig.update_yaxes(title_text="token", col=1)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(
        title=f"Causal trace ({before.get('site')}): {token_text(before.get('prompt') or '')} -> "
              f"{token_text(before.get('target') or '')}<br><sup>{refs}{'; * = subject' if subject else ''}</sup>",
        coloraxis={"colorscale": "Purples", "cmin": 0.0, "cmax": 1.0,
                   "colorbar": colorbar("p(target)", 0.53, 1.0)},
        coloraxis2={"colorscale": "RdBu", "cmid": 0.0, "cmin": -limit, "cmax": limit,
                    "colorbar": colorbar("change in<br>p(target)", 0.0, 0.47)},
        height=rows_height(len(tokens), extra=210, minimum=480), margin={"t": 110, "b": 70})
    return fig


def attribution_diff(before: dict, after: dict) -> go.Figure:
    """Direct logit attribution to the target: heads ``[layer, head]`` and top neurons, before/after.

    Heads before and after share one symmetric scale; their change has its own. The neuron bars'
    legend sits beside the bars, below the two colour bars.
    """
    import numpy as np

    b, a = np.array(before["heads"]), np.array(after["heads"])  # [layer, head]
    n_heads = b.shape[1]
    top_px, bars_px, gap_px = max(300, ROW_PX * n_heads + 40), 260, 100
    plot_px = top_px + bars_px + gap_px
    fig = make_subplots(rows=2, cols=3, shared_yaxes=True, horizontal_spacing=0.03,
                        vertical_spacing=gap_px / plot_px, row_heights=[top_px, bars_px],
                        specs=[[{}, {}, {}], [{"colspan": 3}, None, None]],
                        subplot_titles=("heads, before", "heads, after", "heads, after - before",
                                        "top neurons, before vs after"))
    for col, (z, axis) in enumerate(((b, "coloraxis"), (a, "coloraxis"), (a - b, "coloraxis2")), start=1):
        hover = [[f"L{layer} H{h}: {z[layer, h]:+.3f} logits" for h in range(n_heads)]
                 for layer in range(z.shape[0])]
        fig.add_trace(go.Heatmap(z=z.T, x=list(range(z.shape[0])), y=list(range(n_heads)),
                                 text=np.array(hover, dtype=object).T, hoverinfo="text",
                                 coloraxis=axis), 1, col)
    names = [f"L{layer}.N{i}" for layer, i in before["neurons"]["index"]]
    for state, data, color in (("before", before, "#999"), ("after", after, "#1f77b4")):
        fig.add_trace(go.Bar(x=names, y=data["neurons"]["scores"], name=state, marker_color=color), 2, 1)
    limit = float(max(np.abs(b).max(), np.abs(a).max(), 1e-9))
    change = float(max(np.abs(a - b).max(), 1e-3))
    low, high = fig.get_subplot(1, 1).yaxis.domain
    bars_top = fig.get_subplot(2, 1).yaxis.domain[1]
    fig.update_xaxes(title_text="layer", row=1)
    fig.update_yaxes(title_text="head", autorange="reversed", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="direct logit<br>attribution (logits)", row=2, col=1)
    fig.update_layout(
        title="Direct logit attribution to the target (last prompt position)", barmode="group",
        coloraxis={"colorscale": "RdBu", "cmid": 0.0, "cmin": -limit, "cmax": limit,
                   "colorbar": colorbar("direct logit<br>attribution (logits)", (low + high) / 2 + 0.02, high)},
        coloraxis2={"colorscale": "RdBu", "cmid": 0.0, "cmin": -change, "cmax": change,
                    "colorbar": colorbar("after - before<br>(logits)", low, (low + high) / 2 - 0.02)},
        legend={"x": 1.02, "xanchor": "left", "y": bars_top, "yanchor": "top", "title_text": "neurons"},
        height=plot_px + 110 + 90, margin={"t": 110, "b": 90})
    return fig


def attention_change(before: dict, after: dict, k: int = 2) -> go.Figure:
    """Last-position attention, before vs after, of the located heads and the ``k`` that changed most.

    One panel per head (titled ``L29 H0``), tokens down the shared axis with the subject shaded.
    """
    from excise.verify.circuits import changed_heads, located_heads

    heads = list(dict.fromkeys(located_heads(before, k) + changed_heads(before, after, k)))
    tokens = before["labels"]["position"]
    subject = subject_positions(before.get("meta", {}))
    rows = list(range(len(tokens)))
    fig = make_subplots(rows=1, cols=len(heads), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"L{layer} H{head}" for layer, head in heads])
    for col, (layer, head) in enumerate(heads, start=1):
        for state, data in (("before", before), ("after", after)):
            fig.add_trace(go.Bar(x=data["attention"][layer][head], y=rows, orientation="h", name=state,
                                 showlegend=col == 1, marker_color="#999" if state == "before" else "#1f77b4"),
                          1, col)
    mark_subject(fig, subject, [(f"x{c}" if c > 1 else "x", "y") for c in range(1, len(heads) + 1)],
                 fill=True)
    fig.update_yaxes(autorange="reversed", tickvals=rows, ticktext=token_ticks(tokens, subject),
                     automargin=True, col=1)
    fig.update_yaxes(title_text="attended token", col=1)
    fig.update_xaxes(title_text="attention weight", range=[0, 1])
    located = ", ".join(f"L{layer} H{head}" for layer, head in located_heads(before, k))
    fig.update_layout(title="Attention from the last token: located heads and heads that changed most"
                            f"<br><sup>located (largest direct logit attribution before): {located}"
                            f"{'; shaded, * = subject' if subject else ''}</sup>",
                      height=rows_height(len(tokens), extra=200), barmode="group", margin={"t": 110})
    return fig
