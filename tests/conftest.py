"""Shared fixtures: tiny random models on three architectures, and the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from excise.testing import ARCHITECTURES, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_grad_enabled(True)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model folder per architecture, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(params=ARCHITECTURES)
def tiny(request, tiny_folders):
    """A fresh tiny model (function-scoped: tests may change its weights)."""
    from excise.model import load_model

    return load_model(str(tiny_folders[request.param]), device="cpu")


@pytest.fixture(scope="session")
def real_model():
    """The real default model, loaded once. Tests that edit it must restore it (Edit.undo)."""
    from excise.model import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA}")
    return SHARED_DATA
