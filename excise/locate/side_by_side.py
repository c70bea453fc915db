"""Several localizations side by side in one figure: :func:`compare`.

"Do the MLP, attention and residual traces tell the same story?" and "does attribution patching
find the heads exact patching finds?" are read off maps drawn next to each other. :func:`compare`
draws each localization as its own figure does (:func:`~excise.locate.plots.plot_localization`:
the same scores, hover text and token labels), one panel each, in one row, or in a grid of
:data:`GRID_COLUMNS` columns when there are more than :data:`MAX_PER_ROW`; and

* heat maps whose scores share a unit (the same quantity in :data:`~excise.locate.plots.QUANTITIES`)
  share one colour scale, whose colour bar says so; maps of other units get their own bar; the
  bars are stacked right of the plot so that none overlap;
* token axes carry the tokens, the subject's starred, bold and outlined;
* each panel has a title (method and site, or ``titles``), the figure a title naming the prompt.

Maps over token positions are read row for row against each other, so they must be of the same
tokens: ``("layer", "position")`` maps of different prompts are refused. Head and neuron maps are
over the model's components, the same for every prompt, and may come from different prompts (each
panel then names its prompt).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from excise.locate.localization import Localization
from excise.locate.plots import (
    QUANTITIES,
    ROW_PX,
    colorbar,
    mark_subject,
    subject_positions,
    token_text,
)

MAX_PER_ROW = 4
"""Up to this many panels go in one row; more are laid out in a grid."""

GRID_COLUMNS = 3
"""Columns of the grid when there are more than :data:`MAX_PER_ROW` panels."""

_PANEL_PX, _BARS_PX, _GAP_PX = 260, 300, 90  # least heat-map height, bar-panel height, row gap


def compare(localizations, titles=None) -> go.Figure:
    """One figure with a panel per localization (see the module docstring for the layout rules).

    ``titles``: one panel title per localization (default: ``"method (site)"``). Raises
    ``ValueError`` for an empty list, a ``titles`` of another length, or ``("layer", "position")``
    maps of different prompts.
    """
    locs = list(localizations)
    titles = _panel_titles(locs, titles)
    n_cols = len(locs) if len(locs) <= MAX_PER_ROW else GRID_COLUMNS
    grid_rows = [locs[i:i + n_cols] for i in range(0, len(locs), n_cols)]
    share_y = _same_rows(locs)
    row_px = [max(_panel_px(loc) for loc in row) for row in grid_rows]
    plot_px = sum(row_px) + _GAP_PX * (len(grid_rows) - 1)
    groups = _scale_groups(locs)
    if len(groups) > 1:  # several colour bars: number the panels so that each bar can name its own
        titles = [f"{i + 1}: {t}" for i, t in enumerate(titles)]
    fig = make_subplots(rows=len(grid_rows), cols=n_cols, subplot_titles=titles, shared_yaxes=share_y,
                        horizontal_spacing=0.03 if share_y else _unshared_spacing(locs, n_cols),
                        vertical_spacing=_GAP_PX / plot_px, row_heights=row_px)
    for i, loc in enumerate(locs):
        _add_panel(fig, loc, 1 + i // n_cols, 1 + i % n_cols, first_col=i % n_cols == 0 or not share_y)
    _colour_axes(fig, locs, groups)
    fig.update_layout(title=_figure_title(locs), height=plot_px + 130 + 80, margin={"t": 130, "b": 80})
    return fig


def _panel_titles(locs: list[Localization], titles) -> list[str]:
    """The panel titles, after checking the inputs; the prompt too when the panels' prompts differ."""
    if not locs:
        raise ValueError("compare() needs at least one Localization")
    bad = [type(loc).__name__ for loc in locs if not isinstance(loc, Localization)]
    if bad:
        raise TypeError(f"compare() takes Localizations, got {', '.join(bad)}")
    token_maps = [loc for loc in locs if "position" in loc.axes]
    for loc in token_maps[1:]:
        if _tokens(loc) != _tokens(token_maps[0]):
            raise ValueError(f"compare() lines token maps up row by row, but {token_maps[0].prompt!r} and "
                             f"{loc.prompt!r} differ; compare maps of one prompt")
    if titles is None:
        titles = [f"{loc.method} ({loc.site})" if loc.site else loc.method for loc in locs]
        if len({loc.prompt for loc in locs}) > 1:
            titles = [f"{t}<br>{token_text(loc.prompt or '')}" for t, loc in zip(titles, locs)]
    titles = list(titles)
    if len(titles) != len(locs):
        raise ValueError(f"compare() got {len(titles)} titles for {len(locs)} localizations")
    return titles


def _tokens(loc: Localization) -> tuple[str | None, list[str] | None]:
    return loc.prompt, loc.labels.get("position")


def _same_rows(locs: list[Localization]) -> bool:
    """Whether every panel has the same rows (tokens or heads), so that they can share one y axis."""
    kinds = {(loc.axes, tuple(loc.labels.get(loc.axes[-1]) or range(loc.scores.shape[-1])))
             for loc in locs}
    return len(kinds) == 1 and locs[0].axes != ("layer", "neuron")  # neuron panels are bar charts


def _panel_px(loc: Localization) -> int:
    """Height (px) a panel needs: a row per token or head, or a bar chart's."""
    if loc.axes == ("layer", "neuron"):
        return _BARS_PX
    return max(_PANEL_PX, ROW_PX * loc.scores.shape[-1])


