"""Figures of localizations: pure functions returning ``plotly.graph_objects.Figure``.

Layer x token heatmaps for traces and per-position patching, layer x head heatmaps for heads, and
bars of the top neurons; hover text names the component under the cursor.

Every figure follows the same layout rules, shared with the report's figures
(:mod:`excise.verify.figures`) through the helpers below: one colour bar per distinct scale, titled
with the quantity and its unit, stacked at the right of the plot so that no two overlap; legends
where no colour bar is; heat maps as tall as their rows (:func:`rows_height`); the subject's tokens
starred, bold and outlined on token axes; the clean and corrupted reference scores in the title.
A causal trace is drawn on the absolute probability scale (0 to 1), so a fact the model barely
knows looks pale instead of as strong as a well-known one. :func:`layout_overlaps` checks a figure's
colour bars and legend for overlap from the layout alone (the report's browser test checks the
drawn page).
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

_SITE_NAMES = {"mlp": "MLP", "attn": "Attn", "resid": "Resid"}
_SCALES = {"mlp": "Purples", "attn": "Greens"}

QUANTITIES = {
    "causal_trace": "p(target)",
    "activation_patch": "normalised logit diff",
    "attribution_patch": "normalised logit diff",
    "direct_logit_attribution": "direct logit attribution (logits)",
    "knowledge_neurons": "integrated gradients (p(target))",
    "gradient_attribution": "act x grad (log p(target))",
}
"""Colour-bar / axis title of each locator's score: the quantity and its unit."""

ROW_PX = 22
"""Pixels per heat-map row (token or head)."""


def plot_localization(loc, top_neurons: int = 20) -> go.Figure:
    """The figure for ``loc`` according to its axes."""
    if loc.axes == ("layer", "position"):
        return _layer_position(loc)
    if loc.axes == ("layer", "head"):
        return _layer_head(loc)
    if loc.axes == ("layer", "neuron"):
        return _top_neurons(loc, top_neurons)
    raise ValueError(f"no figure for axes {loc.axes}")


# -- shared layout helpers (also used by excise.verify.figures) -----------------------------------

def colorbar(title: str, y0: float = 0.0, y1: float = 1.0) -> dict:
    """A vertical colour bar right of the plot spanning paper heights ``y0..y1``, titled ``title``."""
    return {"title": {"text": title, "side": "right"}, "x": 1.02, "xanchor": "left",
            "y": (y0 + y1) / 2, "yanchor": "middle", "len": y1 - y0, "lenmode": "fraction",
            "thickness": 14}


def rows_height(n_rows: int, extra: int = 190, minimum: int = 320) -> int:
    """Figure height (px) for a heat map of ``n_rows`` rows plus ``extra`` px of title and margins."""
    return max(minimum, ROW_PX * n_rows + extra)


def reference_scores(meta: dict) -> str:
    """The clean and corrupted reference scores a map is relative to, or ``""`` when not recorded."""
    if "clean_score" in meta and "corrupted_score" in meta:
        return f"clean p(target) {meta['clean_score']:.3f}, corrupted {meta['corrupted_score']:.3f}"
    if "clean_logit_diff" in meta and "corrupted_logit_diff" in meta:
        return (f"clean logit diff {meta['clean_logit_diff']:.2f}, corrupted "
                f"{meta['corrupted_logit_diff']:.2f} (logits; 1 = clean, 0 = corrupted)")
    return ""


def subject_positions(meta: dict) -> list[int]:
    """Token positions of the subject (causal traces) or of the differing tokens (patching)."""
    return list(meta.get("subject_positions") or meta.get("differing_positions") or [])


def token_text(token: str) -> str:
    """``repr(token)`` escaped for plotly's HTML-like text (``'<s>'`` is not strike-through)."""
    return html.escape(repr(token), quote=False)


def token_ticks(tokens: list[str], subject: list[int]) -> list[str]:
    """Token-axis labels ``"3: ' Tower'"``; subject tokens bold and starred."""
    return [f"<b>*{i}: {token_text(t)}</b>" if i in subject else f"{i}: {token_text(t)}"
            for i, t in enumerate(tokens)]


