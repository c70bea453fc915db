"""Figures' layout: one titled colour bar per scale, nothing overlapping, heights that grow with
rows, heads named ``L29 H0``, subject tokens marked, clean/corrupted reference scores shown.

Built from small synthetic localizations and circuit records (the structures
:mod:`excise.verify.circuits` produces); one test runs the real pipeline on a tiny model.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
import torch

from excise.locate import Localization
from excise.locate.plots import colorbars, layout_boxes, layout_overlaps
from excise.verify import figures

TOKENS = ["<s>", "The", " E", "iff", "el", " Tower", " is", " in", " the", " city", " of"]
SUBJECT = [2, 3, 4, 5]


def trace(n_tokens: int = len(TOKENS), clean: float = 0.8, corrupted: float = 0.05, n_layers: int = 30,
          seed: int = 0) -> Localization:
    """A causal-trace-like ``[layer, position]`` map with the meta ``causal_trace`` records."""
    tokens = (TOKENS * 10)[:n_tokens]
    scores = torch.rand(n_layers, n_tokens, generator=torch.Generator().manual_seed(seed)) * clean
    return Localization(scores, ("layer", "position"),
                        {"layer": [str(i) for i in range(n_layers)], "position": tokens},
                        "causal_trace", "mlp", {"samples": 2},
                        {"subject_positions": SUBJECT, "clean_score": clean, "corrupted_score": corrupted},
                        prompt="The Eiffel Tower is in the city of", target=" Paris", fact_id="eiffel")


def record(n_tokens: int = len(TOKENS), n_heads: int = 9, n_layers: int = 30, clean: float = 0.8,
           seed: int = 0) -> dict:
    """One state of :func:`excise.verify.circuits.pair_states`: trace record + heads, neurons, attention."""
    g = torch.Generator().manual_seed(seed)
    out = json.loads(trace(n_tokens, clean, 0.05, n_layers, seed).to_json())
    out["heads"] = (torch.rand(n_layers, n_heads, generator=g) * 0.1).tolist()
    out["heads"][n_layers - 1][0] = 5.0  # the located head: L{last} H0
    out["neurons"] = {"index": [[i % n_layers, 7 * i] for i in range(20)],
                      "scores": torch.randn(20, generator=g).tolist()}
    attention = torch.rand(n_layers, n_heads, n_tokens, generator=g)
    out["attention"] = (attention / attention.sum(-1, keepdim=True)).tolist()
    return out


def pair(**kwargs) -> tuple[dict, dict]:
    return record(**kwargs), record(**{**kwargs, "clean": 0.02, "seed": 1})


def colorbar_titles(fig: go.Figure) -> list[str]:
    return [bar.title.text for _, bar in colorbars(fig)]


def assert_clean_layout(fig: go.Figure, n_bars: int) -> None:
    """``n_bars`` colour bars, each titled, none overlapping another or the legend (any width)."""
    titles = colorbar_titles(fig)
    assert len(titles) == n_bars and all(titles), titles
    for width in (700, 1100):
        assert not layout_overlaps(fig, width), layout_overlaps(fig, width)


def test_overlap_check_catches_stacked_bars_and_a_legend_over_a_bar():
    """The oracle: plotly's defaults put every colour bar and the legend at the same spot."""
    two = go.Figure([go.Heatmap(z=[[0, 1]]), go.Heatmap(z=[[0, 1]], xaxis="x2")])
    assert layout_overlaps(two) == ["trace 0 colorbar overlaps trace 1 colorbar"]
    legend = go.Figure([go.Heatmap(z=[[0, 1]]), go.Bar(y=[1], name="a"), go.Bar(y=[2], name="b")])
    assert layout_overlaps(legend) == ["trace 0 colorbar overlaps legend"]
    hidden = go.Figure([go.Heatmap(z=[[0, 1]], showscale=False), go.Heatmap(z=[[0, 1]])])
    assert layout_overlaps(hidden) == [] and set(layout_boxes(hidden)) == {"trace 1 colorbar"}


def test_circuit_diff_one_titled_bar_per_scale_with_references_and_subject():
    before, after = pair()
    fig = figures.circuit_diff(before, after)
    assert_clean_layout(fig, 2)
    assert colorbar_titles(fig)[0] == "p(target)" and "p(target)" in colorbar_titles(fig)[1]
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis", "coloraxis2"]
    # absolute probability scale: the barely-known "after" (clean 0.02) is drawn pale, not full
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    title = fig.layout.title.text
    assert "clean p(target) 0.800, corrupted 0.050" in title and "clean p(target) 0.020" in title
    assert_subject_marked(fig, n_panels=3)


def assert_subject_marked(fig: go.Figure, n_panels: int) -> None:
    ticks = fig.layout.yaxis.ticktext or fig.data[0].y  # tick labels, or one category per token
    starred = [i for i, t in enumerate(ticks) if t.startswith("<b>*")]
    assert starred == SUBJECT and "&lt;s&gt;" in ticks[0]  # '<s>' escaped, not strike-through
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == n_panels  # one band per panel, around the subject's rows
    assert {(r.y0, r.y1) for r in rects} == {(SUBJECT[0] - 0.5, SUBJECT[-1] + 0.5)}


