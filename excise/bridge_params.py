"""The bridge's parameters, one per Hugging Face weight, after ``TransformerBridge`` boots a model.

One weight, one parameter: TransformerBridge splits fused projections (GPT-2's ``c_attn``,
Phi-3's ``qkv_proj`` and ``gate_up_proj``, GPT-NeoX's ``query_key_value``) into q/k/v (gate/up)
modules whose parameters alias the fused Hugging Face weight or copy it; :func:`tie_split_projections`
makes those read the fused parameter instead, so training, saving and an edit's undo see one tensor.
A norm without a weight (OLMo's LayerNorm) gets a unit one the bridge can read when a hook freezes
its scale (:func:`unit_weights_for_weightless_norms`).
"""

from __future__ import annotations

import logging

import einops
import torch
from torch import nn

log = logging.getLogger(__name__)


def one_parameter_per_weight(bridge) -> None:
    """Apply both repairs of this module to a freshly booted bridge (:func:`excise.load_model` does)."""
    tie_split_projections(bridge)
    unit_weights_for_weightless_norms(bridge)


def unit_weights_for_weightless_norms(bridge) -> int:
    """Give each norm without a weight (OLMo's LayerNorm) a unit ``weight`` the bridge can read.

    When a hook edits a norm's ``hook_scale`` or ``hook_normalized`` (freezing a scale, as naive
    direct effects do), TransformerBridge rebuilds the norm's output as ``normalized * weight +
    bias`` from the Hugging Face module's ``weight``, and fails where the module has none. A
    non-persistent buffer of ones is what such a norm multiplies by: not a parameter, not saved,
    not hashed, and the module's own forward gives the same values. Returns the number of norms.
    """
    from transformer_lens.model_bridge.generalized_components import NormalizationBridge

    from excise.export import plain_name

    hf = bridge.original_model
    reference = next(hf.parameters())
    placed = getattr(hf, "hf_device_map", None) or {}  # module name -> device, under a device_map
    filled = 0
    for name, component in list(hf.named_modules()):
        norm = _innermost(component) if isinstance(component, NormalizationBridge) else None
        if norm is None or isinstance(norm, nn.Identity) or getattr(norm, "weight", None) is not None:
            continue
        path = plain_name(name)
        owner = max((k for k in placed if k == "" or path == k or path.startswith(k + ".")), key=len, default=None)
        device = torch.device(placed[owner]) if owner is not None else reference.device
        shape = tuple(getattr(norm, "normalized_shape", (bridge.cfg.d_model,)))
        norm._parameters.pop("weight", None)  # an nn.LayerNorm without affine lists it as None
        norm.register_buffer("weight", torch.ones(shape, dtype=reference.dtype, device=device),
                             persistent=False)
        filled += 1
    return filled


def tie_split_projections(bridge) -> int:
    """Make the q/k/v (gate/up) weights the bridge split off a fused weight read that weight.

    TransformerBridge splits a fused projection into separate ``nn.Linear`` modules at boot:
    GPT-2's ``c_attn`` and Phi-3's ``qkv_proj`` / ``gate_up_proj`` into parameters that are views
    of the fused weight's memory, GPT-NeoX's per-head interleaved ``query_key_value``
    (rows ``[head, (q k v), d_head]``) into copies. The model then lists one weight as two
    parameters: gradients reach only the split ones, writing weights back name by name (an edit's
    undo) can overwrite one with the other's newer values, and a copy trained or edited never
    reaches the Hugging Face weight that is saved. Here each split module becomes a
    :class:`FusedViewLinear`, whose weight and bias are taken from the fused parameter at each
    read (a strided view, or for the interleaved layout a per-head gather), so the Hugging Face
    parameter is the only one and gradients reach it. Returns the number of split modules tied.
    """
    tied = 0
    for component in list(bridge.modules()):
        for fused, parts, n_heads in _fused_splits(component):
            tied += sum(_view_fused(part, fused, position, len(parts), n_heads)
                        for position, part in enumerate(parts))
    log.debug("tied %d split projections to their fused weights", tied)
    return tied


