"""verify: generation, fluency, templates, relearning, reports (tiny models) and probes (real model)."""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from excise.facts import Fact, Probe
from excise.generation import generate
from excise.verify import templates
from excise.verify.quality import ngram_entropy

CAPITALS = [("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"),
            ("Japan", " Tokyo"), ("Egypt", " Cairo"), ("Greece", " Athens"), ("Peru", " Lima")]


def capital_fact(i: int = 0) -> Fact:
    subject, target = CAPITALS[i]
    others = [Probe(f"The capital of {s} is", t) for s, t in CAPITALS if s != subject]
    return Fact(id=f"capital-{subject.lower()}", subject=subject, prompt="The capital of {} is",
                target=target, paraphrases=("{}'s capital city is",), neighbors=tuple(others),
                same_subject=(Probe(f"{subject} is a country in", " Europe"),), relation="capital")


def test_ngram_entropy_matches_hand_computation():
    text = "a b a b c"
    bigrams = Counter([("a", "b"), ("b", "a"), ("a", "b"), ("b", "c")])
    trigrams = Counter([("a", "b", "a"), ("b", "a", "b"), ("a", "b", "c")])
    def h(counts):
        n = sum(counts.values())
        return -sum(c / n * math.log2(c / n) for c in counts.values())
    expected = (h(bigrams) * 2 / 3 + h(trigrams) * 4 / 3) / 2
    assert ngram_entropy(text) == pytest.approx(expected)
    assert ngram_entropy("the the the the the") < ngram_entropy("one two three four five")


def test_generate_matches_one_prompt_at_a_time(tiny):
    prompts = ["The capital of France is", "Hamlet was written by Shakespeare and"]
    batched = generate(tiny, prompts, max_new_tokens=4)
    for prompt, text in zip(prompts, batched):
        tokens = tiny.to_tokens(prompt)
        with torch.no_grad():
            for _ in range(4):
                nxt = tiny(tokens)[0, -1].argmax()
                tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
        n = tiny.to_tokens(prompt).shape[1]
        assert text == tiny.tokenizer.decode(tokens[0, n:].tolist())


def test_templates_question_and_multiple_choice():
    fact = capital_fact()
    assert templates.question_text(fact) == "What is the capital of France?"
    generic = Fact(id="x", subject="Zork", prompt="{} is made of", target=" cheese", relation="odd")
    assert "Zork is made of" in templates.question_text(generic)
    mc = templates.multiple_choice(fact, [p.target for p in fact.neighbors], seed=1)
    assert mc.options[mc.answer] == "Paris" and len(set(mc.options)) == 4
    assert f"{mc.letter}. Paris\n" in mc.prompt
    letters = {templates.multiple_choice(fact, [p.target for p in fact.neighbors], s).letter
               for s in range(12)}
    assert len(letters) > 1  # shuffled
    with pytest.raises(ValueError, match="3 distractors"):
        templates.multiple_choice(fact, [" Berlin", " Paris"])


def test_relearn_restores_every_weight_and_learns(tiny):
    from excise.verify.probes.relearn import relearn

    before = {n: p.detach().clone() for n, p in tiny.original_model.named_parameters()}
    train = [Probe("The capital of France is", " Paris")]
    curve = relearn(tiny, train, train, steps=6, lr=1e-2, record_every=3)
    assert curve.steps == [0, 3, 6]
    assert curve.prob[-1][0] > curve.prob[0][0]  # it learned what it was trained on
    for name, p in tiny.original_model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_related_probes_never_contain_the_forgotten_answer():
    from excise.verify.core import related_probes

    fact = capital_fact()
    pool = [Fact(id="l", subject="Louvre", prompt="The capital near the {} is", target=" Paris",
                 relation="capital"),
            Fact(id="p", subject="Portugal", prompt="The capital of {} is", target=" Lisbon",
                 relation="capital"),
            Fact(id="o", subject="Kenya", prompt="{} speaks", target=" Swahili", relation="language")]
    probes = related_probes(fact, pool, {fact.target}, {fact.id})
    targets = [p.target for p in probes]
    assert " Paris" not in targets and " Lisbon" in targets and " Swahili" not in targets


@contextmanager
def _noop():
    yield


