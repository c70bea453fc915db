"""Locators on the tiny models (all three architectures), checked against naive references."""

from __future__ import annotations

import json

import einops
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from excise.components import MLP, Head, Neuron
from excise.facts import Fact
from excise.locate import (
    Localization,
    activation_patch,
    attribution_patch,
    causal_trace,
    direct_logit_attribution,
    fact_activation_patch,
    knowledge_neurons,
)
from excise.runner import Runner

pytestmark = pytest.mark.filterwarnings("ignore:the model does not predict")

FACT = Fact(id="eiffel", subject="The Eiffel Tower", prompt="{} is in the city of", target=" Paris")


def _pair(model):
    clean = model.to_tokens("The Eiffel Tower is in the city of")
    corrupted = clean.clone()
    corrupted[0, 3] = (int(clean[0, 3]) + 7) % model.cfg.d_vocab
    last = model(clean)[0, -1]
    return clean, corrupted, int(last.argmax()), int(last.argmin())


def _prob(model, tokens, read, target_ids, hooks):
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, read].log_softmax(-1)
    return logits[:, torch.arange(len(target_ids)), torch.tensor(target_ids)].sum(-1).exp()


@torch.no_grad()
def test_runner_matches_full_forward(tiny):
    tokens = tiny.to_tokens("The capital of France is")
    runner = Runner(tiny, tokens, ["blocks.1.hook_resid_pre"])
    resid = runner.cache["blocks.1.hook_resid_pre"].expand(3, -1, -1)
    read = list(range(tokens.shape[1]))
    assert torch.allclose(runner.run_from(1, resid, read), tiny(tokens).expand(3, -1, -1), atol=1e-5)


@pytest.mark.parametrize("family", ["Gemma 2", "Phi-3", "OLMo 2"])
@torch.no_grad()
def test_runner_matches_full_forward_on_other_families(family, tmp_path):
    """Blocks with other arguments (Phi-3), norms after the sublayers (OLMo 2) and logits
    soft-capped after the unembedding (Gemma 2): a partial forward still equals the full one
    (uncapped Gemma 2 logits once made every causal trace on Gemma 2 wrong)."""
    from excise.model import load_model
    from excise.testing import save_tiny_model

    model = load_model(str(save_tiny_model(family, tmp_path / "model")), device="cpu")
    tokens = model.to_tokens("The capital of France is")
    runner = Runner(model, tokens, ["blocks.1.hook_resid_pre"])
    read = list(range(tokens.shape[1]))
    partial = runner.run_from(1, runner.cache["blocks.1.hook_resid_pre"], read)
    assert torch.allclose(partial, model(tokens), atol=1e-5)


@torch.no_grad()
def test_runner_rows_joining_later_match_full_forward(tiny):
    """Rows that join at block 2 (or at the final residual) give the same logits as rows that ran
    every block, and the batch keeps the joining order."""
    tokens = tiny.to_tokens("The capital of France is")
    n = tiny.cfg.n_layers
    runner = Runner(tiny, tokens, [f"blocks.{i}.hook_resid_pre" for i in range(n)])
    full = tiny(tokens)
    read = list(range(tokens.shape[1]))
    r0 = runner.cache["blocks.0.hook_resid_pre"]
    r2 = runner.cache["blocks.2.hook_resid_pre"].expand(2, -1, -1)
    marked = r2.clone()
    marked[1, -1] += torch.randn(marked.shape[-1], generator=torch.Generator().manual_seed(0))  # order check
    out = runner.run_from(0, r0, read, joins={2: marked})
    assert out.shape[0] == 3
    assert torch.allclose(out[:2], full.expand(2, -1, -1), atol=1e-5)
    assert not torch.allclose(out[2], full[0], atol=1e-3)
    with pytest.raises(ValueError, match="joins must enter after block"):
        runner.run_from(2, r2, read, joins={1: r2})


