"""Exported pages render offline in headless Chromium: a notebook's figures and an explorer's
snapshot are drawn with no console errors, and :func:`screenshot` writes a PNG of the page."""

from __future__ import annotations

import json
import struct

import pytest
from browser import console_errors, geometry, layout_problems, measured, render

from excise.commands.figure_export import (
    PLOTLY_MIME,
    explorer_page,
    export_notebook_figures,
    screenshot,
)

pytest_plugins = ["browser"]


def figure_output(fig) -> dict:
    """A display_data output holding ``fig`` as JupyterLab stores it (plotly's mime type)."""
    import nbformat
    import plotly.io as pio

    return nbformat.v4.new_output("display_data", data={PLOTLY_MIME: json.loads(pio.to_json(fig)),
                                                        "text/plain": "<Figure>"})


def caption_output(text: str) -> dict:
    import nbformat

    return nbformat.v4.new_output("display_data", data={"text/markdown": f"*{text}*"})


@pytest.fixture(scope="module")
def notebook_page(tmp_path_factory):
    """An executed notebook with two figures and a section without any, written with nbformat
    and exported to a page."""
    import nbformat
    import plotly.graph_objects as go

    bars = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout={"title": {"text": "bars"}})
    heat = go.Figure(go.Heatmap(z=[[0, 1], [1, 0]]), layout={"title": {"text": "heat"}})
    v4 = nbformat.v4
    notebook = v4.new_notebook(cells=[
        v4.new_markdown_cell("# Two figures\n\nWhy they matter.\n\n```bash\n# not a heading\n```"),
        v4.new_code_cell("show(bars)", outputs=[figure_output(bars), caption_output("the bars")]),
        v4.new_markdown_cell("## The second"),
        v4.new_code_cell("print(1); show(heat)", outputs=[
            v4.new_output("stream", name="stdout", text="1\n"), figure_output(heat)]),
        v4.new_markdown_cell("## Not drawn"),
        v4.new_code_cell("print('no results yet')", outputs=[
            v4.new_output("stream", name="stdout", text="no results yet\n")]),
    ])
    folder = tmp_path_factory.mktemp("notebook")
    nbformat.write(notebook, folder / "two.ipynb")
    return export_notebook_figures(folder / "two.ipynb", folder / "two.html")


def test_notebook_figures_render_offline(chromium, notebook_page, tmp_path):
    text = notebook_page.read_text(encoding="utf-8")
    assert "<script src=" not in text and text.count("* plotly.js v") == 1  # inlined, once
    assert "<h1>Two figures</h1>" in text and "<h2>The second</h2>" in text
    assert "not a heading" not in text and "<em>the bars</em>" in text
    assert "Not drawn</h2>" not in text and "no figures in this run: Not drawn." in text
    result = render(chromium, geometry(notebook_page, tmp_path / "measured.html"), tmp_path / "p")
    figures = measured(result.stdout)
    assert [f["title"] for f in figures] == ["bars", "heat"] and all(f["drawn"] for f in figures)
    assert not console_errors(result.stderr), console_errors(result.stderr)


def test_a_notebook_without_figures_says_to_execute_it(tmp_path):
    import nbformat

    path = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    with pytest.raises(ValueError, match="execute it first"):
        export_notebook_figures(path, tmp_path / "empty.html")


@pytest.mark.parametrize("tiny", ["llama"], indirect=True)
def test_explorer_snapshot_renders_offline(chromium, tiny, tmp_path):
    from test_explore import FACT, GERMANY

    from excise.commands.explore import Explorer
    from excise.edit import ValueSettings

    explorer = Explorer(tiny, [FACT, GERMANY], background=False)
    explorer.trace_samples = explorer.circuit_samples = 2
    explorer.generation_tokens = 4
    explorer.editor_options["rome"] = {"settings": ValueSettings(n_prefixes=2, steps=4)}
    for button in (explorer.locate_button, explorer.apply_button):
        button.click()
        assert not explorer.failed, explorer.message
    page = explorer_page(explorer, tmp_path / "explorer.html")
    text = page.read_text(encoding="utf-8")
    assert "static snapshot" in text and explorer.status.value in text
    assert explorer.scores_view.value in text and explorer.generation_view.value in text
    assert "capital-france" in text and "scores before/after" in text

    result = render(chromium, geometry(page, tmp_path / "measured.html"), tmp_path / "p", 1200)
    figures = measured(result.stdout)
    assert len(figures) == len(explorer.figures) == 6 and all(f["drawn"] for f in figures)
    assert not layout_problems(figures), layout_problems(figures)
    assert not console_errors(result.stderr), console_errors(result.stderr)


def test_screenshot_writes_a_png_of_the_whole_page(chromium, notebook_page, tmp_path):
    png = screenshot(notebook_page, tmp_path / "shot.png", width=800, chromium=chromium)
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])  # the IHDR chunk
    assert width == 800 and height > 2 * 450  # both figures (plotly's default height is 450)
