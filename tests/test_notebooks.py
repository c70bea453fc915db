"""Notebooks are tests: every notebook in notebooks/ runs top to bottom on the default model.

Each notebook that does real work opens with a cell tagged ``parameters`` (papermill's
convention); the test runs it with the smaller settings in :data:`QUICK`, injected as a cell right
after that one, so every cell runs the same code on less work: a fact the rank-one editor forgets
in a few value steps, fewer attack and fine-tuning steps, one noise sample per causal trace, one
fine-tuning baseline in 02 (each is tested on tiny models) and in 03 the two located editors only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

QUICK = {
    "01_locate.ipynb": "TRACE_SAMPLES = 1\nIG_STEPS = 5",
    "02_forget.ipynb": "FACT_ID = 'language-france'\nBASELINE_STEPS = 5\nN_BASELINES = 1\nTRACE_SAMPLES = 1",
    "03_verify.ipynb": 'FACT_ID = "language-france"\nRELEARN_STEPS = 2\n'
                       'BUDGETS = {"relearn_long_steps": 2, "lora_steps": (2,), "quant_bits": (4,),\n'
                       '           "gen_seeds": 1, "gen_temperatures": (1.0,), "gen_tokens": 8}\n'
                       'EDITOR_NAMES = ("rank-one", "ablation")',
}


def with_quick_parameters(notebook, nbformat, overrides: str):
    """``notebook`` with ``overrides`` run right after its ``parameters`` cell (which must exist
    and must define every name overridden, so a renamed parameter fails here, not silently)."""
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "expected one cell tagged 'parameters'"
    defined = notebook.cells[tagged[0]].source
    for line in overrides.splitlines():
        name = line.split("=")[0].strip()
        if name.isidentifier():
            assert f"\n{name} =" in f"\n{defined}", f"{name} is not a parameter of this notebook"
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(overrides))
    return notebook


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, real_model):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    if path.name in QUICK:
        notebook = with_quick_parameters(notebook, nbformat, QUICK[path.name])
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert not errors
