"""``Edit``: the weight deltas of one edit, with provenance, that can be applied, undone and saved.

Every editor returns an :class:`Edit`. It holds ``deltas`` (Hugging Face parameter name ->
``new - old``), the hash of the base weights it was computed on, and, once applied to a model,
the original values of the parameters it touched. The invariant (as in ROME's "return the
original weights"):

* ``apply`` refuses a model whose weights hash differs from ``base_hash`` and checks that every
  new weight is finite *before* writing anything;
* ``undo`` writes back the stored originals, so the model returns to its base weights bit-for-bit
  (not ``old + delta - delta``, which rounding would spoil); ``reverted`` likewise puts back the
  exact edited values on exit.

Weights keep the model's dtype. For bfloat16 and float16 weights the deltas are kept in float32
(:func:`compute_dtype`) and ``original + delta`` is computed there and rounded once, so an edit
writes exactly the value its editor computed, and ``undo`` stays bit-for-bit in any dtype. Each
weight is written on its own device (a model split by a ``device_map`` holds several).

Names are Hugging Face's (``model.layers.4.mlp.down_proj.weight``), resolved to the live
parameters of a TransformerBridge or of a plain ``PreTrainedModel``; the base hash
(:func:`excise.model.weights_hash`) is the same for both.

An edit saves as a folder with ``edit.safetensors`` (the deltas) and ``edit.json`` (everything
else); nothing is pickled. Format 2 records a SHA-256 per delta, checked on :func:`load`, and,
when the edit was saved with a model (:func:`excise.save_model`), the hash of those edited
weights, which :meth:`Edit.attach` checks. Format 1 folders (TransformerLens' wrapped parameter
names, a hash over the bridge's state dict) still load and apply to a TransformerBridge.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from excise.components import Component, parse_component

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class EditError(RuntimeError):
    """An edit cannot be applied, undone or loaded; the message says why and what to do."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype edits are computed and their deltas kept in for weights of ``dtype``: float32
    for bfloat16 and float16 (whose rounding would spoil a solve or a small update), else
    ``dtype`` itself."""
    return torch.promote_types(dtype, torch.float32)


def add_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight + delta`` computed in :func:`compute_dtype` on ``weight``'s device and rounded to
    ``weight``'s dtype once: for a delta made by :func:`make_edit` this is exactly the new weight."""
    wide = compute_dtype(weight.dtype)
    return (weight.to(wide) + delta.to(weight.device, wide)).to(weight.dtype)


