"""Circuit views: attention patterns of chosen heads, and logit-attribution maps of every head or
neuron, on one model state or before vs after an edit.

* :func:`attention_patterns` - for each chosen ``(layer, head)``, the query-token x key-token
  attention pattern over the prompt, as CircuitsVis draws it: row ``q`` is where position ``q``
  reads from, blank above the diagonal (a causal model cannot look ahead), tokens on both axes;
* :func:`attribution_maps` - each head's (``layer x head``) or MLP neuron's (``layer x neuron``)
  direct share of the target's logit (:func:`excise.locate.direct_logit_attribution`).

Given a second model state, each view draws before, after and after - before: the two states on
one shared scale, the difference on a diverging scale centred at 0. The states are taken as
:func:`excise.comparison.compare` takes them (:func:`in_two_states`): "after" is ``model`` as it
is and "before" is ``before_model``, or ``model`` inside the ``before`` context
(``before=edit.reverted(model)``); or, for an edit not applied yet, "before" is ``model`` as it is
and "after" is ``model`` inside the ``after`` context (``after=edit.applied(model)``).

Each view records (:func:`excise.verify.circuits.attention_pattern`, the locator) and hands the
records to a pure drawing function (:func:`attention_figure`, :func:`attribution_figure`) that a
notebook can also call on records of its own. The report's last-position view of the same heads
is :func:`excise.verify.figures.attention_change`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from excise.locate.dla import direct_logit_attribution
from excise.locate.plots import ROW_PX, colorbar, token_text, token_ticks
from excise.tokens import encode_prompt, token_labels
from excise.tokens import subject_positions as subject_token_positions
from excise.verify.circuits import attention_pattern

NEURON_ROW_PX = 10
"""Pixels per layer row of a neuron map (a model has far more neurons than heads)."""

CHANGE = "after - before"


def in_two_states(model, measure: Callable, *, before: AbstractContextManager | None = None,
                  after: AbstractContextManager | None = None, before_model=None) -> tuple:
    """``(measure of the state before or None, measure of the state after)``.

    With none of ``before``, ``after``, ``before_model`` there is one state, ``model`` as it is
    (reported as "after"). The context managers must restore ``model`` on exit (``Edit.reverted``,
    ``Edit.applied`` do).
    """
    if sum(x is not None for x in (before, after, before_model)) > 1:
        raise ValueError("give at most one other model state: before=, after= or before_model=")
    if before_model is not None:
        return measure(before_model), measure(model)
    now = measure(model)
    if before is not None:
        with before:
            return measure(model), now
    if after is not None:
        with after:
            return now, measure(model)
    return None, now


def _state_panels(after: torch.Tensor, before: torch.Tensor | None, alone: str) -> list[tuple]:
    """``(title, values, colour axis)`` per panel: ``after`` alone (titled ``alone``), or before,
    after (sharing ``"coloraxis"``) and after - before (``"coloraxis2"``)."""
    if before is None:
        return [(alone, after, "coloraxis")]
    return [("before", before, "coloraxis"), ("after", after, "coloraxis"),
            (CHANGE, after - before, "coloraxis2")]


def _colour_axes(panels: list[tuple], states: dict, title: str, unit: str) -> dict:
    """Layout colour axes: ``states`` (scale and range) for the states, its bar titled ``title``;
    with a difference panel, a diverging scale centred at 0 for it, its bar (in ``unit``) below."""
    two = len(panels) > 1
    axes = {"coloraxis": {**states, "colorbar": colorbar(title, 0.53 if two else 0.0, 1.0)}}
    if two:
        limit = max(float(panels[-1][1].abs().max()), 1e-3)  # no change is drawn pale, not full scale
        axes["coloraxis2"] = {"colorscale": "RdBu", "cmid": 0.0, "cmin": -limit, "cmax": limit,
                              "colorbar": colorbar(f"{CHANGE}<br>({unit})", 0.0, 0.47)}
    return axes


# -- attention patterns ---------------------------------------------------------------------------

def attention_patterns(model, prompt, heads, *, before: AbstractContextManager | None = None,
                       after: AbstractContextManager | None = None, before_model=None) -> go.Figure:
    """The attention pattern of each head of ``heads`` over ``prompt``'s tokens (see the module).

    ``prompt``: a string, or a :class:`~excise.facts.Fact` (its filled-in prompt; its subject's
    tokens starred). ``heads``: ``(layer, head)`` pairs or :class:`~excise.components.Head`\\ s,
    e.g. ``direct_logit_attribution(model, fact, site="head").top(3)``. One row of panels per head.
    """
    text, subject = _prompt_and_subject(model, prompt)
    chosen = _head_pairs(model, heads)
    layers, head_index = torch.tensor(chosen).T  # [chosen] each

    def measure(state):
        return attention_pattern(state, text)[layers, head_index]  # [chosen, query_pos, key_pos]

    earlier, later = in_two_states(model, measure, before=before, after=after, before_model=before_model)
    tokens = token_labels(model, encode_prompt(model, text))
    return attention_figure(tokens, chosen, later, earlier, subject=subject, prompt=text)


def attention_figure(tokens: list[str], heads: list[tuple[int, int]], after: torch.Tensor,
                     before: torch.Tensor | None = None, subject=(), prompt: str = "") -> go.Figure:
    """Query x key heat maps of recorded patterns: ``after`` (and ``before``) ``[head, query_pos,
    key_pos]``, row ``i`` being head ``heads[i]``; ``tokens`` label both axes, ``subject`` stars
    those positions. A pure function of its inputs."""
    columns = _state_panels(after, before, "attention")
    n_pos = len(tokens)
    panel_px, gap_px = max(200, ROW_PX * n_pos), 50
    plot_px = len(heads) * panel_px + (len(heads) - 1) * gap_px
    fig = make_subplots(rows=len(heads), cols=len(columns), shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.03, vertical_spacing=gap_px / plot_px,
                        subplot_titles=[f"L{layer} H{head}: {name}" for layer, head in heads
                                        for name, _, _ in columns])
    for row, (layer, head) in enumerate(heads):
        for col, (name, patterns, axis) in enumerate(columns):
            fig.add_trace(_pattern_heatmap(patterns[row], tokens, f"L{layer} H{head} {name}", axis),
                          row + 1, col + 1)
    ticks = {"tickvals": list(range(n_pos)), "ticktext": token_ticks(tokens, list(subject)),
             "automargin": True, "showgrid": False}  # masked cells stay blank, as in CircuitsVis
    fig.update_xaxes(**ticks)
    fig.update_yaxes(**ticks, autorange="reversed")
    fig.update_xaxes(title_text="key token (attended to)", row=len(heads))
    fig.update_yaxes(title_text="query token", col=1)
    fig.update_layout(title=_attention_title(prompt, len(heads), bool(subject)),
                      height=plot_px + 130 + 40 + 9 * max(len(t) for t in tokens), margin={"t": 130},
                      plot_bgcolor="white",
                      **_colour_axes(columns, {"colorscale": "Blues", "cmin": 0.0, "cmax": 1.0},  # absolute
                                     "attention weight", "attention weight"))
    return fig


def _pattern_heatmap(pattern: torch.Tensor, tokens: list[str], name: str, axis: str) -> go.Heatmap:
    """One ``[query_pos, key_pos]`` pattern, blank above the diagonal (positions a query cannot see)."""
    rows = pattern.tolist()
    z = [[w if k <= q else None for k, w in enumerate(row)] for q, row in enumerate(rows)]
    hover = [[f"{name}<br>{token_text(tokens[q])} -> {token_text(tokens[k])}: {w:+.3f}" if k <= q else ""
              for k, w in enumerate(row)] for q, row in enumerate(rows)]
    positions = list(range(len(tokens)))
    return go.Heatmap(z=z, x=positions, y=positions, text=hover, hoverinfo="text", coloraxis=axis,
                      name=name)


def _attention_title(prompt: str, n_heads: int, marked: bool) -> str:
    note = "; * = subject" if marked else ""
    return (f"Attention patterns of {n_heads} head{'s' if n_heads > 1 else ''}: {token_text(prompt)}"
            f"<br><sup>row: query token; column: the key token it attends to; blank above the diagonal "
            f"(causal){note}</sup>")


def _prompt_and_subject(model, prompt) -> tuple[str, list[int]]:
    """The prompt's text and its subject's token positions (none for a plain string)."""
    if isinstance(prompt, str):
        return prompt, []
    return prompt.text, subject_token_positions(model, prompt.prompt, prompt.subject)


def _head_pairs(model, heads) -> list[tuple[int, int]]:
    """``heads`` as distinct ``(layer, head)`` pairs, in order; raises on an empty list or a head
    the model does not have."""
    pairs = [(h.layer, h.head) if hasattr(h, "head") else (int(h[0]), int(h[1])) for h in heads]
    if not pairs:
        raise ValueError("attention_patterns() needs at least one (layer, head), e.g. "
                         "direct_logit_attribution(model, fact, site='head').top(3)")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer, head in pairs:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head L{layer} H{head} is not in this model ({n_layers} layers x {n_heads} heads)")
    return list(dict.fromkeys(pairs))


# -- logit attribution maps -----------------------------------------------------------------------

def attribution_maps(model, fact, site: str = "head", *, before: AbstractContextManager | None = None,
                     after: AbstractContextManager | None = None, before_model=None) -> go.Figure:
    """Direct logit attribution to ``fact``'s target of every head (``site="head"``) or MLP neuron
    (``site="neuron"``), in one or two states (see the module).

    The locator's warning that a state does not predict the target is silenced: after a forget
    edit that is the point.
    """
    def measure(state):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="the model does not predict")
            return direct_logit_attribution(state, fact, site=site)

    earlier, later = in_two_states(model, measure, before=before, after=after, before_model=before_model)
    return attribution_figure(later, earlier)


def attribution_figure(after, before=None) -> go.Figure:
    """``[layer, head]`` or ``[layer, neuron]`` maps of :class:`~excise.locate.Localization`\\ s
    ``after`` (and ``before``, of the same axes and shape): head maps side by side (layer across,
    head down), neuron maps stacked (neuron across, layer down). A pure function of its inputs."""
    site = after.axes[-1]
    if after.axes not in (("layer", "head"), ("layer", "neuron")):
        raise ValueError(f"attribution_figure() draws layer x head or layer x neuron maps, not {after.axes}")
    if before is not None and (before.axes != after.axes or before.scores.shape != after.scores.shape):
        raise ValueError(f"before and after maps differ: {before.axes} {tuple(before.scores.shape)} vs "
                         f"{after.axes} {tuple(after.scores.shape)}")
    a = after.scores.float()  # [layer, head|neuron]
    grids = _state_panels(a, None if before is None else before.scores.float(), "attribution")
    across = site == "head"  # heads: panels in a row; neurons (wide): panels in a column
    fig = make_subplots(rows=1 if across else len(grids), cols=len(grids) if across else 1,
                        shared_yaxes=across, shared_xaxes=not across, horizontal_spacing=0.03,
                        vertical_spacing=0.07, subplot_titles=[name for name, _, _ in grids])
    for i, (name, grid, axis) in enumerate(grids):
        fig.add_trace(_attribution_heatmap(grid, site, name, axis), *((1, i + 1) if across else (i + 1, 1)))
    _attribution_axes(fig, across, len(grids))
    n_rows = a.shape[1] if across else a.shape[0]
    panel_px = max(300, ROW_PX * n_rows) if across else max(150, NEURON_ROW_PX * n_rows)
    plot_px = panel_px if across else len(grids) * panel_px * 1.15
    bound = max(max(float(g.abs().max()) for name, g, _ in grids if name != CHANGE), 1e-9)
    states = {"colorscale": "RdBu", "cmid": 0.0, "cmin": -bound, "cmax": bound}  # one scale, about 0
    fig.update_layout(title=_attribution_title(after), height=int(plot_px) + 130 + 80,
                      margin={"t": 130, "b": 80},
                      **_colour_axes(grids, states, "direct logit<br>attribution (logits)", "logits"))
    return fig


def _attribution_heatmap(grid: torch.Tensor, site: str, name: str, axis: str) -> go.Heatmap:
    """Heads: ``[head, layer]`` cells (layer across); neurons: ``[layer, neuron]`` cells."""
    if site == "head":
        return go.Heatmap(z=grid.T.tolist(), coloraxis=axis, name=name,
                          hovertemplate=f"L%{{x}} H%{{y}}: %{{z:+.3f}} logits<extra>{name}</extra>")
    return go.Heatmap(z=grid.tolist(), coloraxis=axis, name=name,
                      hovertemplate=f"L%{{y}}.N%{{x}}: %{{z:+.3f}} logits<extra>{name}</extra>")


def _attribution_axes(fig: go.Figure, across: bool, n_panels: int) -> None:
    if across:
        fig.update_xaxes(title_text="layer")
        fig.update_yaxes(title_text="head", col=1)
        fig.update_yaxes(autorange="reversed", dtick=1)
    else:
        fig.update_xaxes(title_text="neuron", row=n_panels)
        fig.update_yaxes(title_text="layer", autorange="reversed")


def _attribution_title(loc) -> str:
    return (f"Direct logit attribution of each {loc.axes[-1]} to {token_text(loc.target or '')}: "
            f"{token_text(loc.prompt or '')}<br><sup>its direct share of the target's logit at the last "
            "prompt position (red lowers it, blue raises it)</sup>")
