"""Round-to-nearest quantization (excise.quantize) and the quantization attack probe.

Unit tests check ``fake_quantize`` against a naive per-element loop, the half-step error bound,
the bit-exact restore of ``quantized`` on three tiny architectures, and the judging logic on
hand-made readings. Real-model tests give known answers: the unedited model keeps a fact at 8 and
4 bits; an edit hidden inside the 4-bit rounding cells is caught; a fact the model never knew is
not claimed as recovered.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from excise.quantize import block_linears, fake_quantize, quantized, scheme
from excise.scoring import Scores, score_targets
from excise.verify.probes import quantization
from excise.verify.probes.base import Setup
from excise.verify.probes.quantization import QuantReading, judge, measure


# ----------------------------------------------------------------------------- naive oracle
def naive_quantize(w: torch.Tensor, bits: int, group: int | None, symmetric: bool):
    """Element by element, in Python floats: the dequantized weight and each element's step."""
    out, step = torch.empty_like(w), torch.empty_like(w)
    rows, cols = w.shape
    size = group or cols
    for r in range(rows):
        for s in range(0, cols, size):
            values = [float(v) for v in w[r, s:s + size]]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                scale = max(abs(v) for v in values) / qmax or 1.0
                deq = [max(-qmax, min(qmax, round(v / scale))) * scale for v in values]
            else:
                qmax = 2 ** bits - 1
                low, high = min(min(values), 0.0), max(max(values), 0.0)
                scale = (high - low) / qmax or 1.0
                zero = round(-low / scale)
                deq = [(max(0, min(qmax, round(v / scale) + zero)) - zero) * scale for v in values]
            out[r, s:s + size] = torch.tensor(deq)
            step[r, s:s + size] = scale
    return out, step


@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (4, 8, False), (4, None, False),
                                                  (3, 5, False), (4, 8, True)])
def test_fake_quantize_matches_naive_loop(bits, group, symmetric):
    torch.manual_seed(bits + (group or 0))
    w = torch.randn(6, 20) * torch.rand(6, 1)  # rows of different ranges; 20 = 2*8 + 4: a short group
    w[2] = w[2].abs()  # an all-positive row: the range must be widened to contain 0
    w[3] = 0.0  # an all-zero row: no division by zero
    got = fake_quantize(w, bits, group, symmetric)
    want, step = naive_quantize(w, bits, group, symmetric)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert ((got - w).abs() <= step / 2 + 1e-6).all(), "RTN moves each weight by at most half a step"
    assert torch.equal(got[3], w[3])


def test_fake_quantize_levels_and_dtype():
    torch.manual_seed(0)
    w = torch.randn(4, 256)
    got = fake_quantize(w, 4, 128, symmetric=False)
    for row in got.reshape(4, 2, 128).flatten(0, 1):
        assert len(row.unique()) <= 16
    assert len(fake_quantize(w, 8, None, True)[0].unique()) <= 255
    half = fake_quantize(w.bfloat16(), 4, 128)
    assert half.dtype == torch.bfloat16 and half.shape == w.shape
    assert (half.float() - w).abs().max() < (w.max() - w.min()) / 15
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(w, 1)


def test_scheme():
    assert scheme(8, 128) == (None, True)
    assert scheme(4, 128) == (128, False)


