"""Direct logit attribution: how much each head or neuron writes the target logit directly.

At the last prompt position the final residual stream is a sum of component outputs. Freezing
every normalisation's scale at its clean value makes the logit linear in that sum, so each head's
output ``z_h @ W_O[h]`` (or each neuron's ``post_i * W_out[i]``) gets its own share of
``logit(target)``. Frozen are the final norm and, where a block normalises a sublayer's output
before adding it to the residual stream (Gemma 2, OLMo 2), that post-norm: its scale is the RMS
of the whole sublayer output (the sum over heads or neurons plus the bias), so a head's output
reaches the stream as ``gain * output / clean_rms``. Each norm's behaviour is read from its Hugging
Face module (RMS or LayerNorm, the stored weight or ``1 + weight`` as in Gemma, no weight at all as
in OLMo), not from the model's name. Direct effects only: what a component does through later
layers is not counted (use patching for that). One forward, no gradients.

With final-logit soft-capping (Gemma 2: ``cap * tanh(z / cap)``) the shares are of the logit
``z`` before the cap, where they add up exactly; times the cap's local slope at the clean logit
(``meta["soft_cap_slope"]``) they are first-order shares of the capped logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
from torch import nn

from excise.components import attn_out_weight, out_proj_weight
from excise.hooks import act_name, site_name, trace
from excise.locate._inputs import fact_tokens, warn_if_unknown
from excise.locate.localization import Localization

POST_NORMS = {"head": "ln1_post", "neuron": "ln2_post"}
"""Site -> the bridge block's norm of that sublayer's output before the residual stream, where a
family has one (TransformerBridge's names for Gemma 2's and OLMo 2's post-norms)."""


@dataclass(frozen=True)
class FrozenNorm:
    """A normalisation ``x -> gain * centre(x) / scale(x) + bias`` read from its module; with
    ``scale`` frozen it is linear. ``centre``: subtract the mean (LayerNorm; RMSNorm does not);
    ``gain`` ``[d_model]``: what the module multiplies by (its weight, ``1 + weight``, or ones)."""

    centre: bool
    gain: torch.Tensor
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The clean scale of input ``x`` ``[d_model]``: its RMS (about the mean for LayerNorm)."""
        if self.centre:
            return (x.var(unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean() + self.eps).sqrt()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """What the norm makes of ``x`` ``[d_model]`` (without its bias), scale not frozen."""
        return self.gain.to(x) * (x - x.mean() if self.centre else x) / self.scale(x)

    def pull_back(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[d_model]`` direction ``u`` with ``v . norm(x + c) = v . norm(x) + u . c`` for any
        ``c`` when the scale stays at ``x``'s."""
        u = self.gain.to(v.device) * v / self.scale(x)
        return u - u.mean() if self.centre else u  # centring c is the same as centring u


def read_norm(module: nn.Module, d_model: int, eps: float = 1e-5) -> FrozenNorm:
    """How the Hugging Face norm ``module`` (under any bridge wrapper) normalises: LayerNorm or
    RMSNorm, its gain the stored weight, ``1 + weight`` (Gemma) or ones (no weight, as in OLMo),
    whichever reproduces the module's own output on a probe vector. ``eps``: the module's own
    (``eps`` / ``variance_epsilon``), else the given default. Raises for any other norm."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component
    eps = next((getattr(module, n) for n in ("eps", "variance_epsilon")
                if isinstance(getattr(module, n, None), float)), eps)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    gains = [torch.ones(d_model)] if weight is None else [weight.detach(), 1.0 + weight.detach()]
    candidates = [FrozenNorm(centre, gain, eps) for centre in (True, False) for gain in gains]
    probe = torch.linspace(-1.0, 3.0, d_model, device=gains[0].device)  # mean 1: centring shows
    with torch.no_grad():
        actual = module(probe.to(gains[0].dtype)[None])[0].float()
        if bias is not None:
            actual = actual - bias.detach().float()
        errors = [float((norm.normalise(probe).float() - actual).norm()) for norm in candidates]
    best = min(range(len(candidates)), key=errors.__getitem__)
    if errors[best] > 0.05 * float(actual.norm()):
        raise ValueError(f"cannot tell how {type(module).__name__} normalises (neither a LayerNorm nor "
                         "an RMSNorm scaling by its weight or 1 + weight): direct logit attribution "
                         "does not support it")
    return candidates[best]


def _unembed_direction(model, final: torch.Tensor, target: int) -> torch.Tensor:
    """``[d_model]`` vector ``v`` with ``logit(target) ~ v . c`` for a component output ``c``
    added to the final residual stream ``final`` (the final norm's scale frozen at ``final``'s)."""
    norm = read_norm(model.ln_final, model.cfg.d_model, getattr(model.cfg, "eps", 1e-5))
    w_u = next(model.unembed.parameters())[target]  # [d_model]
    return norm.pull_back(final, w_u.detach())


def _post_norms(model, site: str) -> dict[int, nn.Module]:
    """Layer -> the bridge's norm of ``site``'s sublayer output, for the blocks that have one."""
    norms = {layer: getattr(block, POST_NORMS[site], None) for layer, block in enumerate(model.blocks)}
    return {layer: norm for layer, norm in norms.items() if norm is not None}


@torch.no_grad()
def direct_logit_attribution(model, fact, site: str = "head") -> Localization:
    """Direct share of ``logit(first target token)`` per head (``[layer, head]``) or neuron."""
    site = site_name(site, ("head", "neuron"))
    ft = fact_tokens(model, fact)
    cfg = model.cfg
    names = [act_name(site, layer) for layer in range(cfg.n_layers)]
    final_name = act_name("resid_post", cfg.n_layers - 1)
    post_norms = _post_norms(model, site)
    with trace(post_norms, inputs=True) as sublayer_outputs:  # what each post-norm normalises
        logits, cache = model.run_with_cache(ft.tokens, names_filter=lambda n: n in names or n == final_name)
    warn_if_unknown(model, ft, logits[:, ft.read], fact.target)
    last = ft.n_prompt - 1
    v = _unembed_direction(model, cache[final_name][0, last], ft.target_ids[0])
    rows = []
    for layer, name in enumerate(names):
        act = cache[name][0, last]
        u = v  # the residual stream's direction, pulled back through this sublayer's post-norm
        if layer in post_norms:
            norm = read_norm(post_norms[layer], cfg.d_model, getattr(cfg, "eps", 1e-5))
            u = norm.pull_back(sublayer_outputs[layer].input[0, last], v)
        if site == "head":  # act [head, d_head]
            w_o = einops.rearrange(attn_out_weight(model, layer).detach(),
                                   "(head d_head) d_model -> head d_head d_model", head=cfg.n_heads)
            rows.append(einops.einsum(act, w_o, u, "head d_head, head d_head d_model, d_model -> head"))
        else:  # act [d_mlp]
            rows.append(act * (out_proj_weight(model, layer).detach() @ u))
    scores = torch.stack(rows).float().cpu()
    return Localization(
        scores, ("layer", site),
        {"layer": [str(i) for i in range(cfg.n_layers)], site: [str(i) for i in range(scores.shape[1])]},
        "direct_logit_attribution", site, {"position": "last_prompt_token"},
        _soft_cap(cfg, logits[0, last, ft.target_ids[0]]),
        prompt=ft.prompt, target=fact.target, fact_id=getattr(fact, "id", None),
    )


def _soft_cap(cfg, logit: torch.Tensor) -> dict:
    """The final soft-cap and its slope at the clean (capped) ``logit``: ``d logit / d z =
    1 - (logit / cap)**2``; ``{}`` for a model without one."""
    cap = float(getattr(cfg, "output_logits_soft_cap", 0.0) or 0.0)
    if cap <= 0:
        return {}
    return {"soft_cap": cap, "soft_cap_slope": 1.0 - (float(logit) / cap) ** 2}
