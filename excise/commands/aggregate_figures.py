"""Figures over many facts, as in the papers: pure functions returning ``(figure, caption)``.

* :func:`aie_curves`: ROME's average indirect effect per layer, one panel per site, a line and a
  95% band per token category (records of :func:`excise.commands.aggregate.trace_many`);
* :func:`lookup_depth`: per relation, the layers where its facts are looked up;
* :func:`editor_bars`, :func:`editor_tradeoff`: the editors compared over many facts (rows of
  ``bench/forget_quality.py --json``);
* :func:`robustness_bars`: how often each attack brings a forgotten fact back (rows of
  ``bench/robustness.py --json``).

Each figure has a title, axis titles with units and a legend; the caption is one sentence saying
what it shows, for the notebook to print under it. Rates carry 95% Wilson intervals (from the
counts), means +- 1.96 standard errors.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from excise.commands.aggregate import CATEGORIES, average_effects, describe, lookup_depths
from excise.commands.eval_summary import wilson
from excise.locate.localization import EARLY_FRACTION
from excise.locate.plots import rows_height

COLOURS = qualitative.D3
_SITE_TITLES = {"resid": "restored residual state", "mlp": "restored MLP outputs",
                "attn": "restored attention outputs"}
FORGET_COLUMNS = ("efficacy", "paraphrases", "held-out wordings")
"""Columns of ``forget_quality.py --json`` rows that count probes forgotten (higher: more forgotten)."""
KEEP_COLUMNS = ("neighbours", "same subject", "same answer")
"""Columns that count probes kept (higher: less collateral damage)."""


def _fill(colour: str, alpha: float = 0.2) -> str:
    """``"#rrggbb"`` or ``"rgb(r,g,b)"`` as an ``rgba`` string with opacity ``alpha``."""
    if colour.startswith("#"):
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    else:
        r, g, b = (int(v) for v in colour[colour.index("(") + 1:-1].split(",")[:3])
    return f"rgba({r},{g},{b},{alpha})"


def _title(text: str, note: str = "") -> dict:
    return {"text": f"{text}<br><sup>{note}</sup>" if note else text}


# -- causal traces --------------------------------------------------------------------------------

def _x_title(site: str, window: int) -> str:
    if site == "resid":
        return "layer (state entering it)"
    return f"layer (centre of {window} restored)"


def aie_curves(records: list[dict]) -> tuple[go.Figure, str]:
    """ROME's average-indirect-effect line figure: a panel per site, x = layer, y = the mean over
    facts of p(target | restored) - p(target | corrupted), a line and a shaded 95% band per token
    category (:data:`~excise.commands.aggregate.CATEGORIES`)."""
    if not records:
        raise ValueError("aie_curves needs trace records (excise.commands.aggregate.trace_many)")
    bands = average_effects(records)
    sites = list(bands)
    windows = {r["site"]: r["window"] for r in records}
    fig = make_subplots(rows=1, cols=len(sites), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[_SITE_TITLES.get(s, s) for s in sites])
    for col, site in enumerate(sites, 1):
        for i, category in enumerate(CATEGORIES):
            band = bands[site].get(category)
            if band is not None:
                _add_band(fig, band, category, COLOURS[i], col, show_legend=col == 1)
        fig.update_xaxes(title_text=_x_title(site, windows[site]), row=1, col=col)
    fig.update_yaxes(title_text="AIE: Δ p(target), probability", row=1, col=1)
    fig.update_layout(
        title=_title("Average indirect effect of restoring one clean state, per token category",
                     f"{describe(records)}; band: 95% interval (mean ± 1.96 SE over facts)"),
        legend_title_text="token category", height=430, width=1100, margin={"t": 110})
    caption = (f"Average indirect effect (probability of the target recovered) of restoring one "
               f"state per layer, by token category and site, over {_n_facts(records)} facts with "
               f"95% bands.")
    return fig, caption


def _add_band(fig: go.Figure, band, name: str, colour: str, col: int, show_legend: bool) -> None:
    """A mean line and, when it has one, its shaded interval (one legend entry for both)."""
    layers = list(range(len(band.mean)))
    if band.low is not None:
        fig.add_trace(go.Scatter(x=layers, y=band.high, mode="lines", line={"width": 0},
                                 legendgroup=name, showlegend=False, hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Scatter(x=layers, y=band.low, mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor=_fill(colour), legendgroup=name,
                                 showlegend=False, hoverinfo="skip"), row=1, col=col)
    fig.add_trace(go.Scatter(x=layers, y=band.mean, mode="lines", name=name, legendgroup=name,
                             line={"color": colour}, showlegend=show_legend,
                             hovertemplate=f"{name}<br>layer %{{x}}: AIE %{{y:.3f}} (n {band.n})"
                                           "<extra></extra>"), row=1, col=col)


def _n_facts(records: list[dict]) -> int:
    return len({r["fact"] for r in records})


def lookup_depth(records: list[dict]) -> tuple[go.Figure, str]:
    """Per relation, the layers where its facts are looked up: the argmax over all layers of the
    MLP indirect effect at the last subject token, and the layer ROME's rule edits (the argmax
    within the first 60% of layers); one point per fact, boxes over the facts."""
    depths = lookup_depths(records)
    if not depths:
        raise ValueError("lookup_depth needs MLP traces (trace_many(..., sites=('mlp', ...)))")
    n_layers = max(len(r["scores"]) for r in records if r["site"] == "mlp")
    relations = list(depths)
    series = {"lookup_layer": "peak layer (all layers)",
              "edit_layer": f"edit layer (first {EARLY_FRACTION:.0%})"}
    fig = go.Figure()
    for i, (key, name) in enumerate(series.items()):
        x = [layer for rel in relations for layer in depths[rel][key]]
        y = [rel for rel in relations for _ in depths[rel][key]]
        facts = [f for rel in relations for f in depths[rel]["fact"]]
        fig.add_trace(go.Box(x=x, y=y, name=name, orientation="h", boxpoints="all", jitter=0.4,
                             pointpos=0, marker={"color": COLOURS[i], "size": 6},
                             line={"color": COLOURS[i]}, text=facts,
                             hovertemplate="%{text}: layer %{x}<extra></extra>"))
    edge = max(1, round(EARLY_FRACTION * n_layers)) - 0.5
    fig.add_vline(x=edge, line={"dash": "dash", "color": "grey"},
                  annotation_text="edit window ends", annotation_position="top")
    fig.update_layout(
        title=_title("Where in depth each relation is looked up (MLP, last subject token)",
                     f"{_n_facts([r for r in records if r['site'] == 'mlp'])} facts; one point per fact"),
        boxmode="group", xaxis={"title": "layer (centre of the restored MLP window)",
                                "range": [-0.5, n_layers - 0.5]},
        yaxis={"title": "relation", "automargin": True, "categoryorder": "array",
               "categoryarray": relations, "autorange": "reversed"},
        legend_title_text="layer chosen by",
        height=rows_height(2 * len(relations), extra=200), width=1000, margin={"t": 110})
    caption = ("Per relation, the layer of each fact's largest MLP indirect effect at the last "
               "subject token, and the layer the rank-one editor's rule would edit.")
    return fig, caption


# -- editors (bench rows) -------------------------------------------------------------------------

def _pick_split(rows: list[dict], split: str | None) -> tuple[list[dict], str]:
    """The rows of ``split`` (default: held-out when present, else the first split seen)."""
    splits = list(dict.fromkeys(r["split"] for r in rows))
    if not splits:
        raise ValueError("no bench rows to draw")
    chosen = split or ("held_out" if "held_out" in splits else splits[0])
    return [r for r in rows if r["split"] == chosen], chosen


def _rate_error(cell: dict | None) -> tuple[float | None, float, float]:
    """A cell's rate in percent and its Wilson 95% half-widths above and below (``None``: no data)."""
    if not cell or not cell.get("total"):
        return None, 0.0, 0.0
    w = wilson(cell["hits"], cell["total"])
    return 100 * w["rate"], 100 * (w["high"] - w["rate"]), 100 * (w["rate"] - w["low"])


