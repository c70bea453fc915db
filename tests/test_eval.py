"""``excise eval``: per-fact edit + verify on fresh weights, resumable, aggregated with intervals."""

from __future__ import annotations

import json

import pytest

from excise.commands.eval_summary import mean_interval, wilson
from excise.facts import Fact, write_facts


def test_wilson_and_mean_intervals_match_hand_computation():
    w = wilson(8, 10)
    # Wilson: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    assert w["rate"] == 0.8 and w["low"] == pytest.approx(0.4902, abs=1e-3)
    assert w["high"] == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 5)["low"] == 0.0 and wilson(5, 5)["high"] == 1.0
    assert wilson(0, 0)["rate"] is None
    m = mean_interval([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["high"] - m["mean"] == pytest.approx(1.96 * 1.0 / 3 ** 0.5)


def greedy_facts(model) -> list[Fact]:
    """Facts the tiny model "knows": their target is its own greedy next token."""
    from excise.generation import generate

    prompts = [("Alpha", "{} is a"), ("Beta", "The city of {} is in"), ("Gamma", "{} was written by")]
    facts = []
    for subject, template in prompts:
        target = generate(model, [template.format(subject)], max_new_tokens=1)[0]
        facts.append(Fact(id=f"f-{subject.lower()}", subject=subject, prompt=template, target=target,
                          paraphrases=("About {}:",), relation="r"))
    return facts


def test_eval_edits_each_fact_on_fresh_weights_and_resumes(tiny, tmp_path, monkeypatch):
    from excise.commands import evaluation
    from excise.model import weights_hash
    from excise.scoring import score_targets

    facts = [f for f in greedy_facts(tiny) if score_targets(tiny, [f.text], [f.target]).known[0]]
    if len(facts) < 3:
        pytest.skip("this tiny model's greedy answers do not re-tokenize alike")
    unknown = Fact(id="f-unknown", subject="Delta", prompt="{} likes", target=" zzzzqq", relation="r")
    facts = [facts[0], unknown, *facts[1:]]
    before = weights_hash(tiny)
    out = tmp_path / "run"
    run = evaluation.evaluate(tiny, facts, method="ablate", out=out, limit=2, probes=("logit_lens",),
                              perplexity=False, progress=False)
    assert weights_hash(tiny) == before  # every edit undone
    assert [r["fact"] for r in run.rows] == ["f-alpha", "f-unknown", "f-beta"]
    assert "skipped" in run.rows[1] and "verdict" in run.rows[2]
    assert run.summary["all"]["evaluated"] == 2 and run.summary["all"]["skipped"] == 1
    assert (out / "facts" / "f-alpha.json").exists() and not (out / "facts" / "f-unknown.json").exists()
    page = (out / "eval.html").read_text()
    assert page.count("plotly.js v") == 1 and 'src="http' not in page
    assert "efficacy" in (out / "table.md").read_text()

    # an interrupted append leaves a half line: dropped on resume; done facts are not redone
    with (out / "rows.jsonl").open("a") as handle:
        handle.write('{"fact": "f-gam')
    seen = []
    real = evaluation._one_fact
    monkeypatch.setattr(evaluation, "_one_fact", lambda m, f, *a: seen.append(f.id) or real(m, f, *a))
    run = evaluation.evaluate(tiny, facts, method="ablate", out=out, probes=("logit_lens",),
                              perplexity=False, progress=False)
    assert seen == ["f-gamma"] and len(run.rows) == 4
    assert len((out / "rows.jsonl").read_text().splitlines()) == 4

    with pytest.raises(ValueError, match="other settings .*method"):
        evaluation.evaluate(tiny, facts, method="rome", out=out, probes=("logit_lens",),
                            perplexity=False, progress=False)


def test_cli_eval_and_its_errors(tiny_folders, tmp_path, capsys):
    from excise.cli import main
    from excise.model import load_model

    folder = str(tiny_folders["gpt2"])
    path = write_facts(greedy_facts(load_model(folder, device="cpu"))[:1], tmp_path / "f.jsonl")
    rc = main(["eval", "--model", folder, "--facts", str(path), "--method", "ablate", "--probes",
               "logit_lens", "--no-perplexity", "--out", str(tmp_path / "e"), "--no-progress",
               "--budget", "relearn_steps=3"])
    assert rc == 0 and "efficacy (prompt forgotten)" in capsys.readouterr().out
    settings = json.loads((tmp_path / "e" / "settings.json").read_text())
    assert settings["budgets"] == {"relearn_steps": 3}
    assert main(["eval", "--model", folder, "--facts", str(path), "--budget", "warp=9",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--budget 'warp=9'" in capsys.readouterr().err
