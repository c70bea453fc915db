"""MEMIT-style batch editing: forget many facts at once, spread over several MLP layers.

For each fact, the value optimisation (:mod:`excise.edit.value`) finds the change ``delta_i``
that the residual stream at the subject's last token needs at the *last* edited layer; the
target is ``z_i = h_i + delta_i``. The layers are then updated from first to last; at layer
``l`` with keys ``K`` ``[fact, d_mlp]`` (each the mean of the prefix-averaged running-text key and
the text-start key, as in :func:`~excise.edit.keys.balanced_key`) and remaining residuals ``R``
``[fact, d_model]`` (``(z - h_current) / layers_left``), the least-squares update is::

    dW = (lambda C + K^T K)^-1 K^T R        # [d_mlp, d_model]

which maps every new key close to its share of the residual while keeping the outputs of the
keys the model usually sees (second moment ``C``, weighted by ``lambda``) unchanged.

One such update of every layer is a *pass*. Some facts survive a pass (``lambda C`` keeps the
update from giving every key its whole residual); with ``passes=2`` (the default) those facts get
a second pass on the edited model, keeping ``C`` of the unedited one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from excise.components import MLP, mlp_out_module, out_proj_weight, param_name
from excise.criteria import forgotten
from excise.edit.keys import (
    BLANK_TARGET,
    CONTRAST_WEIGHT,
    contrast_batch,
    mlp_keys_batched,
    subject_batch,
    with_contrast,
)
from excise.edit.prompts import rewriting_prompts
from excise.edit.record import Edit, EditError, compute_dtype, make_edit
from excise.edit.stats import SampleSpec, key_stats
from excise.edit.value import ValueSettings, compute_value, objective_target
from excise.hooks import act_name, forward_until, trace
from excise.scoring import score_targets
from excise.tokens import subject_positions

log = logging.getLogger(__name__)

DEFAULT_SPREAD = 3
CONTRAST_PER_FACT = 4
"""Other subjects per fact whose keys join ``C`` in :func:`memit` (facts of one relation draw
them from the same list, so a batch protects fewer distinct subjects than facts x 4)."""
DEFAULT_PASSES = 2
"""Passes of :func:`memit`: the second re-edits the facts the first left. ``passes=1`` favours
the neighbours; the trade-off is measured by ``bench/forget_quality.py --memit-passes 1,2``."""


@dataclass(frozen=True)
class MemitSettings:
    """Settings of :func:`memit`'s least-squares updates (the values' are :class:`ValueSettings`).

    ``update_weight`` (``lambda`` in the module docstring) trades efficacy against collateral
    damage; ``max_update_ratio`` refuses updates with ``||dW|| > max_update_ratio * ||W||``;
    ``contrast`` other subjects per fact join ``C`` with weight ``contrast_weight``; ``passes``
    is the most passes made.
    """

    update_weight: float = 2000.0
    max_update_ratio: float = 1.0
    contrast: int = CONTRAST_PER_FACT
    contrast_weight: float = CONTRAST_WEIGHT
    passes: int = DEFAULT_PASSES


MEMIT_VALUES = ValueSettings(subject_probes=False)
"""memit's default value settings: without the rank-one editor's probes of each subject
(:mod:`excise.edit.subject_probes`), as its batch rows in the README were measured."""


def default_layers(model, spread: int = DEFAULT_SPREAD) -> list[int]:
    """``spread`` consecutive layers ending a sixth of the way into the model (3-5 of 30); the
    comparison with other spreads is in the README's batch table."""
    return layers_ending_at(max(0, min(model.cfg.n_layers - 1, round(model.cfg.n_layers / 6))), spread)


def layers_ending_at(last: int, spread: int = DEFAULT_SPREAD) -> list[int]:
    """``spread`` consecutive layers ending at ``last`` (fewer when they would start below 0)."""
    return list(range(max(0, last - spread + 1), last + 1))