def _rate_bars(fig: go.Figure, name: str, cells: dict, columns: list[str], colour: str, n: int,
               **where) -> None:
    """One bar per column: the rate with its Wilson interval; hover gives hits / total."""
    parts = [_rate_error(cells.get(c)) for c in columns]
    text = [f"{cells[c]['hits']:g}/{cells[c]['total']:g}" if cells.get(c) else "n/a" for c in columns]
    fig.add_trace(go.Bar(x=columns, y=[p[0] for p in parts], name=name, marker_color=colour,
                         error_y={"type": "data", "array": [p[1] for p in parts],
                                  "arrayminus": [p[2] for p in parts]},
                         text=text, hovertemplate=f"{name} (n {n})<br>%{{x}}: %{{y:.1f}}%% "
                                                  "(%{text})<extra></extra>",
                         textposition="none"), **where)


def editor_bars(rows: list[dict], split: str | None = None) -> tuple[go.Figure, str]:
    """Per editor (``forget_quality.py --json`` rows), the share of probes forgotten (efficacy,
    paraphrases, held-out wordings) and kept (neighbours, same subject, same answer), with 95%
    Wilson intervals."""
    rows, split = _pick_split(rows, split)
    present = {c for r in rows for c in r["columns"]}
    columns = [c for c in (*FORGET_COLUMNS, *KEEP_COLUMNS) if c in present]
    fig = go.Figure()
    for i, row in enumerate(rows):
        _rate_bars(fig, row["method"], row["columns"], columns, COLOURS[i % len(COLOURS)], row["n"])
    fig.add_vline(x=len([c for c in columns if c in FORGET_COLUMNS]) - 0.5,
                  line={"dash": "dot", "color": "grey"})
    fig.update_layout(
        title=_title(f"Editors compared on the {split} facts: forgotten (left) and kept (right)",
                     "bars: share of probes; whiskers: 95% Wilson interval"),
        barmode="group", xaxis_title="probe group", yaxis={"title": "probes (%)", "range": [0, 105]},
        legend_title_text="editor", height=460, width=1100, margin={"t": 110})
    caption = (f"Share of probes each editor forgets (efficacy, paraphrases, held-out wordings) and "
               f"keeps (neighbours, same subject, same answer) on the {split} facts, 95% intervals.")
    return fig, caption


