"""Locate: find the layers, positions, heads and neurons that hold a fact.

Every locator returns a :class:`Localization`, whose ``.top(k)`` gives the addressed components
(:mod:`excise.components`) that the editors in :mod:`excise.edit` accept.

* :func:`causal_trace` - ROME's noise-and-restore trace over (layer, position).
* :func:`activation_patch` - exact clean->corrupted patching (resid_pre, attn_out, mlp_out, head,
  neuron); :func:`fact_activation_patch` builds the corrupted prompt from a fact set.
* :func:`attribution_patch` - the gradient approximation for every head or neuron at once (AtP),
  optionally re-checking the top candidates exactly (AtP*).
* :func:`knowledge_neurons` - integrated gradients over MLP neurons (Dai et al. 2022).
* :func:`direct_logit_attribution` - each head's / neuron's direct effect on the target logit.
* :func:`gradient_attribution` - activation x gradient of every neuron at the subject's last token
  and the answer position; :func:`attributed_neurons` takes its top ``k`` (ablation's default).
* :func:`compare` - several localizations side by side in one figure, sharing a colour scale where
  their scores share a unit.

All speak one site vocabulary (:data:`excise.hooks.SITES`: resid, attn, mlp, head, neuron).
``Localization.edit_layer()`` is the one rule for the MLP layer a rank-one edit rewrites.
"""

from __future__ import annotations

from excise._lazy import lazy_exports

_EXPORTS = {
    "Localization": "excise.locate.localization",
    "causal_trace": "excise.locate.trace",
    "activation_patch": "excise.locate.patch",
    "fact_activation_patch": "excise.locate.patch",
    "attribution_patch": "excise.locate.attribution",
    "knowledge_neurons": "excise.locate.neurons",
    "direct_logit_attribution": "excise.locate.dla",
    "gradient_attribution": "excise.locate.neurons",
    "attributed_neurons": "excise.locate.neurons",
    "compare": "excise.locate.side_by_side",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