def _unshared_spacing(locs: list[Localization], n_cols: int) -> float:
    """Gap between panels that each label their own rows: room for token labels when some have them."""
    has_tokens = any("position" in loc.axes for loc in locs)
    return min(0.25, (0.45 if has_tokens else 0.2) / n_cols) if n_cols > 1 else 0.0


def _add_panel(fig: go.Figure, loc: Localization, row: int, col: int, first_col: bool) -> None:
    """Draw ``loc``'s own figure's trace in cell ``(row, col)``, with its axis titles."""
    trace = loc.plot().data[0]  # the map's own trace: its scores, hover text and token labels
    fig.add_trace(trace, row, col)
    quantity = QUANTITIES.get(loc.method, "score")
    if loc.axes == ("layer", "neuron"):
        fig.update_xaxes(title_text="neuron", row=row, col=col)
        fig.update_yaxes(title_text=quantity, row=row, col=col)
        return
    fig.update_xaxes(title_text="layer", row=row, col=col)
    fig.update_yaxes(autorange="reversed", automargin=True, row=row, col=col)
    if first_col:
        fig.update_yaxes(title_text="token" if loc.axes[-1] == "position" else loc.axes[-1], row=row, col=col)
    if loc.axes[-1] == "head":
        fig.update_yaxes(dtick=1, row=row, col=col)
    if loc.axes[-1] == "position":
        mark_subject(fig, subject_positions(loc.meta), [(fig.data[-1].xaxis, fig.data[-1].yaxis)])


def _scale_groups(locs: list[Localization]) -> dict[str, list[int]]:
    """Heat-map panels by colour scale: one group per known quantity (a shared unit), one per panel
    whose quantity is unknown (its unit is not known to be anyone else's)."""
    groups: dict[str, list[int]] = {}
    for i, loc in enumerate(locs):
        if loc.axes == ("layer", "neuron"):
            continue  # bars: the value axis is titled with the quantity
        key = QUANTITIES[loc.method] if loc.method in QUANTITIES else f"score #{i}"
        groups.setdefault(key, []).append(i)
    return groups


def _colour_axes(fig: go.Figure, locs: list[Localization], groups: dict[str, list[int]]) -> None:
    """Move each heat map onto its group's colour axis; one bar per group, stacked top to bottom."""
    n, gap = len(groups), 0.06
    for g, (key, members) in enumerate(groups.items()):
        name = "coloraxis" if g == 0 else f"coloraxis{g + 1}"
        traces = [fig.data[i] for i in members]  # one trace per panel, in order
        y1 = 1 - g / n
        y0 = y1 - 1 / n + (gap if g < n - 1 else 0)
        fig.update_layout({name: {**_shared_range(traces),
                                  "colorbar": colorbar(_bar_title(key, members, len(locs), n), y0, y1)}})
        for trace in traces:
            trace.update(coloraxis=name, colorscale=None, zmin=None, zmax=None, zmid=None,
                         colorbar=None, showscale=None)


def _shared_range(traces) -> dict:
    """Colour scale and range covering every trace's own: symmetric about 0 (``RdBu``) when any
    of them is centred at 0, else from the lowest ``zmin`` to the highest ``zmax``."""
    lows, highs = zip(*(_z_range(t) for t in traces))
    if any(t.zmid == 0 for t in traces):
        bound = max(max(abs(v) for v in lows + highs), 1e-9)
        return {"colorscale": "RdBu", "cmid": 0.0, "cmin": -bound, "cmax": bound}
    scales = {tuple(map(tuple, t.colorscale)) for t in traces if t.colorscale is not None}
    scale = traces[0].colorscale if len(scales) == 1 else "Blues"
    return {"colorscale": scale, "cmin": min(lows), "cmax": max(highs)}


def _z_range(trace) -> tuple[float, float]:
    """``(low, high)`` of a heat map: its own ``zmin``/``zmax`` where set, else its data's."""
    values = [v for row in trace.z for v in row if v is not None and not math.isnan(v)] or [0.0]
    low = trace.zmin if trace.zmin is not None else min(values)
    high = trace.zmax if trace.zmax is not None else max(values)
    return float(low), float(high)


def _bar_title(quantity: str, members: list[int], n_panels: int, n_bars: int) -> str:
    """The colour bar's title: the quantity, and which panels it colours."""
    if quantity.startswith("score #"):
        quantity = "score"
    if len(members) == n_panels and n_panels > 1:
        return f"{quantity}<br>(shared by all panels)"
    panels = ", ".join(str(i + 1) for i in members)
    if len(members) > 1:
        return f"{quantity}<br>(shared by panels {panels})"
    return f"{quantity}<br>(panel {panels})" if n_bars > 1 else quantity


def _figure_title(locs: list[Localization]) -> str:
    """``'prompt' -> 'target'`` when the panels share it, and what the marks mean."""
    prompts = {(loc.prompt, loc.target) for loc in locs}
    if len(prompts) == 1 and locs[0].prompt:
        what = f"{token_text(locs[0].prompt)} -> {token_text(locs[0].target or '')}"
    else:
        what = f"{len(prompts)} prompts"
    title = f"{len(locs)} localization{'s' if len(locs) > 1 else ''} of {what}"
    if any(subject_positions(loc.meta) for loc in locs if "position" in loc.axes):
        title += "<br><sup>* = subject (outlined)</sup>"
    return title
