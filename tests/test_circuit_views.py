"""Circuit views and side-by-side localizations: the figures carry what was measured, exactly.

Attention patterns are causal distributions with the model's own tokens on both axes; a
difference panel is after - before of a real rank-one edit, recomputed here state by state; head
and neuron logit-attribution maps match the locator run on each state; :func:`excise.locate.compare`
draws each map's scores unchanged, shares a colour scale only between maps of one unit, refuses what
it cannot line up, and lays out without overlap.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from excise.facts import Fact
from excise.locate import Localization, compare
from excise.locate.plots import colorbars, layout_overlaps, token_text
from excise.verify.circuit_views import (
    attention_figure,
    attention_patterns,
    attribution_figure,
    attribution_maps,
)
from excise.verify.circuits import attention_pattern, last_position_attention

FACT = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris")
TOKENS = ["<s>", "The", " E", "iff", "el", " Tower", " is", " in", " the", " city", " of"]
SUBJECT = [2, 3, 4, 5]


def assert_clean_layout(fig, titles: list[str]) -> None:
    """The colour bars are titled ``titles`` (in order) and overlap nothing, at two widths."""
    assert [bar.title.text for _, bar in colorbars(fig)] == titles
    for width in (700, 1100):
        assert not layout_overlaps(fig, width), layout_overlaps(fig, width)


def panel(fig, row: int, col: int, n_cols: int):
    """The trace of subplot ``(row, col)`` (1-based) of a figure with one trace per panel."""
    return fig.data[(row - 1) * n_cols + (col - 1)]


def rows(z) -> list[list]:
    """A heat map's ``z`` as a list of lists (plotly keeps a tuple of rows)."""
    return [list(row) for row in z]


def unmasked(z) -> torch.Tensor:
    """A heat map's ``z`` with its blank cells (None) as 0."""
    return torch.tensor([[0.0 if v is None else v for v in row] for row in z])


@pytest.fixture
def edited(tiny):
    """``(model, edit)``: a rank-one forget edit of ``FACT`` at layer 0, applied."""
    from excise.edit import rome

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random tiny model does not know the fact
        edit = rome(tiny, FACT, layer=0, progress=False)
    return tiny, edit


# -- attention patterns ---------------------------------------------------------------------------

def test_attention_pattern_rows_are_causal_distributions(tiny):
    pattern = attention_pattern(tiny, FACT.text)  # [layer, head, query_pos, key_pos]
    n_pos = tiny.to_tokens(FACT.text).shape[1]
    assert pattern.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads, n_pos, n_pos)
    assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5)
    assert torch.all(pattern.triu(diagonal=1) == 0)
    assert torch.equal(last_position_attention(tiny, FACT.text), pattern[:, :, -1])


@pytest.mark.parametrize("tiny", ["gpt2"], indirect=True)
def test_attention_patterns_before_after_and_difference_of_a_rank_one_edit(edited):
    model, edit = edited
    heads = [(0, 1), (2, 3)]  # layer 0 reads the embeddings only: an MLP-0 edit cannot change it
    fig = attention_patterns(model, FACT, heads, before=edit.reverted(model))
    after = attention_pattern(model, FACT.text)
    with edit.reverted(model):
        before = attention_pattern(model, FACT.text)
    for row, (layer, head) in enumerate(heads, start=1):
        drawn = [unmasked(panel(fig, row, col, 3).z) for col in (1, 2, 3)]
        assert torch.allclose(drawn[0], before[layer, head], atol=1e-6)
        assert torch.allclose(drawn[1], after[layer, head], atol=1e-6)
        assert torch.allclose(drawn[2], after[layer, head] - before[layer, head], atol=1e-6)
        blank = [[v is None for v in z_row] for z_row in panel(fig, row, 1, 3).z]
        assert torch.equal(torch.tensor(blank), torch.ones_like(drawn[0]).triu(1).bool())
    assert float(unmasked(panel(fig, 1, 3, 3).z).abs().max()) == 0.0
    assert float(unmasked(panel(fig, 2, 3, 3).z).abs().max()) > 1e-6  # the edit reached layer 2
    assert torch.equal(attention_pattern(model, FACT.text), after)  # the edited state came back
    assert_clean_layout(fig, ["attention weight", "after - before<br>(attention weight)"])
    change = fig.layout.coloraxis2
    assert change.cmid == 0 and change.cmin == -change.cmax and change.colorscale[0][1] != change.colorscale[-1][1]
    assert [a.text for a in fig.layout.annotations][:3] == ["L0 H1: before", "L0 H1: after", "L0 H1: after - before"]

    ids = model.to_tokens(FACT.text)[0].tolist()
    ticks = fig.layout.yaxis.ticktext
    assert len(ticks) == len(ids) == len(fig.layout.xaxis.ticktext)
    assert all(token_text(model.tokenizer.decode([i])) in tick for i, tick in zip(ids, ticks))
    starred = "".join(model.tokenizer.decode([ids[p]]) for p, t in enumerate(ticks) if t.startswith("<b>*"))
    assert starred.strip() == FACT.subject

    edit.undo(model)  # the same figure from the unedited model, the edit applied only inside
    again = attention_patterns(model, FACT, heads, after=edit.applied(model))
    assert all(torch.allclose(unmasked(a.z), unmasked(b.z), atol=1e-6) for a, b in zip(again.data, fig.data))