class _ScaleEdit:
    """A hand-made reversible edit: scales the last MLP's output projection."""

    method, components, fact_ids = "scale", [], ["capital-france"]

    def __init__(self, model, factor):
        from excise.components import mlp_out_module

        self.weight = mlp_out_module(model, model.cfg.n_layers - 1).weight
        self.original = self.weight.detach().clone()
        with torch.no_grad():
            self.weight.mul_(factor)
        self.edited = self.weight.detach().clone()

    @contextmanager
    def reverted(self, model):
        with torch.no_grad():
            self.weight.copy_(self.original)
        try:
            yield model
        finally:
            with torch.no_grad():
                self.weight.copy_(self.edited)


def test_relearning_is_read_against_its_made_up_subject_control():
    from excise.verify.outcome import Scored
    from excise.verify.probes.relearn import (
        FactCurve,
        RelearnReading,
        control_probes,
        judge_relearn,
    )

    fact = capital_fact()
    controls = control_probes(fact)
    assert len(controls) == 3 and all(c.target == " Paris" and "France" not in c.prompt for c in controls)
    before = Scored(rank=0, prob=0.6)

    def judged(prob, rank, control_end):
        curve = FactCurve(steps=[0, 1], prob=[0.0, prob], rank=[9, rank], train_loss=[1.0], n_train=1,
                          control_prob=[0.01, control_end], control_prompts=[c.prompt for c in controls])
        return judge_relearn(before, RelearnReading(rank=rank, prob=prob, curve=curve), "relearning")

    assert judged(0.5, 0, 0.02).status == "recovered"  # back for this subject only
    taught = judged(0.5, 0, 0.4)  # back, but as much for subjects the model never knew
    assert taught.status == "uninformative" and "never knew" in taught.reason
    assert judged(0.001, 7, 0.4).status == "forgotten"
    assert "made-up subjects: p=0.010 -> 0.020" in judged(0.5, 0, 0.02).reason


def test_verify_tiny_reverts_edits_and_writes_reports(tiny, tmp_path):
    from excise.comparison import score_groups
    from excise.verify import verify
    from excise.verify.probes.registry import registry

    fact = capital_fact()
    base = score_groups(tiny, [fact])[0]["prompt"]
    edit = _ScaleEdit(tiny, 0.0)
    tiny.excise_edits = [edit]
    report = verify(tiny, fact, pool=[], relearn_steps=2, fluency_tokens=3, progress=False)
    after = score_groups(tiny, [fact])[0]["prompt"]
    fr = report["capital-france"]
    # "before" was measured with the edit reverted; the model is edited again afterwards
    assert fr.scores["prompt"]["before"]["prob"][0] == pytest.approx(float(base.prob[0]), rel=1e-5)
    assert fr.scores["prompt"]["after"]["prob"][0] == pytest.approx(float(after.prob[0]), rel=1e-5)
    assert torch.equal(edit.weight, edit.edited)
    assert {o.probe for o in fr.probes} == set(registry())
    assert fr.verdict in ("not forgotten", "recoverable", "forgotten")
    assert {"scores", "logit_lens", "relearn", "quality"} <= set(report.timings)
    assert all(seconds >= 0 for seconds in report.timings.values())
    lens = fr.probe("logit_lens").after
    assert len(lens.layer_prob) == tiny.cfg.n_layers
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data["facts"][0]["fact"]["id"] == "capital-france"
    page = report.to_html(tmp_path / "r.html").read_text()
    assert page.count("plotly.js v") >= 1 and page.count("<script type=\"text/javascript\">/**") <= 1
    assert 'src="http' not in page  # no network fetches


