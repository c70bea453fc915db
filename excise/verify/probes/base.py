"""What a robustness probe is: measure a model state per fact, judge before against after.

:func:`excise.verify.verify` runs every selected probe the same way:

1. ``measure(model, facts, setup)`` on the state after the edit and on the state before it
   (an *attack* probe, which changes the model, runs once, on the edited state). It returns one
   reading per fact: a :class:`~excise.verify.outcome.Reading` dataclass, or :class:`Skipped`
   with its reason when the probe cannot run for that fact;
2. ``judge(before, after, comparison)`` turns the two readings of one fact into a
   :class:`~excise.verify.outcome.ProbeOutcome`. A skipped reading never reaches ``judge``: the
   outcome is "skipped" with the reading's reason. An attack probe gets ``before=None`` and reads
   the state before the edit from ``comparison`` (the fact's scores before and after);
3. ``figure(fact_report)``, when given, draws the probe's readings for the HTML report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Skipped:
    """A probe that could not run for one fact, and why."""

    reason: str


@dataclass(frozen=True)
class Setup:
    """What probes may use besides the model and the facts; the same for both states.

    ``related[i]`` holds other facts of ``facts[i]``'s relation as ``excise.facts.Probe`` pairs,
    none of which states a verified answer (:func:`excise.verify.core.related_probes`). The other
    fields are the probes' budgets, recorded in the report: relearning (full fine-tuning for
    ``relearn_steps`` and, continued, ``relearn_long_steps``; LoRA of ``lora_rank`` at each of
    ``lora_steps``), the candidate-set sizes B of the logit-lens and rephrasing extraction, the
    quantization bit widths and group size, and the sampling of the generation attack.
    """

    related: list[list]
    few_shot_k: int = 3
    mc_orders: int = 3
    relearn_steps: int = 20
    relearn_lr: float = 5e-5
    relearn_facts: int = 16
    relearn_long_steps: int = 40
    lora_rank: int = 8
    lora_lr: float = 1e-3
    lora_steps: tuple[int, ...] = (20, 40)
    lens_candidates: tuple[int, ...] = (1, 20)
    rephrase_candidates: tuple[int, ...] = (1, 20)
    quant_bits: tuple[int, ...] = (8, 4)
    quant_group: int = 128
    gen_temperatures: tuple[float, ...] = (0.7, 1.0)
    gen_seeds: int = 2
    gen_tokens: int = 24
    progress: bool = False

    def budgets(self) -> dict:
        """Every attack's budget by field name (what the report records as settings)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("related", "progress")}


@dataclass(frozen=True)
class RobustnessProbe:
    """One probe: its outcome ``name`` in reports and the functions that run it.

    ``measure(model, facts, setup) -> [Reading | Skipped per fact]``;
    ``judge(before, after, comparison) -> ProbeOutcome``; ``figure(fact_report) -> go.Figure``
    (optional, shown under ``title`` in the HTML report). ``attack``: the probe changes the model
    while it measures, so it runs once, on the edited state (restoring it), after both states.
    """

    name: str
    measure: Callable
    judge: Callable
    figure: Callable | None = None
    title: str = ""
    attack: bool = False