@pytest.mark.parametrize("site", ["resid", "mlp"])
@torch.no_grad()
def test_causal_trace_matches_naive_restoration(tiny, site):
    """Each cell equals a plain run_with_hooks forward with the same noise and one restored state."""
    loc = causal_trace(tiny, FACT, site=site, samples=2, window=2, seed=3, progress=False)
    subject = loc.meta["subject_positions"]
    ids = tiny.to_tokens(FACT.text)[0].tolist()
    target = tiny.tokenizer(FACT.target, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids + target[:-1]]).expand(2, -1)
    read = [len(ids) - 1 + j for j in range(len(target))]
    assert subject == list(range(subject[0], subject[0] + len(subject)))
    noise = torch.randn(2, len(subject), tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))
    noise = noise * loc.settings["noise"]

    def add_noise(x, hook):
        x = x.clone()
        x[:, subject] += noise
        return x

    hook = "hook_resid_pre" if site == "resid" else "hook_mlp_out"
    _, clean = tiny.run_with_cache(tokens[:1])
    corrupted = float(_prob(tiny, tokens, read, target, [("hook_embed", add_noise)]).mean())
    assert loc.meta["corrupted_score"] == pytest.approx(corrupted, abs=1e-5)
    for layer, pos in [(0, subject[-1]), (1, len(ids) - 1), (2, subject[0])]:
        layers = [layer] if site == "resid" else [x for x in (layer - 1, layer) if x >= 0]

        def restore(x, hook, pos=pos):
            x = x.clone()
            x[:, pos] = clean[hook.name][0, pos]
            return x
        hooks = [("hook_embed", add_noise)] + [(f"blocks.{x}.{hook}", restore) for x in layers]
        expected = float(_prob(tiny, tokens, read, target, hooks).mean())
        assert float(loc.scores[layer, pos]) == pytest.approx(expected, abs=1e-5)
    assert torch.all(loc.scores[:, : subject[0]] == loc.meta["corrupted_score"])


def _tl_patch(model, clean, corrupted, answer, wrong, act, setter, axis, layers):
    import transformer_lens.patching as tlp

    _, cache = model.run_with_cache(clean)
    lc, lr = model(clean)[0, -1], model(corrupted)[0, -1]
    ld_clean, ld_corrupted = lc[answer] - lc[wrong], lr[answer] - lr[wrong]

    def metric(logits):
        return ((logits[0, -1, answer] - logits[0, -1, wrong]) - ld_corrupted) / (ld_clean - ld_corrupted)
    width = clean.shape[1] if axis == "pos" else model.cfg.n_heads
    index = pd.DataFrame({"layer": [x for x in layers for _ in range(width)],
                          axis: [i for _ in layers for i in range(width)]})
    return tlp.generic_activation_patch(model, corrupted, cache, metric, setter, act, index_df=index)


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "head"])
@torch.no_grad()
def test_activation_patch_matches_transformer_lens(tiny, site):
    import transformer_lens.patching as tlp

    clean, corrupted, answer, wrong = _pair(tiny)
    loc = activation_patch(tiny, clean, corrupted, answer, wrong, site=site, progress=False)
    setter = tlp.layer_head_vector_patch_setter if site == "head" else tlp.layer_pos_patch_setter
    act = "z" if site == "head" else site
    ref = _tl_patch(tiny, clean, corrupted, answer, wrong, act, setter,
                    "head" if site == "head" else "pos", [0, 2])
    assert (loc.scores[[0, 2]].flatten() - ref.cpu()).abs().max() <= 1e-4
    assert loc.axes == ("layer", "head" if site == "head" else "position")


@torch.no_grad()
def test_neuron_patch_matches_naive_hook(tiny):
    clean, corrupted, answer, wrong = _pair(tiny)
    picks = [Neuron(0, 5), Neuron(2, 17)]
    loc = activation_patch(tiny, clean, corrupted, answer, wrong, site="neuron", components=picks,
                           progress=False)
    _, cache = tiny.run_with_cache(clean)
    ld = [tiny(t)[0, -1, answer] - tiny(t)[0, -1, wrong] for t in (clean, corrupted)]
    for n in picks:
        name = f"blocks.{n.layer}.mlp.hook_post"

        def hook(x, hook, n=n, name=name):
            x = x.clone()
            x[..., n.index] = cache[name][..., n.index]
            return x
        out = tiny.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])[0, -1]
        expected = ((out[answer] - out[wrong]) - ld[1]) / (ld[0] - ld[1])
        assert float(loc.scores[n.layer, n.index]) == pytest.approx(float(expected), abs=1e-4)
    assert int(torch.isnan(loc.scores).sum()) == loc.scores.numel() - 2


def test_attribution_patch_approximates_exact_and_verifies(tiny):
    clean, corrupted, answer, wrong = _pair(tiny)
    exact = activation_patch(tiny, clean, corrupted, answer, wrong, site="head", progress=False)
    approx = attribution_patch(tiny, clean, corrupted, answer, wrong, site="head", progress=False)
    corr = torch.corrcoef(torch.stack([approx.scores.flatten(), exact.scores.flatten()]))[0, 1]
    assert corr > 0.8
    checked = attribution_patch(tiny, clean, corrupted, answer, wrong, site="neuron", verify_top=3,
                                progress=False)
    assert len(checked.meta["verified"]) == 3
    picks = [Neuron(*map(int, v["component"].split(".")[1:])) for v in checked.meta["verified"]]
    ref = activation_patch(tiny, clean, corrupted, answer, wrong, site="neuron", components=picks,
                           progress=False)
    for n, v in zip(picks, checked.meta["verified"]):
        assert v["exact"] == pytest.approx(float(ref.scores[n.layer, n.index]), abs=1e-5)