def mark_subject(fig: go.Figure, subject: list[int], axes: list[tuple[str, str]], fill: bool = False):
    """Outline the subject's rows on each ``(xref, yref)`` subplot (token axis numeric or one
    category per token, in order).

    ``fill``: a shaded band behind the data (bar charts); otherwise a dashed outline drawn above
    (heat maps, whose cells would hide a band).
    """
    for start, stop in _runs(subject):
        for xref, yref in axes:
            style = ({"fillcolor": "rgba(255,165,0,0.18)", "line_width": 0, "layer": "below"} if fill
                     else {"line": {"color": "#ff7f0e", "width": 2, "dash": "dash"}, "layer": "above"})
            fig.add_shape(type="rect", xref=f"{xref} domain", yref=yref, x0=0, x1=1,
                          y0=start - 0.5, y1=stop + 0.5, **style)


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of sorted ``positions``."""
    runs: list[tuple[int, int]] = []
    for p in sorted(positions):
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


# -- the localization figures ---------------------------------------------------------------------

def _title(loc, extra: str = "", suffix: str = "") -> str:
    what, target = loc.prompt or "", loc.target or ""
    site = f" ({loc.site})" if loc.site else ""
    title = (f"{loc.method}{site}: {token_text(what)} -> {token_text(target)}" if what
             else f"{loc.method}{site}")
    title += suffix
    return f"{title}<br><sup>{extra}</sup>" if extra else title


def _layer_position(loc) -> go.Figure:
    scores = loc.scores.float().T  # [position, layer]
    tokens = loc.labels.get("position") or [str(i) for i in range(scores.shape[0])]
    layers = list(range(scores.shape[1]))
    subject = subject_positions(loc.meta)
    name = _SITE_NAMES.get(loc.site or "", loc.site or "")
    hover = [[f"{name} L{layer} @ {token_text(tok)} (pos {p})<br>score {scores[p, layer]:.4f}"
              for layer in layers] for p, tok in enumerate(tokens)]
    quantity = QUANTITIES.get(loc.method, "score")
    # categories named by token (bold and starred for the subject), so the trace carries its labels
    fig = go.Figure(go.Heatmap(z=scores.tolist(), x=layers, y=token_ticks(tokens, subject), text=hover,
                               hoverinfo="text", colorscale=_SCALES.get(loc.site or "", "Blues"),
                               colorbar=colorbar(quantity), **_anchor(loc, scores)))
    mark_subject(fig, subject, [("x", "y")])
    refs = reference_scores(loc.meta)
    if loc.method == "causal_trace":
        refs += "; colour: absolute p(target), 0 to 1"
    note = "; * = subject" if subject else ""
    fig.update_layout(title=_title(loc, refs + note), xaxis_title="layer", yaxis_title="token",
                      yaxis={"autorange": "reversed", "automargin": True},
                      height=rows_height(len(tokens)), margin={"t": 90})
    return fig


def _anchor(loc, scores) -> dict:
    """Colour range: absolute probability for traces, 0 (corrupted) to 1 (clean) for patching."""
    low, high = float(scores.nan_to_num(0).min()), float(scores.nan_to_num(0).max())
    if loc.method == "causal_trace":
        return {"zmin": 0.0, "zmax": max(1.0, high)}
    if loc.settings.get("metric") == "normalised_logit_diff":
        return {"zmin": min(0.0, low), "zmax": max(1.0, high)}
    return {}


def _layer_head(loc) -> go.Figure:
    scores = loc.scores.float().T  # [head, layer]
    n_heads, n_layers = scores.shape
    hover = [[f"Head L{layer}.H{h}<br>score {scores[h, layer]:.4f}" for layer in range(n_layers)]
             for h in range(n_heads)]
    bound = float(scores.nan_to_num(0).abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=scores.tolist(), x=list(range(n_layers)), y=list(range(n_heads)),
                               text=hover, hoverinfo="text", colorscale="RdBu", zmid=0,
                               zmin=-bound, zmax=bound,
                               colorbar=colorbar(QUANTITIES.get(loc.method, "score"))))
    refs = reference_scores(loc.meta)
    fig.update_layout(title=_title(loc, refs), xaxis_title="layer", yaxis_title="head",
                      yaxis_autorange="reversed", yaxis_dtick=1, height=rows_height(n_heads), margin={"t": 90})
    return fig


def _top_neurons(loc, k: int) -> go.Figure:
    scores = loc.scores.float()
    flat = scores.flatten()
    k = min(k, flat.numel())
    order = flat.nan_to_num(0).abs().argsort(descending=True)[:k]
    width = scores.shape[1]
    names = [f"L{loc.layer_number(int(i) // width)}.N{int(i) % width}" for i in order]
    values = [float(flat[i]) for i in order]
    fig = go.Figure(go.Bar(x=names, y=values, hovertext=[f"Neuron {n}: {v:.4f}" for n, v in
                                                          zip(names, values)], hoverinfo="text"))
    refs = reference_scores(loc.meta)
    fig.update_layout(title=_title(loc, refs, f" (top {k} neurons by |score|)"), xaxis_title="neuron",
                      yaxis_title=QUANTITIES.get(loc.method, "score"), height=400, margin={"t": 90})
    return fig


# -- layout checks --------------------------------------------------------------------------------

_DEFAULT_MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}


def layout_boxes(fig: go.Figure, width: int | None = None) -> dict[str, tuple[float, ...]]:
    """Estimated pixel boxes ``(x0, y0, x1, y1)`` (y down) of the legend and each colour bar.

    Read from the layout alone (positions, lengths, thickness, title and entry text), so it is an
    estimate of what plotly draws; ``width`` defaults to the layout's or plotly's 700 px.
    """
    full_w, full_h = width or fig.layout.width or 700, fig.layout.height or 450
    margin = {k: getattr(fig.layout.margin, k) if getattr(fig.layout.margin, k) is not None else v
              for k, v in _DEFAULT_MARGIN.items()}
    plot_w = max(1, full_w - margin["l"] - margin["r"])
    plot_h = max(1, full_h - margin["t"] - margin["b"])

    def px(x, y):  # paper -> pixels
        return margin["l"] + x * plot_w, margin["t"] + (1 - y) * plot_h

    boxes = {}
    for name, bar in colorbars(fig):
        title = bar.title.text or ""
        lines = title.count("<br>") + 1
        thick = bar.thickness if bar.thickness is not None else 30
        w = thick + 2 * (bar.xpad if bar.xpad is not None else 10) + 45 + 16 * lines
        h = (bar.len if bar.len is not None else 1) * (plot_h if bar.lenmode != "pixels" else 1)
        x = bar.x if bar.x is not None else 1.02
        y = bar.y if bar.y is not None else 0.5
        x0, yc = px(x, y)
        x0 -= {"center": w / 2, "right": w}.get(bar.xanchor, 0)
        y0 = yc - {"middle": h / 2, "bottom": h}.get(bar.yanchor or "middle", 0)
        boxes[name] = (x0, y0, x0 + w, y0 + h)
    entries = _legend_entries(fig)
    if entries:
        boxes["legend"] = _legend_box(fig.layout.legend, entries, px, full_w)
    return boxes


def layout_overlaps(fig: go.Figure, width: int | None = None) -> list[str]:
    """``"a overlaps b"`` for each pair of colour bars, or legend and colour bar, whose boxes meet."""
    boxes = list(layout_boxes(fig, width).items())
    return [f"{a} overlaps {b}" for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]) > 1
            and min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]) > 1]


def colorbars(fig: go.Figure):
    """``(name, colorbar)`` of every colour bar plotly draws: shared colour axes, then traces."""
    used = {getattr(t, "coloraxis", None) for t in fig.data} | {
        getattr(getattr(t, "marker", None), "coloraxis", None) for t in fig.data}
    for name in sorted(n for n in used if n):
        axis = fig.layout[name]
        if axis.showscale is not False:
            yield name, axis.colorbar
    for i, trace in enumerate(fig.data):
        if trace.type in ("heatmap", "contour", "histogram2d") and not trace.coloraxis \
                and trace.showscale is not False:
            yield f"trace {i} colorbar", trace.colorbar


def _legend_entries(fig: go.Figure) -> list[str]:
    if fig.layout.showlegend is False:
        return []
    shown = [t.name or f"trace {i}" for i, t in enumerate(fig.data)
             if t.type not in ("heatmap", "contour", "histogram2d") and t.showlegend is not False]
    return shown if len(shown) > 1 or fig.layout.showlegend else []


def _legend_box(legend, entries: list[str], px, full_w: int) -> tuple[float, ...]:
    widths = [40 + 7 * len(e) for e in entries]
    if legend.orientation == "h":
        rows, line = 1, 0
        for w in widths:
            if line and line + w > full_w:
                rows, line = rows + 1, 0
            line += w
        w, h = min(full_w, sum(widths)), 20 * rows + 10
    else:
        w, h = max(widths) + 10, 20 * len(entries) + 10
    x = legend.x if legend.x is not None else (0 if legend.orientation == "h" else 1.02)
    y = legend.y if legend.y is not None else (-0.1 if legend.orientation == "h" else 1)
    x0, y0 = px(x, y)
    x0 -= {"center": w / 2, "right": w}.get(legend.xanchor, 0)
    yanchor = legend.yanchor if legend.yanchor not in (None, "auto") else (
        "top" if y >= 2 / 3 else "bottom" if y <= 1 / 3 else "middle")
    y0 -= {"middle": h / 2, "bottom": h}.get(yanchor, 0)
    return (x0, y0, x0 + w, y0 + h)
