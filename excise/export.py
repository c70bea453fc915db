"""Write a (possibly edited) model as a plain Hugging Face folder that loads without excise.

TransformerBridge wraps each Hugging Face module in a bridge component, so the wrapped model's
parameter names carry ``._original_component`` segments and a few aliases (``mlp.out``,
``attn.o``), and it adds some tensors of its own. :func:`hf_tensors` names every live tensor as
Hugging Face does, for a bridge and for a plain ``PreTrainedModel`` alike; saved edits and the
weights hash use these names, so they survive a TransformerLens upgrade and apply to a plain
transformers model too. :func:`save_model` saves a clean copy of the model with its tokenizer and
its edits.

Writes cannot half-happen: :func:`writing_folder` fills a hidden sibling folder and renames it
into place only when everything is written, so a folder that exists is complete, and an
interrupted save leaves at most a hidden ``.NAME.partial-*`` folder that blocks nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_BRIDGE_SEGMENT = "._original_component"
EDIT_FOLDER = "excise_edit"
"""Sub-folder of a saved model that holds its edits: one edit directly, several as
``excise_edit/01-<method>/``, ``02-<method>/``, ... in the order they were applied."""


def plain_name(name: str) -> str:
    """A bridge-wrapped parameter name as Hugging Face spells it (bridge segments removed)."""
    return name.replace(_BRIDGE_SEGMENT, "")


def _hf_model(model):
    """The Hugging Face module of ``model``: the bridge's wrapped model, or ``model`` itself."""
    return getattr(model, "original_model", model)


def _hf_keys(hf) -> set[str]:
    """The state-dict names Hugging Face's own class has for ``hf``'s config (built on ``meta``)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(hf.config)
    return set(reference.state_dict())


def _walk(module, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers under their HF paths: a bridge component contributes
    only what its ``_original_component`` (the wrapped HF module) holds."""
    if "_original_component" in module._modules:
        yield from _walk(module._modules["_original_component"], prefix)
        return
    for name, tensor in module._parameters.items():
        if tensor is not None:
            yield prefix + name, tensor
    for name, tensor in module._buffers.items():
        if tensor is not None and name not in module._non_persistent_buffers_set:
            yield prefix + name, tensor
    for name, child in module._modules.items():
        if child is not None:
            yield from _walk(child, f"{prefix}{name}.")


def hf_tensors(model) -> dict[str, torch.Tensor]:
    """The live parameters and persistent buffers of ``model`` under their Hugging Face names.

    ``model`` is a TransformerBridge or a plain Hugging Face model. The values are the live
    tensors (writing to them changes the model); tied weights appear under each of their names,
    as in Hugging Face's own ``state_dict``.
    """
    if not hasattr(model, "original_model"):
        return dict(model.state_dict(keep_vars=True))
    hf = model.original_model
    wanted = _hf_keys(hf)
    found: dict[str, torch.Tensor] = {}
    for name, tensor in _walk(hf):
        if name in wanted:
            found.setdefault(name, tensor)
    for name, tensor in hf.state_dict(keep_vars=True).items():  # a wrapping this walk misses
        if plain_name(name) in wanted:
            found.setdefault(plain_name(name), tensor)
    missing = sorted(wanted - set(found))
    if missing:
        raise RuntimeError(
            f"cannot map the bridge's weights back to Hugging Face names: {missing[:3]} missing"
        )
    return found


def hf_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The live parameters (no buffers) of ``model`` under their Hugging Face names."""
    return {n: t for n, t in hf_tensors(model).items() if isinstance(t, torch.nn.Parameter)}


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights under their plain Hugging Face names (detached live tensors)."""
    return {name: tensor.detach() for name, tensor in hf_tensors(model).items()}


