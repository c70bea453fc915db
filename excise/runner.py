"""Run a model from block ``l`` onward for a batch of residual streams: the engine of fast patching
and of the editors' value optimisation.

A patch at layer ``l`` (or a vector added to block ``l``'s MLP output) leaves blocks ``0..l-1``
untouched, so every patched run can start from the cached residual stream entering block ``l``.
:class:`Runner` records, during one ordinary forward, the arguments the bridge passes to each
block (attention mask, rotary embeddings, position ids), then calls ``model.blocks[l:]`` directly
on a batch of residuals and unembeds only the positions a metric reads (soft-capping the logits
where the model does). TransformerLens hooks inside the blocks still fire, so per-row patches are
ordinary hooks. Tests check it against the full forward on the tiny architectures and on the
families whose blocks or logits differ most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from excise.hooks import trace
from excise.scoring import unembed_final

HookList = Sequence[tuple[str, Callable]]


def _sanitize(value, key: str | None = None):
    """Drop KV caches from captured block arguments (they would grow with every call)."""
    from transformers.cache_utils import Cache

    if isinstance(value, Cache):
        return None
    if key == "use_cache":
        return False
    return value


class Runner:
    """Cached block arguments for a token batch, and batched partial forwards.

    ``tokens`` is ``[batch, pos]`` (one sequence, ``[1, pos]``, for patching; partial forwards
    then take any number of rows). ``cache`` holds the activations named by ``names`` from the
    capturing forward (``[batch, pos, ...]`` each); ``logits`` its logits ``[batch, pos, d_vocab]``.
    """

    def __init__(self, model, tokens: torch.Tensor, names: Iterable[str] = (), fwd_hooks: HookList = ()):
        self.model = model
        self.tokens = tokens
        self.n_layers = model.cfg.n_layers
        wanted = set(names)
        blocks = dict(enumerate(model.blocks))
        with trace(blocks, call_args=True, detach=False) as seen, torch.no_grad(), \
                model.hooks(fwd_hooks=list(fwd_hooks)):
            self.logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        self.cache = {name: cache[name] for name in wanted}
        self.calls: dict[int, tuple[tuple, dict]] = {
            layer: (tuple(_sanitize(a) for a in seen[layer].args),
                    {k: _sanitize(v, k) for k, v in seen[layer].kwargs.items()})
            for layer in blocks}

    def run_from(
        self,
        layer: int,
        resid: torch.Tensor,
        read: Sequence[int],
        fwd_hooks: HookList = (),
        joins: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, len(read), d_vocab]`` of running blocks ``layer..`` on ``resid``.

        ``resid`` ``[batch, pos, d_model]`` is the residual stream entering block ``layer``
        (``layer == n_layers`` means the final residual). ``joins`` maps later block indices to
        more rows ``[n, pos, d_model]`` appended to the batch as it enters that block, so runs
        that only differ from the cached one from block ``k`` on start there instead of
        repeating blocks ``layer..k-1`` (the batch grows; rows keep their order of joining).
        Gradients flow when enabled.
        """
        joins = joins or {}
        if any(index <= layer or index > self.n_layers for index in joins):
            raise ValueError(f"joins must enter after block {layer} and by block {self.n_layers}, "
                             f"got {sorted(joins)}")
        x = self.final_resid(layer, resid, fwd_hooks, joins)
        return self.logits_of(x[:, list(read)])  # [batch, n_read, d_vocab]

    def final_resid(self, layer: int, resid: torch.Tensor, fwd_hooks: HookList = (),
                    joins: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The residual stream ``[batch, pos, d_model]`` leaving the last block (before the final
        norm) when blocks ``layer..`` run on ``resid``; ``joins`` as in :meth:`run_from`. Callers
        that read a few positions of each row unembed only those (:meth:`logits_of`)."""
        x = resid
        joins = joins or {}
        with self.model.hooks(fwd_hooks=list(fwd_hooks)):
            for index in range(layer, self.n_layers):
                if index in joins:
                    x = torch.cat([x, joins[index].to(x.dtype)])
                args, kwargs = self.calls[index]
                out = self.model.blocks[index](x, *args, **kwargs)
                x = out[0] if isinstance(out, tuple) else out
        if self.n_layers in joins:
            x = torch.cat([x, joins[self.n_layers].to(x.dtype)])
        return x

    def logits_of(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., d_vocab]`` of final residuals ``[..., d_model]``: final norm, unembed, and
        the soft-cap of models that cap their logits (Gemma 2), which the bridge's full forward
        applies after the unembedding."""
        return unembed_final(self.model, resid)


def chunks(n: int, size: int) -> list[slice]:
    """Slices covering ``range(n)`` in pieces of at most ``size``."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def rows_per_chunk(n_pos: int, budget_tokens: int = 2048) -> int:
    """How many rows of ``n_pos`` tokens to batch together (bounds memory, keeps batches big)."""
    return max(1, budget_tokens // max(1, n_pos))