def test_attention_figure_of_one_state_and_refusals(tiny_folders):
    from excise.model import load_model

    model = load_model(str(tiny_folders["gpt2"]), device="cpu")
    fig = attention_patterns(model, "The capital of France is", [(1, 0)])
    assert len(fig.data) == 1 and not any(t.startswith("<b>*") for t in fig.layout.yaxis.ticktext)
    assert_clean_layout(fig, ["attention weight"])
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    for heads, message in (([], "at least one"), ([(9, 0)], "not in this model"), ([(0, 99)], "not in this model")):
        with pytest.raises(ValueError, match=message):
            attention_patterns(model, FACT, heads)
    with pytest.raises(ValueError, match="at most one other model state"):
        attention_patterns(model, FACT, [(0, 0)], before_model=model, after=torch.no_grad())
    pattern = torch.eye(3)[None]  # [head, query_pos, key_pos]
    drawn = attention_figure(["a", "b", "c"], [(0, 0)], pattern, pattern / 2)
    assert unmasked(drawn.data[2].z).tolist() == (pattern[0] / 2).tolist()


# -- logit attribution maps -----------------------------------------------------------------------

@pytest.mark.parametrize("tiny", ["gpt2"], indirect=True)
@pytest.mark.filterwarnings("ignore:the model does not predict")
def test_attribution_maps_match_the_locator_in_each_state(edited):
    from excise.locate import direct_logit_attribution

    model, edit = edited
    for site, across in (("head", True), ("neuron", False)):
        fig = attribution_maps(model, FACT, site, before=edit.reverted(model))
        after = direct_logit_attribution(model, FACT, site=site).scores  # [layer, head|neuron]
        with edit.reverted(model):
            before = direct_logit_attribution(model, FACT, site=site).scores
        drawn = [torch.tensor(t.z) for t in fig.data]
        drawn = [z.T for z in drawn] if across else drawn  # heads are drawn layer across
        for got, want in zip(drawn, (before, after, after - before)):
            assert torch.allclose(got, want, atol=1e-6)
        assert float(drawn[2].abs().max()) > 0  # the edit moved something
        assert [a.text for a in fig.layout.annotations] == ["before", "after", "after - before"]
        assert_clean_layout(fig, ["direct logit<br>attribution (logits)", "after - before<br>(logits)"])
        for axis in (fig.layout.coloraxis, fig.layout.coloraxis2):
            assert axis.cmid == 0 and axis.cmin == -axis.cmax
        assert (fig.layout.xaxis if across else fig.layout.xaxis3).title.text == ("layer" if across else "neuron")
    one = attribution_figure(Localization(torch.randn(3, 4), ("layer", "head"), {}, "direct_logit_attribution",
                                          "head", prompt="p", target=" t"))
    assert len(one.data) == 1 and "' t'" in one.layout.title.text
    with pytest.raises(ValueError, match="differ"):
        attribution_figure(Localization(torch.randn(3, 4), ("layer", "head"), {}, "m"),
                           Localization(torch.randn(3, 5), ("layer", "head"), {}, "m"))


# -- several localizations side by side -----------------------------------------------------------

def token_map(site: str, method: str = "causal_trace", prompt: str = "The Eiffel Tower is in the city of",
              seed: int = 0) -> Localization:
    """A ``[layer, position]`` map with the meta a causal trace records."""
    scores = torch.rand(6, len(TOKENS), generator=torch.Generator().manual_seed(seed))
    return Localization(scores, ("layer", "position"), {"position": TOKENS}, method, site, {},
                        {"subject_positions": SUBJECT, "clean_score": 0.8, "corrupted_score": 0.05},
                        prompt=prompt, target=" Paris")


