"""Logit-lens extraction (head projection, probability delta): judging, shapes, and known answers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from excise.facts import Fact
from excise.verify.probes import lens_extraction as lx
from excise.verify.probes.base import Setup

SETUP = Setup(related=[[]])
CONTROLS = ["c1", "c2", "c3"]


def attack(rank: int, control_ranks=(500, 500, 500), n_layers=3, budgets=(1, 20), layer=5) -> lx.AttackReading:
    """A hand-made attack reading whose hits follow from ``rank`` like measured ones."""
    return lx.AttackReading(hits=[rank < b for b in budgets], rank=rank, layer=layer,
                            layer_rank=[rank + 3, rank, rank + 1][-n_layers:],
                            control_hits=[sum(r < b for r in control_ranks) for b in budgets])


def reading(head: int, delta: int, head_controls=(500, 500, 500), delta_controls=(500, 500, 500)):
    return lx.LensExtractionReading(budgets=[1, 20], layers=[0, 1, 2], head=attack(head, head_controls),
                                    delta=attack(delta, delta_controls, n_layers=2), control_prompts=CONTROLS)


# --- judging (hand-made readings) -------------------------------------------------------------


def test_not_found_before_the_edit_is_uninformative():
    o = lx.judge(reading(40, 25), reading(0, 0))
    assert o.status == "uninformative" and "even before the edit" in o.reason


def test_found_before_and_gone_after_is_forgotten():
    o = lx.judge(reading(3, 40), reading(20, 21))
    assert o.status == "forgotten" and "rank 20" in o.reason


def test_found_after_with_a_silent_control_is_recovered_and_names_attack_budget_layer():
    o = lx.judge(reading(3, 40), reading(50, 7, delta_controls=(500, 19, 500)))
    assert o.status == "recovered"  # one made-up subject of three (< CONTROL_SHARE) does not explain it
    assert o.reason == ("logit-lens extraction: probability delta finds it at B=20 (rank 7, layer 5; "
                        "made-up subjects: 1/3)")


def test_found_after_as_often_for_made_up_subjects_is_uninformative():
    o = lx.judge(reading(3, 3), reading(4, 60, head_controls=(2, 11, 500)))
    assert o.status == "uninformative" and "never knew" in o.reason and "2/3" in o.reason


def test_each_attack_is_read_against_its_own_control():
    """Head projection's find is explained by its control, probability delta's is not: recovered,
    and the reason names only the attack that counts."""
    o = lx.judge(reading(3, 3), reading(4, 9, head_controls=(2, 11, 500)))
    assert o.status == "recovered"
    assert "probability delta" in o.reason and "head projection" not in o.reason


def test_reading_is_json_able_and_reports_per_budget_hits():
    r = reading(3, 0)
    assert r.found("head", 1) is False and r.found("head", 20) and r.found("delta", 1)
    back = json.loads(json.dumps(r.to_dict()))
    assert back["head"]["hits"] == [False, True] and back["delta"]["control_hits"] == [0, 0]


# --- the attacks' scores against a naive oracle -----------------------------------------------


def naive_union(rows: list[list[float]], budget: int) -> set[int]:
    """The paper's candidate set by plain loops: add every layer's top-1 token, then every layer's
    top-2, ...; within one round, tokens with the higher value first; stop at ``budget`` tokens."""
    chosen: list[int] = []
    for k in range(len(rows[0])):
        round_k = {}
        for row in rows:
            token = sorted(range(len(row)), key=lambda t: row[t], reverse=True)[k]
            if token not in chosen:
                round_k[token] = max(round_k.get(token, -2.0), max(r[token] for r in rows))
        for token in sorted(round_k, key=round_k.get, reverse=True):
            if len(chosen) < budget:
                chosen.append(token)
    return set(chosen)


def naive_sets(probs: torch.Tensor, budget: int) -> tuple[set[int], set[int]]:
    """Candidate sets of one prompt (``probs`` ``[layer, vocab]``): head projection over the
    layers' probabilities, probability delta over the rises between consecutive layers."""
    p = probs.tolist()
    rises = [[b - a for a, b in zip(p[i], p[i + 1])] for i in range(len(p) - 1)]
    return naive_union(p, budget), naive_union(rises, budget)


def test_attack_scores_match_the_naive_candidate_sets():
    torch.manual_seed(0)
    probs = torch.randn(2, 4, 30).softmax(-1)  # [batch, layer, vocab]
    scores = lx.attack_scores(probs)
    for b in range(2):
        for budget in (1, 5):
            head, delta = naive_sets(probs[b], budget)
            for name, want in (("head", head), ("delta", delta)):
                got = {t for t in range(30) if lx.ranks_of(scores[name][0][b], t) < budget}
                assert got == want, (name, b, budget)
    assert scores["delta"][1].shape == (2, 3, 30)


