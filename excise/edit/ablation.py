"""Bake the ablation of located neurons, heads or whole MLPs into the weights.

* ``how="zero"``: the component stops writing to the residual stream. A neuron's contribution
  is ``act_i * W_out[i]``, so zeroing row ``i`` of the MLP output projection removes it exactly,
  whatever the MLP's gating or biases; a head's contribution is ``z_h @ W_O[h]``, so zeroing the
  head's rows of the attention output projection removes it exactly.
* ``how="mean"``: the component writes its *average* contribution instead of the input-dependent
  one: the row is zeroed and ``mean(act_i) * W_out[i]`` (or ``mean(z_h) @ W_O[h]``) is folded into
  the projection's output bias. Means come from the same text sample as the key statistics.
  Architectures without output biases (Llama) cannot hold that constant: mean ablation refuses
  them with a clear error (use ``how="zero"``).
"""

from __future__ import annotations

import logging

import torch

from excise.components import (
    MLP,
    Head,
    Neuron,
    attn_out_module,
    check_component,
    mlp_out_module,
    param_name,
    weight_from_view,
    weight_view,
)
from excise.edit.record import Edit, EditError, make_edit
from excise.edit.stats import SampleSpec, cached_sample_tokens
from excise.hooks import forward_until, trace
from excise.tokens import pad_rows

log = logging.getLogger(__name__)


def ablate(model, components, how: str = "zero", *, corpus: str | None = None, fact_ids=(),
           progress: bool = True) -> Edit:
    """Zero- or mean-ablate ``components`` (Neuron/Head/MLP) in the weights; applies and returns the Edit."""
    from excise.model import weights_hash

    components = sorted(set(components), key=lambda c: (type(c).__name__, c))
    if not components:
        raise ValueError("ablate() needs at least one component (e.g. localization.top(10))")
    if how not in ("zero", "mean"):
        raise ValueError(f"unknown ablation {how!r}; use 'zero' or 'mean'")
    for component in components:
        check_component(model, component)
    base_hash = weights_hash(model)
    modules = [_module(model, c) for c in components]
    if how == "mean":
        missing = [c.key for c, m in zip(components, modules) if m.bias is None]
        if missing:
            raise EditError(
                f"mean ablation of {missing[0]} needs an output bias to hold the mean "
                "contribution, and this architecture has none; use how='zero'"
            )
        means = input_means(model, set(modules), SampleSpec(corpus=corpus), base_hash)
    new = {}  # module -> [weight view copy [d_in, d_model], bias copy or None]
    for component, module in zip(components, modules):
        view, bias = new.setdefault(module, _copies(module))
        rows = _rows(model, component)
        if how == "mean":  # in float32, rounded to the bias's dtype once
            bias += means[module][rows] @ view[rows].to(means[module].dtype)  # [d_model]
        view[rows] = 0.0
    new_weights = {}
    for module, (view, bias) in new.items():
        new_weights[param_name(model, module.weight)] = weight_from_view(module, view)
        if how == "mean":
            new_weights[param_name(model, module.bias)] = bias
    info = {"how": how, "n_components": len(components),
            "parameters": sorted(new_weights)}
    log.info("ablate: %s-ablated %d components", how, len(components))
    return make_edit(model, "ablate", new_weights, settings={"how": how, "corpus": corpus},
                     fact_ids=list(fact_ids), components=components, base_hash=base_hash, info=info)


def _module(model, component):
    if isinstance(component, Head):
        return attn_out_module(model, component.layer)
    if isinstance(component, Neuron | MLP):
        return mlp_out_module(model, component.layer)
    raise TypeError(f"cannot ablate {component!r}: expected Neuron, Head or MLP")


def _rows(model, component) -> slice | list[int]:
    """Rows of the ``[d_in, d_model]`` projection view that carry ``component``'s output."""
    if isinstance(component, Neuron):
        return [component.index]
    if isinstance(component, Head):
        d_head = model.cfg.d_head
        return slice(component.head * d_head, (component.head + 1) * d_head)
    return slice(None)


def _copies(module) -> list:
    view = weight_view(module).detach().clone()
    bias = None if module.bias is None else module.bias.detach().clone()
    return [view, bias]


@torch.no_grad()
def input_means(model, modules, spec: SampleSpec, base_hash: str, batch_size: int = 16) -> dict:
    """``{module: [d_in]}``: the mean input of each projection over the text sample."""
    rows = cached_sample_tokens(model, spec, base_hash)
    modules = list(modules)
    sums, count = {m: 0.0 for m in modules}, 0
    with trace(dict(enumerate(modules)), inputs=True) as seen:
        for start in range(0, len(rows), batch_size):
            tokens, mask = pad_rows(model, rows[start:start + batch_size])
            forward_until(model, tokens, modules)
            for i, module in enumerate(modules):
                inputs = seen[i].input  # [batch, pos, d_in], on the module's device
                sums[module] = sums[module] + inputs[mask.to(inputs.device)].double().sum(0)
            count += int(mask.sum())
    return {m: (s / count).float() for m, s in sums.items()}