def test_knowledge_neurons_matches_naive_integrated_gradients(tiny):
    steps, layer = 4, 1
    loc = knowledge_neurons(tiny, FACT, steps=steps, progress=False)
    ids = tiny.to_tokens(FACT.text)[0].tolist()
    target = tiny.tokenizer(FACT.target, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids + target[:-1]])
    read, last = [len(ids) - 1 + j for j in range(len(target))], len(ids) - 1
    name = f"blocks.{layer}.mlp.hook_post"
    with torch.no_grad():
        _, cache = tiny.run_with_cache(tokens)
    base = cache[name][0, last]
    grads = torch.zeros_like(base)
    for k in range(1, steps + 1):
        point = (k / steps * base).requires_grad_(True)

        def hook(x, hook, point=point):
            x = x.clone()
            x[0, last] = point
            return x
        _prob(tiny, tokens, read, target, [(name, hook)]).sum().backward()
        grads += point.grad / steps
    assert torch.allclose(loc.scores[layer], base * grads, atol=1e-6, rtol=1e-3)
    assert loc.axes == ("layer", "neuron") and isinstance(loc.top(1)[0], Neuron)


@torch.no_grad()
def test_direct_logit_attribution_decomposes_the_mlp_output(tiny):
    from excise.components import out_proj_bias
    from excise.locate.dla import _unembed_direction

    loc = direct_logit_attribution(tiny, FACT, site="neuron")
    tokens = tiny.to_tokens(FACT.text)
    n = tiny.cfg.n_layers
    _, cache = tiny.run_with_cache(tokens)
    target = tiny.tokenizer(FACT.target, add_special_tokens=False)["input_ids"][0]
    v = _unembed_direction(tiny, cache[f"blocks.{n - 1}.hook_resid_post"][0, -1], target)
    for layer in range(n):
        out = cache[f"blocks.{layer}.hook_mlp_out"][0, -1]
        bias = out_proj_bias(tiny, layer)
        out = out - (bias if bias is not None else 0)
        assert float(loc.scores[layer].sum()) == pytest.approx(float(out @ v), abs=1e-4)
    heads = direct_logit_attribution(tiny, FACT, site="head")
    assert heads.scores.shape == (n, tiny.cfg.n_heads)


@torch.no_grad()
def naive_direct_effect(model, tokens, target: int, layer: int, site: str, output: torch.Tensor) -> float:
    """Drop of the target's logit at the last position (any final soft-cap undone) when ``output``
    ``[d_model]`` leaves the attention (``site="head"``) or MLP (``"neuron"``) output of ``layer``
    there, with every other attention and MLP output and every norm's scale frozen at its clean
    value: what reaches the logit is the direct path only, through any post-norm of that block."""
    frozen = [n for n in model.hook_dict if n.endswith(("attn.hook_out", "mlp.hook_out", "hook_scale"))]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in frozen)
    removed = f"blocks.{layer}.{'attn' if site == 'head' else 'mlp'}.hook_out"

    def clean(act, hook):  # row 0 clean, row 1 without ``output``
        act = cache[hook.name].expand_as(act).clone()
        if hook.name == removed:
            act[1, -1] -= output
        return act

    logits = model.run_with_hooks(tokens.expand(2, -1), fwd_hooks=[(n, clean) for n in frozen])[:, -1, target]
    cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    logits = cap * torch.atanh(logits.double() / cap) if cap > 0 else logits.double()
    return float(logits[0] - logits[1])


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")
@pytest.mark.parametrize("family", ["Gemma 2", "OLMo", "OLMo 2"])
def test_direct_logit_attribution_matches_naive_direct_effects(family, tmp_path):
    """Gemma 2 (RMSNorm by 1 + weight, post-attention and post-MLP norms, final soft-cap), OLMo
    (LayerNorm without a weight), OLMo 2 (post-norms only): each head's and the largest neurons'
    DLA equals the naive direct effect of removing its output."""
    from excise.components import attn_out_weight, out_proj_weight
    from excise.model import load_model
    from excise.testing import save_tiny_model

    model = load_model(str(save_tiny_model(family, tmp_path / "model")), device="cpu")
    cfg = model.cfg
    tokens = model.to_tokens(FACT.text)
    target = model.tokenizer(FACT.target, add_special_tokens=False)["input_ids"][0]
    heads = direct_logit_attribution(model, FACT, site="head")
    neurons = direct_logit_attribution(model, FACT, site="neuron")
    _, cache = model.run_with_cache(tokens)
    for layer in range(cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][0, -1]  # [head, d_head]
        w_o = einops.rearrange(attn_out_weight(model, layer).detach(),
                               "(head d_head) d_model -> head d_head d_model", head=cfg.n_heads)
        for head in range(cfg.n_heads):
            naive = naive_direct_effect(model, tokens, target, layer, "head", z[head] @ w_o[head])
            assert float(heads.scores[layer, head]) == pytest.approx(naive, rel=1e-3, abs=1e-5), (layer, head)
        post = cache[f"blocks.{layer}.mlp.hook_post"][0, -1]  # [d_mlp]
        for index in neurons.scores[layer].abs().topk(3).indices.tolist():
            output = post[index] * out_proj_weight(model, layer).detach()[index]
            naive = naive_direct_effect(model, tokens, target, layer, "neuron", output)
            assert float(neurons.scores[layer, index]) == pytest.approx(naive, rel=1e-3, abs=1e-5), (layer, index)
    if family == "Gemma 2":
        assert 0 < heads.meta["soft_cap_slope"] <= 1 and heads.meta["soft_cap"] == cfg.output_logits_soft_cap