def test_tiny_model_readings_match_the_logit_lens_and_batching(tiny):
    from excise.verify.probes import logit_lens

    fact = Fact(id="f", subject="Bob Smith", prompt="{} lives in the city of", target=" Paris")
    r = lx.measure(tiny, [fact], SETUP)[0]
    n = tiny.cfg.n_layers
    assert r.layers == list(range(n - 1)) and r.budgets == [1, 20] and len(r.control_prompts) == 3
    assert len(r.head.layer_rank) == n - 1 and len(r.delta.layer_rank) == n - 2
    assert r.head.layer_rank == logit_lens.measure(tiny, [fact])[0].layer_rank[:-1]
    assert r.head.hits == [r.head.rank < 1, r.head.rank < 20]
    probs = lx.lens_probs(tiny, [fact.text, *r.control_prompts])
    alone = lx.lens_probs(tiny, [r.control_prompts[1]])  # right padding leaves the last token alone
    torch.testing.assert_close(probs[2], alone[0], atol=1e-5, rtol=1e-4)


def test_figure_draws_both_scorings_with_the_budgets():
    before, after = reading(3, 0), reading(50, 40)
    o = SimpleNamespace(status="forgotten", before=before, after=after)
    fig = lx.figure(SimpleNamespace(id="f", probe=lambda name: o))
    assert len(fig.data) == 4 and {t.name for t in fig.data} >= {"head projection, after",
                                                                 "probability delta, before"}
    assert list(fig.data[2].x) == [1, 2]  # rises are drawn at the layer they rise into
    assert "rank" in fig.layout.yaxis.title.text and fig.layout.xaxis.title.text
    assert len(fig.layout.shapes) == 4 and "f" in fig.layout.title.text


# --- known answers on the real default model --------------------------------------------------


def bundled(fact_id):
    from excise.facts import find_fact, load_facts

    return find_fact(load_facts("all"), fact_id)


@pytest.fixture(scope="module")
def france(real_model):
    """capital-france and its reading on the unedited model."""
    fact = bundled("capital-france")
    return fact, lx.measure(real_model, [fact], SETUP)[0]


@pytest.mark.real
@pytest.mark.slow
def test_unedited_model_gives_up_a_known_fact_at_b20(france):
    fact, r = france
    assert r.found("head") and r.found("delta"), (r.head, r.delta)
    assert r.head.control_hits[-1] == 0 and r.delta.control_hits[-1] == 0  # made-up countries: no Paris
    assert lx.judge(r, r).status == "recovered"


@pytest.mark.real
@pytest.mark.slow
def test_answer_hidden_only_at_the_output_is_recovered(real_model, france):
    """Hiding edit: a hook on the last block's residual output subtracts 80 x the target's unit
    unembedding direction, so the prompt stops answering; every layer before is untouched, so the
    lens must still extract the answer."""
    from excise.hooks import act_name
    from excise.scoring import score_targets
    from excise.tokens import encode_target

    fact, before = france
    u = real_model.unembed.W_U[:, encode_target(real_model, fact.target)[0]].detach()  # [d_model]
    u = u / u.norm()
    hide = (act_name("resid_post", real_model.cfg.n_layers - 1), lambda resid, hook: resid - 80.0 * u)
    with real_model.hooks(fwd_hooks=[hide]):
        hidden = score_targets(real_model, [fact.text], [fact.target])
        after = lx.measure(real_model, [fact], SETUP)[0]
    assert int(hidden.rank[0]) > 0 and float(hidden.prob[0]) < 0.01, hidden  # the prompt no longer answers
    assert after == before  # the lens reads none of what the hook changes
    o = lx.judge(before, after)
    assert o.status == "recovered" and "B=20" in o.reason and "layer" in o.reason, o.reason


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("prompt, target", [("The capital of {} is", " Paris"),
                                            ("{} is located in the continent of", " Europe")])
def test_never_known_fact_is_uninformative(real_model, prompt, target):
    """A made-up subject: either the lens does not offer the answer at all (Paris), or it offers it
    about as often for the other made-up subjects (Europe), so nothing is learned either way."""
    fact = Fact(id="made-up", subject="Glorbania Vesk", prompt=prompt, target=target)
    r = lx.measure(real_model, [fact], SETUP)[0]
    o = lx.judge(r, r)
    assert o.status == "uninformative", o.reason
