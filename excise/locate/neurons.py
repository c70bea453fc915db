"""Neurons that express a fact: integrated gradients (knowledge neurons) and activation x gradient.

**Knowledge neurons** (Dai et al. 2022, :func:`knowledge_neurons`): for each layer, the MLP activations at the last prompt token are scaled from 0 to their value in
``steps`` Riemann steps; the attribution of neuron ``i`` is its activation times the mean gradient
of the target probability along that path. Neurons with large attribution "express" the fact.
Following the paper, one layer is scaled at a time; all ``steps`` of a layer are one batched
forward and backward that starts at that layer (earlier blocks are unchanged, so reused).

**Gradient attribution** (:func:`gradient_attribution`, :func:`attributed_neurons`): one forward
and backward; each neuron's activation times the gradient of the target's first-token
log-probability, summed over the subject's last token and the last prompt token. It is the
attribution-patching estimate of zeroing the neuron (no corrupted prompt needed), and what the
ablation editor removes by default.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from excise.components import Neuron
from excise.hooks import act_name, retain_grad_into
from excise.interrupt import checkpoint
from excise.locate._inputs import fact_tokens, warn_if_unknown
from excise.locate.localization import Localization
from excise.runner import Runner
from excise.scoring import build_batch, first_answer_logprobs, target_logprob
from excise.tokens import subject_last_position


def knowledge_neurons(model, fact, steps: int = 20, progress: bool = True) -> Localization:
    """Integrated-gradients attribution ``[layer, neuron]`` of ``fact``'s target probability."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ft = fact_tokens(model, fact)
    n_layers = model.cfg.n_layers
    post = [act_name("neuron", layer) for layer in range(n_layers)]
    resid = [act_name("resid", layer) for layer in range(n_layers)]
    runner = Runner(model, ft.tokens, post + resid)
    warn_if_unknown(model, ft, runner.logits[:, ft.read], fact.target)
    last = ft.n_prompt - 1
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=model.cfg.device) / steps
    scores = []
    for layer in tqdm(range(n_layers), desc="knowledge neurons", disable=not progress):
        checkpoint(f"knowledge neurons of layer {layer}")
        base = runner.cache[post[layer]][0, last]  # [d_mlp]
        scaled = (alphas[:, None] * base).detach().requires_grad_(True)  # [steps, d_mlp]

        def scale(act, hook, scaled=scaled):  # [steps, pos, d_mlp]
            act = act.clone()
            act[:, last] = scaled.to(act.dtype)
            return act

        start = runner.cache[resid[layer]].expand(steps, -1, -1)
        with torch.enable_grad():
            logits = runner.run_from(layer, start, ft.read, [(post[layer], scale)])
            target_logprob(logits, ft.target_ids).exp().sum().backward()
        scores.append((base * scaled.grad.mean(0)).detach().float().cpu())
    scores = torch.stack(scores)  # [layer, d_mlp]
    return Localization(
        scores, ("layer", "neuron"),
        {"layer": [str(i) for i in range(n_layers)], "neuron": [str(i) for i in range(scores.shape[1])]},
        "knowledge_neurons", "neuron", {"steps": steps, "position": "last_prompt_token"},
        {"subject": fact.subject}, prompt=ft.prompt, target=fact.target,
        fact_id=getattr(fact, "id", None),
    )


def gradient_attribution(model, fact, layers=None) -> Localization:
    """Activation x gradient ``[layer, neuron]`` of the target's first-token log-probability.

    Counted only at the subject's last token and the last prompt token, where the fact is
    recalled; summing over all positions picks generic neurons (BOS sinks) that wreck the model
    when removed. ``layers`` (default all) restricts the map; its layer labels say which.
    """
    layers = list(layers if layers is not None else range(model.cfg.n_layers))
    batch = build_batch(model, [fact.text], [fact.target])
    where = [subject_last_position(model, fact.prompt, fact.subject), batch.prompt_lengths[0] - 1]
    acts = {}
    hooks = [(act_name("neuron", layer), retain_grad_into(acts, layer)) for layer in layers]
    with torch.enable_grad():
        first_answer_logprobs(model, batch, hooks)[0, batch.target_ids[0][0]].backward()
    for param in model.original_model.parameters():
        param.grad = None  # only the activations' gradients were wanted
    rows = [(acts[layer] * acts[layer].grad)[0, where].sum(0).detach() for layer in layers]
    scores = torch.stack(rows).float().cpu()  # [layer, d_mlp]: estimated drop when zeroed
    return Localization(
        scores, ("layer", "neuron"),
        {"layer": [str(i) for i in layers], "neuron": [str(i) for i in range(scores.shape[1])]},
        "gradient_attribution", "neuron",
        {"positions": "subject_last_and_last_prompt_token", "layers": layers}, {"positions": where},
        prompt=fact.text, target=fact.target, fact_id=getattr(fact, "id", None),
    )


def attributed_neurons(model, fact, k: int = 20, layers=None) -> list[Neuron]:
    """The ``k`` neurons ``fact`` relies on most by :func:`gradient_attribution`, best first."""
    return gradient_attribution(model, fact, layers).top(k)