def test_finetune_on_neox_saves_its_attention_changes(tiny_folders, tmp_path):
    """GPT-NeoX's q/k/v read the fused query_key_value: finetune's deltas name it, apply/undo
    are bit-exact, and plain transformers reloads the edited logits."""
    from transformers import AutoModelForCausalLM

    from excise.edit import finetune
    from excise.export import save_model
    from excise.model import load_model

    model = load_model(str(tiny_folders["neox"]), device="cpu")
    tokens = model.to_tokens("The Eiffel Tower is in the city of Paris")
    params = dict(model.original_model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        original = model(tokens)
    edit = finetune(model, FACT, steps=2, lr=1e-2, n_prefixes=1, progress=False)
    fused = "gpt_neox.layers.0.attention.query_key_value"
    assert {f"{fused}.weight", f"{fused}.bias"} <= set(edit.deltas)
    assert not any("_original_component" in n for n in edit.deltas)
    with torch.no_grad():
        edited = model(tokens)
        qkv = model.blocks[0].attn.qkv.original_component
        q = einops.rearrange(qkv.weight, "(head part d_head) d_model -> part (head d_head) d_model",
                             head=model.cfg.n_heads, part=3)[0]
        assert torch.equal(model.blocks[0].attn.q.original_component.weight, q)
    save_model(model, tmp_path / "edited")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "edited"), dtype=torch.float32).eval()
    with torch.no_grad():
        assert (plain(tokens).logits - edited).abs().max() < 1e-4 < (edited - original).abs().max()
    edit.undo(model)
    assert all(torch.equal(p, base[n]) for n, p in params.items())
    with torch.no_grad():
        assert torch.equal(model(tokens), original)
        edit.apply(model)
        assert torch.equal(model(tokens), edited)


def test_localization_top_plot_and_json_roundtrip():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.7]])
    loc = Localization(scores, ("layer", "position"), {"position": ["a", "b", "c"]},
                       "causal_trace", "mlp", {"samples": 2}, {"prompt": "abc", "target": "d"})
    assert loc.top(2) == [MLP(0), MLP(1)]
    fig = loc.plot()
    assert isinstance(fig, go.Figure) and "MLP L0" in fig.data[0].text[1][0]
    back = Localization.from_json(loc.to_json())
    assert torch.equal(back.scores, scores) and back.axes == loc.axes and back.meta == loc.meta
    heads = Localization(scores, ("layer", "head"), {}, "activation_patch", "head")
    assert heads.top(3) == [Head(0, 1), Head(1, 2), Head(1, 0)]
    assert "Head L0.H1" in heads.plot().data[0].text[1][0]
    neurons = Localization(-scores, ("layer", "neuron"), {}, "knowledge_neurons", "neuron")
    assert neurons.top(1) == [Neuron(0, 2)] and neurons.plot().data[0].x[0] == "L0.N1"
    with pytest.raises(ValueError, match="site='mlp'"):
        Localization(scores, ("layer", "position"), {}, "causal_trace", "resid").top(1)
    json.loads(loc.to_json())


