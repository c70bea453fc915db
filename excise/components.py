"""Addressed model components: the contract between locators and editors.

A locator's result names *where* a fact lives as a set of components; an editor rewrites exactly
those. Each component is a small frozen dataclass that knows its TransformerLens hook name and how
to reach the live ``nn.Parameter`` it corresponds to. Writing through TransformerBridge's stacked
views (``bridge.W_out``) changes nothing: they are copies. The live weights sit under the bridge
components (``bridge.blocks[l].mlp.out.original_component.weight``).

Weight layouts differ by architecture: GPT-2 stores ``Conv1D`` weights as ``[d_in, d_out]``,
``nn.Linear`` stores ``[d_out, d_in]``. :func:`out_proj_weight` hides that difference by returning
the MLP output projection as a ``[d_mlp, d_model]`` view of the live parameter ("neuron i writes row
i"), which works for GPT-2, Llama (gated MLP) and GPT-NeoX alike.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from excise.hooks import act_name


@dataclass(frozen=True, order=True)
class MLP:
    """A whole MLP layer; edits rewrite its output projection."""

    layer: int

    @property
    def key(self) -> str:
        return f"mlp.{self.layer}"

    @property
    def hook_name(self) -> str:
        return act_name("mlp", self.layer)


@dataclass(frozen=True, order=True)
class Neuron:
    """One MLP hidden unit (a row of the output projection, a column of the input)."""

    layer: int
    index: int

    @property
    def key(self) -> str:
        return f"neuron.{self.layer}.{self.index}"

    @property
    def hook_name(self) -> str:
        return act_name("neuron", self.layer)


@dataclass(frozen=True, order=True)
class Head:
    """One attention head (its slice of the attention output projection)."""

    layer: int
    head: int

    @property
    def key(self) -> str:
        return f"head.{self.layer}.{self.head}"

    @property
    def hook_name(self) -> str:
        return act_name("head", self.layer)


Component = MLP | Neuron | Head

_KEY = re.compile(r"^(mlp|neuron|head)\.(\d+)(?:\.(\d+))?$")


def parse_component(key: str) -> Component:
    """Parse ``"mlp.5"``, ``"neuron.5.123"`` or ``"head.5.3"`` back into a component."""
    match = _KEY.match(key.strip())
    if not match:
        raise ValueError(
            f"cannot parse component {key!r}: expected 'mlp.L', 'neuron.L.I' or 'head.L.H'"
        )
    kind, layer, index = match.group(1), int(match.group(2)), match.group(3)
    if kind == "mlp":
        if index is not None:
            raise ValueError(f"{key!r}: an MLP address has only a layer, e.g. 'mlp.5'")
        return MLP(layer)
    if index is None:
        raise ValueError(f"{key!r}: a {kind} address needs a layer and an index, e.g. '{kind}.5.3'")
    return Neuron(layer, int(index)) if kind == "neuron" else Head(layer, int(index))


def check_component(model, component: Component) -> None:
    """Raise a clear error when ``component`` does not exist in ``model``."""
    cfg = model.cfg
    if not 0 <= component.layer < cfg.n_layers:
        raise ValueError(f"{component.key}: layer out of range, the model has {cfg.n_layers} layers")
    if isinstance(component, Neuron) and not 0 <= component.index < cfg.d_mlp:
        raise ValueError(f"{component.key}: neuron out of range, d_mlp is {cfg.d_mlp}")
    if isinstance(component, Head) and not 0 <= component.head < cfg.n_heads:
        raise ValueError(f"{component.key}: head out of range, the model has {cfg.n_heads} heads")


def _live_linear(bridge_linear) -> nn.Module:
    """The HF module (``nn.Linear`` or GPT-2 ``Conv1D``) under a bridge ``LinearBridge``."""
    return bridge_linear.original_component


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_view(module: nn.Module) -> torch.Tensor:
    """A projection's live weight as ``[d_in, d_out]`` ("input row i writes row i"), whatever the
    layout (GPT-2 ``Conv1D`` stores it so; ``nn.Linear`` stores the transpose)."""
    return module.weight if _is_conv1d(module) else module.weight.T


def weight_from_view(module: nn.Module, view: torch.Tensor) -> torch.Tensor:
    """The value of ``module.weight`` in its own layout for a new ``[d_in, d_out]`` ``view``."""
    return view if _is_conv1d(module) else view.T.contiguous()


def mlp_in_module(model, layer: int) -> nn.Module:
    """The live MLP input projection (``up_proj`` / ``c_fc`` / ``dense_h_to_4h``)."""
    return _live_linear(model.blocks[layer].mlp.__getattr__("in"))


def mlp_out_module(model, layer: int) -> nn.Module:
    """The live MLP output projection (``down_proj`` / ``c_proj`` / ``dense_4h_to_h``)."""
    return _live_linear(model.blocks[layer].mlp.out)


def attn_out_module(model, layer: int) -> nn.Module:
    """The live attention output projection (``o_proj`` / ``c_proj`` / ``dense``)."""
    return _live_linear(model.blocks[layer].attn.o)


def out_proj_weight(model, layer: int) -> torch.Tensor:
    """The MLP output projection of ``layer`` as a live ``[d_mlp, d_model]`` view.

    In-place writes to the returned tensor change the model (it is a view of the parameter).
    """
    return weight_view(mlp_out_module(model, layer))


def in_proj_weight(model, layer: int) -> torch.Tensor:
    """The MLP input projection of ``layer`` as a live ``[d_model, d_mlp]`` view."""
    return weight_view(mlp_in_module(model, layer))


def attn_out_weight(model, layer: int) -> torch.Tensor:
    """The attention output projection as a live ``[n_heads * d_head, d_model]`` view."""
    return weight_view(attn_out_module(model, layer))


def out_proj_bias(model, layer: int) -> torch.Tensor | None:
    """The MLP output projection's bias ``[d_model]`` (None for bias-free models like Llama)."""
    return mlp_out_module(model, layer).bias


def attn_out_bias(model, layer: int) -> torch.Tensor | None:
    """The attention output projection's bias ``[d_model]``, if any."""
    return attn_out_module(model, layer).bias


def parameter_names(model, components) -> list[str]:
    """Names (in ``model.original_model.named_parameters()``) of the weights the components own.

    MLP layers and neurons own their MLP's output projection; heads own the attention output
    projection. Used to restrict fine-tuning baselines to located parameters.
    """
    wanted = set()
    for component in components:
        if isinstance(component, Head):
            wanted.add(id(attn_out_module(model, component.layer).weight))
        else:
            wanted.add(id(mlp_out_module(model, component.layer).weight))
    return [name for name, p in model.original_model.named_parameters() if id(p) in wanted]


def param_name(model, param: torch.Tensor) -> str:
    """The name of live parameter ``param`` in ``model.original_model.named_parameters()``."""
    for name, candidate in model.original_model.named_parameters():
        if candidate is param:
            return name
    raise KeyError("parameter not found in model.original_model")


@contextmanager
def frozen(model):
    """Turn off ``requires_grad`` on every parameter inside ``with`` (restored on exit)."""
    params = list(model.original_model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
