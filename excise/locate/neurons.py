"""Knowledge neurons (Dai et al. 2022): integrated gradients over MLP neurons.

For each layer, the MLP activations at the last prompt token are scaled from 0 to their value in
``steps`` Riemann steps; the attribution of neuron ``i`` is its activation times the mean gradient
of the target probability along that path. Neurons with large attribution "express" the fact.
Following the paper, one layer is scaled at a time; all ``steps`` of a layer are one batched
forward and backward that starts at that layer (earlier blocks are unchanged, so reused).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from excise.locate._inputs import fact_tokens, target_logprob, warn_if_unknown
from excise.locate._runner import Runner
from excise.locate.localization import Localization


def knowledge_neurons(model, fact, steps: int = 20, progress: bool = True) -> Localization:
    """Integrated-gradients attribution ``[layer, neuron]`` of ``fact``'s target probability."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ft = fact_tokens(model, fact)
    n_layers = model.cfg.n_layers
    post = [f"blocks.{layer}.mlp.hook_post" for layer in range(n_layers)]
    resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    runner = Runner(model, ft.tokens, post + resid)
    warn_if_unknown(model, ft, runner.logits[:, ft.read], fact.target)
    last = ft.n_prompt - 1
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=model.cfg.device) / steps
    scores = []
    for layer in tqdm(range(n_layers), desc="knowledge neurons", disable=not progress):
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
        {"prompt": ft.prompt, "target": fact.target, "subject": fact.subject,
         "fact_id": getattr(fact, "id", None)},
    )