def test_heights_grow_with_rows():
    small, large = pair(n_tokens=6, n_heads=4), pair(n_tokens=40, n_heads=32)
    for draw in (figures.circuit_diff, figures.attribution_diff, figures.attention_change):
        assert draw(*large).layout.height > draw(*small).layout.height + 300, draw.__name__
    assert trace(40).plot().layout.height > trace(6).plot().layout.height + 300
    heads = [Localization(torch.randn(3, n), ("layer", "head"), {}, "direct_logit_attribution", "head")
             for n in (4, 40)]
    assert heads[1].plot().layout.height > heads[0].plot().layout.height + 300


def test_attribution_diff_bars_and_legend_apart():
    fig = figures.attribution_diff(*pair())
    assert_clean_layout(fig, 2)
    assert all("logits" in t for t in colorbar_titles(fig))
    assert "legend" in layout_boxes(fig)


def test_attention_change_names_heads_like_L29_H0_and_marks_the_subject():
    fig = figures.attention_change(*pair())
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "L29 H0" and not any("head " in t or "." in t for t in titles), titles
    assert_clean_layout(fig, 0)
    assert_subject_marked(fig, n_panels=len(titles))
    assert "attention weight" in fig.layout.xaxis.title.text


def test_localization_figures_titles_references_and_anchoring():
    known, barely = trace(clean=0.8).plot(), trace(clean=0.02).plot()
    for fig in (known, barely):
        assert_clean_layout(fig, 1)
        assert colorbar_titles(fig) == ["p(target)"]
        assert (fig.data[0].zmin, fig.data[0].zmax) == (0.0, 1.0)  # same absolute scale for both
    assert "clean p(target) 0.020, corrupted 0.050" in barely.layout.title.text
    assert_subject_marked(known, n_panels=1)

    patch = Localization(torch.rand(3, 4) * 0.5, ("layer", "position"), {"position": list("abcd")},
                         "activation_patch", "resid", {"metric": "normalised_logit_diff"},
                         {"clean_logit_diff": 4.5, "corrupted_logit_diff": -1.25, "differing_positions": [1]})
    fig = patch.plot()
    assert_clean_layout(fig, 1)
    assert colorbar_titles(fig) == ["normalised logit diff"] and (fig.data[0].zmin, fig.data[0].zmax) == (0, 1)
    assert "clean logit diff 4.50, corrupted -1.25" in fig.layout.title.text
    assert fig.data[0].y[1].startswith("<b>*")

    heads = Localization(torch.randn(3, 4), ("layer", "head"), {}, "direct_logit_attribution", "head").plot()
    assert_clean_layout(heads, 1)
    assert colorbar_titles(heads) == ["direct logit attribution (logits)"]
    neurons = Localization(torch.randn(3, 5), ("layer", "neuron"), {}, "knowledge_neurons", "neuron").plot()
    assert_clean_layout(neurons, 0)
    assert "p(target)" in neurons.layout.yaxis.title.text


def test_probe_figures_label_their_axes():
    from excise.verify.probes import logit_lens, relearn

    lens = SimpleNamespace(layer_prob=[0.1, 0.5, 0.2], layer_rank=[3, 0, 1])
    report = SimpleNamespace(id="f", probe=lambda name: SimpleNamespace(before=lens, after=lens))
    fig = logit_lens.figure(report)
    assert fig.layout.yaxis.title.text == "p(target)" and "rank" in fig.layout.yaxis2.title.text
    assert_clean_layout(fig, 0)
    curve = SimpleNamespace(steps=[0, 1], prob=[0.01, 0.2], control_prob=[0.0, 0.1])
    outcome = SimpleNamespace(before=SimpleNamespace(prob=0.6), after=SimpleNamespace(curve=curve))
    fig = relearn.figure(SimpleNamespace(id="f", probe=lambda name: outcome))
    assert fig.layout.yaxis.title.text == "p(target)"
    assert_clean_layout(fig, 0)


@pytest.mark.filterwarnings("ignore:the model does not predict")
def test_figures_from_circuits_on_a_tiny_model(tiny_folders):
    """The records :mod:`excise.verify.circuits` really produces draw with the same guarantees."""
    from excise.facts import Fact
    from excise.model import load_model
    from excise.verify.circuits import pair_states, trace_facts

    model = load_model(str(tiny_folders["llama"]), device="cpu")
    fact = Fact(id="eiffel", subject="The Eiffel Tower", prompt="{} is in the city of", target=" Paris")
    states = trace_facts(model, [fact], samples=2)
    paired = pair_states(states, states)
    before, after = paired["before"][0], paired["after"][0]
    subject = before["meta"]["subject_positions"]
    for draw, n_bars in ((figures.circuit_diff, 2), (figures.attribution_diff, 2),
                         (figures.attention_change, 0)):
        fig = draw(before, after)
        assert_clean_layout(fig, n_bars)
    fig = figures.circuit_diff(before, after)
    starred = [i for i, t in enumerate(fig.layout.yaxis.ticktext) if t.startswith("<b>*")]
    assert starred == subject and "corrupted" in fig.layout.title.text
