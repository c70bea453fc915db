"""excise: located unlearning for transformer language models.

Find where a model stores a fact (:mod:`excise.locate`), rewrite only those components
(:mod:`excise.edit`), and prove the fact is gone while everything else still works
(:mod:`excise.verify`). Heavy imports (torch, transformers) happen on first use, not at import.
The package map is in ``ARCHITECTURE.md``.
"""

from __future__ import annotations

from excise._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "excise.model",
    "Fact": "excise.facts",
    "Probe": "excise.facts",
    "load_facts": "excise.facts",
    "write_facts": "excise.facts",
    "score_targets": "excise.scoring",
    "score_fact": "excise.scoring",
    "forgotten": "excise.criteria",
    "kept": "excise.criteria",
    "weakened": "excise.criteria",
    "compare": "excise.comparison",
    "Comparison": "excise.comparison",
    "MLP": "excise.components",
    "Neuron": "excise.components",
    "Head": "excise.components",
    "save_model": "excise.export",
    "Edit": "excise.edit.record",
    "causal_trace": "excise.locate.trace",
    "Localization": "excise.locate.localization",
    "rome": "excise.edit.rank_one",
    "memit": "excise.edit.batch",
    "ablate": "excise.edit.ablation",
    "run_demo": "excise.commands.workflows",
    "explore": "excise.commands.explore",
    "cancel_on": "excise.interrupt",
    "Cancelled": "excise.interrupt",
}
_SUBMODULES = ("locate", "edit", "verify")
"""``excise.verify`` is the verify stage and, called, :func:`excise.verify.verify`."""

__all__ = sorted([*_EXPORTS, *_SUBMODULES])

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