@dataclass
class Edit:
    """Weight deltas plus provenance; see the module docstring for the apply/undo invariant.

    ``edited_hash``/``edited_dtype``: the weights hash and dtype of the model this edit was saved
    with by :func:`excise.save_model` (all of that model's edits applied), when known.
    ``base_hash_version`` is 1 for an edit read from a format-1 folder until it is applied.
    """

    method: str
    settings: dict
    fact_ids: list[str]
    components: list[Component]
    base_hash: str
    deltas: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    edited_hash: str | None = None
    edited_dtype: str | None = None
    base_hash_version: int = 2
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _model_id: int | None = field(default=None, repr=False)

    # ----------------------------------------------------------------- apply / undo
    @property
    def is_applied(self) -> bool:
        return self._model_id is not None

    def apply(self, model, _trust_hash: bool = False) -> Edit:
        """Write ``original + delta`` into ``model``'s live parameters; returns ``self``.

        ``model`` is a TransformerBridge or a plain Hugging Face model. Raises
        :class:`EditError` (and changes nothing) when the model's weights are not the ones the
        edit was computed on, when a delta names a missing or differently shaped parameter, or
        when a new weight would be non-finite.
        """
        if self.is_applied:
            raise EditError("this edit is already applied to a model; undo() it first")
        upgraded = None if _trust_hash else self._check_base(model)
        resolved = _resolve(model, self.deltas)
        new_values = {}
        for name, (hf_name, param) in resolved.items():
            delta = self.deltas[name]
            if delta.shape != param.shape:
                raise EditError(f"the delta for {hf_name} has shape {tuple(delta.shape)}, the "
                                f"model's parameter {tuple(param.shape)}: this edit is for another model")
            new = add_delta(param.detach(), delta)
            if not torch.isfinite(new).all():
                raise EditError(
                    f"edit would write non-finite weights into {hf_name}; nothing was written "
                    "(the edit is broken: recompute it, e.g. with a smaller learning rate)"
                )
            new_values[hf_name] = new
        params = {hf_name: param for hf_name, param in resolved.values()}
        with torch.no_grad():
            for name, new in new_values.items():
                self._originals[name] = params[name].detach().clone()
                params[name].copy_(new)
        self.deltas = {hf_name: self.deltas[name] for name, (hf_name, _) in resolved.items()}
        if upgraded is not None:  # a format-1 edit, checked on its base: now in format-2 terms
            self.base_hash, self.base_hash_version = upgraded, 2
        self._attach_to(model)
        return self

    def _check_base(self, model) -> str | None:
        """Refuse a model whose weights are not this edit's base; for a format-1 edit return the
        base's current-format hash (so that it can be saved again in format 2)."""
        from excise.export import legacy_weights_hash, weights_hash

        if self.base_hash_version == 1:
            if not hasattr(model, "original_model"):
                raise EditError(
                    "this edit was saved in format 1, whose base hash can only be checked on a "
                    "TransformerBridge: load the model with excise.load_model, apply it there once "
                    "and save the edit again"
                )
            current = legacy_weights_hash(model)
        else:
            current = weights_hash(model)
        if current != self.base_hash:
            raise EditError(
                f"the model's weights (hash {current[:12]}) are not the ones this {self.method} "
                f"edit was computed on (hash {self.base_hash[:12]}); load the same base model, "
                "and undo other edits first"
            )
        return weights_hash(model) if self.base_hash_version == 1 else None

    def _attach_to(self, model) -> None:
        self._model_id = id(model)
        edits = getattr(model, "excise_edits", None)
        if edits is None:
            edits = []
            model.excise_edits = edits
        if not any(e is self for e in edits):
            edits.append(self)

    def undo(self, model, _keep_listed: bool = False) -> None:
        """Restore the original weights bit-for-bit; the edit can be applied again later."""
        if self._model_id != id(model):
            raise EditError("this edit is not applied to this model; nothing to undo")
        edits = getattr(model, "excise_edits", [])
        position = next((i for i, e in enumerate(edits) if e is self), None)
        if position is not None:
            later = [e for e in edits[position + 1:] if e.is_applied and set(e.deltas) & set(self.deltas)]
            if later:
                raise EditError(
                    f"a later {later[-1].method} edit changes the same weights; undo it first "
                    "(edits are undone in reverse order)"
                )
        params = {n: p for n, (_, p) in _resolve(model, self._originals).items()}
        with torch.no_grad():
            for name, original in self._originals.items():
                params[name].copy_(original)
        self._originals = {}
        self._model_id = None
        if position is not None and not _keep_listed:
            del edits[position]

    @contextmanager
    def reverted(self, model):
        """Temporarily undo this (applied) edit inside ``with``; on exit, even on error, write
        back the exact edited values it held before (not a recomputed ``original + delta``)."""
        params = {n: p for n, (_, p) in _resolve(model, self._originals).items()}
        edited = {n: p.detach().clone() for n, p in params.items()}
        originals = dict(self._originals)
        self.undo(model, _keep_listed=True)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in edited.items():
                    params[name].copy_(value)
            self._originals = originals
            self._model_id = id(model)

    @contextmanager
    def applied(self, model):
        """Apply this edit inside ``with``; undo on exit, even on error."""
        self.apply(model)
        try:
            yield model
        finally:
            self.undo(model)

    def attach(self, model) -> Edit:
        """Mark this loaded edit as applied to ``model``, which already holds base + delta.

        For a model loaded from a folder written by :func:`excise.save_model`: its weights hash
        must equal :attr:`edited_hash` (else :class:`EditError`, nothing changed). The originals
        become ``current - delta``, so ``undo``/``reverted`` give the base up to float rounding,
        *not* bit-for-bit. Several edits saved together: use :func:`attach`.
        """
        attach(model, [self])
        return self

    # ----------------------------------------------------------------- reporting
    def update_norms(self) -> dict[str, float]:
        """Frobenius norm of each delta (how much each parameter moved)."""
        return {name: float(delta.float().norm()) for name, delta in self.deltas.items()}

    def __repr__(self) -> str:
        return (f"Edit(method={self.method!r}, facts={self.fact_ids}, "
                f"components={[c.key for c in self.components]}, params={len(self.deltas)})")

    # ----------------------------------------------------------------- persistence
    def save(self, path, overwrite: bool = False, *, edited_hash: str | None = None,
             edited_dtype: str | None = None) -> Path:
        """Write ``path/edit.safetensors`` (deltas) and ``path/edit.json`` (provenance, hashes).

        All or nothing: written into a hidden sibling folder and renamed into place when
        complete. Refuses a non-empty ``path`` unless ``overwrite=True`` (the old folder is then
        replaced once the new one is complete). ``edited_hash``/``edited_dtype`` override the
        recorded edited-weights hash (``save_model`` passes the hash of the weights it saved).
        """
        from safetensors.torch import save_file

        from excise.export import tensor_hash, writing_folder

        if self.base_hash_version != FORMAT_VERSION:
            raise EditError(
                "this edit was read from a format-1 folder: apply it once to its base model "
                "(which checks and upgrades its hash and names), then save it again"
            )
        edited_hash = edited_hash or self.edited_hash
        edited_dtype = edited_dtype or self.edited_dtype
        tensors = {name: d.detach().to("cpu").contiguous() for name, d in self.deltas.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "settings": _jsonable(self.settings),
            "fact_ids": list(self.fact_ids),
            "components": [c.key for c in self.components],
            "base_hash": self.base_hash,
            "edited_weights": ({"sha256": edited_hash, "dtype": edited_dtype}
                               if edited_hash else None),
            "deltas": {name: {"sha256": tensor_hash(name, t), "shape": list(t.shape),
                              "dtype": str(t.dtype).removeprefix("torch.")}
                       for name, t in sorted(tensors.items())},
            "info": _jsonable(self.info),
        }
        folder = Path(path)
        with writing_folder(folder, overwrite) as partial:
            save_file(tensors, str(partial / "edit.safetensors"))
            (partial / "edit.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder


def load(path) -> Edit:
    """Read an edit saved by :meth:`Edit.save` (format 1 or 2; not applied to any model yet).

    Raises :class:`EditError` naming the file when it is missing, unreadable, truncated, or when
    a stored delta does not match the hash ``edit.json`` records for it (a corrupted file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from excise.export import tensor_hash

    folder = Path(path)
    meta_path, tensor_path = folder / "edit.json", folder / "edit.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise EditError(f"{folder} is not a saved edit: expected edit.json and edit.safetensors in it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EditError(f"cannot read {meta_path} ({err}): it is truncated or corrupted; save "
                        "the edit again") from err
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise EditError(f"{meta_path}: unsupported format_version {version!r} (this excise reads "
                        f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade excise")
    try:
        deltas = load_file(str(tensor_path))
    except (SafetensorError, OSError) as err:
        raise EditError(f"cannot read {tensor_path} ({err}): the file is truncated or corrupted; "
                        "save or copy the edit again") from err
    if version >= 2:
        _check_deltas(deltas, meta.get("deltas") or {}, tensor_path, tensor_hash)
    try:
        edited = meta.get("edited_weights") or {}
        return Edit(
            method=meta["method"], settings=meta["settings"], fact_ids=meta["fact_ids"],
            components=[parse_component(k) for k in meta["components"]],
            base_hash=meta["base_hash"], deltas=deltas, info=meta.get("info", {}),
            edited_hash=edited.get("sha256"), edited_dtype=edited.get("dtype"),
            base_hash_version=1 if version == 1 else 2,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise EditError(f"{meta_path} is malformed ({err!r}); save the edit again") from err


def _check_deltas(deltas: dict, recorded: dict, tensor_path: Path, tensor_hash) -> None:
    """Refuse stored deltas that differ from what ``edit.json`` recorded (names and hashes)."""
    if set(deltas) != set(recorded):
        raise EditError(f"{tensor_path} holds other parameters than its edit.json lists: the edit "
                        "folder is corrupted or mixed up; save the edit again")
    for name, tensor in deltas.items():
        if tensor_hash(name, tensor) != recorded[name].get("sha256"):
            raise EditError(f"{tensor_path} is corrupted: the stored delta for {name} does not "
                            "match the hash in edit.json; save or copy the edit again")


def load_saved_edits(folder) -> list[Edit]:
    """The edits :func:`excise.save_model` saved with the model in ``folder``, in applied order
    (empty when it saved none); each is checked as by :func:`load`."""
    from excise.export import edit_folders

    return [load(path) for path in edit_folders(folder)]


def attach(model, edits) -> list[Edit]:
    """Mark ``edits`` (in the order they were applied) as applied to ``model``, which already
    holds their result, e.g. a folder written by :func:`excise.save_model`.

    Checks that ``model``'s weights hash equals the edits' recorded edited-weights hash and
    refuses otherwise (nothing changes). Originals are reconstructed as ``current - delta``,
    newest edit first, so ``undo``/``reverted`` reach the base only up to float rounding (not
    bit-for-bit, unlike an edit applied with :meth:`Edit.apply`). Appends the edits to
    ``model.excise_edits``.
    """
    from excise.export import weights_hash

    edits = list(edits)
    if not edits:
        return edits
    if any(e.is_applied for e in edits):
        raise EditError("an edit to attach is already applied to a model; undo() it first")
    recorded = {e.edited_hash for e in edits}
    if None in recorded:
        raise EditError("this edit records no edited-weights hash (it was not saved with a model "
                        "by excise.save_model), so it cannot be attached; pass the original model "
                        "instead")
    if len(recorded) > 1:
        raise EditError("these edits were saved with different models; attach them one folder at a time")
    current, expected = weights_hash(model), recorded.pop()
    if current != expected:
        raise EditError(
            f"the model's weights (hash {current[:12]}) are not the edited weights these edits "
            f"were saved with (hash {expected[:12]}): attach an edit only to the unchanged folder "
            "excise.save_model wrote it into"
        )
    running: dict[str, torch.Tensor] = {}
    staged = []
    for edit in reversed(edits):
        resolved = _resolve(model, edit.deltas)
        originals, deltas = {}, {}
        for name, (hf_name, param) in resolved.items():
            value = running.get(hf_name, param.detach())
            original = add_delta(value, -edit.deltas[name])
            if not torch.isfinite(original).all():
                raise EditError(f"undoing this edit would give non-finite weights in {hf_name}; "
                                "it does not belong to this model")
            originals[hf_name] = running[hf_name] = original
            deltas[hf_name] = edit.deltas[name]
        staged.append((edit, originals, deltas))
    for edit, originals, deltas in reversed(staged):
        edit.deltas, edit._originals = deltas, originals
        edit._attach_to(model)
    return edits


def _resolve(model, names) -> dict[str, tuple[str, torch.nn.Parameter]]:
    """Each name in ``names`` -> (its Hugging Face name, the live parameter).

    Accepts Hugging Face names and, for a TransformerBridge, TransformerLens' wrapped names
    (``model.layers.4._original_component.mlp...``, as editors and format-1 files give them).
    A parameter the bridge adds itself (no Hugging Face name) keeps its wrapped name.
    """
    from excise.export import hf_parameters

    live = hf_parameters(model)
    hf_name_of: dict[int, str] = {}
    for name in sorted(live):
        hf_name_of.setdefault(id(live[name]), name)
    wrapped = {}
    if hasattr(model, "original_model"):
        wrapped = dict(model.original_model.named_parameters(remove_duplicate=False))
    resolved = {}
    for name in names:
        param = live.get(name, wrapped.get(name))
        if param is None:
            raise EditError(f"the model has no parameter {name!r}: this edit is for another "
                            "architecture")
        # a tensor the bridge adds (e.g. its split q/k/v) has no HF name and keeps its own
        resolved[name] = (name if name in live else hf_name_of.get(id(param), name), param)
    targets = [hf_name for hf_name, _ in resolved.values()]
    if len(set(targets)) != len(targets):
        raise EditError("two names in this edit refer to the same parameter; the edit is malformed")
    return resolved


def _jsonable(value):
    """Settings/info as JSON: tensors become lists, components their keys, paths strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "key") and hasattr(value, "layer"):
        return value.key
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def make_edit(model, method: str, new_weights: dict[str, torch.Tensor], *, settings: dict,
              fact_ids, components, base_hash: str, info: dict) -> Edit:
    """Build an Edit from ``new_weights`` (name -> desired value) and apply it to ``model``.

    The editors compute new weights (named as Hugging Face or TransformerLens' wrapped model
    names them); the Edit stores their difference to the current weights under Hugging Face
    names and writes ``original + delta`` (checked for finiteness first). The Edit is appended to
    ``model.excise_edits``.

    A new weight computed in a wider dtype than the model's (float32 updates of a bfloat16
    model) is cast to the parameter's dtype and device once, here; its delta is kept in
    :func:`compute_dtype`, so that ``apply`` writes exactly that cast value back.
    """
    deltas = {}
    for name, (hf_name, param) in _resolve(model, new_weights).items():
        new = new_weights[name].detach().to(param.device, param.dtype)
        if not torch.isfinite(new).all():
            raise EditError(
                f"{method} produced non-finite weights for {hf_name}; nothing was written. "
                "Try another layer or a stronger regularisation."
            )
        wide = compute_dtype(param.dtype)
        deltas[hf_name] = new.to(wide) - param.detach().to(wide)
    edit = Edit(method=method, settings=dict(settings), fact_ids=list(fact_ids),
                components=list(components), base_hash=base_hash, deltas=deltas, info=dict(info))
    return edit.apply(model, _trust_hash=True)