def test_verify_reuses_the_before_state_of_the_same_weights_only(tiny, monkeypatch):
    """Two editors verified on one unedited model: the second call measures only its edited state
    and reports the first call's "before" measurements; other weights, other budgets or
    reuse_before=False measure it again."""
    from excise.verify import core, state_cache, verify

    state_cache.clear()
    measured = []
    real_measure = core._measure
    monkeypatch.setattr(core, "_measure", lambda model, *a: measured.append(a[-1].state) or real_measure(model, *a))
    fact = capital_fact()
    options = dict(pool=[], probes=("logit_lens", "formats"), fluency_tokens=2, perplexity=False, progress=False)

    def run(factor, **extra):
        measured.clear()
        edit = _ScaleEdit(tiny, factor)
        tiny.excise_edits = [edit]
        try:
            return verify(tiny, fact, **{**options, **extra}), list(measured)
        finally:
            with torch.no_grad():
                edit.weight.copy_(edit.original)  # back to the base weights
            tiny.excise_edits = []

    first, states = run(0.0)
    assert states == ["after", "before"] and "reused" not in first.settings["before"]
    second, states = run(0.5)
    assert states == ["after"] and "reused" in second.settings["before"]
    assert second["capital-france"].scores["prompt"]["before"] == first["capital-france"].scores["prompt"]["before"]
    assert second["capital-france"].scores["prompt"]["after"] != first["capital-france"].scores["prompt"]["after"]
    assert run(0.5, reuse_before=False)[1] == ["after", "before"]
    assert run(0.5, fluency_tokens=3)[1] == ["after", "before"]  # other budgets
    state_cache.clear()
    with_circuits, states = run(0.5, circuits=True)
    assert states == ["after", "before"] and with_circuits.circuits
    without, states = run(0.0)  # a state measured with circuits serves a call without them
    assert states == ["after"] and not without.circuits
    with torch.no_grad():
        tiny.blocks[0].mlp.out.weight.mul_(1.01)  # other base weights
    assert run(0.5)[1] == ["after", "before"]
    assert not state_cache.hooked(tiny)
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda resid, hook: resid)]):
        assert state_cache.hooked(tiny)  # hooks change outputs, not weights: never reused
        assert run(0.5)[1] == ["after", "before"]
    state_cache.clear()


def test_verify_rejects_bad_input(tiny):
    from excise.verify import verify

    with pytest.raises(ValueError, match="unknown probe"):
        verify(tiny, capital_fact(), probes=("telepathy",))
    with pytest.raises(ValueError, match="at least one fact"):
        verify(tiny, [])


def test_cli_verify_on_tiny(tiny_folders, tmp_path):
    from excise.cli import main
    from excise.facts import write_facts

    facts = write_facts([capital_fact(0), capital_fact(1)], tmp_path / "f.jsonl")
    folder = str(tiny_folders["gpt2"])
    rc = main(["verify", "--model", folder, "--original", folder, "--facts", str(facts),
               "--fact", "capital-germany", "--probes", "logit_lens,formats", "--fluency-tokens", "2",
               "--no-perplexity", "--html", str(tmp_path / "o.html"), "--json", str(tmp_path / "o.json")])
    assert rc == 0
    data = json.loads((tmp_path / "o.json").read_text())
    assert [f["fact"]["id"] for f in data["facts"]] == ["capital-germany"]
    assert (tmp_path / "o.html").stat().st_size > 1_000_000  # plotly.js inlined
    assert main(["verify", "--facts", str(facts), "--model", folder, "--probes", "nope"]) == 2


def test_outcomes_and_verdict_follow_the_criteria():
    from excise.verify import outcome
    from excise.verify.outcome import Answered, Scored

    # recovered: ranked first again, or keeps > 10% of the original probability
    assert outcome.returns(0, 0.8, 0, 0.05)
    assert outcome.returns(0, 0.8, 3, 0.09)
    assert not outcome.returns(0, 0.8, 3, 0.07)
    lens = outcome.judge_scored("logit_lens", Scored(rank=0, prob=0.5), Scored(rank=0, prob=0.2), "lens")
    assert lens.status == "recovered"
    weak = outcome.judge_scored("few_shot", Scored(rank=40, prob=0.001), Scored(rank=0, prob=0.9), "fs")
    assert weak.status == "uninformative"
    mc = outcome.judge_known("multiple_choice", Answered(known=True), Answered(known=False), "mc")
    assert mc.status == "forgotten"
    label, reason = outcome.verdict(True, (2, 3), [lens, mc], 5, 0.01, 0.8)
    assert label == "recoverable" and "2/3 paraphrases" in reason and "lens" in reason
    label, reason = outcome.verdict(True, (3, 3), [mc], 5, 0.01, 0.8, held_out=(4, 5))
    assert label == "forgotten" and "no probe recovers" in reason and "4/5 held-out paraphrases" in reason
    label, _ = outcome.verdict(False, (0, 3), [], 0, 0.5, 0.8)
    assert label == "not forgotten"


