"""bfloat16 matrix products for the value optimisation: the weights come back bit for bit, and the
value found is the float32 one up to bfloat16's rounding."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from excise.components import frozen
from excise.edit.value import ValueSettings, compute_value, low_precision
from excise.facts import Fact
from excise.model import weights_hash
from excise.precision import bfloat16_matmuls, fast_bfloat16, float32_matrices

FACT = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
            paraphrases=("{}'s capital city is",))


def _modules(model):
    return [*model.blocks, model.ln_final, model.unembed]


def test_bfloat16_matmuls_restore_the_weights_bit_for_bit_even_after_an_error(tiny):
    tokens = tiny.to_tokens("The capital of France is")
    params = float32_matrices(_modules(tiny))
    originals = [(p.data_ptr(), p.detach().clone()) for p in params]
    before_hash = weights_hash(tiny)
    with torch.no_grad():
        exact = tiny(tokens)
        with frozen(tiny), pytest.raises(RuntimeError, match="stop here"):
            with bfloat16_matmuls(_modules(tiny)):
                assert all(p.dtype == torch.bfloat16 for p in params)
                rounded = tiny(tokens)
                raise RuntimeError("stop here")
    assert all(p.data_ptr() == ptr and p.dtype == torch.float32 and torch.equal(p.detach(), copy)
               for p, (ptr, copy) in zip(params, originals))  # the very tensors, not rounded copies
    assert weights_hash(tiny) == before_hash
    assert not torch.equal(rounded.float(), exact)  # the products really ran in bfloat16
    assert torch.allclose(rounded.float(), exact, atol=0.1 * float(exact.abs().max()))


def test_exact_goes_back_to_float32_inside_bfloat16_matmuls(tiny):
    tokens = tiny.to_tokens("The capital of France is")
    params = float32_matrices(_modules(tiny))
    with torch.no_grad(), frozen(tiny):
        exact = tiny(tokens)
        with bfloat16_matmuls(_modules(tiny)) as products:
            with products.exact():
                assert all(p.dtype == torch.float32 for p in params)
                again = tiny(tokens)
            assert all(p.dtype == torch.bfloat16 for p in params)
    assert torch.equal(again, exact)  # float32 weights and products: the same logits, bit for bit


def test_a_nested_exact_leaves_the_outer_one_in_float32(tiny):
    params = float32_matrices(_modules(tiny))
    with torch.no_grad(), frozen(tiny), bfloat16_matmuls(_modules(tiny)) as products:
        with products.exact():
            with products.exact():
                pass
            assert all(p.dtype == torch.float32 for p in params)
        assert all(p.dtype == torch.bfloat16 for p in params)


def test_bfloat16_matmuls_refuse_weights_that_are_being_trained(tiny):
    with pytest.raises(ValueError, match="frozen"):
        with bfloat16_matmuls(_modules(tiny)):
            pass
    assert all(p.dtype == torch.float32 for p in float32_matrices(_modules(tiny)))


def test_the_value_in_bfloat16_is_the_float32_value_up_to_rounding(tiny):
    """Both ways of adding the value: the same number of steps and nearly the same vector; the
    partial forward is still used (its check allows bfloat16's rounding); weights unchanged."""
    settings = ValueSettings(n_prefixes=2, steps=5, subject_probes=False)
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(0)) / tiny.cfg.d_mlp
    before_hash = weights_hash(tiny)
    for along in (None, direction):
        d32, info32 = compute_value(tiny, FACT, 1, settings=replace(settings, low_precision=False), direction=along)
        d16, info16 = compute_value(tiny, FACT, 1, settings=replace(settings, low_precision=True), direction=along)
        assert (info32["low_precision"], info16["low_precision"]) == (False, True)
        assert info16["goal_rejected_in_float32"] >= 0 and info32["goal_rejected_in_float32"] == 0
        # the log-probs reported are float32's either way
        assert info16["target_logprob_before"] == pytest.approx(info32["target_logprob_before"], abs=1e-5)
        assert info32["partial_forward"] and info16["partial_forward"]
        assert info16["steps"] == info32["steps"]
        assert torch.nn.functional.cosine_similarity(d16, d32, dim=0) > 0.99
        assert float((d16 - d32).norm() / d32.norm()) < 0.1
    assert weights_hash(tiny) == before_hash


def test_low_precision_is_chosen_only_for_float32_weights_on_fast_hardware(tiny, tiny_folders):
    from excise.model import load_model

    assert low_precision(tiny, 1, ValueSettings()) == fast_bfloat16("cpu")
    assert low_precision(tiny, 1, ValueSettings(low_precision=True))
    assert not low_precision(tiny, 1, ValueSettings(low_precision=False))
    arch = next(iter(tiny_folders))
    half = load_model(str(tiny_folders[arch]), device="cpu", dtype=torch.bfloat16)
    assert not low_precision(half, 1, ValueSettings(low_precision=True))  # already 16-bit


def test_where_the_partial_forward_differs_the_value_is_optimised_with_float32_full_forwards(tiny):
    """The fallback to full forwards leaves bfloat16 behind (a full forward would unembed with
    bfloat16 products): low_precision=True then finds exactly the float32 value, bit for bit."""
    from excise.edit import value as value_module

    settings = ValueSettings(n_prefixes=2, steps=4, subject_probes=False)
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(0)) / tiny.cfg.d_mlp
    before_hash = weights_hash(tiny)
    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(value_module, "_same", lambda *args: False)  # as if the partial forward differed
        for low in (False, True):
            runs.append(compute_value(tiny, FACT, 1, settings=replace(settings, low_precision=low),
                                      direction=direction))
    (d32, info32), (d16, info16) = runs
    assert not info16["partial_forward"] and not info16["low_precision"]
    assert torch.equal(d16, d32) and info16["steps"] == info32["steps"]
    assert info16["target_logprob_after"] == info32["target_logprob_after"]
    assert all(p.dtype == torch.float32 for p in float32_matrices(_modules(tiny)))
    assert weights_hash(tiny) == before_hash
