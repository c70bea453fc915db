"""Low-precision models and Accelerate device maps, on tiny random models on the CPU.

bfloat16 and float16: every editor writes in the model's dtype from a float32 computation, its
statistics are float32, its undo is bit for bit, and the locators still score in float32; the
update a rank-one edit writes is the float32 update rounded once. Device maps: ``load_model``
hands the map to Hugging Face (Accelerate places the modules), the bridge keeps the placement,
edits undo bit for bit, and offloaded weights are refused.
"""

from __future__ import annotations

import json

import pytest
import torch

from excise.components import MLP, Head, Neuron, mlp_out_module
from excise.edit import ablate, finetune, memit, rome
from excise.edit.sequence import rome_sequence
from excise.edit.stats import KeyStats, SampleSpec, key_stats
from excise.edit.value import ValueSettings
from excise.facts import Fact, Probe
from excise.model import load_model

FACT = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
            paraphrases=("{}'s capital is",), neighbors=(Probe("The capital of Germany is", " Berlin"),),
            new_target=" Rome")
OTHER = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is", target=" Berlin")
FAST = ValueSettings(n_prefixes=2, steps=3)
DTYPES = [torch.bfloat16, torch.float16]  # the CPU build runs every op the editors use in both

EDITORS = {
    "rome": lambda m: rome(m, FACT, layer=1, settings=FAST, progress=False),
    "memit": lambda m: memit(m, [FACT, OTHER], layers=[0, 1], settings=FAST, progress=False),
    "rome_sequence": lambda m: rome_sequence(m, [FACT, OTHER], layer=1, settings=FAST,
                                             max_update_ratio=100, progress=False),
    "ablate": lambda m: ablate(m, [Neuron(1, 3), Head(0, 1)], progress=False),
    "finetune": lambda m: finetune(m, [FACT], params=[MLP(2)], steps=3, lr=1e-2, n_prefixes=1,
                                   progress=False),
}


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """Key statistics of these models go to a cache of their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXCISE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def low(request, tiny_folders):
    """The tiny Llama in bfloat16 or float16 (function-scoped: tests change its weights)."""
    return load_model(str(tiny_folders["llama"]), device="cpu", dtype=request.param)


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.original_model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("editor", EDITORS)
def test_editor_writes_in_the_model_dtype_and_undoes_bit_for_bit(low, editor):
    dtype = low.cfg.dtype
    before = _params(low)
    edit = EDITORS[editor](low)
    edited = _params(low)
    assert not _same(edited, before) and all(p.dtype == dtype for p in edited.values())
    assert all(d.dtype == torch.float32 for d in edit.deltas.values())  # kept as computed
    edit.undo(low)
    assert _same(_params(low), before)
    edit.apply(low)  # original + float32 delta, rounded once: the very weights the editor wrote
    assert _same(_params(low), edited)


def test_key_statistics_are_float32_whatever_the_model_dtype(low):
    stats = key_stats(low, [0, 2], SampleSpec(n_sequences=4, length=16), progress=False)
    for layer in (0, 2):
        c = stats[layer].second_moment
        assert c.dtype == stats[layer].mean.dtype == torch.float32
        assert c.shape == (low.cfg.d_mlp, low.cfg.d_mlp) and torch.isfinite(c).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_rank_one_update_is_the_float32_update_rounded_once(tiny_folders, monkeypatch, dtype):
    """Given one key, value and ``C`` (the parts a low-precision forward pass changes), rome on the
    low-precision model writes exactly what rome on a float32 copy of the same weights writes,
    rounded once: the direction, the update and ``W + update`` are float32, not the model's dtype."""
    import excise.edit.rank_one as rank_one

    low = load_model(str(tiny_folders["llama"]), device="cpu", dtype=dtype)
    high = load_model(str(tiny_folders["llama"]), device="cpu")
    with torch.no_grad():  # the same weights in both: float32 holds every low-precision value
        for param in high.original_model.parameters():
            param.copy_(param.to(dtype))
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(4 * low.cfg.d_mlp, low.cfg.d_mlp, generator=gen)  # [n, d_mlp]
    key = keys[0].to(dtype).float()
    delta = 0.02 * torch.randn(low.cfg.d_model, generator=gen)
    monkeypatch.setattr(rank_one, "key_stats", lambda m, layers, *a: {
        layers[0]: KeyStats(keys.T @ keys / len(keys), keys.mean(0), len(keys), "fixed")})
    monkeypatch.setattr(rank_one, "balanced_key", lambda m, *a: key.to(m.cfg.dtype))
    monkeypatch.setattr(rank_one, "contrast_keys", lambda m, *a: (torch.zeros(0, m.cfg.d_mlp), []))
    monkeypatch.setattr(rank_one, "compute_value", lambda *a, **k: (delta, {}))
    original, written = mlp_out_module(low, 1).weight.detach().clone(), {}
    for name, model in (("low", low), ("high", high)):
        rome(model, FACT, layer=1, progress=False)
        written[name] = mlp_out_module(model, 1).weight.detach()
    assert written["low"].dtype == dtype and not torch.equal(written["low"], original)
    assert torch.equal(written["low"], written["high"].to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_mean_ablation_folds_its_mean_into_a_low_precision_bias(tiny_folders, dtype):
    model = load_model(str(tiny_folders["gpt2"]), device="cpu", dtype=dtype)
    before, bias = _params(model), mlp_out_module(model, 1).bias
    bias_before = bias.detach().clone()
    edit = ablate(model, [Neuron(1, 3)], how="mean", progress=False)
    assert bias.dtype == dtype and not torch.equal(bias, bias_before)
    edit.undo(model)
    assert _same(_params(model), before)


@torch.no_grad()
def test_locators_run_on_a_bfloat16_model_and_score_in_float32(tiny_folders):
    from excise.locate import (
        activation_patch,
        attribution_patch,
        causal_trace,
        direct_logit_attribution,
    )

    model = load_model(str(tiny_folders["llama"]), device="cpu", dtype=torch.bfloat16)
    clean = model.to_tokens("The Eiffel Tower is in the city of")
    corrupted = clean.clone()
    corrupted[0, 3] = (int(clean[0, 3]) + 7) % model.cfg.d_vocab
    with pytest.warns(UserWarning, match="does not predict"):  # a random model knows no fact
        found = [causal_trace(model, FACT, samples=2, window=2, progress=False),
                 direct_logit_attribution(model, FACT, site="head"),
                 direct_logit_attribution(model, FACT, site="neuron")]
    found += [activation_patch(model, clean, corrupted, 5, 7, site="resid_pre", progress=False)]
    with torch.enable_grad():
        found += [attribution_patch(model, clean, corrupted, 5, 7, site="head", progress=False)]
    for loc in found:
        assert loc.scores.dtype == torch.float32 and torch.isfinite(loc.scores).all(), loc.method


def test_saved_bfloat16_model_reloads_in_bfloat16_with_its_edit(tiny_folders, tmp_path):
    from safetensors import safe_open

    from excise.export import save_model

    model = load_model(str(tiny_folders["llama"]), device="cpu", dtype=torch.bfloat16)
    rome(model, FACT, layer=1, settings=FAST, progress=False)
    folder = save_model(model, tmp_path / "edited")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    again = load_model(str(folder), device="cpu", dtype=torch.bfloat16)  # checks the saved hash
    assert _same(_params(again), _params(model))


def _layer_map(folder, device: str = "cpu") -> dict[str, str]:
    """A device map naming each module of the tiny Llama, layer by layer."""
    n_layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    names = ["model.embed_tokens", *(f"model.layers.{i}" for i in range(n_layers)),
             "model.norm", "model.rotary_emb", "lm_head"]
    return {name: device for name in names}


def test_device_map_goes_through_accelerate_and_edits_undo_bit_for_bit(tiny_folders, monkeypatch):
    """The map reaches ``from_pretrained``; Accelerate's hooks then run every module (forced here:
    with one CPU transformers attaches none), the bridge keeps the placement, and rome and memit
    edit each weight where it lives and undo bit for bit."""
    from accelerate import dispatch_model

    import excise.model as excise_model

    folder = tiny_folders["llama"]
    device_map, received = _layer_map(folder), []
    load_hf = excise_model._load_hf

    def dispatched(source, dtype, device_map=None):
        received.append(device_map)
        hf_model, tokenizer = load_hf(source, dtype, device_map)
        dispatch_model(hf_model, device_map=device_map, main_device="cpu", force_hooks=True)
        return hf_model, tokenizer

    monkeypatch.setattr(excise_model, "_load_hf", dispatched)
    model = load_model(str(folder), device_map=device_map, dtype=torch.bfloat16)
    assert received == [device_map] and model.cfg.device == "cpu"
    assert hasattr(model.original_model.model.layers[1], "_hf_hook")
    before = _params(model)
    for editor in ("rome", "memit"):
        edit = EDITORS[editor](model)
        assert not _same(_params(model), before)
        edit.undo(model)
        assert _same(_params(model), before)


def test_offloading_device_map_and_device_with_device_map_are_refused(tiny_folders):
    folder = tiny_folders["llama"]
    offload = {**_layer_map(folder), "model.layers.1": "disk"}
    with pytest.raises(ValueError, match="offloads .* to cpu or disk"):
        load_model(str(folder), device_map=offload)
    with pytest.raises(ValueError, match="not both"):
        load_model(str(folder), device="cpu", device_map=_layer_map(folder))
