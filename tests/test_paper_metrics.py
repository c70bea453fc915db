"""The papers' metrics (rewrite score, delta-accuracy, CounterFact) against hand computations."""

from __future__ import annotations

import json

import pytest
import torch

from excise.comparison import GROUPS, Comparison, fact_pairs
from excise.facts import Fact, Probe
from excise.scoring import Scores
from excise.verify.paper_metrics import mean_metrics, paper_metrics


def scores(probs, known):
    probs = torch.tensor(probs, dtype=torch.float64)
    return Scores(probs.log(), torch.zeros(len(probs), dtype=torch.long), torch.tensor(known))


def comparison(new_target=None):
    fact = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
                paraphrases=("{}'s capital is", "The capital city of {} is"),
                neighbors=(Probe("The capital of Spain is", " Madrid"),),
                same_answer=(Probe("The Louvre is in", " Paris"), Probe("Notre-Dame is in", " Paris")),
                new_target=new_target)
    empty = scores([], [])
    before = {g: empty for g in GROUPS}
    after = dict(before)
    before.update(prompt=scores([0.8], [True]), paraphrases=scores([0.5, 0.4], [True, False]),
                  neighbors=scores([0.6], [True]), same_answer=scores([0.7, 0.3], [True, True]))
    after.update(prompt=scores([0.2], [False]), paraphrases=scores([0.5, 0.6], [True, True]),
                 neighbors=scores([0.6], [True]), same_answer=scores([0.1, 0.3], [False, True]))
    return Comparison(fact, fact_pairs(fact), before, after)


def test_rewrite_score_and_delta_acc_match_hand_computation():
    m = paper_metrics(comparison())
    assert m.rewrite_score["prompt"] == pytest.approx((0.8 - 0.2) / 0.8)
    assert m.rewrite_score["paraphrases"] == pytest.approx((0.0 + (0.4 - 0.6) / 0.4) / 2)
    assert "held_out_paraphrases" not in m.rewrite_score  # no probes, no number
    assert m.delta_acc == pytest.approx({"neighbors": 0.0, "same_answer": -0.5})
    assert m.counterfact is None  # no counterfactual target


def test_counterfact_scores_compare_new_and_true_target():
    c = comparison(new_target=" Lyon")
    new_after = {"prompt": scores([0.3], [True]), "paraphrases": scores([0.1, 0.7], [False, True]),
                 "same_answer": scores([0.2, 0.1], [False, False])}
    cf = paper_metrics(c, new_after).counterfact
    assert cf["ES"] == 1.0 and cf["EM"] == pytest.approx(0.3 - 0.2)
    assert cf["PS"] == 0.5 and cf["PM"] == pytest.approx(((0.1 - 0.5) + (0.7 - 0.6)) / 2)
    # neighbourhood: the same-answer prompts should still prefer the true answer
    assert cf["NS"] == 0.5 and cf["NM"] == pytest.approx(((0.1 - 0.2) + (0.3 - 0.1)) / 2)
    means = mean_metrics([paper_metrics(comparison()), paper_metrics(c, new_after)])
    assert means["counterfact.ES"] == 1.0 and means["rewrite_score.prompt"] == pytest.approx(0.75)


def test_verify_reports_counterfact_metrics_for_a_fact_with_a_new_target(tiny):
    from dataclasses import replace

    from excise.verify import verify

    fact = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
                paraphrases=("{}'s capital city is",), new_target=" Lyon",
                same_answer=(Probe("The Louvre is in", " Paris"),), relation="capital")
    report = verify(tiny, [fact, replace(fact, id="plain", new_target=None)], original=tiny,
                    probes=(), fluency_tokens=0, perplexity=False, progress=False)
    with_new, plain = report.facts
    assert set(with_new.metrics.counterfact) == {"ES", "EM", "PS", "PM", "NS", "NM"}
    assert plain.metrics.counterfact is None and "prompt" in plain.metrics.rewrite_score
    # same model before and after: nothing rewritten, no accuracy lost
    assert with_new.metrics.rewrite_score["prompt"] == pytest.approx(0.0, abs=1e-6)
    assert report.to_dict()["facts"][0]["metrics"]["counterfact"]["ES"] == with_new.metrics.counterfact["ES"]


def test_verify_rejects_an_unknown_budget(tiny):
    from excise.verify import verify

    with pytest.raises(ValueError, match="unknown attack budget"):
        verify(tiny, comparison().fact, budgets={"relearn_stepz": 3}, progress=False)


def test_reports_and_localizations_as_dataframes(tiny):
    pytest.importorskip("pandas")
    from excise.locate import direct_logit_attribution
    from excise.verify import verify

    fact = comparison().fact
    report = verify(tiny, fact, original=tiny, probes=("logit_lens", "formats"), fluency_tokens=0,
                    perplexity=False, progress=False)
    frame = report.to_dataframe()
    assert list(frame["probe"]) == ["logit_lens", "question", "multiple_choice", "few_shot"]
    assert set(frame["fact"]) == {"capital-france"} and "rewrite_score.prompt" in frame.columns
    loc = direct_logit_attribution(tiny, fact)
    cells = loc.to_dataframe()
    assert len(cells) == loc.scores.numel() and set(loc.axes) <= set(cells.columns)
    first = cells.iloc[0]
    index = tuple(int(first[f"{axis}_index"]) for axis in loc.axes)
    assert first["score"] == pytest.approx(float(loc.scores[index]))


def test_a_report_reloads_from_json_typed_and_whole(tiny, tmp_path):
    from dataclasses import replace

    from excise.verify import verify
    from excise.verify.probes.relearn import RelearnReading
    from excise.verify.report import Report

    facts = [replace(comparison().fact, relation="capital"), Fact(id="capital-spain", subject="Spain", prompt="The capital of {} is",
                                     target=" Madrid", relation="capital")]
    report = verify(tiny, facts, original=tiny, probes=("logit_lens", "relearn"), relearn_steps=2,
                    fluency_tokens=2, perplexity=False, progress=False,
                    pool=[Fact(id=f"c{i}", subject=s, prompt="The capital of {} is", target=t,
                               relation="capital") for i, (s, t) in enumerate([("Peru", " Lima"), ("Chile", " Santiago")])])
    path = tmp_path / "r.json"
    report.to_json(path)
    again = Report.from_json(path)
    assert again.to_dict() == json_roundtrip(report.to_dict())
    after = again["capital-france"].probe("relearn").after
    assert isinstance(after, RelearnReading) and type(after.curve).__name__ == "FactCurve"
    assert again["capital-france"].figure("relearn").layout.title.text  # figures work on it
    assert Report.from_json(path.read_text()).table() == report.table()
    older = json.loads(path.read_text())  # a report written before the weakened tally existed
    for record in older["facts"]:
        del record["summary"]["kept_weakened"]
    assert Report.from_json(json.dumps(older)).table() == report.table()  # recounted from its scores
    with pytest.raises(ValueError, match="not an excise verification report"):
        Report.from_json('{"model": "x"}')


def json_roundtrip(data):
    import json

    from excise.verify.report import _default

    return json.loads(json.dumps(data, default=_default))
