"""Shared fixtures: tiny random models on three architectures, and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from excise.testing import ARCHITECTURES, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_grad_enabled(True)

# Under pytest-xdist (`make test` runs two workers) each worker gets its share of the cores, and
# so do the notebook kernels and CLI subprocesses it starts: two workers each running torch on
# every core would only slow each other down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)


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


# Layers the real-model tests edit besides the editors' defaults: the hidden demo fact
# (test_relearn_attacks: where the Eiffel Tower's causal trace peaks) and the known-answer fact
# (test_locate_real). Their key statistics are computed once, by `real_model`.
HIDDEN_DEMO_LAYER = 10
KNOWN_ANSWER_LAYER = 14
TEST_EDIT_LAYERS = (HIDDEN_DEMO_LAYER, KNOWN_ANSWER_LAYER)


@pytest.fixture(scope="session")
def real_model():
    """The real default model, loaded once. Tests that edit it must restore it (Edit.undo).

    The key statistics of every layer the tests edit are computed (or read from the cache) here,
    in one pass over the text sample, rather than one pass per layer as each test first needs it.
    """
    from excise.edit.batch import default_layers
    from excise.edit.rank_one import default_layer
    from excise.edit.stats import key_stats
    from excise.model import load_model

    model = load_model(device="cpu")
    layers = sorted({default_layer(model), *default_layers(model), *TEST_EDIT_LAYERS})
    key_stats(model, layers, progress=False)
    return model


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Under several workers, hand out the slow tests first: a long test dealt out last would
    keep one worker busy while the others sit idle."""
    if _WORKERS > 1:
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