def memit(model, facts, layers: list[int] | None = None, objective: str = "forget", *,
          corpus: str | None = None, update_weight: float = 2000.0, max_update_ratio: float = 1.0,
          contrast: int = CONTRAST_PER_FACT, contrast_weight: float = CONTRAST_WEIGHT,
          passes: int = DEFAULT_PASSES, settings: ValueSettings | None = None,
          progress: bool = True) -> Edit:
    """Forget (or replace) all ``facts`` with one update per layer; applies and returns the Edit.

    ``update_weight``, ``max_update_ratio``, ``contrast``, ``contrast_weight``, ``passes``: see
    :class:`MemitSettings`; ``settings``: the values' :class:`ValueSettings`. Contrast subjects
    (:func:`~excise.edit.keys.contrast_subjects`), in each fact's prompt, join ``C`` so that the
    update spares them.

    ``passes``: after each pass, the facts whose prompt is not yet done (forgotten per
    :func:`excise.criteria.forgotten`, or the new target first for ``"replace"``) get another pass
    on the model as the previous ones left it (values recomputed there; the key statistics of the
    unedited model reused); the passes stop early when every fact is done. The Edit holds the sum
    of all passes; ``info["passes"]`` says which facts each pass edited and which it left.
    """
    from excise.model import weights_hash

    facts = list(facts)
    if not facts:
        raise ValueError("memit() needs at least one fact")
    if passes < 1:
        raise ValueError(f"memit(passes={passes}): needs at least one pass")
    chosen = MemitSettings(update_weight, max_update_ratio, contrast, contrast_weight, passes)
    for fact in facts:
        subject_positions(model, fact.prompt, fact.subject, warn=True)
    layer_choice = "given by the caller" if layers is not None else "default"
    layers = sorted(set(layers)) if layers is not None else default_layers(model)
    if not all(0 <= layer < model.cfg.n_layers for layer in layers):
        raise ValueError(f"layers {layers} out of range: the model has {model.cfg.n_layers} layers")
    settings = settings or MEMIT_VALUES
    base_hash = weights_hash(model)
    stats = key_stats(model, layers, SampleSpec(corpus=corpus), progress, base_hash)
    second_moments = {layer: stats[layer].second_moment for layer in layers}
    goal = _PromptGoal(model, facts, objective)
    modules = [mlp_out_module(model, layer) for layer in layers]
    originals = {m: m.weight.detach().clone() for m in modules}
    rounds, remaining = [], facts
    try:
        for number in range(passes):
            record = _one_pass(model, remaining, layers, objective, second_moments, settings,
                               avoid=facts, update_weight=update_weight, max_update_ratio=max_update_ratio,
                               contrast=contrast, contrast_weight=contrast_weight, progress=progress)
            remaining = goal.not_done(model, remaining)
            rounds.append({"pass": number + 1, **record, "left": [f.id for f in remaining]})
            log.info("memit pass %d: %d of %d facts not done", number + 1, len(remaining), len(facts))
            if not remaining:
                break
        new_weights = {param_name(model, m.weight): m.weight.detach().clone() for m in modules}
    finally:
        with torch.no_grad():
            for module, weight in originals.items():
                module.weight.copy_(weight)
    info = {"layers": layers, "layer_choice": layer_choice,
            "key_tokens": stats[layers[-1]].n_tokens, "key_sample": stats[layers[-1]].sample,
            "passes": rounds, "updates": rounds[0]["updates"], "values": rounds[0]["values"]}
    record = dict(layers=layers, objective=objective, corpus=corpus, **asdict(chosen),
                  value=asdict(settings))
    return make_edit(model, "memit", new_weights, settings=record, fact_ids=[f.id for f in facts],
                     components=[MLP(layer) for layer in layers], base_hash=base_hash, info=info)


class _PromptGoal:
    """Whether each fact's prompt is done: forgotten relative to the unedited model's scores, or,
    for ``"replace"``, the new target produced by greedy decoding."""

    def __init__(self, model, facts, objective: str):
        self.objective = objective
        self.ids = {f.id: i for i, f in enumerate(facts)}
        self.answers = [objective_target(f, objective, None) for f in facts]
        self.before = score_targets(model, [f.text for f in facts], self.answers)

    def not_done(self, model, facts) -> list:
        rows = [self.ids[f.id] for f in facts]
        after = score_targets(model, [f.text for f in facts], [self.answers[i] for i in rows])
        if self.objective == "replace":
            done = after.known
        else:
            done = forgotten(self.before.take(rows), after)
        return [f for f, ok in zip(facts, done.tolist()) if not ok]


