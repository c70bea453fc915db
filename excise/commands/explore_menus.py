"""What the explorer's menus offer: attribution methods and editors, each a plain call.

Used by :mod:`excise.commands.explore`; kept apart so scripts can list and call the same choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from excise.edit.ablation import ablate
from excise.edit.baselines import finetune
from excise.edit.batch import DEFAULT_SPREAD, layers_ending_at, memit
from excise.edit.rank_one import rome
from excise.locate.attribution import attribution_patch
from excise.locate.dla import direct_logit_attribution
from excise.locate.patch import counterfactual_pair


def _direct_logit_attribution(model, fact, facts, site):
    return direct_logit_attribution(model, fact, site=site)


def _attribution_patching(model, fact, facts, site):
    if fact.relation is None:
        raise ValueError("attribution patching needs a same-relation subject to patch from: choose "
                         "a bundled fact, or use direct logit attribution")
    clean, corrupted, answer, wrong = counterfactual_pair(model, fact, facts)
    return attribution_patch(model, clean, corrupted, answer, wrong, site=site, progress=False)


ATTRIBUTIONS = {"direct logit attribution": _direct_logit_attribution,
                "attribution patching": _attribution_patching}
"""Attribution methods by menu name: ``(model, fact, facts, site)`` -> a Localization of the
heads or neurons of ``site``."""


@dataclass(frozen=True)
class EditorChoice:
    """An editor the explorer offers: ``run(model, fact, layer=, neurons=, **options)`` returns
    the Edit the editor applied; ``about`` says in one line what it rewrites; ``needs_neurons``:
    it ablates the top located neurons."""

    about: str
    run: Callable
    needs_neurons: bool = False


def _rome(model, fact, layer, neurons, **options):
    return rome(model, fact, layer=layer, progress=False, **options)


def _memit(model, fact, layer, neurons, **options):
    return memit(model, [fact], layers=layers_ending_at(layer), progress=False, **options)


def _ablate(model, fact, layer, neurons, **options):
    return ablate(model, neurons, "zero", fact_ids=[fact.id], progress=False, **options)


def _finetuner(objective: str) -> Callable:
    def run(model, fact, layer, neurons, **options):
        return finetune(model, fact, objective, progress=False, **options)
    return run


EDITORS = {
    "rome": EditorChoice("rank-one update of the MLP of the chosen layer", _rome),
    "memit": EditorChoice(f"least-squares update of the MLPs of the {DEFAULT_SPREAD} layers "
                          "ending at the chosen one", _memit),
    "ablate neurons": EditorChoice("zero the top located neurons (the layer is not used)", _ablate,
                                   needs_neurons=True),
    "finetune: gradient ascent": EditorChoice(
        "fine-tune all parameters to push the target down (the layer is not used)",
        _finetuner("gradient_ascent")),
    "finetune: counterexample": EditorChoice(
        "fine-tune all parameters towards another answer (the layer is not used)",
        _finetuner("counterexample")),
    "finetune: NPO": EditorChoice(
        "fine-tune all parameters by negative preference optimisation (the layer is not used)",
        _finetuner("npo")),
}
"""Editors by menu name (``Explorer.editor_options[name]`` adds keyword arguments to a call)."""