@pytest.mark.filterwarnings("ignore:the model does not predict")  # a random model knows no facts
def test_circuits_show_an_ablated_head_and_neuron_go_silent(tiny, tmp_path):
    """Ablating the head and neuron that write the target most: their attribution drops to zero."""
    from excise.components import Head, Neuron
    from excise.edit import ablate
    from excise.locate import direct_logit_attribution
    from excise.verify import verify

    fact = capital_fact()
    heads = direct_logit_attribution(tiny, fact, site="head").scores.abs()
    neurons = direct_logit_attribution(tiny, fact, site="neuron").scores.abs()
    h = divmod(int(heads.argmax()), heads.shape[1])
    n = divmod(int(neurons.argmax()), neurons.shape[1])
    ablate(tiny, [Head(*h), Neuron(*n)], progress=False)
    report = verify(tiny, fact, pool=[], probes=("logit_lens",), fluency_tokens=2, perplexity=False,
                    circuits=True, progress=False)
    before, after = report.circuits["before"][0], report.circuits["after"][0]
    assert abs(before["heads"][h[0]][h[1]]) == pytest.approx(float(heads.max()), rel=1e-4)
    assert after["heads"][h[0]][h[1]] == pytest.approx(0.0, abs=1e-6)
    assert before["neurons"]["index"] == after["neurons"]["index"]
    slot = before["neurons"]["index"].index(list(n))
    assert abs(before["neurons"]["scores"][slot]) == pytest.approx(float(neurons.max()), rel=1e-4)
    assert after["neurons"]["scores"][slot] == pytest.approx(0.0, abs=1e-6)
    titles = [t for t, _ in report.figures()]
    assert any(t.startswith("Head and neuron attribution") for t in titles)
    assert json.loads(report.to_json(tmp_path / "r.json"))["circuits"]["after"][0]["neurons"]["index"]


def test_a_kept_answer_that_lost_more_than_half_its_probability_is_counted_weakened():
    """Greedy decoding keeps a neighbour at p 0.7 -> 0.25, so "kept" alone would hide the damage:
    the summary counts it weakened; 0.7 -> 0.4 is not, and a lost or never-known probe is neither."""
    from excise.comparison import GROUPS, Comparison, fact_pairs
    from excise.scoring import Scores
    from excise.verify.report import Summary

    fact = capital_fact()
    pairs = fact_pairs(fact)

    def scores(probs, known):
        n = len(probs)
        return Scores(torch.tensor(probs).log(), torch.zeros(n, dtype=torch.long), torch.tensor(known, dtype=torch.bool))

    before = {g: scores([0.9] * len(pairs[g]), [True] * len(pairs[g])) for g in GROUPS}
    after = {g: scores([0.001] * len(pairs[g]), [False] * len(pairs[g])) for g in GROUPS}
    n = len(pairs["neighbors"])
    assert n >= 4, "the test needs four neighbours"
    rest = n - 4
    before["neighbors"] = scores([0.7, 0.7, 0.7, 0.01] + [0.9] * rest, [True, True, True, False] + [True] * rest)
    after["neighbors"] = scores([0.25, 0.4, 0.2, 0.002] + [0.9] * rest, [True, True, False, True] + [True] * rest)
    comparison = Comparison(fact, pairs, before, after)
    assert comparison.weakened("neighbors")[:4].tolist() == [True, False, False, True]
    assert comparison.tally("neighbors") == (n - 2, n - 1)  # the never-known fourth does not count
    assert comparison.weakened_tally() == (1, n - 2)  # same subject and same answer: all lost
    summary = Summary.of(comparison)
    assert summary.cells()["kept_weakened"] == f"1/{n - 2}"
    rows = [r for r in comparison.rows() if r["kind"] == "neighbors"]
    assert [r["weakened"] for r in rows[:3]] == [True, False, False]


