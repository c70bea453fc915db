"""Forget many facts with one rank-one edit each, applied one after another (sequential ROME).

The batch editor :func:`~excise.edit.batch.memit` solves for all facts in one least-squares
update per layer; here each fact gets its own :func:`~excise.edit.rank_one.rome` edit, computed on
the model as the previous edits left it, so every edit sees (and keeps) the ones before it. The
rank-one edits at one layer leave that layer's keys unchanged, so the key statistics are
computed once for the whole sequence (see :func:`~excise.edit.stats.key_inputs_hash`).

The result is one :class:`~excise.edit.record.Edit` whose deltas are the sum of the per-fact
updates: ``undo`` restores the weights from before the first edit, bit for bit.

Each edit's value is scaled by the subject's MLP output on the *unedited* model
(:func:`~excise.edit.value.output_scale`, measured for every fact before the first edit). Earlier
edits leak into the MLP output of subjects whose keys resemble theirs; a value scaled by that
inflated output let each later edit on such a subject grow, and its larger update break facts
of other subjects that no single edit breaks.

Sequential rank-one editing is the baseline batch editors exist to beat: each edit leaks a
little onto other subjects, and the leaks add up (``bench/forget_quality.py --sequence 50``
measures how much, beside :func:`~excise.edit.batch.memit`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tqdm.auto import tqdm

from excise.edit.rank_one import resolve_layer, rome
from excise.edit.record import Edit, make_edit
from excise.edit.value import output_scale
from excise.export import hf_parameters

log = logging.getLogger(__name__)


def rome_sequence(model, facts, layer: int | None = None, *, progress: bool = True,
                  after_each: Callable[[Edit], None] | None = None, **rome_kwargs) -> Edit:
    """Forget (or replace) each of ``facts`` with its own rank-one edit, in order; applies and
    returns one Edit for all of them.

    ``after_each(edit)`` is called after each fact's edit, on the model as the sequence has left
    it so far (``bench/sequence_damage.py`` scores every probe there, to find the edit that
    breaks it); it must leave the weights as it found them.

    ``layer`` and ``rome_kwargs`` are passed to every :func:`~excise.edit.rank_one.rome` call
    (``layer=None``: the default lookup layer). Each fact's contrast keys avoid the
    other facts' subjects and probes, so those stay held out. If one edit is refused, the edits
    made so far are undone and the error is raised: the model is left as it was.
    """
    from excise.model import weights_hash

    facts = list(facts)
    if not facts:
        raise ValueError("rome_sequence() needs at least one fact")
    ids = [f.id for f in facts]
    if len(set(ids)) != len(ids):
        raise ValueError("rome_sequence() got the same fact id twice; edit each fact once")
    base_hash = weights_hash(model)
    value_layer, _ = resolve_layer(model, layer)
    scales = [output_scale(model, fact, value_layer, rome_kwargs.get("objective", "forget"),
                           rome_kwargs.get("new_target"), rome_kwargs.get("settings"))
              for fact in tqdm(facts, desc="value scales", disable=not progress)]
    edits: list[Edit] = []
    try:
        for fact, scale in tqdm(list(zip(facts, scales)), desc="rank-one edits", disable=not progress):
            others = [f for f in facts if f is not fact]
            edits.append(rome(model, fact, layer=layer, contrast_avoid=others, progress=False,
                              output_scale=scale, **rome_kwargs))
            if after_each is not None:
                after_each(edits[-1])
    except Exception:
        for edit in reversed(edits):
            edit.undo(model)
        raise
    params = hf_parameters(model)  # Edit.deltas use Hugging Face names
    names = sorted({name for edit in edits for name in edit.deltas})
    new_weights = {name: params[name].detach().clone() for name in names}
    for edit in reversed(edits):
        edit.undo(model)
    per_fact = [{"fact": e.fact_ids[0], "layer": e.settings["layer"],
                 "ratio": e.info["update"]["ratio"], "goal_met": e.info["value"]["goal_met"],
                 "output_scale": scale, "value_scale": e.info["value"]["mlp_output_norm"]}
                for e, scale in zip(edits, scales)]
    components = sorted({c for e in edits for c in e.components})
    settings = {**edits[0].settings, "layer": layer}
    info = {"edits": per_fact, "parameters": names,
            "key_tokens": edits[0].info.get("key_tokens")}
    log.info("rome_sequence: %d facts, %d parameters", len(facts), len(names))
    return make_edit(model, "rome_sequence", new_weights, settings=settings, fact_ids=ids,
                     components=components, base_hash=base_hash, info=info)
