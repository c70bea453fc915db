"""Reuse a model state's measurements across ``verify`` calls on the same weights.

Comparing editors on one fact (the explorer, notebook 03, ``excise eval``) verifies the same
unedited model again and again: each ``verify`` measures its "before" state (every probe that is
not an attack, the scores, perplexity, fluency, circuits), which costs as much as measuring the
edited state. Every measurement is deterministic given the weights, the facts and the budgets
(sampling is seeded), so the state measured once can be returned again when all of these are
the same. The key holds the weights' SHA-256 (:func:`excise.export.weights_hash`), so a state is
reused only for bit-identical weights; a model with hooks on its hook points (TransformerLens
``add_hook``, a hook-based ablation) is never cached: hooks change its outputs, not its weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

CAPACITY = 4
"""States kept (the oldest is dropped first)."""

_STATES: OrderedDict[str, object] = OrderedDict()


def state_key(model, weights: str, facts, probes, setup, **options) -> str:
    """The key of measuring ``model`` (whose :func:`~excise.export.weights_hash` is ``weights``;
    one without :func:`hooked` hook points) on ``facts`` with ``probes`` (their names), ``setup``
    and the other ``options``."""
    device = next(iter(model.parameters())).device
    return json.dumps({
        "weights": weights, "device": str(device),
        "facts": [dataclasses.asdict(f) for f in facts], "probes": list(probes),
        "related": [[dataclasses.asdict(p) for p in related] for related in setup.related],
        "budgets": setup.budgets(), "options": options,
    }, sort_keys=True, default=repr)


def hooked(model) -> bool:
    """Whether any TransformerLens hook point of ``model`` has a hook (the library's own module
    hooks, which capture outputs without changing them, do not count)."""
    from transformer_lens.hook_points import HookPoint

    return any(isinstance(m, HookPoint) and (m._forward_hooks or m._forward_pre_hooks)
               for m in model.modules())


def cached(key: str | None):
    """The state measured under ``key``, or None."""
    if key is None or key not in _STATES:
        return None
    _STATES.move_to_end(key)
    return _STATES[key]


def remember(key: str | None, state) -> None:
    """Keep ``state`` under ``key`` (nothing when ``key`` is None)."""
    if key is None:
        return
    _STATES[key] = state
    _STATES.move_to_end(key)
    while len(_STATES) > CAPACITY:
        _STATES.popitem(last=False)


def clear() -> None:
    """Forget every kept state."""
    _STATES.clear()