def editor_tradeoff(rows: list[dict], split: str | None = None) -> tuple[go.Figure, str]:
    """Forgetting and keeping against the perplexity change, one point per editor: efficacy (left)
    and neighbours kept (right), with 95% Wilson intervals."""
    rows, split = _pick_split(rows, split)
    rows = [r for r in rows if r.get("perplexity_change") is not None]
    panels = ("efficacy", "neighbours")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["forgotten: efficacy", "kept: neighbours"])
    for i, row in enumerate(rows):
        for col, column in enumerate(panels, 1):
            rate, above, below = _rate_error(row["columns"].get(column))
            fig.add_trace(go.Scatter(
                x=[100 * row["perplexity_change"]], y=[rate], mode="markers", name=row["method"],
                legendgroup=row["method"], showlegend=col == 1,
                marker={"color": COLOURS[i % len(COLOURS)], "size": 11},
                error_y={"type": "data", "array": [above], "arrayminus": [below]},
                hovertemplate=f"{row['method']}<br>perplexity %{{x:+.2f}}%%<br>{column} "
                              "%{y:.1f}%%<extra></extra>"), row=1, col=col)
            fig.update_yaxes(title_text=f"{column} {'forgotten' if col == 1 else 'kept'} (%)",
                             row=1, col=col)
            fig.update_xaxes(title_text="perplexity change on held-out text (%)", row=1, col=col)
    fig.update_layout(
        title=_title(f"Forgetting vs collateral damage on the {split} facts",
                     "x: mean perplexity change per edit; whiskers: 95% Wilson interval"),
        legend_title_text="editor", height=440, width=1100, margin={"t": 110})
    caption = (f"Efficacy and neighbours kept against the perplexity change each editor causes on "
               f"the {split} facts (up and left is better).")
    return fig, caption


def robustness_bars(rows: list[dict], budgets: bool = False) -> tuple[go.Figure, str]:
    """Per attack, the share of forgotten facts it recovers (among those where it was
    informative), one bar per editor (``robustness.py --json`` rows), with 95% Wilson intervals.
    ``budgets``: also the per-budget columns (``"relearn 10 steps"``, ...)."""
    columns = list(dict.fromkeys(c for r in rows for c in r["columns"] if budgets or " " not in c))
    fig = go.Figure()
    for i, row in enumerate(rows):
        _rate_bars(fig, row["editor"], row["columns"], columns, COLOURS[i % len(COLOURS)], row["n"])
    splits = ", ".join(dict.fromkeys(r["split"] for r in rows))
    fig.update_layout(
        title=_title(f"Robustness of forgetting per attack ({splits} facts)",
                     "bars: share of forgotten facts the attack recovers; whiskers: 95% Wilson "
                     "interval; lower is more robust"),
        barmode="group", xaxis={"title": "probe or attack", "tickangle": -30},
        yaxis={"title": "facts recovered (%)", "range": [0, 105]}, legend_title_text="editor",
        height=480, width=1100, margin={"t": 110})
    caption = ("Share of each editor's forgotten facts that each probe or attack brings back, "
               "where it was informative, with 95% intervals (lower is more robust).")
    return fig, caption
