"""Verify: efficacy, specificity, fluency and robustness probes, before and after an edit.

* :func:`verify` - measure an edited model against its original and return a :class:`Report`;
* :class:`Report` - ``to_json()``, ``to_html(path)`` (one self-contained page), ``table()``;
* the probes (:mod:`~excise.verify.probes`, :mod:`~excise.verify.relearn`,
  :mod:`~excise.verify.linear_probe`) and the criteria (:mod:`~excise.verify.criteria`).
"""

from __future__ import annotations

from excise._lazy import lazy_exports

_EXPORTS = {
    "verify": "excise.verify.core",
    "Report": "excise.verify.report",
    "FactReport": "excise.verify.report",
    "ProbeOutcome": "excise.verify.outcome",
    "forgotten": "excise.verify.criteria",
    "kept": "excise.verify.criteria",
    "relearn": "excise.verify.relearn",
    "run_demo": "excise.verify.demo",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