def head_map(prompt: str = "The Eiffel Tower is in the city of", seed: int = 0) -> Localization:
    scores = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
    return Localization(scores, ("layer", "head"), {}, "direct_logit_attribution", "head", prompt=prompt,
                        target=" Paris")


def test_compare_shares_one_scale_between_maps_of_one_unit():
    locs = [token_map("mlp", seed=0), token_map("attn", seed=1), token_map("resid", seed=2)]
    fig = compare(locs)
    for trace, loc in zip(fig.data, locs):
        assert rows(trace.z) == loc.scores.T.tolist()  # [position, layer], the map's own scores
        assert list(trace.y)[2].startswith("<b>*2: ") and "&lt;s&gt;" in list(trace.y)[0]
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)  # p(target), absolute
    assert_clean_layout(fig, ["p(target)<br>(shared by all panels)"])
    assert [a.text for a in fig.layout.annotations] == ["causal_trace (mlp)", "causal_trace (attn)",
                                                        "causal_trace (resid)"]
    assert "'The Eiffel Tower is in the city of' -> ' Paris'" in fig.layout.title.text
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == 3 and {(r.y0, r.y1) for r in rects} == {(SUBJECT[0] - 0.5, SUBJECT[-1] + 0.5)}
    assert len({fig.get_subplot(1, c).yaxis.domain for c in (1, 2, 3)}) == 1  # one row


def test_compare_gives_each_unit_its_own_scale_and_grids_many_maps():
    trace, heads = token_map("mlp"), head_map()
    neurons = Localization(torch.randn(6, 8), ("layer", "neuron"), {}, "knowledge_neurons", "neuron")
    fig = compare([trace, heads, neurons], titles=["trace", "heads", "neurons"])
    assert rows(fig.data[1].z) == heads.scores.T.tolist() and fig.data[0].coloraxis != fig.data[1].coloraxis
    top = sorted(neurons.scores.flatten().tolist(), key=abs, reverse=True)[:20]  # the neuron figure's top 20
    assert list(fig.data[2].y) == top
    assert_clean_layout(fig, ["p(target)<br>(panel 1)", "direct logit attribution (logits)<br>(panel 2)"])
    assert fig.layout.coloraxis2.cmid == 0 and fig.layout.coloraxis2.cmin == -fig.layout.coloraxis2.cmax
    assert [a.text for a in fig.layout.annotations] == ["1: trace", "2: heads", "3: neurons"]

    many = compare([token_map("mlp", seed=s) for s in range(6)])
    domains = {many.get_subplot(r, c).yaxis.domain for r in (1, 2) for c in (1, 2, 3)}
    assert len(domains) == 2 and all(rows(t.z) == token_map("mlp", seed=s).scores.T.tolist()
                                  for s, t in enumerate(many.data))
    assert_clean_layout(many, ["p(target)<br>(shared by all panels)"])


def test_compare_refuses_what_it_cannot_line_up():
    with pytest.raises(ValueError, match="at least one"):
        compare([])
    with pytest.raises(ValueError, match="differ; compare maps of one prompt"):
        compare([token_map("mlp"), token_map("mlp", prompt="The Colosseum is in the city of")])
    with pytest.raises(ValueError, match="2 titles for 1"):
        compare([head_map()], titles=["a", "b"])
    with pytest.raises(TypeError, match="Localizations"):
        compare([head_map().scores])
    fig = compare([head_map(), head_map("The Colosseum is in the city of", seed=1)])  # heads: any prompt
    assert "Colosseum" in fig.layout.annotations[1].text and "2 prompts" in fig.layout.title.text


@pytest.mark.parametrize("tiny", ["llama"], indirect=True)
@pytest.mark.filterwarnings("ignore:the model does not predict")
def test_compare_draws_real_localizations_unchanged(tiny):
    from excise.locate import causal_trace, direct_logit_attribution

    locs = [causal_trace(tiny, FACT, site=site, samples=2, progress=False) for site in ("mlp", "attn")]
    locs.append(direct_logit_attribution(tiny, FACT, site="head"))
    fig = compare(locs)
    assert [rows(t.z) for t in fig.data] == [loc.scores.float().T.tolist() for loc in locs]
    assert_clean_layout(fig, ["p(target)<br>(shared by panels 1, 2)", "direct logit attribution (logits)<br>(panel 3)"])
    assert rows(compare([locs[0]]).data[0].z) == rows(locs[0].plot().data[0].z)
