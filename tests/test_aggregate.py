"""Traces over many facts: ROME's token categories, the 95% bands, the resumable cache, and the
aggregate figures' layout (titles, axis titles, legends, no overlaps).

Categories and intervals are checked against hand computations on hand-made traces; the cache
against a count of the traces actually run on a tiny model; the figures on synthetic records and
bench rows.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from excise.commands import aggregate
from excise.commands import aggregate_figures as figures
from excise.facts import Fact
from excise.locate import Localization
from excise.locate.plots import layout_overlaps

TOKENS = ["<s>", "The", " E", "iff", "el", " Tower", " is", " in", " the", " city", " of"]


def fake_trace(site: str = "mlp", subject=(2, 3, 4, 5), n_layers: int = 12, seed: int = 0,
               fact_id: str = "eiffel") -> Localization:
    """A causal-trace-like ``[layer, position]`` map with the fields ``causal_trace`` records."""
    scores = torch.rand(n_layers, len(TOKENS), generator=torch.Generator().manual_seed(seed))
    return Localization(scores, ("layer", "position"),
                        {"layer": [str(i) for i in range(n_layers)], "position": TOKENS},
                        "causal_trace", site, {"samples": 2, "noise": 0.1, "window": 10},
                        {"subject_positions": list(subject), "clean_score": 0.9, "corrupted_score": 0.1},
                        prompt="The Eiffel Tower is in the city of", target=" Paris", fact_id=fact_id)


def fake_records(n_facts: int = 6, relations=("landmark", "capital", "author")) -> list[dict]:
    records = []
    for i in range(n_facts):
        fact = Fact(id=f"fact-{i}", subject="The Eiffel Tower", prompt="{} is in the city of",
                    target=" Paris", relation=relations[i % len(relations)])
        for j, site in enumerate(aggregate.SITES):
            loc = fake_trace(site, seed=10 * i + j, fact_id=fact.id)
            records.append(aggregate.trace_record(loc, fact, 2, "hash", 0.0))
    return records


def test_categories_of_a_hand_made_trace():
    """Subject at positions 2-5 of 11 tokens: first 2, last 5, further 6-9, last token 10."""
    assert aggregate.token_categories([2, 3, 4, 5], 11) == {
        "first subject token": [2], "last subject token": [5],
        "further tokens": [6, 7, 8, 9], "last token": [10]}
    scores = torch.arange(11.0).repeat(3, 1) + 100 * torch.arange(3.0)[:, None]  # [layer, pos]
    effects = aggregate.category_effects(scores, [2, 3, 4, 5], corrupted=1.0)
    assert effects["first subject token"] == [1.0, 101.0, 201.0]
    assert effects["last subject token"] == [4.0, 104.0, 204.0]
    assert effects["further tokens"] == [6.5, 106.5, 206.5]  # mean of 6..9, minus 1
    assert effects["last token"] == [9.0, 109.0, 209.0]


def test_a_subject_right_before_the_last_token_has_no_further_tokens():
    categories = aggregate.token_categories([1], 3)
    assert categories["further tokens"] == [] and categories["last token"] == [2]
    effects = aggregate.category_effects(torch.ones(2, 3), [1], corrupted=0.0)
    assert effects["further tokens"] is None and effects["first subject token"] == [1.0, 1.0]


def test_band_is_mean_plus_minus_1_96_standard_errors():
    curves = [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]
    band = aggregate.mean_band(curves)
    for layer in range(2):
        column = [c[layer] for c in curves]
        half = 1.96 * statistics.stdev(column) / math.sqrt(3)
        assert band.mean[layer] == pytest.approx(statistics.mean(column))
        assert band.low[layer] == pytest.approx(statistics.mean(column) - half)
        assert band.high[layer] == pytest.approx(statistics.mean(column) + half)
    single = aggregate.mean_band([[1.0, 2.0]])
    assert single.n == 1 and single.low is None and single.mean == [1.0, 2.0]


def test_average_effects_and_lookup_depths_read_the_records():
    records = fake_records(4)
    bands = aggregate.average_effects(records)
    assert list(bands) == list(aggregate.SITES) and list(bands["mlp"]) == list(aggregate.CATEGORIES)
    expected = [statistics.mean(r["effects"]["last token"][0] for r in records if r["site"] == "attn")]
    assert bands["attn"]["last token"].mean[0] == pytest.approx(expected[0])
    depths = aggregate.lookup_depths(records)
    assert sorted(depths) == ["author", "capital", "landmark"]
    mlp = [r for r in records if r["site"] == "mlp"]
    for r in mlp:  # lookup = argmax of the last-subject-token MLP effect; edit layer in the first 60%
        effect = r["effects"]["last subject token"]
        assert r["lookup_layer"] == effect.index(max(effect)) and r["edit_layer"] < 0.6 * len(effect)


@pytest.mark.filterwarnings("ignore:the model does not predict")
@pytest.mark.parametrize("tiny", ["llama"], indirect=True)
def test_trace_many_resumes_from_its_cache(tiny, tmp_path, monkeypatch):
    calls = []
    real = aggregate.causal_trace

    def counting(model, fact, **kwargs):
        calls.append((fact.id, kwargs["site"]))
        return real(model, fact, **kwargs)

    monkeypatch.setattr(aggregate, "causal_trace", counting)
    facts = [Fact(id=f"capital-{s.lower()}", subject=s, prompt="The capital of {} is", target=t,
                  relation="capital") for s, t in (("France", " Paris"), ("Germany", " Berlin"),
                                                   ("Spain", " Madrid"))]
    cache = tmp_path / "traces.jsonl"
    first = aggregate.trace_many(tiny, facts[:2], samples=1, sites=("mlp", "resid"), cache=cache,
                                 progress=False)
    assert len(calls) == 4 and len(first) == 4 and first[0]["lookup_layer"] is not None
    with cache.open("a") as handle:  # an interrupted append
        handle.write('{"fact": "capital-spain", "si')
    again = aggregate.trace_many(tiny, facts, samples=1, sites=("mlp", "resid"), cache=cache,
                                 progress=False)
    assert calls[4:] == [("capital-spain", "mlp"), ("capital-spain", "resid")]
    assert again[:4] == first
    lines = cache.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    aggregate.trace_many(tiny, facts[:1], samples=2, sites=("mlp",), cache=cache, progress=False)
    assert len(calls) == 7  # other noise samples: another trace, not the cached one


def assert_figure_labelled(fig: go.Figure, caption: str, legend_entries: int) -> None:
    """Title, every axis titled, a legend of ``legend_entries`` entries, nothing overlapping."""
    assert fig.layout.title.text and caption and "\n" not in caption
    axes = [fig.layout[k] for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
    titled = [a for a in axes if a.title.text]
    assert titled and all(a.title.text for a in axes if a.anchor != "free" and not a.matches), axes
    shown = [t for t in fig.data if t.showlegend is not False and t.name]
    assert len({t.name for t in shown}) == legend_entries and fig.layout.legend.title.text
    for width in (700, 1100):
        assert not layout_overlaps(fig, width), layout_overlaps(fig, width)


def test_aie_curves_one_panel_per_site_a_line_and_band_per_category():
    records = fake_records(5)
    fig, caption = figures.aie_curves(records)
    assert_figure_labelled(fig, caption, legend_entries=len(aggregate.CATEGORIES))
    assert [a.text for a in fig.layout.annotations] == [figures._SITE_TITLES[s] for s in aggregate.SITES]
    assert len(fig.data) == 3 * len(aggregate.SITES) * len(aggregate.CATEGORIES)  # line + 2 edges
    assert all(fig.layout[f"xaxis{i or ''}"].title.text for i in (0, 2, 3))
    assert "Δ p(target)" in fig.layout.yaxis.title.text and "5 facts" in fig.layout.title.text


def test_lookup_depth_per_relation():
    fig, caption = figures.lookup_depth(fake_records(6))
    assert_figure_labelled(fig, caption, legend_entries=2)
    assert set(fig.data[0].y) == {"landmark", "capital", "author"} and len(fig.data[0].x) == 6


def bench_rows() -> list[dict]:
    """Rows in the format of ``bench/forget_quality.py --json``."""
    def cells(rate, total=20):
        return {name: {"hits": round(rate * total), "total": total, "rate": round(rate * total) / total}
                for name in (*figures.FORGET_COLUMNS, *figures.KEEP_COLUMNS)}
    return [{"method": m, "split": s, "n": 20, "columns": cells(r), "perplexity_change": p,
             "seconds_per_edit": 3.0}
            for s in ("tune", "held_out")
            for m, r, p in (("rome", 0.95, 0.002), ("memit 2-pass batch of 50", 0.9, 0.01),
                            ("finetune-ga(all)", 0.6, 0.08))]


def test_editor_bars_and_tradeoff():
    fig, caption = figures.editor_bars(bench_rows())
    assert_figure_labelled(fig, caption, legend_entries=3)
    assert "held_out" in caption and list(fig.data[0].x)[0] == "efficacy"
    assert fig.data[0].error_y.array[0] > 0 and fig.data[0].y[0] == pytest.approx(95.0)
    fig, caption = figures.editor_tradeoff(bench_rows(), split="tune")
    assert_figure_labelled(fig, caption, legend_entries=3)
    assert fig.data[0].x[0] == pytest.approx(0.2)  # perplexity change in percent


def forget_quality_bench():
    """``bench/forget_quality.py`` as a module (the bench folder is no package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "forget_quality.py"
    spec = importlib.util.spec_from_file_location("forget_quality_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_forget_quality_bench_runs_rome_with_settings_named_in_its_methods():
    """``--methods "rome[lr=0.2;kl_weight=8.0]"`` is the default rank-one edit with those value
    settings, ``rome[contrast=128]`` with that update setting; a misspelt field, a value that is not a literal or a name that is no row of the bench
    is refused in one line."""
    from dataclasses import replace

    from excise.edit.value import ValueSettings

    bench = forget_quality_bench()
    assert bench.tuned_settings("rome[lr=0.2; kl_weight=8.0]") == (replace(ValueSettings(), lr=0.2, kl_weight=8.0), {})
    assert bench.tuned_settings("rome[contrast=128;lr=0.2]") == (replace(ValueSettings(), lr=0.2), {"contrast": 128})
    assert bench.tuned_settings("rome[]") == (ValueSettings(), {})
    for bad, says in (("rome[kl_weigh=8]", "kl_weight"), ("rome[lr=fast]", "literal"), ("rome(lr=1)", "field=value")):
        with pytest.raises(ValueError, match=says) as raised:
            bench.tuned_settings(bad)
        assert "\n" not in str(raised.value)
    assert list(bench.tuned_methods(["rome", "rome-plain", "memit", "rome[lr=0.2]"])) == ["rome[lr=0.2]"]
    with pytest.raises(ValueError, match="'rome-plane' is no row of this bench; name any of rome, ") as raised:
        bench.tuned_methods(["rome", "rome-plane"])  # refused, where it used to be skipped in silence
    assert "\n" not in str(raised.value)


def robustness_bench(monkeypatch):
    """``bench/robustness.py`` loaded as a module, with ``bench/`` on the path for its imports."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location("robustness_bench", folder / "robustness.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_robustness_bench_runs_the_tuned_rank_one_rows_of_the_forget_bench(monkeypatch):
    """``bench/robustness.py --editors "rome,rome[contrast_nearest=32]"`` attacks a tuned row as
    ``bench/forget_quality.py`` reads it; a name that is neither an editor nor a row is refused in
    one line."""
    import sys

    bench = robustness_bench(monkeypatch)
    assert bench.editor_named("rome") is bench.EDITORS["rome"]
    tuned = bench.editor_named("rome[contrast_nearest=32]")
    called = {}
    monkeypatch.setattr(sys.modules["forget_quality"], "rome",
                        lambda model, fact, **kwargs: called.update(kwargs) or "edit")
    assert tuned("model", "fact") == "edit" and called["contrast_nearest"] == 32
    for bad, says in (("rome-plane", "unknown editor 'rome-plane'"), ("rome[contrast_near=3]", "contrast_nearest")):
        with pytest.raises(ValueError, match=says) as raised:
            bench.editor_named(bad)
        assert "\n" not in str(raised.value)


def test_robustness_bench_prints_each_probes_reason_on_request(monkeypatch, capsys):
    """``--reasons`` prints every probe's reason (its readings) under the fact's line; without it
    only the statuses are printed."""
    import argparse
    from types import SimpleNamespace

    bench = robustness_bench(monkeypatch)
    outcome = SimpleNamespace(probe="relearn", status="recovered",
                              reason="relearning: rank 0, p=0.412 after (before: rank 0, p=0.603)")
    report = SimpleNamespace(timings={"relearn": 1.0},
                             facts=[SimpleNamespace(verdict="recoverable", probes=[outcome])])
    undone = []
    monkeypatch.setattr(bench, "editor_named", lambda name: lambda model, fact: SimpleNamespace(
        undo=lambda model: undone.append(fact.id)))
    monkeypatch.setattr(bench, "verify", lambda *args, **kwargs: report)
    fact = SimpleNamespace(id="capital-x")
    for reasons in (False, True):
        args = argparse.Namespace(editors="rome", probes="relearn", reasons=reasons)
        rows, _ = bench.run("model", [fact], args, budgets={})
        printed = capsys.readouterr().out
        assert "relearn=recovered" in printed and rows["rome"][0].verdict == "recoverable"
        assert ("relearn: relearning: rank 0, p=0.412 after" in printed) is reasons
    assert undone == ["capital-x", "capital-x"]


@pytest.mark.parametrize("tiny", ["llama"], indirect=True)
def test_forget_quality_bench_splits_the_held_out_wordings_by_where_the_subject_stands(tiny):
    """The held-out column, split: wordings that open with a one-token subject (a token of its
    own right after BOS) and the rest, each counting its own forgotten wordings."""
    import torch

    from excise.comparison import GROUPS, Comparison, fact_pairs
    from excise.facts import Fact
    from excise.scoring import Scores
    from excise.tokens import subject_positions

    bench = forget_quality_bench()
    model = tiny
    subject = next(s for s in ("France", "Paris", "the", "a") if len(subject_positions(model, "{} is", s)) == 1)
    fact = Fact(id="capital-x", subject=subject, prompt="The capital of {} is", target=" Paris",
                held_out_paraphrases=("{}'s capital is", "Q: What is the capital of {}?\nA:",
                                      "{} has its capital in", "If you travel to {}, you will visit its capital,"))
    pairs = fact_pairs(fact)

    def unchanged(n):
        return Scores(torch.full((n,), 0.8).log(), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool))

    before = {group: unchanged(len(pairs[group])) for group in GROUPS}
    after = dict(before)
    after["held_out_paraphrases"] = Scores(torch.tensor([0.7, 0.01, 0.01, 0.01]).log(), torch.tensor([0, 3, 2, 5]),
                                           torch.tensor([True, False, False, False]))
    split = bench.held_out_by_subject_place(model, Comparison(fact, pairs, before, after))
    assert split == {"held_out_one_token_first": (1, 2), "held_out_rest": (2, 2)}
    longer = Fact(id="capital-y", subject="New South Wales", prompt=fact.prompt, target=fact.target,
                  held_out_paraphrases=fact.held_out_paraphrases)
    pairs = fact_pairs(longer)
    split = bench.held_out_by_subject_place(model, Comparison(longer, pairs, before, after))
    assert split == {"held_out_one_token_first": (0, 0), "held_out_rest": (3, 4)}  # no one-token subject
    assert {"held_out_one_token_first", "held_out_rest"} <= set(bench.COLUMNS)


def test_robustness_bars():
    rows = [{"editor": e, "split": "tune", "n": 8,
             "forgotten": {"hits": 8, "total": 8, "rate": 1.0},
             "columns": {"relearn": {"hits": h, "total": 8, "rate": h / 8},
                         "relearn 10 steps": {"hits": h, "total": 8, "rate": h / 8},
                         "quantization": {"hits": 0, "total": 0, "rate": None}}}
            for e, h in (("rome", 2), ("memit", 4))]
    fig, caption = figures.robustness_bars(rows)
    assert_figure_labelled(fig, caption, legend_entries=2)
    assert list(fig.data[0].x) == ["relearn", "quantization"] and fig.data[0].y[1] is None


def robustness_rows() -> list[dict]:
    """Rows in the format of ``bench/robustness.py --json``."""
    return [{"editor": e, "split": "tune", "n": 8, "forgotten": {"hits": 8, "total": 8, "rate": 1.0},
             "columns": {"relearn": {"hits": h, "total": 8, "rate": h / 8},
                         "quantization": {"hits": 0, "total": 0, "rate": None}}}
            for e, h in (("rome", 2), ("memit", 4))]


def test_bench_rows_as_tidy_and_wide_dataframes(tmp_path):
    pytest.importorskip("pandas")
    from excise.commands.bench_tables import bench_dataframe

    path = tmp_path / "forget_quality.json"
    path.write_text(json.dumps({"about": {}, "rows": bench_rows()}))
    tidy = bench_dataframe(path)
    n_measures = len(figures.FORGET_COLUMNS) + len(figures.KEEP_COLUMNS)
    assert len(tidy) == 6 * n_measures
    cell = tidy[(tidy.method == "rome") & (tidy.split == "tune") & (tidy.measure == "efficacy")].iloc[0]
    assert (cell.hits, cell.total, cell.rate) == (19, 20, 0.95) and cell.low < 0.95 < cell.high
    assert cell.perplexity_change == 0.002 and cell.seconds_per_edit == 3.0
    wide = bench_dataframe(path, wide=True)
    assert len(wide) == 6 and list(wide.columns[:4]) == ["method", "split", "n", "efficacy"]
    assert wide.loc[wide.method == "finetune-ga(all)", "efficacy"].tolist() == [0.6, 0.6]
    assert "seconds_per_edit" in wide.columns

    robust = bench_dataframe(robustness_rows())
    assert list(robust.measure[:3]) == ["forgotten", "relearn", "quantization"]
    assert robust.rate.isna().sum() == 2  # no informative facts: no rate, not 0%


def test_bench_dataframe_says_what_is_wrong(tmp_path):
    pytest.importorskip("pandas")
    from excise.commands.bench_tables import bench_dataframe

    with pytest.raises(FileNotFoundError, match="--json"):
        bench_dataframe(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match="not a bench result"):
        bench_dataframe(tmp_path / "other.json")


def test_traces_as_a_tidy_dataframe():
    pytest.importorskip("pandas")
    from excise.commands.bench_tables import traces_dataframe

    records = fake_records(3)
    frame = traces_dataframe(records)
    assert len(frame) == 3 * len(aggregate.SITES) * len(aggregate.CATEGORIES) * 12
    row = frame[(frame.fact == "fact-1") & (frame.site == "mlp") & (frame.category == "last token")
                & (frame.layer == 4)].iloc[0]
    mlp = next(r for r in records if r["fact"] == "fact-1" and r["site"] == "mlp")
    assert row.effect == mlp["effects"]["last token"][4] and row.relation == "capital"
    mlp["effects"]["further tokens"] = None  # a subject right before the last token
    assert len(traces_dataframe(records)) == len(frame) - 12
