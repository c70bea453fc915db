"""verify's probes on the real default model, against cases whose answer is known."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

pytestmark = [pytest.mark.real, pytest.mark.slow]


def bundled(fact_id):
    from excise.facts import find_fact, load_facts

    return find_fact(load_facts("all"), fact_id)


class LastLayerEdit:
    """Hand-made edit: a rank-one change of the last MLP's output projection that writes
    ``-alpha * u`` (``u`` = the target's unembedding direction) whenever the MLP sees the prompt's
    last-token key. Layers before the last are untouched, so the logit lens must still see the
    answer there."""

    method, components, fact_ids = "last-layer", [], []

    def __init__(self, model, fact, alpha):
        from excise.components import out_proj_weight
        from excise.hooks import act_name
        from excise.tokens import encode_target

        layer = model.cfg.n_layers - 1
        name = act_name("neuron", layer)
        _, cache = model.run_with_cache(model.to_tokens(fact.text), names_filter=name)
        key = cache[name][0, -1]  # [d_mlp]
        u = model.unembed.W_U[:, encode_target(model, fact.target)[0]].detach()  # [d_model]
        self.view = out_proj_weight(model, layer)  # [d_mlp, d_model], live
        self.original = self.view.detach().clone()
        with torch.no_grad():
            self.view.sub_(alpha * torch.outer(key, u / u.norm()) / key.dot(key))
        self.edited = self.view.detach().clone()

    def restore(self):
        with torch.no_grad():
            self.view.copy_(self.original)

    @contextmanager
    def reverted(self, model):
        self.restore()
        try:
            yield model
        finally:
            with torch.no_grad():
                self.view.copy_(self.edited)


def test_unedited_model_passes_every_still_knows_probe(real_model):
    from excise.verify import verify
    from excise.verify.probes.registry import registry

    assert not getattr(real_model, "excise_edits", None), "another test left an edit applied"
    report = verify(real_model, bundled("capital-france"), relearn_steps=2, relearn_facts=6,
                    fluency_tokens=0, perplexity=False, progress=False,
                    budgets={"relearn_long_steps": 2, "lora_steps": (2,), "quant_bits": (4,), "gen_seeds": 1})
    fr = report["capital-france"]
    status = {o.probe: o.status for o in fr.probes}
    expected = {p: "recovered" for p in registry()} | {"multiple_choice": "uninformative",
                                                       "relearn_split": "skipped"}
    assert status == expected, fr.probes  # the 135M model gets 2 of 3 multiple-choice orders right:
    # no better than chance; split relearning needs two verified facts of the relation
    assert fr.verdict == "not forgotten"
    assert "Paris" in fr.probe("question").after.answer
    curve = fr.probe("relearn").after.curve  # the control: made-up countries rarely get Paris
    assert len(curve.control_prob) == len(curve.prob) and curve.control_prob[-1] < 0.1


def test_last_layer_edit_looks_forgotten_but_logit_lens_finds_it(real_model):
    from excise.verify import verify

    fact = bundled("capital-france")
    edit = LastLayerEdit(real_model, fact, alpha=60.0)
    real_model.excise_edits = [edit]
    try:
        report = verify(real_model, fact, probes=("logit_lens",), fluency_tokens=0, perplexity=False,
                        progress=False)
    finally:
        real_model.excise_edits = []
        edit.restore()
    fr = report["capital-france"]
    assert fr.summary.prompt_forgotten, fr.scores["prompt"]
    lens = fr.probe("logit_lens")
    assert lens.status == "recovered"
    last = real_model.cfg.n_layers - 1
    assert lens.after.layer_rank[last] > 0  # hidden at the output ...
    assert min(lens.after.layer_rank[:last]) == 0  # ... but ranked first mid-stack
    assert lens.after.layer_rank[:last] == lens.before.layer_rank[:last]
    assert fr.verdict == "recoverable" and "logit lens" in fr.reason


def test_demo_fact_stays_forgotten_under_relearning_at_the_default_layer(real_model):
    """The demo's fact (Eiffel Tower -> Paris) forgotten by the default rank-one edit does not come
    back after verify's relearning attack. The same attack does bring it back from an edit at the
    layer its causal trace peaks at (test_relearn_attacks: a hidden fact is caught), so this is
    the edit, not a blind attack."""
    from excise.commands.workflows import DEMO_FACT
    from excise.edit import rome
    from excise.verify import verify

    fact = bundled(DEMO_FACT)
    edit = rome(real_model, fact, progress=False)
    try:
        report = verify(real_model, fact, probes=("relearn",), fluency_tokens=0, perplexity=False,
                        progress=False, budgets={"relearn_long_steps": 20})
    finally:
        edit.undo(real_model)
    fr = report[fact.id]
    assert fr.summary.prompt_forgotten, fr.scores["prompt"]
    relearning = fr.probe("relearn")
    assert relearning.status == "forgotten", relearning.reason
