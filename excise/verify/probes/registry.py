"""The probes users can select, by name, and the order their outcomes are reported in.

:data:`CATALOG` maps each name a user passes (``probes=("formats",)``, ``excise verify --probes``)
to the probe modules it runs; every module of :mod:`excise.verify.probes` is named after the
outcome it reports and defines ``PROBE``. Modules are imported on first use, so listing the names
(:data:`PROBES`, the CLI's help) costs nothing.
"""

from __future__ import annotations

from importlib import import_module

from excise.verify.probes.base import RobustnessProbe

CATALOG: dict[str, tuple[str, ...]] = {
    "logit_lens": ("logit_lens",),
    "lens_extraction": ("lens_extraction",),
    "formats": ("question", "multiple_choice", "few_shot"),
    "rephrase": ("rephrase",),
    "generation": ("generation",),
    "relearn": ("relearn",),
    "relearn_lora": ("relearn_lora",),
    "relearn_split": ("relearn_split",),
    "quantization": ("quantization",),
    "linear_probe": ("linear_probe",),
}
PROBES = tuple(CATALOG)
"""The names users select probes by (all of them are the default)."""


def load(name: str) -> RobustnessProbe:
    """The probe whose outcome is called ``name`` (its module's ``PROBE``)."""
    return import_module(f"excise.verify.probes.{name}").PROBE


def select(names) -> list[RobustnessProbe]:
    """The probes run by the selected ``names``, in report order (attacks last).

    Raises ``ValueError`` for a name not in :data:`PROBES`.
    """
    unknown = set(names) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; choose from {PROBES}")
    chosen = [load(m) for name, modules in CATALOG.items() if name in names for m in modules]
    return [p for p in chosen if not p.attack] + [p for p in chosen if p.attack]


def registry() -> dict[str, RobustnessProbe]:
    """Every probe by its outcome name."""
    return {p.name: p for p in select(PROBES)}
