"""The support table: every pipeline step on a tiny random model of every family (commands/support.py)."""

from __future__ import annotations

import pytest
import torch

from excise.commands.support import STEPS, SupportError, check_family, outcome, support_table
from excise.testing import FAMILIES, save_tiny_model

KNOWN_FAILURES: dict[str, dict[str, str]] = {}
"""Steps that fail because of excise code outside this change, with the reason; each is checked
to still fail, so that fixing one makes this test say to remove its entry."""


@pytest.mark.parametrize("family", FAMILIES)
def test_every_step_on_a_tiny_model_of_each_family(family, tmp_path):
    results = check_family(save_tiny_model(family, tmp_path / "model"))
    assert list(results) == list(STEPS)
    known = KNOWN_FAILURES.get(family, {})
    failed = {step: result for step, result in results.items() if result != "ok"}
    assert set(failed) <= set(known), failed
    assert set(known) <= set(failed), f"now ok, remove from KNOWN_FAILURES: {set(known) - set(failed)}"
    if known:
        pytest.xfail("; ".join(f"{step}: {reason}" for step, reason in known.items()))


def test_a_failing_step_is_one_line_in_the_table():
    def broken():
        raise ValueError("no such hook\ntraceback details")

    def wrong():
        raise SupportError("scores of shape (2, 3)")

    assert outcome(lambda: None) == "ok"
    assert outcome(broken) == "fails: ValueError: no such hook"
    assert outcome(wrong) == "fails: scores of shape (2, 3)"
    table = support_table({"Tiny": {"load": "ok", "logits": "fails: a | b"}}).splitlines()
    assert table[0] == "| family | " + " | ".join(STEPS) + " |"
    assert table[2].startswith("| Tiny | ok | fails: a / b | not run |")
    assert table[2].count("|") == len(STEPS) + 2


def test_split_projections_read_the_fused_weight(tiny_folders):
    """GPT-2's q/k/v views of c_attn are tied to it: one parameter, which gradients reach."""
    from excise.model import load_model

    model = load_model(str(tiny_folders["gpt2"]), device="cpu")
    fused = model.blocks[0].attn.qkv.original_component.weight
    names = [n for n, _ in model.original_model.named_parameters()]
    assert not any(".attn.q." in n for n in names)
    tokens = model.to_tokens("The capital of France is")
    model(tokens).sum().backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0


def test_neox_interleaved_qkv_reads_the_fused_weight(tiny_folders):
    """TransformerBridge splits GPT-NeoX's per-head interleaved query_key_value into q/k/v copies
    at boot; tied, they read the Hugging Face weight (the one saved), which gradients reach."""
    from excise.model import load_model

    model = load_model(str(tiny_folders["neox"]), device="cpu")
    fused = model.blocks[0].attn.qkv.original_component.weight
    names = [n for n, _ in model.original_model.named_parameters()]
    assert not any(".attn.q." in n or ".attention.q." in n for n in names)
    tokens = model.to_tokens("The capital of France is")
    model(tokens).sum().backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0
    with torch.no_grad():
        before = model(tokens)
        fused.mul_(0.5)
        assert not torch.equal(model(tokens), before)