def _one_pass(model, facts, layers, objective, second_moments, settings, *, avoid, update_weight,
              max_update_ratio, contrast, contrast_weight, progress) -> dict:
    """One MEMIT update of every layer for ``facts``, written into the live weights; its report.

    Contrast subjects avoid all of ``avoid`` (the whole batch), so that no probe of a fact edited
    in another pass is protected in-sample.
    """
    last = layers[-1]
    deltas, value_infos = [], []
    for fact in tqdm(facts, desc="memit values", disable=not progress):
        delta, value_info = compute_value(model, fact, last, objective, None, settings)
        deltas.append(delta)
        value_infos.append({"fact": fact.id, "steps": value_info["steps"], "goal_met": value_info["goal_met"]})
    batch, positions, groups = _fact_batch(model, facts, settings.n_prefixes)
    others = contrast_batch(model, facts, contrast, avoid=avoid)[0] if contrast_weight > 0 else None
    z = _resid(model, last, batch, positions, groups, len(facts)) + torch.stack(deltas)  # [fact, d_model]
    reports = {}
    for i, layer in enumerate(layers):
        keys = _group_mean(mlp_keys_batched(model, layer, batch, positions), groups, len(facts))
        residual = (z - _resid(model, last, batch, positions, groups, len(facts))) / (len(layers) - i)
        second_moment = second_moments[layer]
        if others is not None:
            other_keys = mlp_keys_batched(model, layer, *others)  # [n, d_mlp]
            second_moment = with_contrast(second_moment, other_keys, contrast_weight)
        update, reports[layer] = _least_squares(model, layer, keys, residual, second_moment,
                                                update_weight, max_update_ratio)
        with torch.no_grad():  # computed in float32, rounded to the weight's dtype once
            out_proj_weight(model, layer).add_(update)
    return {"facts": [f.id for f in facts], "updates": reports, "values": value_infos}


def _fact_batch(model, facts, n_prefixes: int):
    """Rows for the keys and residuals: each fact's prompt in running text (bare and prefixed),
    then one row per fact with the subject opening the text (see ``rank_one.balanced_key``)."""
    templates, subjects, groups = [], [], []
    for i, fact in enumerate(facts):
        for template in rewriting_prompts(model, fact.prompt, n_prefixes):
            templates.append(template)
            subjects.append(fact.subject)
            groups.append(i)
    templates += ["{}"] * len(facts)
    subjects += [fact.subject for fact in facts]
    groups += [len(facts) + i for i in range(len(facts))]
    batch, positions = subject_batch(model, templates, subjects, [BLANK_TARGET] * len(templates))
    return batch, positions, torch.tensor(groups, device=positions.device)


def _group_mean(rows: torch.Tensor, groups: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, d]``: per fact, the mean of its running-text rows averaged with its text-start row.

    ``groups`` holds ``i`` for fact ``i``'s running-text rows and ``n + i`` for its start row.
    """
    sums = torch.zeros(2 * n, rows.shape[1], dtype=rows.dtype, device=rows.device).index_add_(0, groups, rows)
    counts = torch.bincount(groups, minlength=2 * n).to(rows.dtype)
    means = sums / counts[:, None]
    return 0.5 * (means[:n] + means[n:])


@torch.no_grad()
def _resid(model, layer, batch, positions, groups, n, size: int = 32) -> torch.Tensor:
    """``[n, d_model]``: residual stream after block ``layer`` at the subject token, per fact."""
    point = model.hook_dict[act_name("resid_post", layer)]  # its input is what a cache would hold
    parts = []
    for s in range(0, len(positions), size):
        with trace({layer: point}, inputs=True) as seen:
            forward_until(model, batch.tokens[s:s + size], [point])  # no block above `layer` runs
        resid = seen[layer].input.to(positions.device)  # [batch, pos, d_model], from its layer's device
        rows = torch.arange(len(positions[s:s + size]), device=positions.device)
        parts.append(resid[rows, positions[s:s + size]].float())
    return _group_mean(torch.cat(parts), groups, n)


def _least_squares(model, layer, keys, residual, second_moment, weight, max_ratio):
    """``dW = (weight C + K^T K)^-1 K^T R`` ``[d_mlp, d_model]`` and a report; refuses huge updates.

    Solved in float64 on the weight's device; ``dW`` is returned in float32
    (:func:`~excise.edit.record.compute_dtype`), so that adding it to a bfloat16 weight rounds once.
    """
    w = out_proj_weight(model, layer).detach()
    k, r = keys.double().to(w.device), residual.double().to(w.device)
    a = weight * second_moment.double().to(w.device) + k.T @ k
    update = torch.linalg.solve(a, k.T @ r).to(compute_dtype(w.dtype))
    ratio = float(update.norm() / w.to(update.dtype).norm())
    if not ratio <= max_ratio:
        raise EditError(f"memit update at layer {layer} is out of proportion: ||dW|| = {ratio:.2f} x "
                        f"||W|| (limit {max_ratio}); use more layers or a larger update_weight")
    return update, {"update_norm": float(update.norm()), "ratio": ratio,
                    "residual_norm": float(residual.norm(dim=-1).mean())}


