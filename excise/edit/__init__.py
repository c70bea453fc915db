"""Edit: remove a fact by rewriting only located components; every editor returns a reversible Edit.

* :func:`rome` - rank-one update of one MLP output projection (forget or replace one fact);
* :func:`memit` - one least-squares update per layer over several layers, many facts at once;
* :func:`rome_sequence` - many facts, one rank-one edit each, applied one after another;
* :func:`ablate` - bake the zero- or mean-ablation of located neurons/heads into the weights;
* :func:`finetune` - the baselines: gradient ascent, counterexamples, NPO;
* :class:`Edit` - deltas + provenance; ``apply``/``undo``/``reverted``/``applied``/``save``;
  :func:`load` reads a saved edit (hash-checked); :func:`save_model` writes a plain Hugging Face
  folder with its edits, all or nothing; :func:`attach` marks the edits such a folder carries as
  applied to the model loaded from it, so that "before" can be had by reverting them.

Every editor applies its edit to the model in place, appends it to ``model.excise_edits`` and
returns it. Heavy modules are imported on first use.
"""

from __future__ import annotations

from excise._lazy import lazy_exports

_EXPORTS = {
    "Edit": "excise.edit.record",
    "EditError": "excise.edit.record",
    "load": "excise.edit.record",
    "attach": "excise.edit.record",
    "load_saved_edits": "excise.edit.record",
    "rome": "excise.edit.rank_one",
    "RomeSettings": "excise.edit.rank_one",
    "MemitSettings": "excise.edit.batch",
    "ValueSettings": "excise.edit.value",
    "memit": "excise.edit.batch",
    "rome_sequence": "excise.edit.sequence",
    "ablate": "excise.edit.ablation",
    "finetune": "excise.edit.baselines",
    "FinetuneSettings": "excise.edit.baselines",
    "save_model": "excise.export",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
