"""Matrix products in bfloat16 for loops that optimise a small vector through a frozen float32 model.

An editor's value optimisation trains one vector ``[d_model]`` through the blocks after the edited
layer, a forward and a backward pass per step; on a CPU, almost all of that time is matrix
products. Where the hardware multiplies bfloat16 natively (x86 CPUs with AVX512-BF16 or AMX, and
most GPUs), those products take about half the time of float32 ones. :func:`bfloat16_matmuls`
runs a block of code that way without changing the model for anyone else: inside it the float32
weight matrices of the given modules hold bfloat16 copies (so autocast does not cast every weight
again at every call) and autocast runs the matrix products in bfloat16, while norms (their 1-D
weights stay float32), softmaxes and the residual stream stay float32; on exit (an error or an
interrupt included) every matrix gets its own float32 tensor back, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch


def fast_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (faster than float32 there)."""
    device = torch.device(device)
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def float32_matrices(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """The distinct float32 parameters of ``modules`` with two or more dimensions, the ones matrix
    products read (a tied weight once; norm weights and biases are left out)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        for param in module.parameters():
            if param.dtype == torch.float32 and param.dim() >= 2:
                seen.setdefault(id(param), param)
    return list(seen.values())


@contextmanager
def _autocast(device_types: list[str], **kwargs) -> Iterator[None]:
    """``torch.autocast(device_type, **kwargs)`` on each of ``device_types`` at once."""
    with ExitStack() as stack:
        for device_type in device_types:
            stack.enter_context(torch.autocast(device_type, **kwargs))
        yield


class Bfloat16Products:
    """The state inside :func:`bfloat16_matmuls`: the swapped matrices, their float32 originals
    and bfloat16 copies, and the devices autocast runs on."""

    def __init__(self, params: list[torch.nn.Parameter], devices: list[str]):
        self.params = params
        self.devices = devices
        self.originals = [p.data for p in params]
        self.copies = [p.data.to(torch.bfloat16) for p in params]

    def _hold(self, tensors: list[torch.Tensor]) -> None:
        for param, tensor in zip(self.params, tensors):
            param.data = tensor

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Inside ``with``: the float32 weights and float32 products again (a check in full
        precision, e.g. whether a goal reached with bfloat16 products holds); afterwards whatever
        the matrices held before (bfloat16, or float32 where ``exact()`` is nested in another)."""
        held = [p.data for p in self.params]
        self._hold(self.originals)
        try:
            with _autocast(self.devices, enabled=False):
                yield
        finally:
            self._hold(held)


@contextmanager
def bfloat16_matmuls(modules: Iterable[torch.nn.Module]) -> Iterator[Bfloat16Products]:
    """Inside ``with``: ``modules``' float32 weight matrices (:func:`float32_matrices`) hold
    bfloat16 copies and autocast runs matrix products in bfloat16 on their devices; on exit each
    matrix's own float32 tensor is put back (the weights are bit-identical afterwards). Yields a
    :class:`Bfloat16Products`, whose ``exact()`` goes back to float32 for a check.

    Only for frozen weights: a parameter that requires a gradient raises ``ValueError`` (its
    gradient would be bfloat16 and an optimiser step would write to the copy).
    """
    params = float32_matrices(modules)
    trained = [p for p in params if p.requires_grad]
    if trained:
        raise ValueError(f"bfloat16_matmuls needs frozen weights; {len(trained)} parameters require "
                         "a gradient (wrap the loop in excise.components.frozen(model))")
    products = Bfloat16Products(params, sorted({p.device.type for p in params} or {"cpu"}))
    try:
        products._hold(products.copies)
        with _autocast(products.devices, dtype=torch.bfloat16):
            yield products
    finally:
        products._hold(products.originals)
