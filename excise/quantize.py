"""Round-to-nearest (RTN) weight quantization: the model a user would deploy in 8 or 4 bits.

An unlearning edit that moves many weights by tiny amounts can be undone by quantization: when the
changes are smaller than the quantization step, the edited and the original weights round to
(mostly) the same grid points, and the "forgotten" fact comes back (Zhang et al., ICLR 2025,
"Catastrophic failure of LLM unlearning via quantization"). This module simulates that deployment
by *fake quantization*: each weight is quantized to ``bits`` bits and dequantized back to floats,
so the model runs as usual but with the quantized values. Rounding does not erase every small
change: a weight moved by a fraction of a step crosses a rounding boundary with about that
probability, so many small changes survive on average; which edits survive is what the
quantization probe (:mod:`excise.verify.probes.quantization`) measures.

The schemes are the usual RTN deployment settings:

* 8 bits: symmetric, one scale per output channel (row of the ``[d_out, d_in]`` weight),
  integers in ``[-127, 127]``;
* fewer bits (4): asymmetric, one scale and zero point per group of ``group_size`` consecutive
  input columns of a row, integers in ``[0, 2**bits - 1]``; the range of each group is widened to
  contain 0 so that 0 stays exact (as in GPTQ's RTN baseline). When ``group_size`` does not divide
  ``d_in``, the last group of each row is shorter.

Only the linear projections inside the transformer blocks (attention and MLP) are quantized;
embeddings, norms and the (possibly tied) unembedding stay in float, as weight-only quantization
libraries do by default. We implement RTN here (a few lines, CPU, any dtype) rather than depending
on a library: optimum-quanto is in maintenance mode and torchao targets GPU kernels.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn

from excise.components import weight_from_view, weight_view

log = logging.getLogger(__name__)

SYMMETRIC_BITS = 8
"""Bit widths from this one up use the symmetric per-channel scheme; fewer bits use groups."""


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None,
                  symmetric: bool = False) -> torch.Tensor:
    """``weight`` ``[d_out, d_in]`` quantized to ``bits`` bits by round-to-nearest, dequantized.

    ``group_size``: input columns sharing one scale (None: the whole row, i.e. per output
    channel). ``symmetric``: scale ``max|w| / (2**(bits-1) - 1)`` and no zero point; otherwise
    scale ``(max - min) / (2**bits - 1)`` over the group's range widened to contain 0, and an
    integer zero point. Every value moves by at most half its group's step. Computed in float32;
    returns a new tensor of ``weight``'s dtype and shape.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    if weight.ndim != 2:
        raise ValueError(f"expected a [d_out, d_in] weight, got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    size = d_in if group_size is None else group_size
    if size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    w = weight.detach().float()
    parts = []
    for start in range(0, d_in, size):
        chunk = w[:, start:start + size]  # [d_out, group]; one scale per row of it
        parts.append(_round_rows(chunk, bits, symmetric))
    return torch.cat(parts, dim=1).to(weight.dtype)


def _round_rows(x: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """``x`` ``[rows, cols]`` quantized and dequantized with one scale (and zero point) per row."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(dim=1, keepdim=True) / qmax  # [rows, 1]
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (x / scale).round().clamp(-qmax, qmax) * scale
    qmax = 2 ** bits - 1
    low = x.amin(dim=1, keepdim=True).clamp(max=0)  # [rows, 1]
    high = x.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = (-low / scale).round()
    q = ((x / scale).round() + zero).clamp(0, qmax)
    return (q - zero) * scale


def scheme(bits: int, group_size: int | None) -> tuple[int | None, bool]:
    """``(group_size, symmetric)`` used at ``bits``: per channel and symmetric from
    :data:`SYMMETRIC_BITS` bits up, else ``group_size`` groups, asymmetric."""
    return (None, True) if bits >= SYMMETRIC_BITS else (group_size, False)


def block_linears(model) -> dict[str, nn.Module]:
    """The live linear projections (``nn.Linear`` or GPT-2 ``Conv1D``) inside every transformer
    block of a TransformerBridge, by name (``"blocks.{l}.{path}"``), each weight once.

    Where the bridge splits a joint QKV projection into q/k/v modules that read the joint weight
    (GPT-2, GPT-NeoX, Phi-3: :func:`excise.bridge_params.tie_split_projections`), only the joint weight
    is kept, so no value is quantized twice and every weight returned is a live parameter.
    """
    candidates: dict[str, nn.Module] = {}
    for layer, block in enumerate(model.blocks):
        for path, module in block.original_component.named_modules():
            linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
            if linear and isinstance(module.weight, nn.Parameter):  # not a view read from another
                name = path.replace("._original_component", "").replace("_original_component.", "")
                candidates[f"blocks.{layer}.{name}"] = module
    owner: dict[int, tuple[str, int]] = {}  # storage -> (name, numel) of the largest weight on it
    for name, module in candidates.items():
        storage, size = module.weight.untyped_storage().data_ptr(), module.weight.numel()
        if storage not in owner or size > owner[storage][1]:
            owner[storage] = (name, size)
    kept = {name for name, _ in owner.values()}
    return {name: module for name, module in candidates.items() if name in kept}


@contextmanager
def quantized(model, bits: int, group_size: int | None = 128):
    """Inside ``with``, every linear weight of the transformer blocks is replaced by its
    :func:`fake_quantize` d version (scheme by :func:`scheme`); yields the names of the quantized
    weights. On exit, even on error, the original weights are written back bit for bit.
    """
    modules = block_linears(model)
    group, symmetric = scheme(bits, group_size)
    saved = {name: module.weight.detach().clone() for name, module in modules.items()}
    try:
        with torch.no_grad():
            for module in modules.values():
                rows = weight_view(module).T  # [d_out, d_in] whatever the layout
                module.weight.copy_(weight_from_view(module, fake_quantize(rows, bits, group, symmetric).T))
        log.debug("quantized %d block weights to %d bits (group %s, symmetric %s)", len(modules), bits,
                  group, symmetric)
        yield list(modules)
    finally:
        with torch.no_grad():
            for name, module in modules.items():
                module.weight.copy_(saved[name])
