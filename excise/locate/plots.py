"""Figures of localizations: pure functions returning ``plotly.graph_objects.Figure``.

Layer x token heatmaps for traces and per-position patching, layer x head heatmaps for heads, and
bars of the top neurons; hover text names the component under the cursor.
"""

from __future__ import annotations

import plotly.graph_objects as go

_SITE_NAMES = {"mlp": "MLP", "attn": "Attn", "resid": "Resid"}


def plot_localization(loc, top_neurons: int = 20) -> go.Figure:
    """The figure for ``loc`` according to its axes."""
    if loc.axes == ("layer", "position"):
        return _layer_position(loc)
    if loc.axes == ("layer", "head"):
        return _layer_head(loc)
    if loc.axes == ("layer", "neuron"):
        return _top_neurons(loc, top_neurons)
    raise ValueError(f"no figure for axes {loc.axes}")


def _title(loc) -> str:
    what, target = loc.prompt or "", loc.target or ""
    site = f" ({loc.site})" if loc.site else ""
    return f"{loc.method}{site}: {what!r} -> {target!r}" if what else f"{loc.method}{site}"


def _layer_position(loc) -> go.Figure:
    scores = loc.scores.float().T  # [position, layer]
    tokens = loc.labels.get("position") or [str(i) for i in range(scores.shape[0])]
    layers = list(range(scores.shape[1]))
    ylabels = [f"{i}: {t!r}" for i, t in enumerate(tokens)]
    name = _SITE_NAMES.get(loc.site or "", loc.site or "")
    hover = [[f"{name} L{layer} @ {tok!r} (pos {p})<br>score {scores[p, layer]:.4f}"
              for layer in layers] for p, tok in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=scores.tolist(), x=layers, y=ylabels, text=hover,
                               hoverinfo="text", colorscale="Purples" if loc.site == "mlp"
                               else "Greens" if loc.site == "attn" else "Blues"))
    fig.update_layout(title=_title(loc), xaxis_title="layer", yaxis_title="token",
                      yaxis_autorange="reversed", height=max(300, 28 * len(tokens) + 150))
    return fig


def _layer_head(loc) -> go.Figure:
    scores = loc.scores.float().T  # [head, layer]
    n_heads, n_layers = scores.shape
    hover = [[f"Head L{layer}.H{h}<br>score {scores[h, layer]:.4f}" for layer in range(n_layers)]
             for h in range(n_heads)]
    bound = float(scores.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=scores.tolist(), x=list(range(n_layers)), y=list(range(n_heads)),
                               text=hover, hoverinfo="text", colorscale="RdBu", zmid=0,
                               zmin=-bound, zmax=bound))
    fig.update_layout(title=_title(loc), xaxis_title="layer", yaxis_title="head")
    return fig


def _top_neurons(loc, k: int) -> go.Figure:
    scores = loc.scores.float()
    flat = scores.flatten()
    k = min(k, flat.numel())
    order = flat.abs().argsort(descending=True)[:k]
    width = scores.shape[1]
    names = [f"L{int(i) // width}.N{int(i) % width}" for i in order]
    values = [float(flat[i]) for i in order]
    fig = go.Figure(go.Bar(x=names, y=values, hovertext=[f"Neuron {n}: {v:.4f}" for n, v in
                                                          zip(names, values)], hoverinfo="text"))
    fig.update_layout(title=_title(loc) + f" (top {k} neurons by |score|)", xaxis_title="neuron",
                      yaxis_title="score")
    return fig
