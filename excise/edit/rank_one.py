"""Rank-one model editing (ROME) of one MLP output projection, to forget or replace one fact.

The MLP output projection of a layer is a linear map ``out = k @ W`` (``W`` ``[d_mlp, d_model]``)
from keys ``k`` (``blocks.{l}.mlp.hook_post``) to values. ROME treats it as an associative memory
and solves, in closed form, for the smallest change (measured with the keys' second moment
``C = E[k k^T]``) that maps the subject's key ``k*`` to a new value ``W^T k* + delta``::

    u  = C^-1 k* / (k*^T C^-1 k*)          # [d_mlp]
    W' = W + u delta^T                     # rank one, and k*^T W' = k*^T W + delta exactly

``k*`` is the subject's last-token key averaged over the prompt and several prefixed copies of
it (running text), averaged half and half with the key of the subject opening the text (which
differs a lot: see :func:`~excise.edit.keys.balanced_key`), and the *same* ``k*`` is used in the numerator and the
denominator (mixing a prefix-averaged key with a single-prompt one is the known cause of ROME
edits with a tiny denominator that wreck the model). ``u`` is computed *before* the value, so
the value optimisation can simulate the exact edit (:func:`~excise.edit.value.compute_value`
with ``direction=u``). An update whose norm is out of proportion to ``W`` is refused.

Specificity: ``C`` is taken with the keys of other subjects in the fact's own prompt added (32
subjects from the bundled fact sets, weighted like ten text samples; :func:`protected_direction`),
so ``u`` stays nearly orthogonal to them (its effect on neighbours is measured by
``bench/forget_quality.py``). ``contrast=0`` gives plain ROME.

The layer: given, or read off a :class:`~excise.locate.Localization` (``layer=trace``, see
:meth:`~excise.locate.Localization.edit_layer`), or, when None, the default *lookup layer*
(:func:`default_layer`, a fixed share of the depth): where the subject's attributes are read into
its last token. Editing there is what verification rewards: the causal trace's peak is often
later, where an edit is undone by a little relearning (``bench/forget_quality.py`` and
``bench/robustness.py`` compare them on the tuning facts).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from excise.components import MLP, mlp_out_module, out_proj_weight, param_name, weight_from_view
from excise.edit.keys import (
    CONTRAST_SUBJECTS,
    CONTRAST_WEIGHT,
    balanced_key,
    contrast_keys,
    nearest_contrast_keys,
    with_contrast,
)
from excise.edit.prompts import rewriting_prompts
from excise.edit.record import Edit, EditError, compute_dtype, make_edit
from excise.edit.stats import SampleSpec, key_stats
from excise.edit.value import ValueSettings, compute_value, objective_target
from excise.tokens import subject_positions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RomeSettings:
    """Settings of the rank-one update itself (the value's are :class:`ValueSettings`).

    ``ridge``: Tikhonov term added to ``C`` (times its mean diagonal) before solving;
    ``max_update_ratio``: refuse updates with ``||dW|| > max_update_ratio * ||W||``;
    ``contrast``, ``contrast_weight``: how many other subjects' keys to protect and their weight in
    the key statistics (``contrast=0`` is plain ROME);
    ``contrast_nearest``: how many of those ``contrast`` subjects (0 to ``contrast``) are the ones
    the plain rank-one direction reaches most (:func:`~excise.edit.keys.nearest_contrast_keys`) rather than the first
    of the fact's kind.
    """

    ridge: float = 1e-2
    max_update_ratio: float = 1.0
    contrast: int = CONTRAST_SUBJECTS
    contrast_weight: float = CONTRAST_WEIGHT
    contrast_nearest: int = 0


LOOKUP_DEPTH = 0.14
"""The default edit layer's share of the depth (layer 4 of 30): chosen on the tuning facts."""


def default_layer(model) -> int:
    """The MLP layer a rank-one edit rewrites by default: :data:`LOOKUP_DEPTH` of the way in."""
    return min(model.cfg.n_layers - 1, round(LOOKUP_DEPTH * model.cfg.n_layers))


def rome(model, fact, layer=None, objective: str = "forget", new_target: str | None = None, *,
         corpus: str | None = None, sample: SampleSpec | None = None, ridge: float = 1e-2,
         max_update_ratio: float = 1.0,
         contrast: int = CONTRAST_SUBJECTS,
         contrast_weight: float = CONTRAST_WEIGHT, contrast_nearest: int = 0, contrast_avoid=(),
         settings: ValueSettings | None = None, output_scale: float | None = None,
         progress: bool = True) -> Edit:
    """Forget (or replace) ``fact`` with a rank-one update of one MLP; applies it and returns the Edit.

    Args:
        fact: the :class:`~excise.facts.Fact` to edit (several facts at once: :func:`~excise.edit.memit`).
        layer: the MLP layer to rewrite: an int, a :class:`~excise.locate.Localization` (its
            :meth:`~excise.locate.Localization.edit_layer`), or None for :func:`default_layer`.
        objective: "forget" (drive the target down) or "replace" (make ``new_target`` the answer).
        corpus: a text file for the key statistics (default: text the model generates).
        sample: the whole :class:`~excise.edit.stats.SampleSpec` of the key statistics instead
            (how many sequences of how many tokens; its own ``corpus``).
        ridge, max_update_ratio, contrast, contrast_weight, contrast_nearest: see :class:`RomeSettings`.
        contrast_avoid: other facts whose subjects and probes the contrast keys must not use
            (the rest of a sequence of edits, so that their probes stay held out).
        settings: the value optimisation's :class:`ValueSettings`.
        output_scale: a cap on the value's scale (:func:`~excise.edit.value.compute_value`);
            :func:`~excise.edit.sequence.rome_sequence` passes the unedited model's.
    """
    if fact is None or not hasattr(fact, "prompt"):
        raise ValueError("rome() edits one fact; use excise.edit.memit(model, facts) for several")
    from excise.model import weights_hash

    if not 0 <= contrast_nearest <= contrast:
        raise ValueError(f"contrast_nearest={contrast_nearest}: it counts some of the contrast={contrast} "
                         "subjects, so give a number from 0 to contrast")
    chosen = RomeSettings(ridge, max_update_ratio, contrast, contrast_weight, contrast_nearest)
    objective_target(fact, objective, new_target)
    subject_positions(model, fact.prompt, fact.subject, warn=True)
    base_hash = weights_hash(model)
    info = {}
    layer, info["layer_choice"] = resolve_layer(model, layer)
    settings = settings or ValueSettings()
    sample = sample or SampleSpec(corpus=corpus)
    stats = key_stats(model, [layer], sample, progress, base_hash)[layer]
    templates = rewriting_prompts(model, fact.prompt, settings.n_prefixes)
    key = balanced_key(model, layer, templates, fact.subject)
    nearest = chosen.contrast_nearest
    others, subjects = contrast_keys(model, layer, fact, chosen.contrast - nearest, contrast_avoid)
    if nearest:
        plain = rank_one_direction(layer, key, stats.second_moment, chosen.ridge)[0]
        near, near_subjects = nearest_contrast_keys(model, layer, fact, nearest, plain, contrast_avoid,
                                                    skip=subjects)
        others, subjects = torch.cat([others.to(near), near]), subjects + near_subjects
    u, denominator, second_moment, weight = protected_direction(
        layer, key, stats.second_moment, others, chosen.contrast_weight, chosen.ridge)
    info["contrast"] = {"subjects": subjects, "weight": weight, "template": fact.prompt}
    delta, info["value"] = compute_value(model, fact, layer, objective, new_target, settings,
                                         direction=u, output_scale=output_scale)
    update, info["update"] = rank_one_update(model, layer, key, delta, second_moment, chosen.ridge,
                                             chosen.max_update_ratio, direction=(u, denominator))
    info.update(key_tokens=stats.n_tokens, key_sample=stats.sample,
                key_prompts=[t.format(fact.subject) for t in templates])
    module = mlp_out_module(model, layer)
    weight = out_proj_weight(model, layer).detach().to(update.dtype)  # rounded once by make_edit
    new_weight = weight_from_view(module, weight + update)
    record = dict(layer=layer, objective=objective, new_target=new_target, corpus=sample.corpus,
                  **asdict(chosen), value=asdict(settings))
    edit = make_edit(model, "rome", {param_name(model, module.weight): new_weight}, settings=record,
                     fact_ids=[fact.id], components=[MLP(layer)], base_hash=base_hash, info=info)
    log.info("rome: %s at layer %d, |dW|/|W| = %.3f", fact.id, layer, info["update"]["ratio"])
    return edit


def resolve_layer(model, layer) -> tuple[int, str]:
    """``(layer, why)`` from an int, a Localization, or None (:func:`default_layer`)."""
    if layer is None:
        layer = default_layer(model)
        return layer, f"layer {layer}: the default lookup layer ({LOOKUP_DEPTH:.0%} of the depth)"
    if hasattr(layer, "edit_layer"):
        return layer.edit_layer()
    layer = int(layer)
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {model.cfg.n_layers} layers")
    return layer, f"layer {layer} given by the caller"


def protected_direction(layer: int, key: torch.Tensor, second_moment: torch.Tensor, others: torch.Tensor,
                        weight: float, ridge: float = 1e-2, max_growth: float = 1.5):
    """``u`` from ``C' = C + weight * mean(k_o k_o^T)``: a rank-one direction that spares other subjects.

    At an early layer, subjects of one kind share much of their key, so a plain rank-one edit of
    one country also fires, weaker, on other countries (``tests/test_edit_real.py`` measures it).
    Counting other subjects' keys ``k_o`` (``others`` ``[n, d_mlp]``) as if they were ``weight``
    times the whole text sample makes ``u = C'^-1 k* / (k*^T C'^-1 k*)`` nearly orthogonal to
    them: still ``k* . u = 1``, still rank one, but the edit no longer fires on the subject's
    kind (MEMIT's idea of adding the keys to preserve to the statistics, aimed at neighbours).
    Where ``k*`` itself is mostly what the others share (``u`` grows past ``max_growth`` times
    the plain ROME direction), the weight is divided by 4 until it is not, down to plain ROME.
    Returns ``(u, denominator, C', weight used)``.
    """
    plain, plain_denominator = rank_one_direction(layer, key, second_moment, ridge)
    while len(others) and weight >= 1e-2:
        protected = with_contrast(second_moment, others, weight)
        u, denominator = rank_one_direction(layer, key, protected, ridge)
        if u.norm() <= max_growth * plain.norm():
            return u, denominator, protected, weight
        weight /= 4
    return plain, plain_denominator, second_moment, 0.0


def rank_one_direction(layer: int, key: torch.Tensor, second_moment,
                       ridge: float = 1e-2) -> tuple[torch.Tensor, float]:
    """``u = C^-1 k / (k^T C^-1 k)`` ``[d_mlp]`` (so ``k . u = 1``) and the denominator ``k^T C^-1 k``.

    Solved in float64 on the key's device; ``u`` is float32 whatever the model's dtype (a
    bfloat16 ``u`` would lose ``k . u = 1`` to rounding). Raises :class:`EditError` when the
    denominator is not positive.
    """
    c = second_moment.to(key.device, torch.float64)
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    k = key.to(torch.float64)
    c_inv_k = torch.linalg.solve(c, k)  # [d_mlp]
    denominator = float(k @ c_inv_k)
    if not denominator > 0:
        raise EditError(f"rank-one update at layer {layer}: k^T C^-1 k = {denominator:.3g} is not "
                        "positive; the key statistics are broken (recompute them with more text)")
    return (c_inv_k / denominator).to(compute_dtype(key.dtype)), denominator


def rank_one_update(model, layer: int, key: torch.Tensor, delta: torch.Tensor, second_moment,
                    ridge: float = 1e-2, max_update_ratio: float = 1.0,
                    direction: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, dict]:
    """``[d_mlp, d_model]`` update ``u delta^T`` with ``u = C^-1 k / (k^T C^-1 k)``, and its report.

    ``direction``: ``(u, denominator)`` already computed by :func:`rank_one_direction`.
    The update is computed in float32 (:func:`~excise.edit.record.compute_dtype`) on the
    weight's device, whatever the model's dtype; :func:`~excise.edit.record.make_edit` rounds
    ``W + update`` to the model's dtype once.
    Raises :class:`EditError` when the denominator is not positive or the update is out of
    proportion to the weight (``||dW|| > max_update_ratio * ||W||``).
    """
    weight = out_proj_weight(model, layer).detach()  # [d_mlp, d_model]
    u, denominator = direction or rank_one_direction(layer, key, second_moment, ridge)
    wide = compute_dtype(weight.dtype)
    weight = weight.to(wide)
    update = torch.outer(u.to(weight.device, wide), delta.to(weight.device, wide))  # [d_mlp, d_model]
    ratio = float(update.norm() / weight.norm())
    report = {"denominator": denominator, "key_norm": float(key.norm()),
              "update_norm": float(update.norm()), "weight_norm": float(weight.norm()), "ratio": ratio}
    if not ratio <= max_update_ratio:
        raise EditError(
            f"rank-one update at layer {layer} is out of proportion: ||dW|| = {ratio:.2f} x ||W|| "
            f"(limit {max_update_ratio}). The key is probably unusual at this layer (k^T C^-1 k = "
            f"{denominator:.3g}); try another layer, a larger ridge, or key statistics from more text."
        )
    return update, report
