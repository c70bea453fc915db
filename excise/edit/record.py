"""``Edit``: the weight deltas of one edit, with provenance, that can be applied, undone and saved.

Every editor returns an :class:`Edit`. It holds ``deltas`` (HF parameter name -> ``new - old``),
the hash of the base weights it was computed on, and, once applied to a model, the original
values of the parameters it touched. The invariant (as in ROME's "return the original weights"):

* ``apply`` refuses a model whose weights hash differs from ``base_hash`` and checks that every
  new weight is finite *before* writing anything;
* ``undo`` writes back the stored originals, so the model returns to its base weights bit-for-bit
  (not ``old + delta - delta``, which rounding would spoil).

An edit saves as a folder with ``edit.safetensors`` (the deltas) and ``edit.json`` (everything
else); nothing is pickled.
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

FORMAT_VERSION = 1


class EditError(RuntimeError):
    """An edit cannot be applied, undone or loaded; the message says why and what to do."""


@dataclass
class Edit:
    """Weight deltas plus provenance; see the module docstring for the apply/undo invariant."""

    method: str
    settings: dict
    fact_ids: list[str]
    components: list[Component]
    base_hash: str
    deltas: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _model_id: int | None = field(default=None, repr=False)

    # ----------------------------------------------------------------- apply / undo
    @property
    def is_applied(self) -> bool:
        return self._model_id is not None

    def apply(self, model, _trust_hash: bool = False) -> Edit:
        """Write ``original + delta`` into ``model``'s live parameters; returns ``self``.

        Raises :class:`EditError` (and changes nothing) when the model's weights are not the
        ones the edit was computed on, when a delta names a missing or differently shaped
        parameter, or when a new weight would be non-finite.
        """
        from excise.model import weights_hash

        if self.is_applied:
            raise EditError("this edit is already applied to a model; undo() it first")
        if not _trust_hash:
            current = weights_hash(model)
            if current != self.base_hash:
                raise EditError(
                    f"the model's weights (hash {current[:12]}) are not the ones this {self.method} "
                    f"edit was computed on (hash {self.base_hash[:12]}); load the same base model, "
                    "and undo other edits first"
                )
        params = _parameters(model, self.deltas)
        new_values = {}
        for name, delta in self.deltas.items():
            param = params[name]
            new = param.detach() + delta.to(param.device, param.dtype)
            if not torch.isfinite(new).all():
                raise EditError(
                    f"edit would write non-finite weights into {name}; nothing was written "
                    "(the edit is broken: recompute it, e.g. with a smaller learning rate)"
                )
            new_values[name] = new
        with torch.no_grad():
            for name, new in new_values.items():
                self._originals[name] = params[name].detach().clone()
                params[name].copy_(new)
        self._model_id = id(model)
        edits = getattr(model, "excise_edits", None)
        if edits is None:
            edits = []
            model.excise_edits = edits
        if not any(e is self for e in edits):
            edits.append(self)
        return self

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
        params = _parameters(model, self._originals)
        with torch.no_grad():
            for name, original in self._originals.items():
                params[name].copy_(original)
        self._originals = {}
        self._model_id = None
        if position is not None and not _keep_listed:
            del edits[position]

    @contextmanager
    def reverted(self, model):
        """Temporarily undo this (applied) edit inside ``with``; re-apply on exit, even on error."""
        self.undo(model, _keep_listed=True)
        try:
            yield model
        finally:
            self.apply(model, _trust_hash=True)

    @contextmanager
    def applied(self, model):
        """Apply this edit inside ``with``; undo on exit, even on error."""
        self.apply(model)
        try:
            yield model
        finally:
            self.undo(model)

    # ----------------------------------------------------------------- reporting
    def update_norms(self) -> dict[str, float]:
        """Frobenius norm of each delta (how much each parameter moved)."""
        return {name: float(delta.float().norm()) for name, delta in self.deltas.items()}

    def __repr__(self) -> str:
        return (f"Edit(method={self.method!r}, facts={self.fact_ids}, "
                f"components={[c.key for c in self.components]}, params={len(self.deltas)})")

    # ----------------------------------------------------------------- persistence
    def save(self, path) -> Path:
        """Write ``path/edit.safetensors`` (deltas) and ``path/edit.json`` (provenance)."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: d.detach().to("cpu").contiguous() for name, d in self.deltas.items()}
        save_file(tensors, str(folder / "edit.safetensors"))
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "settings": _jsonable(self.settings),
            "fact_ids": list(self.fact_ids),
            "components": [c.key for c in self.components],
            "base_hash": self.base_hash,
            "info": _jsonable(self.info),
        }
        (folder / "edit.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder


def load(path) -> Edit:
    """Read an edit saved by :meth:`Edit.save` (not applied to any model yet)."""
    from safetensors.torch import load_file

    folder = Path(path)
    meta_path, tensor_path = folder / "edit.json", folder / "edit.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise EditError(f"{folder} is not a saved edit: expected edit.json and edit.safetensors in it")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise EditError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    return Edit(
        method=meta["method"], settings=meta["settings"], fact_ids=meta["fact_ids"],
        components=[parse_component(k) for k in meta["components"]], base_hash=meta["base_hash"],
        deltas=load_file(str(tensor_path)), info=meta.get("info", {}),
    )


def _parameters(model, names) -> dict[str, torch.nn.Parameter]:
    """The live parameters named in ``names``; a clear error for any that is missing."""
    params = dict(model.original_model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise EditError(f"the model has no parameter {missing[0]!r}: this edit is for another architecture")
    return {n: params[n] for n in names}


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

    The editors compute new weights; the Edit stores their difference to the current weights
    and writes ``original + delta`` (checked for finiteness first). The Edit is appended to
    ``model.excise_edits``.
    """
    params = _parameters(model, new_weights)
    deltas = {}
    for name, new in new_weights.items():
        if not torch.isfinite(new).all():
            raise EditError(
                f"{method} produced non-finite weights for {name}; nothing was written. "
                "Try another layer or a stronger regularisation."
            )
        deltas[name] = (new.detach() - params[name].detach()).clone()
    edit = Edit(method=method, settings=dict(settings), fact_ids=list(fact_ids),
                components=list(components), base_hash=base_hash, deltas=deltas, info=dict(info))
    return edit.apply(model, _trust_hash=True)