class FusedViewLinear(nn.Linear):
    """An ``nn.Linear`` split off a fused projection: its weight and bias are read from the fused
    module's parameters at each read (``_excise_fused``: the module and each tensor's layout), so
    they follow every write to the fused weight and pass gradients to it.

    A layout is ``("strided", source, shape, stride, offset)``: a view of the fused parameter
    ``source`` (writes to it write the fused weight); or ``("heads", source, n_heads, n_parts,
    position)``: part ``position`` of a ``[(head part d_head), ...]`` interleaved weight, gathered
    (a copy: write the fused weight, never this one).
    """

    @property
    def weight(self) -> torch.Tensor:
        return self._fused_view("weight")

    @property
    def bias(self) -> torch.Tensor | None:
        return self._fused_view("bias")

    def _fused_view(self, name: str) -> torch.Tensor | None:
        fused, layout = self.__dict__["_excise_fused"]
        if name not in layout:
            return self._parameters.get(name)
        return _read_layout(fused, layout[name])


def _read_layout(fused: nn.Module, layout: tuple) -> torch.Tensor:
    """The tensor ``layout`` (see :class:`FusedViewLinear`) describes, read from ``fused``."""
    kind, source, *where = layout
    param = getattr(fused, source)
    if kind == "strided":
        shape, stride, offset = where
        return param.as_strided(shape, stride, param.storage_offset() + offset)
    n_heads, n_parts, position = where
    parts = einops.rearrange(param, "(head part d_head) ... -> part (head d_head) ...",
                             head=n_heads, part=n_parts)
    return parts[position]


def _innermost(module: nn.Module) -> nn.Module:
    """The Hugging Face module under any bridge wrappers (``original_component`` chains)."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component
    return module


def _fused_splits(component) -> list[tuple[nn.Module, list[nn.Module], int | None]]:
    """``[(fused HF module, the modules split off it, heads)]`` for a bridge component that splits
    a fused q/k/v or gate/up projection (TransformerLens' joint bridges); ``[]`` for any other.
    ``heads``: the attention's head count (for per-head interleaved q/k/v), None for gate/up."""
    original = getattr(component, "original_component", None)
    if original is None:
        return []
    found = []
    qkv = getattr(component, "submodules", {}).get("qkv")
    if callable(getattr(component, "split_qkv_matrix", None)) and qkv is not None \
            and hasattr(original, qkv.name):
        n_heads = getattr(getattr(component, "config", None), "n_heads", None)
        found.append((getattr(original, qkv.name), [component.q, component.k, component.v], n_heads))
    fused_attr = getattr(component, "fused_attr", None)
    if callable(getattr(component, "split_gate_up_matrix", None)) and hasattr(original, str(fused_attr)):
        found.append((getattr(original, fused_attr), [component.gate, getattr(component, "in")], None))
    return [(_innermost(fused), [_innermost(p) for p in parts], heads) for fused, parts, heads in found]


def _layout(param: torch.Tensor, fused: nn.Module, position: int, n_parts: int,
            n_heads: int | None) -> tuple | None:
    """How ``param`` (of a module split off ``fused``, part ``position`` of ``n_parts``) is read
    from ``fused``: a view of one of its parameters, else the per-head interleaved part of the
    one of matching size; None when neither (checked by value in :func:`_view_fused`)."""
    sources = dict(fused.named_parameters(recurse=False))
    for source, whole in sources.items():
        if whole.untyped_storage().data_ptr() == param.untyped_storage().data_ptr():
            return ("strided", source, tuple(param.shape), param.stride(),
                    param.storage_offset() - whole.storage_offset())
    for source, whole in sources.items():
        if n_heads and whole.shape[1:] == param.shape[1:] and whole.shape[0] == n_parts * param.shape[0] \
                and param.shape[0] % n_heads == 0:
            return ("heads", source, n_heads, n_parts, position)
    return None


def _view_fused(part: nn.Module, fused: nn.Module, position: int, n_parts: int,
                n_heads: int | None) -> int:
    """Turn ``part`` into a :class:`FusedViewLinear` reading ``fused``; 1 when done, 0 (nothing
    changed) unless ``part`` is a plain ``nn.Linear`` whose parameters are all views or per-head
    interleaved parts of ``fused``'s, equal to them."""
    if type(part) is not nn.Linear:
        return 0
    layout = {}
    for name, param in part.named_parameters(recurse=False):
        found = _layout(param, fused, position, n_parts, n_heads)
        if found is None:
            return 0
        layout[name] = found
    originals = {name: part._parameters.pop(name) for name in layout}
    part._excise_fused = (fused, layout)  # a tuple: not registered, so no second copy of fused
    part.__class__ = FusedViewLinear
    with torch.no_grad():
        same = all(torch.equal(getattr(part, name), original) for name, original in originals.items())
    if same:
        return 1
    part.__class__ = nn.Linear  # not the views we thought: put the parameters back
    part._parameters.update(originals)
    del part._excise_fused
    return 0