def test_wordings_the_model_never_stated_are_left_out_of_the_known_tally():
    """A held-out wording whose answer the model ranked second before the edit is not forgotten
    when its probability falls only by half: tally counts it against the edit, tally_known leaves
    it out; a stated wording that fell is counted by both."""
    from dataclasses import replace

    from excise.comparison import GROUPS, Comparison, fact_pairs
    from excise.scoring import Scores

    fact = replace(capital_fact(), held_out_paraphrases=("Q: What is the capital of {}?\nA:",
                                                         "{}'s capital is", "The city that is the capital of {} is"))
    pairs = fact_pairs(fact)
    assert len(pairs["held_out_paraphrases"]) == 3

    def scores(probs, ranks, known):
        return Scores(torch.tensor(probs).log(), torch.tensor(ranks), torch.tensor(known, dtype=torch.bool))

    def same(g):
        k = len(pairs[g])
        return scores([0.9] * k, [0] * k, [True] * k)

    before = {g: same(g) for g in GROUPS}
    after = {g: same(g) for g in GROUPS}
    before["held_out_paraphrases"] = scores([0.8, 0.2, 0.8], [0, 1, 0], [True, False, True])
    after["held_out_paraphrases"] = scores([0.01, 0.1, 0.7], [3, 2, 0], [False, False, True])
    comparison = Comparison(fact, pairs, before, after)
    assert comparison.forgotten("held_out_paraphrases").tolist() == [True, False, False]
    assert comparison.tally("held_out_paraphrases") == (1, 3)
    assert comparison.tally_known("held_out_paraphrases") == (1, 2)
    with pytest.raises(ValueError, match="use tally"):
        comparison.tally_known("neighbors")


def test_batch_scoring_does_not_count_co_edited_facts_as_neighbours():
    """Forgetting France and Germany together: 'capital of Germany' is no neighbour to keep."""
    from excise.comparison import fact_pairs

    france, germany = capital_fact(0), capital_fact(1)
    alone = fact_pairs(france)["neighbors"]
    together = fact_pairs(france, [germany])["neighbors"]
    assert ("The capital of Germany is", " Berlin") in alone
    assert together == [p for p in alone if p != ("The capital of Germany is", " Berlin")]
    assert fact_pairs(france, [germany])["prompt"] == fact_pairs(france)["prompt"]


def test_multiple_choice_counts_only_answers_better_than_chance():
    """2 of 3 shuffles right happens by guessing one time in six: not evidence that the model
    knows (or recovered) the answer; 3 of 3 (one in 64) is."""
    from excise.verify.probes.multiple_choice import CHANCE_LEVEL, chance_of_at_least

    assert chance_of_at_least(2, 3) == pytest.approx(10 / 64)
    assert chance_of_at_least(2, 3) > CHANCE_LEVEL > chance_of_at_least(3, 3)
    assert chance_of_at_least(0, 5) == pytest.approx(1.0)


def test_tuned_lens_fit_matches_the_explicit_l2_penalty(tiny):
    """The linear probe's tuned lens takes its L2 penalty as fused Adam's weight decay on Δ only;
    the fit must equal the plain loop that adds ``l2 * |Δ|²`` to the loss."""
    import torch.nn.functional as F

    from excise.verify.probes.linear_probe import _read, tuned_lens_logits

    torch.manual_seed(0)
    n_layers, d_model = tiny.cfg.n_layers, tiny.cfg.d_model
    h_train, h_test = torch.randn(n_layers, 12, d_model), torch.randn(n_layers, 1, d_model)
    readout = torch.randn(d_model, 5)  # [d_model, candidates]
    labels = torch.tensor([0, 1, 2, 3] * 3)  # candidate 4 is never trained on
    fitted = tuned_lens_logits(tiny, h_train, labels, h_test, readout, steps=15, l2=0.05)

    delta = torch.zeros(n_layers, d_model, d_model, requires_grad=True)
    bias = torch.zeros(n_layers, 1, d_model, requires_grad=True)
    optimizer = torch.optim.Adam([delta, bias], lr=1e-2)
    for _ in range(15):
        optimizer.zero_grad()
        logits = _read(tiny, h_train + h_train @ delta + bias, readout[:, :4])
        loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat(n_layers)) * n_layers
        (loss + 0.05 * delta.pow(2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        offset = _read(tiny, h_train + h_train @ delta + bias, readout).mean(1, keepdim=True)
        expected = _read(tiny, h_test + h_test @ delta + bias, readout) - offset
    assert delta.abs().max() > 0.05  # the fit moved, so the comparison means something
    torch.testing.assert_close(fitted, expected, atol=1e-4, rtol=1e-4)
