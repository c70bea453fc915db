"""Saved edits and models: all-or-nothing writes, hashes checked on load, Hugging Face names.

Edits here are random perturbations built with ``make_edit`` (no editor needed): what is tested
is how an edit is stored, checked, applied and undone, on tiny random models.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from excise.components import mlp_out_module, param_name
from excise.edit import EditError, load
from excise.edit.record import attach, load_saved_edits, make_edit
from excise.export import hf_tensors, save_model
from excise.model import ModelLoadError, legacy_weights_hash, load_model, weights_hash


def _edit(model, layer: int = 1, scale: float = 1e-2, seed: int = 0):
    """A random edit of layer ``layer``'s MLP output weight, applied to ``model``."""
    param = mlp_out_module(model, layer).weight
    noise = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed))
    return make_edit(model, "test", {param_name(model, param): param.detach() + scale * noise},
                     settings={"layer": layer}, fact_ids=["f"], components=[],
                     base_hash=weights_hash(model), info={})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hf_tensors(model).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _plain(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _overwrite(path, offset: int, size: int) -> None:
    """Overwrite ``size`` bytes of ``path`` at ``offset`` with finite float32 values."""
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = torch.full((size // 4,), 0.25).numpy().tobytes()
    path.write_bytes(bytes(data))


def test_edit_saves_hf_names_and_applies_to_plain_transformers(tiny, tmp_path):
    base = _state(tiny)
    edit = _edit(tiny)
    meta = json.loads((edit.save(tmp_path / "e") / "edit.json").read_text())
    plain = _plain(tiny.excise_source)
    assert meta["format_version"] == 2 and set(meta["deltas"]) <= set(plain.state_dict())
    assert weights_hash(plain) == edit.base_hash  # the same hash on the bridge and on plain HF
    loaded = load(tmp_path / "e").apply(plain)
    assert _same(_state(plain), _state(tiny))  # the same weights as the edit on the bridge
    loaded.undo(plain)
    edit.undo(tiny)
    assert _same(_state(plain), base) and _same(_state(tiny), base)  # bit-exact


def test_reverted_puts_back_the_exact_edited_values(tiny_folders, tmp_path):
    model = load_model(str(tiny_folders["llama"]), device="cpu")
    base = _state(model)
    _edit(model)
    folder = save_model(model, tmp_path / "edited")
    edited = load_model(str(folder), device="cpu")
    after = _state(edited)
    (edit,) = attach(edited, load_saved_edits(folder))  # originals = after - delta, rounded
    with edit.reverted(edited):
        before = _state(edited)
    assert _same(_state(edited), after)  # the values it held, not (after - delta) + delta
    assert all(torch.allclose(v, base[k], atol=1e-6) for k, v in before.items())
    edit.undo(edited)
    assert _same(_state(edited), before)


def test_attach_rebuilds_before_and_refuses_other_weights(tiny_folders, tmp_path):
    model = load_model(str(tiny_folders["gpt2"]), device="cpu")
    base = _state(model)
    _edit(model, layer=0, seed=1), _edit(model, layer=0, seed=2)  # two edits of one weight
    folder = save_model(model, tmp_path / "two")
    assert sorted(p.name for p in (folder / "excise_edit").iterdir()) == ["01-test", "02-test"]
    edited = load_model(str(folder), device="cpu")
    edits = attach(edited, load_saved_edits(folder))
    assert edited.excise_edits == edits
    for edit in reversed(edits):
        edit.undo(edited)
    assert all(torch.allclose(v, base[k], atol=1e-6) for k, v in _state(edited).items())
    with pytest.raises(EditError, match="not the edited weights"):
        load_saved_edits(folder)[0].attach(edited)  # edited is back at base now


def test_interrupted_save_model_leaves_nothing_and_blocks_nothing(tiny_folders, tmp_path,
                                                                   monkeypatch):
    from excise.edit.record import Edit

    model = load_model(str(tiny_folders["neox"]), device="cpu")
    edit = _edit(model)
    target = tmp_path / "out"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # Ctrl-C after config, weights and tokenizer are written
        patch.setattr(Edit, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):
            save_model(model, target)
    assert list(tmp_path.iterdir()) == []  # no folder that looks complete, no leftovers
    save_model(model, target)  # a rerun is not blocked
    first = (target / "model.safetensors").read_bytes()
    edit.undo(model)
    with monkeypatch.context() as patch:  # overwrite: the old folder survives an interrupted save
        patch.setattr(model.tokenizer, "save_pretrained", interrupt)
        with pytest.raises(KeyboardInterrupt):
            save_model(model, target, overwrite=True)
    assert (target / "model.safetensors").read_bytes() == first
    assert (target / "excise_edit" / "edit.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    save_model(model, target, overwrite=True)  # replaced once complete: the unedited model now
    assert not (target / "excise_edit").exists()


def test_bad_targets_are_refused_before_writing(tiny_folders, tmp_path):
    model = load_model(str(tiny_folders["llama"]), device="cpu")
    edit = _edit(model)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_model(model, tmp_path / "file" / "out")
    with pytest.raises(ValueError, match="not a folder"):
        edit.save(tmp_path / "file")
    edit.save(tmp_path / "e")
    with pytest.raises(ValueError, match="not empty"):
        edit.save(tmp_path / "e")
    edit.save(tmp_path / "e", overwrite=True)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="permission denied"):
            save_model(model, locked / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["e", "file"], ["e", "file", "locked"])


def test_corrupted_or_truncated_edit_is_refused(tiny_folders, tmp_path):
    model = load_model(str(tiny_folders["gpt2"]), device="cpu")
    folder = _edit(model).save(tmp_path / "e")
    tensors = folder / "edit.safetensors"
    intact = tensors.read_bytes()
    _overwrite(tensors, len(intact) - 8192, 4096)  # finite garbage inside the stored delta
    with pytest.raises(EditError, match="corrupted.*hash"):
        load(folder)
    tensors.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(EditError, match="edit.safetensors.*truncated"):
        load(folder)
    tensors.write_bytes(intact)
    assert load(folder).deltas.keys() == model.excise_edits[0].deltas.keys()


def test_changed_or_truncated_model_is_refused_on_load(tiny_folders, tmp_path):
    model = load_model(str(tiny_folders["llama"]), device="cpu")
    _edit(model)
    folder = save_model(model, tmp_path / "edited")
    recorded = json.loads((folder / "excise_edit" / "edit.json").read_text())["edited_weights"]
    assert recorded["sha256"] == weights_hash(model) and recorded["dtype"] == "float32"
    weights = folder / "model.safetensors"
    intact = weights.read_bytes()
    _overwrite(weights, len(intact) // 2, 64 * 1024)
    with pytest.raises(ModelLoadError, match="changed after excise saved them"):
        load_model(str(folder), device="cpu")
    weights.write_bytes(intact[: len(intact) // 3])
    with pytest.raises(ModelLoadError, match="truncated or corrupted"):
        load_model(str(folder), device="cpu")


def test_format_1_edit_still_loads_and_applies(tiny_folders, tmp_path):
    """A folder in the old format (TransformerLens' wrapped names, the bridge state-dict hash)."""
    from safetensors.torch import save_file

    model = load_model(str(tiny_folders["gpt2"]), device="cpu")
    param = mlp_out_module(model, 1).weight
    wrapped = param_name(model, param)
    assert "_original_component" in wrapped
    delta = 1e-2 * torch.randn(param.shape, generator=torch.Generator().manual_seed(3))
    folder = tmp_path / "v1"
    folder.mkdir()
    save_file({wrapped: delta}, str(folder / "edit.safetensors"))
    old_hash = hashlib.sha256()  # the format-1 hash as excise wrote it, spelled out
    for name, tensor in sorted(model.original_model.state_dict().items()):
        old_hash.update(name.encode() + str(tuple(tensor.shape)).encode())
        old_hash.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert legacy_weights_hash(model) == old_hash.hexdigest()
    meta = {"format_version": 1, "method": "rome", "settings": {}, "fact_ids": ["f"],
            "components": ["mlp.1"], "base_hash": old_hash.hexdigest(), "info": {}}
    (folder / "edit.json").write_text(json.dumps(meta))
    base = _state(model)
    with pytest.raises(EditError, match="format 1"):
        load(folder).apply(_plain(tiny_folders["gpt2"]))
    edit = load(folder).apply(model)
    (hf_name,) = edit.deltas
    assert hf_name == "transformer.h.1.mlp.c_proj.weight"
    assert torch.equal(_state(model)[hf_name], base[hf_name] + delta)
    edit.save(tmp_path / "v2")  # applied once: upgraded to format 2 (HF names, name-free hash)
    assert load(tmp_path / "v2").base_hash == weights_hash(_plain(tiny_folders["gpt2"]))
    edit.undo(model)
    assert _same(_state(model), base)
