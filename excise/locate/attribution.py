"""Attribution patching (AtP, Nanda 2023; AtP*, Kramar et al. 2024): patching by gradient.

Exact activation patching needs one forward per component. Its first-order Taylor approximation,
``metric(patched) - metric(corrupted) ~ (a_clean - a_corrupted) . d metric / d a`` with the
gradient taken on the corrupted run, scores every head (``attn.hook_z``) and every neuron
(``mlp.hook_post``) from one clean forward plus one corrupted forward and backward. Scores use the
normalised logit difference of :mod:`excise.locate.patch`, so they approximate its numbers.
``verify_top=k`` re-runs exact patching on the ``k`` largest-magnitude candidates and writes the
exact values over the estimates (the AtP* safeguard against the approximation's misses).
"""

from __future__ import annotations

import torch

from excise.components import Head, Neuron
from excise.hooks import act_name, retain_grad_into, site_name
from excise.locate.localization import Localization
from excise.locate.patch import PatchSetup, patch_with


def attribution_scores(setup: PatchSetup, site: str) -> torch.Tensor:
    """AtP estimates ``[layer, head]`` or ``[layer, neuron]`` for a prepared pair."""
    model = setup.model
    n = model.cfg.n_layers
    names = [act_name(site, layer) for layer in range(n)]
    acts: dict[str, torch.Tensor] = {}

    def leaf(act, hook):  # make everything downstream differentiable even with frozen weights
        return act.detach().requires_grad_(True)

    hooks = [("hook_embed", leaf)] + [(name, retain_grad_into(acts, name)) for name in names]
    with torch.enable_grad():
        logits = model.run_with_hooks(setup.corrupted_tokens, fwd_hooks=hooks)
        metric = setup.normalise(setup.logit_diff(logits[:, setup.read])).sum()
        metric.backward()
    rows = []
    for name in names:
        delta = setup.clean.cache[name][0] - acts[name][0].detach()  # [pos, ...]
        effect = delta * acts[name].grad[0]
        rows.append(effect.sum(0) if site == "neuron" else effect.sum((0, 2)))  # [width]
    return torch.stack(rows).float().cpu()  # [layer, width]


def attribution_patch(model, clean, corrupted, answer, wrong_answer, site: str = "neuron",
                      verify_top: int = 0, progress: bool = True) -> Localization:
    """Attribution-patching scores of every ``site`` component (``"head"`` or ``"neuron"``).

    Arguments as :func:`excise.locate.activation_patch`. ``verify_top``: re-check that many
    top-|score| candidates with exact patching; ``meta["verified"]`` lists estimate vs exact.
    """
    site = site_name(site, ("head", "neuron"))
    setup = PatchSetup(model, clean, corrupted, answer, wrong_answer, sites=(site,))
    scores = attribution_scores(setup, site)
    width = scores.shape[1]
    meta = setup.meta()
    if verify_top > 0:
        order = scores.flatten().abs().argsort(descending=True)[:verify_top]
        kind = Head if site == "head" else Neuron
        candidates = [kind(int(i) // width, int(i) % width) for i in order]
        exact = patch_with(setup, site, candidates, progress=progress).scores
        meta["verified"] = []
        for c in candidates:
            col = c.head if site == "head" else c.index
            meta["verified"].append({"component": c.key, "attribution": float(scores[c.layer, col]),
                                     "exact": float(exact[c.layer, col])})
            scores[c.layer, col] = exact[c.layer, col]
    labels = {"layer": [str(i) for i in range(scores.shape[0])], site: [str(i) for i in range(width)]}
    return Localization(scores, ("layer", site), labels, "attribution_patch", site,
                        {"metric": "normalised_logit_diff", "verify_top": verify_top}, meta,
                        **setup.about())
