"""excise: located unlearning for transformer language models.

Find where a model stores a fact (:mod:`excise.locate`), rewrite only those components
(:mod:`excise.edit`), and prove the fact is gone while everything else still works
(:mod:`excise.verify`). Heavy imports (torch, transformers) happen on first use, not at import.
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
    "MLP": "excise.components",
    "Neuron": "excise.components",
    "Head": "excise.components",
    "save_model": "excise.export",
    "Edit": "excise.edit.record",
    "causal_trace": "excise.locate.trace",
    "Localization": "excise.locate.localization",
    "rome": "excise.edit.rank_one",
    "ablate": "excise.edit.ablation",
    "verify": "excise.verify.core",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
