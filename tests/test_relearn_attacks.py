"""Relearning attacks: full fine-tuning at two budgets, LoRA adapters, split relearning.

Fast tests judge hand-made readings and run the attacks on tiny models (weights bit-exact after,
the bridge's hooks working during and after); the real-model tests check known answers: a fact
the rank-one edit only hid at the causal trace's peak comes back under relearning and LoRA, the unedited model
keeps its fact, a fact the model never knew is "uninformative", and split relearning reports one
outcome per fact edited together.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import HIDDEN_DEMO_LAYER

from excise.facts import Fact, Probe


def capital_fact() -> Fact:
    return Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
                relation="capital")


def comparison(prob: float, rank: int = 0):
    """What an attack's judge reads: the prompt's score before the edit."""
    scores = SimpleNamespace(prob=torch.tensor([prob]), rank=torch.tensor([rank]))
    return SimpleNamespace(before={"prompt": scores})


def hand_reading(steps, prob, rank, control, judged, n_train=3, trained_on=None):
    """A relearning reading from a hand-written curve, with every step a recorded budget."""
    from excise.verify.probes.relearn import FactCurve, reading
    from excise.verify.probes.relearn_split import SplitReading

    curve = FactCurve(steps=steps, prob=prob, rank=rank, train_loss=[1.0] * steps[-1], n_train=n_train,
                      control_prob=control, control_prompts=["a", "b", "c"])
    r = reading(curve, steps[1:], judged)
    if trained_on is None:
        return r
    return SplitReading(rank=r.rank, prob=r.prob, curve=r.curve, budgets=r.budgets,
                        judged_steps=r.judged_steps, trained_on=trained_on)


# --------------------------------------------------------------------------- judging (fast)
def test_relearn_is_judged_at_the_short_budget_and_reports_the_long_one():
    from excise.verify.probes import relearn

    # forgotten after 20 steps, back after 40: the status stays the 20-step one
    late = hand_reading([0, 20, 40], [0.001, 0.002, 0.5], [50, 40, 0], [0.01, 0.01, 0.02], judged=20)
    assert (late.rank, late.prob, late.judged_steps) == (40, 0.002, 20)
    assert [b.steps for b in late.budgets] == [20, 40]
    o = relearn.judge(None, late, comparison(0.6))
    assert o.status == "forgotten"
    assert "after 40 steps: rank 0, p=0.500 (returns; made-up subjects p=0.020)" in o.reason
    assert "made-up subjects: p=0.010 -> 0.010" in o.reason  # the control at the judged step
    # back after 20 steps for this subject only; the control at 40 does not change that
    early = hand_reading([0, 20, 40], [0.001, 0.5, 0.5], [50, 0, 0], [0.01, 0.02, 0.45], judged=20)
    o = relearn.judge(None, early, comparison(0.6))
    assert o.status == "recovered" and "returns, but as much for made-up subjects" in o.reason
    # back, but as much for made-up subjects at the judged step: uninformative
    taught = hand_reading([0, 20, 40], [0.001, 0.5, 0.5], [50, 0, 0], [0.01, 0.4, 0.4], judged=20)
    assert relearn.judge(None, taught, comparison(0.6)).status == "uninformative"
    # not known before the edit: the attack says nothing
    assert relearn.judge(None, early, comparison(0.01, rank=9)).status == "uninformative"


def test_lora_and_split_attacks_are_judged_like_relearning():
    from excise.verify.probes import relearn_lora, relearn_split

    lora = hand_reading([0, 20, 40], [0.001, 0.01, 0.3], [50, 4, 0], [0.01, 0.01, 0.01], judged=40)
    o = relearn_lora.judge(None, lora, comparison(0.6))
    assert o.probe == "relearn_lora" and o.status == "recovered"
    assert "after 40 steps" in o.reason and "after 20 steps: rank 4, p=0.010 (stays forgotten" in o.reason
    split = hand_reading([0, 20], [0.001, 0.002], [50, 30], [0.01, 0.01], judged=20,
                         trained_on=["capital-germany"])
    o = relearn_split.judge(None, split, comparison(0.6))
    assert o.probe == "relearn_split" and o.status == "forgotten" and "(capital-germany)" in o.reason


def test_split_halves_test_every_fact_once_and_skip_lone_relations():
    from excise.verify.probes.relearn_split import halves

    def fact(i, relation):
        return Fact(id=f"f{i}", subject=f"S{i}", prompt="{} is in", target=f" T{i}", relation=relation)

    facts = [fact(0, "a"), fact(1, "b"), fact(2, "a"), fact(3, "a"), fact(4, ""), fact(5, "c"),
             fact(6, "c")]
    pairs, skipped = halves(facts)
    assert pairs == [([0, 2], [3]), ([3], [0, 2]), ([5], [6]), ([6], [5])]
    assert sorted(i for _, test in pairs for i in test) == [0, 2, 3, 5, 6]
    assert set(skipped) == {1, 4}
    assert "only one verified fact of relation 'b'" in skipped[1] and "no relation" in skipped[4]


def test_relearn_records_both_budgets_in_one_run():
    from excise.verify.probes.relearn import record_steps

    assert record_steps(40, 4, (20, 40)) == list(range(4, 41, 4))
    assert record_steps(10, None, (3, 10)) == [2, 3, 4, 6, 8, 10]
    assert record_steps(6, 3) == [3, 6]


# --------------------------------------------------------------------------- tiny models
def test_relearn_measure_runs_to_the_long_budget_and_restores_weights(tiny):
    from excise.verify.probes import relearn
    from excise.verify.probes.base import Setup

    fact = capital_fact()
    before = {n: p.detach().clone() for n, p in tiny.original_model.named_parameters()}
    setup = Setup(related=[[Probe("The capital of Spain is", " Madrid")]], relearn_steps=2,
                  relearn_long_steps=4, relearn_lr=1e-3)
    (r,) = relearn.measure(tiny, [fact], setup)
    assert r.judged_steps == 2 and r.curve.steps[-1] == 4 and [b.steps for b in r.budgets] == [2, 4]
    assert (r.rank, r.prob) == (r.curve.rank[r.curve.steps.index(2)], r.curve.prob[r.curve.steps.index(2)])
    assert len(r.curve.train_loss) == 4 and len(r.curve.control_prob) == len(r.curve.steps)
    for name, p in tiny.original_model.named_parameters():
        assert torch.equal(p, before[name]), name
    setup = Setup(related=[[]])
    assert relearn.measure(tiny, [fact], setup)[0].reason == relearn.NO_DATA


def test_fused_adam_matches_the_per_parameter_update(tiny):
    from excise.verify.probes.relearn import adam

    params = list(tiny.original_model.parameters())
    start = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    results = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False), lambda ps: adam(ps, 1e-3)):
        copies = [s.clone().requires_grad_(True) for s in start]
        opt = make(copies)
        for _ in range(3):
            for c, g in zip(copies, grads):
                c.grad = g.clone()
            opt.step()
        results.append(copies)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_lora_adapters_train_through_the_bridge_and_leave_it_bit_exact(tiny):
    from peft.tuners.lora import LoraLayer

    from excise.export import weights_hash
    from excise.verify.probes.relearn_lora import lora_adapters, lora_targets, relearn_lora

    hf = tiny.original_model
    digest, tree = weights_hash(tiny), [n for n, _ in hf.named_modules()]
    flags = [p.requires_grad for p in hf.parameters()]
    tokens = tiny.to_tokens("The capital of France is")
    with torch.no_grad():
        logits = tiny(tokens).clone()
    _, cache = tiny.run_with_cache(tokens)
    targets = lora_targets(tiny)
    assert targets and all(n.endswith("_original_component") for n in targets)  # inside the bridge
    with lora_adapters(tiny, rank=2) as params:
        layers = [m for m in hf.modules() if isinstance(m, LoraLayer)]
        assert len(layers) == len(targets) and len(params) == 2 * len(targets)
        assert {id(p) for p in hf.parameters() if p.requires_grad} == {id(p) for p in params}
        with torch.no_grad():
            assert torch.equal(tiny(tokens), logits)  # B starts at zero
            for layer in layers:  # every adapter changes the output: none is bypassed
                b = next(p for n, p in layer.named_parameters() if "lora_B" in n)
                b.normal_(0, 0.5)
                assert not torch.allclose(tiny(tokens), logits), layer
                b.zero_()
        _, during = tiny.run_with_cache(tokens)
        assert set(during.keys()) == set(cache.keys())  # the bridge's hook points still fire
    train = [Probe("The capital of France is", " Paris")]
    curve = relearn_lora(tiny, train, train, steps=4, lr=1e-2, rank=2, budgets=(2, 4))
    assert curve.steps == [0, 1, 2, 3, 4] and curve.prob[-1][0] > curve.prob[0][0]  # it learned
    assert weights_hash(tiny) == digest and [n for n, _ in hf.named_modules()] == tree
    assert [p.requires_grad for p in hf.parameters()] == flags and not hasattr(hf, "peft_config")
    with torch.no_grad():
        assert torch.equal(tiny(tokens), logits)
    _, after = tiny.run_with_cache(tokens)
    assert all(torch.equal(after[k], cache[k]) for k in cache.keys())


def test_lora_adapters_are_removed_on_error(tiny):
    from excise.export import weights_hash
    from excise.verify.probes.relearn_lora import lora_adapters

    digest = weights_hash(tiny)
    with pytest.raises(RuntimeError, match="boom"), lora_adapters(tiny, rank=2):
        raise RuntimeError("boom")
    assert weights_hash(tiny) == digest and not any("lora" in n for n, _ in tiny.original_model.named_modules())


def test_split_measure_on_a_tiny_model(tiny):
    from excise.verify.probes import relearn_split
    from excise.verify.probes.base import Setup

    facts = [capital_fact(),
             Fact(id="capital-spain", subject="Spain", prompt="The capital of {} is", target=" Madrid",
                  relation="capital"),
             Fact(id="lang-brazil", subject="Brazil", prompt="The language of {} is", target=" Portuguese",
                  relation="language")]
    digest = [p.detach().clone() for p in tiny.original_model.parameters()]
    readings = relearn_split.measure(tiny, facts, Setup(related=[[], [], []], relearn_steps=2))
    assert readings[0].trained_on == ["capital-spain"] and readings[1].trained_on == ["capital-france"]
    assert readings[0].curve.n_train == 1 and readings[0].curve.steps[-1] == 2
    assert "only one verified fact of relation 'language'" in readings[2].reason
    assert all(torch.equal(a, b) for a, b in zip(tiny.original_model.parameters(), digest))


def test_verify_runs_the_new_attacks_end_to_end(tiny_folders, monkeypatch, tmp_path):
    """Through verify (as CATALOG entries would select them): readings judged, JSON and HTML."""
    import json

    from excise.model import load_model
    from excise.verify import verify
    from excise.verify.probes import registry

    monkeypatch.setattr(registry, "CATALOG", {**registry.CATALOG, "relearn_lora": ("relearn_lora",),
                                              "relearn_split": ("relearn_split",)})
    monkeypatch.setattr(registry, "PROBES", tuple(registry.CATALOG))
    model = load_model(str(tiny_folders["llama"]), device="cpu")
    facts = [capital_fact(),
             Fact(id="capital-spain", subject="Spain", prompt="The capital of {} is", target=" Madrid",
                  relation="capital",
                  neighbors=(Probe("The capital of Italy is", " Rome"),))]
    report = verify(model, facts, pool=[], probes=("relearn", "relearn_lora", "relearn_split"),
                    relearn_steps=1, fluency_tokens=0, perplexity=False, progress=False,
                    budgets={"relearn_long_steps": 2, "lora_steps": (1, 2)})
    france, spain = report["capital-france"], report["capital-spain"]
    assert {o.probe: o.status for o in france.probes}["relearn_lora"] == "skipped"  # no related facts
    for probe in ("relearn", "relearn_lora", "relearn_split"):
        assert spain.probe(probe).status in ("recovered", "forgotten", "uninformative"), probe
    assert [b.steps for b in spain.probe("relearn").after.budgets] == [1, 2]
    assert spain.probe("relearn_split").after.trained_on == ["capital-france"]
    data = json.loads(report.to_json(tmp_path / "r.json"))
    probes = {o["probe"]: o for o in data["facts"][1]["probes"]}
    assert probes["relearn_lora"]["after"]["budgets"][-1]["steps"] == 2
    assert "Split relearning attack: capital-spain" in report.to_html(tmp_path / "r.html").read_text()
    back = type(report).from_json(tmp_path / "r.json")["capital-spain"]  # typed readings again
    assert back.probe("relearn_split").after == spain.probe("relearn_split").after
    assert back.probe("relearn_lora").after.budgets == spain.probe("relearn_lora").after.budgets


# --------------------------------------------------------------------------- real model
def bundled(fact_id):
    from excise.facts import find_fact, load_facts

    return find_fact(load_facts("all"), fact_id)


def setup_for(facts, **budgets):
    """The Setup verify would build for ``facts`` (related facts from every bundled fact)."""
    from excise.facts import load_facts
    from excise.verify.core import related_probes
    from excise.verify.probes.base import Setup

    pool = load_facts("all")
    targets, ids = {f.target for f in facts}, {f.id for f in facts}
    return Setup(related=[related_probes(f, pool, targets, ids) for f in facts], **budgets)


def before_scores(model, facts):
    from excise.scoring import score_targets

    return score_targets(model, [f.text for f in facts], [f.target for f in facts])


@pytest.mark.real
@pytest.mark.slow
def test_lora_finds_the_unedited_fact_and_not_a_never_known_one(real_model):
    """Unedited: the attack still finds the fact ("recovered"), and a fact with a made-up subject
    the model never knew is "uninformative" (one attack on shared data serves both)."""
    from excise.verify.probes import relearn_lora

    made_up = Fact(id="made-up", subject="Quorvant Bellisle", prompt="The capital of {} is",
                   target=" Paris", relation="capital")
    facts = [bundled("capital-france"), made_up]
    with ExitStack() as stack:
        for edit in reversed(list(getattr(real_model, "excise_edits", []) or [])):
            stack.enter_context(edit.reverted(real_model))
        base = before_scores(real_model, facts)
        setup = setup_for(facts[:1], relearn_facts=4, lora_steps=(2,))
        readings = relearn_lora.measure(real_model, facts, replace(setup, related=setup.related * 2))
    known, never = (relearn_lora.judge(None, r, comparison(float(base.prob[i]), int(base.rank[i])))
                    for i, r in enumerate(readings))
    assert known.status == "recovered", known.reason
    assert readings[0].curve.control_prob[-1] < 0.1  # made-up countries rarely get Paris
    assert never.status == "uninformative", never.reason


def hide_at_output(model, fact, alpha: float = 60.0) -> None:
    """Hand-made edit (as in test_verify_real's ``LastLayerEdit``): subtract ``alpha`` along the
    target's unembedding direction from the last MLP's output for ``fact``'s last-token key."""
    from excise.components import out_proj_weight
    from excise.hooks import act_name
    from excise.tokens import encode_target

    layer = model.cfg.n_layers - 1
    name = act_name("neuron", layer)
    _, cache = model.run_with_cache(model.to_tokens(fact.text), names_filter=name)
    key = cache[name][0, -1]  # [d_mlp]
    u = model.unembed.W_U[:, encode_target(model, fact.target)[0]].detach()  # [d_model]
    with torch.no_grad():
        out_proj_weight(model, layer).sub_(alpha * torch.outer(key, u / u.norm()) / key.dot(key))


@pytest.fixture(scope="module")
def hidden_demo_fact(real_model):
    """The demo fact edited by the rank-one editor at layer 10 (HIDDEN_DEMO_LAYER), where its causal trace peaks (as
    test_verify_real's relearning test finds it), with the earlier value settings: an edit
    verify's relearning attack shows only hid the fact. Undone after the module."""
    from excise.edit import rome
    from excise.edit.value import ESSENCE_TEMPLATES, ValueSettings

    fact = bundled("landmark-city-eiffel-tower")
    base = before_scores(real_model, [fact])
    settings = ValueSettings(subject_probes=False, essence_templates=ESSENCE_TEMPLATES)
    edit = rome(real_model, fact, layer=HIDDEN_DEMO_LAYER, settings=settings, progress=False)
    try:
        yield fact, base, edit
    finally:
        edit.undo(real_model)


@pytest.mark.real
@pytest.mark.slow
def test_lora_recovers_a_fact_the_edit_only_hid(real_model, hidden_demo_fact):
    from excise.verify.probes import relearn_lora

    fact, base, _ = hidden_demo_fact
    after = before_scores(real_model, [fact])
    assert after.rank[0] > 0 and after.prob[0] < 0.1 * base.prob[0]  # forgotten from the prompt
    (reading,) = relearn_lora.measure(real_model, [fact], setup_for([fact], relearn_facts=4,
                                                                     lora_steps=(5, 10)))
    o = relearn_lora.judge(None, reading, comparison(float(base.prob[0]), int(base.rank[0])))
    assert o.status == "recovered", o.reason
    assert [b.steps for b in reading.budgets] == [5, 10] and reading.judged_steps == 10
    assert "after 5 steps" in o.reason


@pytest.mark.real
@pytest.mark.slow
def test_relearning_recovers_a_fact_the_edit_only_hid(real_model, hidden_demo_fact):
    """verify's relearning attack, judged at its default 20 full fine-tuning steps but on 8 other
    landmarks (half the default, so a weaker attack), brings back the demo fact hidden at its trace
    peak, and the made-up landmarks of its control stay far below it: the known answer
    test_verify_real's demo test relies on."""
    from excise.verify.probes import relearn

    fact, base, _ = hidden_demo_fact
    (reading,) = relearn.measure(real_model, [fact], setup_for([fact], relearn_long_steps=20, relearn_facts=8))
    o = relearn.judge(None, reading, comparison(float(base.prob[0]), int(base.rank[0])))
    assert o.status == "recovered", o.reason
    assert reading.judged_steps == 20
    assert reading.curve.control_prob[-1] < 0.5 * reading.prob, (reading.curve.control_prob, reading.prob)


@pytest.mark.real
@pytest.mark.slow
def test_split_relearning_brings_back_the_hidden_fact_from_its_sibling(real_model, hidden_demo_fact):
    """The demo fact (hidden by the rank-one edit at its trace peak) and a sibling landmark hidden
    at the output, edited together, and a fact of another relation: each landmark is tested once,
    by relearning the other; relearning the sibling alone brings the demo fact back within six
    steps; the lone fact is skipped."""
    from excise.components import out_proj_weight
    from excise.verify.probes import relearn_split
    from excise.verify.probes.base import Setup

    demo, demo_base, edit = hidden_demo_fact
    facts = [demo, bundled("landmark-city-colosseum"), bundled("capital-france")]
    with edit.reverted(real_model):
        base = before_scores(real_model, facts)
    weight = out_proj_weight(real_model, real_model.cfg.n_layers - 1)
    original = weight.detach().clone()
    try:
        hide_at_output(real_model, facts[1])
        after = before_scores(real_model, facts[:2])
        readings = relearn_split.measure(real_model, facts, Setup(related=[[]] * 3, relearn_steps=6))
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert (after.rank > 0).all(), after.rank  # both forgotten from the prompt
    demo_outcome, sibling = (relearn_split.judge(None, r, comparison(float(base.prob[i]), int(base.rank[i])))
                             for i, r in enumerate(readings[:2]))
    assert [r.trained_on for r in readings[:2]] == [["landmark-city-colosseum"],
                                                  ["landmark-city-eiffel-tower"]]
    assert demo_outcome.status == "recovered", (demo_outcome.reason, readings[0].curve.prob)
    assert sibling.status in ("recovered", "forgotten", "uninformative") and "after 6 steps" in sibling.reason
    assert "only one verified fact of relation 'capital'" in readings[2].reason