def test_quantized_changes_block_weights_and_restores_bit_exact(tiny):
    params = dict(tiny.original_model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    modules = block_linears(tiny)
    assert len(modules) >= 4 * tiny.cfg.n_layers  # attention in/out, MLP in/out per block
    block_storage = {m.weight.untyped_storage().data_ptr() for m in modules.values()}
    tokens = torch.tensor([[0, 5, 7, 9, 11]])
    with torch.no_grad():
        clean = tiny(tokens)
        with quantized(tiny, 4, group_size=8) as names:
            assert names == list(modules)
            for name, module in modules.items():
                rows = module.weight.T if type(module).__name__ == "Conv1D" else module.weight
                original = saved[next(n for n, p in params.items() if p is module.weight)]
                original = original.T if type(module).__name__ == "Conv1D" else original
                assert torch.equal(rows, fake_quantize(original, 4, 8)), name
            for n, p in params.items():  # embeddings, norms, unembedding stay in float
                if p.untyped_storage().data_ptr() not in block_storage:
                    assert torch.equal(p, saved[n]), n
            assert not torch.equal(tiny(tokens), clean)
    for n, p in params.items():
        assert torch.equal(p, saved[n]), n
    with pytest.raises(RuntimeError, match="boom"), quantized(tiny, 8):
        raise RuntimeError("boom")
    for n, p in params.items():
        assert torch.equal(p, saved[n]), n


# ----------------------------------------------------------------------------- judging
def _reading(bit_prob, bit_rank, control, reference_prob=None, reference_rank=None):
    return QuantReading(rank=min(bit_rank), prob=max(bit_prob), bits=[8, 4][:len(bit_prob)],
                        group_size=128, bit_rank=bit_rank, bit_prob=bit_prob, control_prob=control,
                        float_rank=5, float_prob=0.01, float_control_prob=0.001,
                        reference_rank=reference_rank, reference_prob=reference_prob)


def _comparison(rank: int, prob: float):
    scores = Scores(torch.tensor([math.log(prob)]), torch.tensor([rank]), torch.tensor([rank == 0]))
    return SimpleNamespace(before={"prompt": scores})


def test_judge_statuses():
    before = _comparison(0, 0.7)
    forgotten = judge(None, _reading([0.01, 0.02], [4, 3], [0.001, 0.001]), before)
    assert forgotten.status == "forgotten"
    back = judge(None, _reading([0.01, 0.3], [4, 0], [0.001, 0.002]), before)
    assert back.status == "recovered" and "4-bit: rank 0" in back.reason
    assert back.before.prob == pytest.approx(0.7)
    explained = judge(None, _reading([0.01, 0.3], [4, 0], [0.001, 0.2]), before)
    assert explained.status == "forgotten" and "4-bit: rank 0" in explained.reason  # 8-bit decides
    only = judge(None, _reading([0.3], [0], [0.2]), before)
    assert only.status == "uninformative" and "made-up subjects too" in only.reason
    never = judge(None, _reading([0.01, 0.3], [4, 0], [0.001, 0.002]), _comparison(40, 0.001))
    assert never.status == "uninformative"


def test_judge_discounts_bit_widths_the_unedited_model_loses():
    before = _comparison(0, 0.7)
    # 4-bit: the unedited model quantized forgets the fact (p 0.01 < 10% of 0.7), 8-bit keeps it
    reading = _reading([0.01, 0.005], [4, 30], [0.001, 0.001], [0.7, 0.01], [0, 14])
    assert quantization.bit_status(quantization.Scored(0, 0.7), reading, 1) == "uninformative"
    assert judge(None, reading, before).status == "forgotten"
    only_4bit = dataclasses.replace(reading, bits=[4], bit_prob=[0.005], bit_rank=[30], control_prob=[0.001],
                                    reference_prob=[0.01], reference_rank=[14])
    outcome = judge(None, only_4bit, before)
    assert outcome.status == "uninformative" and "lost by quantization alone" in outcome.reason
    # without a reference every bit width counts; returns are read against the float score before
    no_reference = dataclasses.replace(only_4bit, bit_prob=[0.1], bit_rank=[1], reference_prob=None,
                                       reference_rank=None)
    assert judge(None, no_reference, before).status == "recovered"
    # a weakened but knowing reference does not lower the bar: 0.03 < 10% of 0.7
    weak = _reading([0.01, 0.03], [4, 2], [0.001, 0.001], [0.7, 0.2], [0, 0])
    assert judge(None, weak, before).status == "forgotten"


def test_figure_and_json_round_trip():
    reading = _reading([0.01, 0.3], [4, 0], [0.001, 0.002], [0.7, 0.2], [0, 0])
    outcome = judge(None, reading, _comparison(0, 0.7))
    assert QuantReading(**outcome.to_dict()["after"]) == reading
    report = SimpleNamespace(id="capital-x", probe=lambda name: outcome)
    fig = quantization.figure(report)
    assert [t.name for t in fig.data] == ["p(target), edited model", "same answer, made-up subjects (control)",
                                          "p(target), unedited model quantized alike"]
    assert list(fig.data[0].x) == ["float", "8-bit", "4-bit"] and fig.layout.title.text


# ----------------------------------------------------------------------------- real model
def hide_in_rounding_cells(model, fact, bits: int = 4, group: int = 128):
    """An edit that forgets ``fact`` in float with changes RTN at ``bits`` rounds away entirely.

    One gradient of the target's log-probability gives each block weight a direction; weights
    move against it by ``alpha``, clamped inside their ``bits``-bit rounding cell (0.45 of a step
    from the grid point, inside the group's range; each group's extremes stay put, so the grid is
    unchanged). The smallest ``alpha`` of a doubling scan that forgets the fact is kept.
    """
    from excise.criteria import forgotten
    from excise.edit.record import make_edit
    from excise.export import weights_hash

    modules = block_linears(model)
    group_size, symmetric = scheme(bits, group)
    assert not symmetric
    names = {id(p): n for n, p in model.original_model.named_parameters()}
    weights = [m.weight for m in modules.values()]
    with torch.no_grad():
        base = score_targets(model, [fact.text], [fact.target])
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    try:
        loss = score_logprob(model, fact)
        grads = torch.autograd.grad(loss, weights)
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    bounds = []
    for w in weights:  # nn.Linear on this model: [d_out, d_in]
        original = w.detach().clone()
        q, step = naive_cells(original, bits, group_size)
        # strictly inside the group's range (the edit stores deltas, and original + delta can land
        # an ulp past an extreme, which would move the grid of the whole group); an element whose
        # grid point lies more than 0.45 of a step outside the range has no room and stays put
        smallest = group_extreme(original, group_size, torch.amin)
        largest = group_extreme(original, group_size, torch.amax)
        low = torch.maximum(q - 0.45 * step, smallest + 0.01 * step)
        high = torch.minimum(q + 0.45 * step, largest - 0.01 * step)
        fixed = (original == smallest) | (original == largest) | (low > high)
        bounds.append((original, low, high, fixed))
    alpha = 1e-5
    with torch.no_grad():
        while True:
            new = [torch.where(fixed, original, (original - alpha * g.sign()).clamp(low, high))
                   for (original, low, high, fixed), g in zip(bounds, grads)]
            for w, value in zip(weights, new):
                w.copy_(value)
            after = score_targets(model, [fact.text], [fact.target])
            if bool(forgotten(base, after)[0]) or alpha > 0.1:
                break
            alpha *= 2
        for w, (original, *_) in zip(weights, bounds):
            w.copy_(original)
    return make_edit(model, "test:hidden-in-rounding-cells", {names[id(w)]: v for w, v in zip(weights, new)},
                     settings={"alpha": alpha, "bits": bits, "group": group}, fact_ids=[fact.id],
                     components=[], base_hash=weights_hash(model), info={})


def score_logprob(model, fact) -> torch.Tensor:
    from excise.scoring import answer_logprobs, build_batch

    return answer_logprobs(model, build_batch(model, [fact.text], [fact.target])).sum()


def group_extreme(w: torch.Tensor, group: int, reduce) -> torch.Tensor:
    """``reduce`` (amin/amax) of each element's group, widened to contain 0, broadcast to ``w``."""
    out = torch.empty_like(w)
    for s in range(0, w.shape[1], group):
        chunk = w[:, s:s + group]
        value = reduce(chunk, dim=1, keepdim=True)
        value = value.clamp(max=0) if reduce is torch.amin else value.clamp(min=0)
        out[:, s:s + group] = value.expand_as(chunk)
    return out


def naive_cells(w: torch.Tensor, bits: int, group: int):
    """The grid point of each element (its RTN value) and its group's step, vectorised per group."""
    low, high = group_extreme(w, group, torch.amin), group_extreme(w, group, torch.amax)
    step = (high - low) / (2 ** bits - 1)
    return fake_quantize(w, bits, group), step


@pytest.fixture(scope="module")
def france(real_model):
    from excise.facts import find_fact, load_facts

    fact = find_fact(load_facts(), "capital-france")
    with torch.no_grad():
        before = score_targets(real_model, [fact.text], [fact.target])
    return fact, SimpleNamespace(before={"prompt": before})


@pytest.fixture(scope="module")
def hidden_edit(real_model, france):
    fact, _ = france
    edit = hide_in_rounding_cells(real_model, fact)
    yield edit
    edit.undo(real_model)


SETUP = Setup(related=[[]])


@pytest.mark.real
@pytest.mark.slow
def test_unedited_model_keeps_the_fact_when_quantized(real_model, france):
    fact, comparison = france
    assert not getattr(real_model, "excise_edits", [])
    reading = measure(real_model, [fact], SETUP)[0]
    assert reading.bits == [8, 4] and reading.reference_prob is None
    assert reading.bit_rank == [0, 0], reading
    assert judge(None, reading, comparison).status == "recovered"


@pytest.mark.real
@pytest.mark.slow
def test_edit_hidden_below_the_4bit_step_is_recovered(real_model, france, hidden_edit):
    from excise.criteria import forgotten

    fact, comparison = france
    with torch.no_grad():
        after = score_targets(real_model, [fact.text], [fact.target])
    assert bool(forgotten(comparison.before["prompt"], after)[0]), "the edit must forget the fact in float"
    reading = measure(real_model, [fact], SETUP)[0]
    assert reading.bit_prob[1] == pytest.approx(reading.reference_prob[1], rel=1e-4)  # rounded away
    outcome = judge(None, reading, comparison)
    assert outcome.status == "recovered", outcome.reason
    assert "4-bit: rank 0" in outcome.reason


@pytest.mark.real
@pytest.mark.slow
def test_never_known_fact_is_not_recovered(real_model, france, hidden_edit):
    fact, _ = france
    made_up = dataclasses.replace(fact, id="capital-made-up", subject="Quelmoria", target=" Brastovil")
    with torch.no_grad(), hidden_edit.reverted(real_model):
        before = score_targets(real_model, [made_up.text], [made_up.target])
    assert before.prob[0] < 0.05 and before.rank[0] > 0
    reading = measure(real_model, [made_up], SETUP)[0]
    outcome = judge(None, reading, SimpleNamespace(before={"prompt": before}))
    assert outcome.status == "uninformative", outcome.reason


@pytest.mark.real
@pytest.mark.slow
def test_quantized_restores_the_real_model_bit_exact(real_model, hidden_edit):
    from excise.export import weights_hash

    start = weights_hash(real_model)
    with quantized(real_model, 4) as names:
        assert len(names) == 7 * real_model.cfg.n_layers
        assert weights_hash(real_model) != start
    assert weights_hash(real_model) == start
