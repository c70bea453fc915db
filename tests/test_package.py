"""The package's shape: light import, discoverable lazy exports, stubs in step, stages downward."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("excise", "excise.locate", "excise.edit", "excise.verify")


def test_import_is_light_and_stages_are_reachable():
    code = ("import sys, excise; assert 'torch' not in sys.modules, 'import excise loaded torch'; "
            "assert {'locate', 'edit', 'verify', 'causal_trace', 'rome'} <= set(dir(excise)); "
            "assert 'causal_trace' in dir(excise.locate) and 'memit' in dir(excise.edit); "
            "assert 'torch' not in sys.modules, 'dir() loaded torch'; "
            "assert callable(excise.locate.causal_trace) and callable(excise.verify)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_lazy_export_resolves_and_the_stub_lists_it(package):
    module = importlib.import_module(package)
    for name, where in module._EXPORTS.items():
        assert getattr(module, name) is getattr(importlib.import_module(where), name), name
    stub = Path(module.__file__).with_suffix(".pyi")
    imported = {}
    for node in ast.walk(ast.parse(stub.read_text())):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
    exported = {name: where for name, where in module._EXPORTS.items()}
    assert {k: v for k, v in imported.items() if k in exported} == exported
    assert set(imported) - set(exported) <= set(getattr(module, "_SUBMODULES", ()))
    with pytest.raises(AttributeError, match="no attribute"):
        module.__getattr__("no_such_name")


def test_stages_import_only_downward():
    """The import graph of excise/ has no cycle and no upward import between stages."""
    tool = REPO.parent / "shared" / "tools" / "imports.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not found")
    result = subprocess.run([sys.executable, str(tool), str(REPO), "excise"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_site_vocabulary():
    from excise.hooks import act_name, site_name

    assert act_name("mlp", 4) == "blocks.4.hook_mlp_out" == act_name("mlp_out", 4)
    assert act_name("head", 0) == "blocks.0.attn.hook_z"
    assert act_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert site_name("resid_pre") == "resid"
    with pytest.raises(ValueError, match="site must be one of"):
        site_name("mlp", allowed=("head", "neuron"))


def test_trace_records_and_edits_and_always_removes_its_hooks():
    import torch

    from excise.hooks import trace

    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with trace({"lin": layer}, inputs=True, outputs=True,
               edit_output=lambda key, inp, out: out + 1) as seen:
        y = layer(x)
    assert torch.equal(seen["lin"].input, x) and torch.equal(seen["lin"].output, y)
    assert torch.allclose(y, torch.nn.functional.linear(x, layer.weight, layer.bias) + 1)
    with pytest.raises(RuntimeError), trace({"lin": layer}, inputs=True):
        raise RuntimeError("inside")
    assert not layer._forward_hooks and not layer._forward_pre_hooks
