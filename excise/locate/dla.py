"""Direct logit attribution: how much each head or neuron writes the target logit directly.

At the last prompt position the final residual stream is a sum of component outputs. Freezing the
final normalisation's scale at its clean value makes the logit linear in that sum, so each head's
output ``z_h @ W_O[h]`` (or each neuron's ``post_i * W_out[i]``) gets its own share of
``logit(target)``. Direct effects only: what a component does through later layers is not counted
(use patching for that). One forward, no gradients.
"""

from __future__ import annotations

import einops
import torch

from excise.components import attn_out_weight, out_proj_weight
from excise.hooks import act_name, site_name
from excise.locate._inputs import fact_tokens, warn_if_unknown
from excise.locate.localization import Localization


def _unembed_direction(model, final: torch.Tensor, target: int) -> torch.Tensor:
    """``[d_model]`` vector ``v`` with ``logit(target) ~ v . c`` for a component output ``c``."""
    params = dict(model.ln_final.named_parameters())
    weight = next(v for k, v in params.items() if k.endswith("weight"))  # [d_model]
    eps = getattr(model.cfg, "eps", 1e-5)
    if model.cfg.normalization_type in ("RMS", "RMSPre"):
        scale = (final.pow(2).mean() + eps).sqrt()
        centre = False
    else:
        scale = (final.var(unbiased=False) + eps).sqrt()
        centre = True
    w_u = next(model.unembed.parameters())[target]  # [d_model]
    v = weight.detach() * w_u.detach() / scale
    return v - v.mean() if centre else v  # centring c is the same as centring v


@torch.no_grad()
def direct_logit_attribution(model, fact, site: str = "head") -> Localization:
    """Direct share of ``logit(first target token)`` per head (``[layer, head]``) or neuron."""
    site = site_name(site, ("head", "neuron"))
    ft = fact_tokens(model, fact)
    cfg = model.cfg
    names = [act_name(site, layer) for layer in range(cfg.n_layers)]
    final_name = act_name("resid_post", cfg.n_layers - 1)
    logits, cache = model.run_with_cache(ft.tokens, names_filter=lambda n: n in names or n == final_name)
    warn_if_unknown(model, ft, logits[:, ft.read], fact.target)
    last = ft.n_prompt - 1
    v = _unembed_direction(model, cache[final_name][0, last], ft.target_ids[0])
    rows = []
    for layer, name in enumerate(names):
        act = cache[name][0, last]
        if site == "head":  # act [head, d_head]
            w_o = einops.rearrange(attn_out_weight(model, layer).detach(),
                                   "(head d_head) d_model -> head d_head d_model", head=cfg.n_heads)
            rows.append(einops.einsum(act, w_o, v, "head d_head, head d_head d_model, d_model -> head"))
        else:  # act [d_mlp]
            rows.append(act * (out_proj_weight(model, layer).detach() @ v))
    scores = torch.stack(rows).float().cpu()
    return Localization(
        scores, ("layer", site),
        {"layer": [str(i) for i in range(cfg.n_layers)], site: [str(i) for i in range(scores.shape[1])]},
        "direct_logit_attribution", site, {"position": "last_prompt_token"}, {},
        prompt=ft.prompt, target=fact.target, fact_id=getattr(fact, "id", None),
    )
