"""Locators on the real default model: TransformerLens equivalence and behaviour on a known fact."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import KNOWN_ANSWER_LAYER

from excise.components import MLP
from excise.facts import Fact
from excise.locate import activation_patch, attribution_patch, causal_trace

pytestmark = pytest.mark.real

EIFFEL = Fact(id="eiffel", subject="The Eiffel Tower", prompt="{} is located in the city of",
              target=" Paris")


@torch.no_grad()
def test_activation_patch_equals_transformer_lens_on_default_model(real_model):
    """Every site, a subset of layers (TL runs one forward per patch): max |diff| <= 1e-4."""
    import transformer_lens.patching as tlp

    model = real_model
    clean, corrupted = model.to_tokens("The Eiffel Tower is in"), model.to_tokens("The Colosseum is in")
    answer, wrong = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    _, cache = model.run_with_cache(clean)
    lc, lr = model(clean)[0, -1], model(corrupted)[0, -1]
    ld_c, ld_r = lc[answer] - lc[wrong], lr[answer] - lr[wrong]

    def metric(logits):
        return ((logits[0, -1, answer] - logits[0, -1, wrong]) - ld_r) / (ld_c - ld_r)
    layers = [4, 29]
    for site, act, setter, axis, width in [
        ("resid_pre", "resid_pre", tlp.layer_pos_patch_setter, "pos", clean.shape[1]),
        ("attn_out", "attn_out", tlp.layer_pos_patch_setter, "pos", clean.shape[1]),
        ("mlp_out", "mlp_out", tlp.layer_pos_patch_setter, "pos", clean.shape[1]),
        ("head", "z", tlp.layer_head_vector_patch_setter, "head", model.cfg.n_heads),
    ]:
        index = pd.DataFrame({"layer": [x for x in layers for _ in range(width)],
                              axis: [i for _ in layers for i in range(width)]})
        ref = tlp.generic_activation_patch(model, corrupted, cache, metric, setter, act, index_df=index)
        ours = activation_patch(model, clean, corrupted, answer, wrong, site=site, progress=False)
        assert float((ours.scores[layers].flatten() - ref.cpu()).abs().max()) <= 1e-4, site


def test_causal_trace_finds_the_eiffel_tower(real_model):
    loc = causal_trace(real_model, EIFFEL, site="mlp", samples=3, progress=False)
    meta = loc.meta
    assert meta["subject_positions"] == [1, 2, 3, 4]
    assert meta["clean_score"] > 5 * meta["corrupted_score"]
    assert loc.scores.shape == (real_model.cfg.n_layers, 11)
    # restoring MLPs at the subject recovers much of the clean probability, mostly in early layers
    best = loc.scores[:, meta["subject_positions"]].max()
    assert best > meta["corrupted_score"] + 0.5 * (meta["clean_score"] - meta["corrupted_score"])
    assert loc.top(1)[0] in [MLP(i) for i in range(real_model.cfg.n_layers // 2)]


def test_attribution_patch_tracks_exact_patching_on_default_model(real_model):
    model = real_model
    clean, corrupted = model.to_tokens("The Eiffel Tower is in"), model.to_tokens("The Colosseum is in")
    answer, wrong = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    approx = attribution_patch(model, clean, corrupted, answer, wrong, site="head", verify_top=5,
                               progress=False)
    exact = [v["exact"] for v in approx.meta["verified"]]
    estimate = [v["attribution"] for v in approx.meta["verified"]]
    assert all(abs(a - b) < 0.5 for a, b in zip(estimate, exact))
    assert torch.isfinite(approx.scores).all()


def test_known_answer_layer_taught_to_the_default_model_is_found(real_model):
    """Teach SmolLM2 a made-up fact by rewriting one mid-depth MLP; the MLP causal trace finds it.

    The fact is written into layer 14's MLP weights (a rank-one update keyed on the subject, far
    from the early layers where the model's own facts peak). Restoring that one MLP's clean
    output at the subject's last token must be what brings the fact back under subject noise.
    (The neuron half of the known-answer check, with plain gradient training, is in test_locate.)
    """
    from excise.edit import rome

    model, layer = real_model, KNOWN_ANSWER_LAYER
    fact = Fact(id="zorbla", subject="Zorbla Quaxton", prompt="{} lives in the city of", target=" Oslo")
    edit = rome(model, fact, layer=layer, objective="replace", new_target=" Oslo", progress=False)
    try:
        trace = causal_trace(model, fact, site="mlp", window=1, samples=5, progress=False)
        meta = trace.meta
        last_subject = meta["subject_positions"][-1]
        assert meta["clean_score"] > 0.3 and meta["clean_score"] > 5 * meta["corrupted_score"]
        assert int(trace.scores[:, last_subject].argmax()) == layer
        assert trace.top(1)[0] == MLP(layer)
    finally:
        edit.undo(model)


@torch.no_grad()
def _eiffel_prob(model, hooks=()) -> float:
    tokens = model.to_tokens(EIFFEL.text)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[0, -1]
    return float(logits.softmax(-1)[model.to_single_token(EIFFEL.target)])


def _zero_neurons(neurons):
    by_layer = {}
    for n in neurons:
        by_layer.setdefault(n.layer, []).append(n.index)

    def hook_for(index):
        def hook(act, hook):  # [batch, pos, d_mlp]
            act = act.clone()
            act[:, -1, index] = 0.0
            return act
        return hook
    return [(f"blocks.{layer}.mlp.hook_post", hook_for(index)) for layer, index in by_layer.items()]


def test_knowledge_neurons_matter_more_than_random_neurons(real_model):
    """Silencing the 10 top integrated-gradient neurons costs p(Paris) far more than 10 random ones."""
    from excise.components import Neuron
    from excise.locate import knowledge_neurons

    model = real_model
    kn = knowledge_neurons(model, EIFFEL, steps=8, progress=False)
    top = kn.top(10)
    generator = torch.Generator().manual_seed(0)
    layers = sorted({n.layer for n in top})
    random = [Neuron(layers[int(i) % len(layers)], int(j)) for i, j in zip(
        torch.randint(0, 100, (10,), generator=generator),
        torch.randint(0, model.cfg.d_mlp, (10,), generator=generator))]
    clean = _eiffel_prob(model)
    drop_top = clean - _eiffel_prob(model, _zero_neurons(top))
    drop_random = clean - _eiffel_prob(model, _zero_neurons(random))
    assert drop_top > 0.1 * clean and drop_top > 5 * abs(drop_random)


def test_direct_logit_attribution_top_head_writes_the_answer(real_model):
    """The head with the largest direct attribution: removing its output lowers logit(Paris)."""
    from excise.locate import direct_logit_attribution

    model = real_model
    dla = direct_logit_attribution(model, EIFFEL, site="head")
    layer, head = divmod(int(dla.scores.argmax()), model.cfg.n_heads)
    assert float(dla.scores.max()) > 0.5  # logits: a head writes a sizeable share of the answer

    def zero_head(z, hook):  # [batch, pos, head, d_head]
        z = z.clone()
        z[:, -1, head] = 0.0
        return z
    tokens = model.to_tokens(EIFFEL.text)
    paris = model.to_single_token(EIFFEL.target)
    with torch.no_grad():
        base = model(tokens)[0, -1, paris]
        ablated = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])[0, -1, paris]
    assert float(base - ablated) > 0.25 * float(dla.scores.max())