def test_bad_inputs_fail_clearly(tiny):
    with pytest.raises(ValueError, match="not found in prompt"):
        causal_trace(tiny, Fact("x", "Rome", "The Colosseum is in", " Italy"), progress=False)
    with pytest.warns(UserWarning, match=r"does not predict .*p = .*rank"):
        causal_trace(tiny, Fact("x", "France", "{} is", " Shakespeare"), samples=1, progress=False)
    long = Fact("x", "France", "{}" + " is" * 200, " Paris")
    with pytest.raises(ValueError, match="context length"):
        causal_trace(tiny, long, progress=False)
    clean = tiny.to_tokens("The capital of France is")
    with pytest.raises(ValueError, match=r"differ from position \d+ .*same length"):
        activation_patch(tiny, clean, "The capital of the United Kingdom is", 5, 6, progress=False)
    with pytest.raises(ValueError, match="identical"):
        activation_patch(tiny, clean, clean, 5, 6, progress=False)
    with pytest.raises(ValueError, match="site must be one of"):
        activation_patch(tiny, clean, clean, 5, 6, site="mlp_in", progress=False)


def test_fact_activation_patch_picks_a_same_length_counterfactual(tiny):
    fact = Fact("fr", "France", "The capital of {} is", " Paris", relation="capital")
    others = [Fact("uk", "the United Kingdom", "The capital of {} is", " London", relation="capital"),
              Fact("de", "Spain", "The capital of {} is", " Madrid", relation="capital"),
              Fact("it", "Italy", "The capital of {} is", " Rome", relation="capital")]
    n = tiny.to_tokens(fact.text).shape[1]
    same = [f for f in others if tiny.to_tokens(f.text).shape[1] == n]
    if not same:
        pytest.skip("no same-length subject under this tiny tokenizer")
    loc = fact_activation_patch(tiny, fact, others, site="mlp_out", progress=False)
    assert loc.meta["corrupted"] == tiny.to_string(tiny.to_tokens(same[0].text)[0])
    with pytest.raises(ValueError, match="same token length"):
        fact_activation_patch(tiny, fact, [others[0]], progress=False)


def test_known_answer_trained_layer_is_found(tmp_path):
    """Teach a new fact by training only layer 2's MLP: the neuron attribution points there.

    (The tiny model's final norm caps how far one MLP can raise a logit, and what it learns does
    not depend on the subject, so the causal trace of this tiny case is flat; see the report.)
    """
    from excise.testing import tiny_model

    model = tiny_model("llama", tmp_path, seed=1, n_layers=4)
    fact = Fact("zorp", "Zorbla Quax", "{} is in the city of", " Paris")
    layer = 2
    params = list(model.blocks[layer].mlp.parameters())
    ids = model.to_tokens(fact.text)[0].tolist()
    target = model.tokenizer(fact.target, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids + target[:-1]])
    read = [len(ids) - 1 + j for j in range(len(target))]
    before = model(tokens)[0, read[0]].argsort(descending=True).tolist().index(target[0])
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(25):
        loss = -_prob(model, tokens, read, target, []).log().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(tokens)[0, read[0]].argsort(descending=True).tolist().index(target[0])
    assert after == 0 < before
    neurons = knowledge_neurons(model, fact, steps=8, progress=False)
    assert neurons.top(1)[0].layer == layer
    assert int(neurons.scores.abs().sum(1).argmax()) == layer


def test_cli_locate_writes_json_and_html(tiny_folders, tmp_path, capsys):
    from excise.cli import main
    from excise.facts import write_facts

    folder = str(tiny_folders["gpt2"])
    out_json, out_html = tmp_path / "loc.json", tmp_path / "loc.html"
    code = main(["locate", "--model", folder, "--subject", "The Eiffel Tower", "--prompt",
                 "The Eiffel Tower is in the city of", "--target", " Paris", "--samples", "1",
                 "--json", str(out_json), "--html", str(out_html), "--no-progress"])
    assert code == 0 and "top components: mlp." in capsys.readouterr().out
    loc = Localization.from_json(out_json.read_text())
    assert loc.method == "causal_trace" and loc.site == "mlp"
    assert "plotly" in out_html.read_text()[:100000].lower()
    facts = tmp_path / "facts.jsonl"
    write_facts([Fact("fr", "France", "The capital of {} is", " Paris", relation="capital"),
                 Fact("it", "Italy", "The capital of {} is", " Rome", relation="capital")], facts)
    code = main(["locate", str(facts), "--id", "fr", "--model", folder, "--method", "knowledge_neurons",
                 "--steps", "2", "--no-progress"])
    assert code == 0 and "neuron." in capsys.readouterr().out
    assert main(["locate", "--model", folder, "--subject", "Rome", "--prompt", "Paris is",
                 "--target", " x"]) == 2
    assert "not found in prompt" in capsys.readouterr().err
