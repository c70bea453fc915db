"""Write a (possibly edited) model as a plain Hugging Face folder that loads without excise.

TransformerBridge wraps each Hugging Face module in a bridge component, so the wrapped model's
parameter names carry ``._original_component`` segments and a few aliases. :func:`plain_hf_model`
rebuilds a clean copy of the Hugging Face model from its config and the live weights (names
stripped of the bridge segments); :func:`save_model` saves that copy with its tokenizer.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_BRIDGE_SEGMENT = "._original_component"


def plain_name(name: str) -> str:
    """A bridge-wrapped parameter name as Hugging Face spells it (bridge segments removed)."""
    return name.replace(_BRIDGE_SEGMENT, "")


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """The wrapped HF model's weights under their plain Hugging Face names (aliases included)."""
    return {plain_name(k): v for k, v in model.original_model.state_dict().items()}


def plain_hf_model(model):
    """A fresh, unwrapped Hugging Face model with ``model``'s current weights (a copy).

    Used to save edited models and to generate text with a KV cache (generation through the
    bridge-wrapped modules does not use the cache correctly).
    """
    from transformers import AutoModelForCausalLM

    hf = model.original_model
    fresh = AutoModelForCausalLM.from_config(hf.config, dtype=next(hf.parameters()).dtype)
    source = plain_state_dict(model)
    wanted = fresh.state_dict()
    missing = [k for k in wanted if k not in source]
    if missing:
        raise RuntimeError(
            f"cannot map the bridge's weights back to Hugging Face names: {missing[:3]} missing"
        )
    fresh.load_state_dict({k: source[k] for k in wanted}, strict=True)
    fresh.to(next(hf.parameters()).device)
    return fresh.eval()


def save_model(model, folder, overwrite: bool = False) -> Path:
    """Write ``model`` (with any applied edits) as a Hugging Face folder.

    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads the result with no excise
    installed. Refuses to write into the folder the model was loaded from, and into a non-empty
    folder unless ``overwrite=True``; refuses non-finite weights before writing anything.
    """
    folder = Path(folder).expanduser().resolve()
    source = getattr(model, "excise_source", None)
    if source is not None and Path(source).exists() and Path(source).resolve() == folder:
        raise ValueError(
            f"refusing to write into {folder}: the model was loaded from there and its original "
            "weights would be lost; choose another folder"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(f"{folder} is not empty; choose an empty folder or pass overwrite=True")
    for name, param in model.original_model.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(f"parameter {plain_name(name)} holds non-finite values; nothing was written")
    fresh = plain_hf_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in ("model.safetensors", "model.safetensors.index.json"):
            (folder / stale).unlink(missing_ok=True)
    fresh.save_pretrained(folder)
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(folder)
    generation = Path(source) / "generation_config.json" if source else None
    if generation is not None and generation.is_file() and not (folder / generation.name).exists():
        shutil.copy(generation, folder / generation.name)
    log.info("saved the model to %s", folder)
    return folder
