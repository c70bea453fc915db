"""Verify: efficacy, specificity, fluency and robustness probes, before and after an edit.

* :func:`verify` - measure an edited model against its original and return a :class:`Report`
  (the package itself is callable: ``excise.verify(model, fact)``);
* :class:`Report` - ``to_json()``, ``to_html(path)`` (one self-contained page), ``table()``;
* the robustness probes, one module each under :mod:`excise.verify.probes` behind a registry
  (:mod:`excise.verify.probes.registry`: a new probe is one file plus one catalog line);
* model quality (perplexity, fluency) in :mod:`excise.verify.quality`. What "forgotten" and
  "kept" mean is :mod:`excise.criteria`'s.
"""

from __future__ import annotations

from excise._lazy import lazy_exports, make_callable

_EXPORTS = {
    "verify": "excise.verify.core",
    "Report": "excise.verify.report",
    "FactReport": "excise.verify.report",
    "ProbeOutcome": "excise.verify.outcome",
    "relearn": "excise.verify.probes.relearn",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

make_callable(__name__, "excise.verify.core", "verify")  # excise.verify(model, fact)