def plain_hf_model(model, share_weights: bool = False):
    """A fresh, unwrapped Hugging Face model with ``model``'s current weights.

    Used to save edited models (a copy) and to generate text with a KV cache (generation through
    the bridge-wrapped modules does not use the cache correctly). With ``share_weights`` its
    parameters *are* the live tensors (built without weights of its own, then assigned): no
    second copy of the model in memory, and it sees every later write to the weights; use it
    only for inference.
    """
    from transformers import AutoModelForCausalLM

    hf = _hf_model(model)
    dtype = next(hf.parameters()).dtype
    if not share_weights:
        fresh = AutoModelForCausalLM.from_config(hf.config, dtype=dtype)
        fresh.load_state_dict(plain_state_dict(model), strict=True)
        fresh.to(next(hf.parameters()).device)
        return fresh.eval()
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on "meta": nothing allocated
        fresh = AutoModelForCausalLM.from_config(hf.config, dtype=dtype)
    fresh.load_state_dict(plain_state_dict(model), strict=True, assign=True)
    devices = {t.device for t in hf.parameters()}
    if len(devices) == 1:  # buffers (rotary frequencies) join the weights; nothing is copied
        fresh.to(devices.pop())
    return fresh.eval()


# --------------------------------------------------------------------------- hashes
def weights_hash(model) -> str:
    """SHA-256 of the model's weights under their Hugging Face names, each tensor once.

    Covers every parameter and persistent buffer (name, shape, dtype, bytes) as
    :func:`excise.export.hf_tensors` names them; a tensor tied under several names counts once,
    under the first name in sorted order. It identifies exact weights independently of how they
    are wrapped: a TransformerBridge and the plain Hugging Face model holding the same weights
    hash alike, so a saved edit checks its base on either and survives a TransformerLens upgrade.
    """
    import hashlib

    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, tensor in sorted(hf_tensors(model).items()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            _feed(digest, name, tensor)
    return digest.hexdigest()


def legacy_weights_hash(model) -> str:
    """The weights hash of edits saved in format 1: the bridge's wrapped state dict, aliases and
    all, under its TransformerLens names (needs a TransformerBridge). Only for checking them."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.original_model.state_dict().items()):
        hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def tensor_hash(name: str, tensor: torch.Tensor) -> str:
    """SHA-256 of one named tensor (name, shape, dtype, bytes); saved edits record one per delta."""
    import hashlib

    digest = hashlib.sha256()
    _feed(digest, name, tensor)
    return digest.hexdigest()


def _feed(digest, name: str, tensor: torch.Tensor) -> None:
    """Feed ``name``, shape, dtype and raw bytes of ``tensor`` into ``digest``, fields separated."""
    digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
    digest.update(_raw_bytes(tensor))


def _raw_bytes(tensor: torch.Tensor):
    """The bytes of ``tensor`` as a buffer (CPU, contiguous, no extra copy when already so)."""
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    """Feed ``name``, the shape and the raw bytes of ``tensor`` into the hashlib ``digest``."""
    digest.update(name.encode())
    digest.update(str(tuple(tensor.shape)).encode())
    digest.update(_raw_bytes(tensor))


# --------------------------------------------------------------------------- atomic folders
def check_target(folder: Path, overwrite: bool = False) -> None:
    """Raise ``ValueError`` (writing nothing) when ``folder`` cannot receive a new save.

    Refuses a path that is a file, a non-empty folder unless ``overwrite``, a path below a file,
    and a parent folder this process may not write into (the save is built beside the target).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder; choose a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(f"{folder} is not empty; choose an empty folder or pass overwrite=True")
    check_writable_parent(folder)


def check_writable_parent(path) -> None:
    """Raise ``ValueError`` unless the nearest existing ancestor of ``path`` is a folder this
    process can write into (tested by writing a scratch file: the only test that also holds for
    root and for read-only mounts)."""
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot create {path}: {ancestor} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise ValueError(f"cannot write into {ancestor} ({err.strerror}); choose another path") from err


@contextmanager
def writing_folder(folder, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``folder`` to write into; rename it to ``folder`` on success.

    On any error or interrupt (Ctrl-C included) the sibling is deleted and ``folder`` is left as
    it was. With ``overwrite`` an existing ``folder`` is replaced only after the new one is
    complete. Files are flushed to disk before the rename.
    """
    folder = Path(folder).expanduser().absolute()
    check_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield partial
        _sync(partial)
        _move_into_place(partial, folder, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _sync(folder: Path) -> None:
    """fsync every file under ``folder`` so that the rename never publishes unwritten data."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _move_into_place(partial: Path, folder: Path, overwrite: bool) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists():
        os.rename(partial, folder)
        return
    if not overwrite:
        raise ValueError(f"{folder} appeared while saving; nothing was replaced")
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    old.rmdir()
    os.rename(folder, old)
    try:
        os.rename(partial, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- saved edits
def edit_folders(folder) -> list[Path]:
    """The edit folders saved with the model in ``folder``, in the order they were applied."""
    root = Path(folder) / EDIT_FOLDER
    if (root / "edit.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    numbered = [p for p in root.iterdir() if (p / "edit.json").is_file() and p.name[:1].isdigit()]
    return sorted(numbered, key=lambda p: int(p.name.split("-", 1)[0]))


def edit_folder_name(index: int, count: int, method: str) -> str:
    """Where edit ``index`` (0-based) of ``count`` goes under :data:`EDIT_FOLDER` ("" for one)."""
    if count == 1:
        return ""
    slug = "".join(c if c.isalnum() or c in "_-" else "-" for c in method)
    return f"{index + 1:02d}-{slug}"


def check_not_source(model, folder) -> None:
    """Raise ``ValueError`` when ``folder`` is the folder ``model`` was loaded from."""
    folder = Path(folder).expanduser().resolve()
    source = getattr(model, "excise_source", None)
    if source is not None and Path(source).exists() and Path(source).resolve() == folder:
        raise ValueError(
            f"refusing to write into {folder}: the model was loaded from there and its original "
            "weights would be lost; choose another folder"
        )


def save_model(model, folder, overwrite: bool = False) -> Path:
    """Write ``model`` (with its applied edits) as a Hugging Face folder; all or nothing.

    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads the result with no excise
    installed. Every edit applied to ``model`` (``model.excise_edits``) is saved in
    ``folder/excise_edit/`` (see :data:`EDIT_FOLDER`) with the hash of the saved weights, so
    ``load_model`` notices weights changed later and ``Edit.attach`` can rebuild "before".

    The folder is written as a hidden sibling and renamed into place when complete, so a folder
    that exists is complete. Refuses (before any heavy work) the folder the model was loaded
    from, a non-empty folder unless ``overwrite=True`` (the old folder is then replaced, only
    once the new one is complete), a path it cannot create, and non-finite weights.
    """
    folder = Path(folder).expanduser().resolve()
    check_not_source(model, folder)
    check_target(folder, overwrite)
    for name, param in hf_parameters(model).items():
        if not torch.isfinite(param).all():
            raise ValueError(f"parameter {name} holds non-finite values; nothing was written")
    edits = [e for e in getattr(model, "excise_edits", []) if e._model_id == id(model)]
    fresh = plain_hf_model(model)
    with writing_folder(folder, overwrite) as partial:
        fresh.save_pretrained(partial)
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save_pretrained(partial)
        source = getattr(model, "excise_source", None)
        generation = Path(source) / "generation_config.json" if source else None
        if generation is not None and generation.is_file() and not (partial / generation.name).exists():
            shutil.copy(generation, partial / generation.name)
        if edits:
            edited_hash = weights_hash(fresh)
            dtype = str(next(fresh.parameters()).dtype).removeprefix("torch.")
            (partial / EDIT_FOLDER).mkdir()
            for i, edit in enumerate(edits):
                target = partial / EDIT_FOLDER / edit_folder_name(i, len(edits), edit.method)
                edit.save(target, overwrite=True, edited_hash=edited_hash, edited_dtype=dtype)
    log.info("saved the model to %s", folder)
    return folder
