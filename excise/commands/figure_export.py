"""Static, offline pages of figures, and PNG screenshots of them in headless Chromium.

A notebook's plotly figures and the explorer's widgets need a live Jupyter front end to draw: a
figure output is JSON that plotly.js draws in the browser, and ipywidgets' JavaScript manager is
fetched from a CDN. The pages written here need neither: plotly.js is inlined once per page and
the widgets are written out as plain HTML, so a page opens offline and headless Chromium can
screenshot it.

* :func:`export_notebook_figures`: an executed notebook's plotly figures with its headings and
  captions, on one page;
* :func:`explorer_page`: a static snapshot of an :class:`~excise.commands.explore.Explorer`, laid
  out like its widget, every tab shown one below the other;
* :func:`screenshot`: a PNG of a page, taken once plotly has drawn.

``python -m excise.commands.figure_export --screenshots assets/screenshots`` makes the README's
screenshots: the explorer after locating and editing the Eiffel Tower fact on the default model,
and the figures of ``notebooks/04_aggregate.ipynb``.
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PLOTLY_MIME = "application/vnd.plotly.v1+json"
"""The mime type of a plotly figure in a notebook output (``{"data", "layout", "config"}``)."""

HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0")
"""Chromium flags for an offline, headless page load whose console goes to stderr."""

DRAW_BUDGET_MS = 15000
"""Virtual time Chromium lets a page run before it dumps or screenshots it: plotly draws first."""

_CSS = """
body{font-family:sans-serif;font-size:14px;margin:16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:1.6em}h3{font-size:15px;margin:1.2em 0 .4em}
.note{color:#555;font-style:italic}.caption{color:#333;font-style:italic;margin:.2em 0 1.2em}
table{border-collapse:collapse;margin:.4em 0 1em}td,th{border:1px solid #ccc;font-size:13px}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:4px 0}
.field{border:1px solid #bbb;border-radius:3px;padding:3px 8px;background:#fafafa}
.field b{color:#555;font-weight:normal;margin-right:6px}
.toggle{border:1px solid #bbb;padding:3px 10px;background:#eee}.toggle.on{background:#cfe2f3}
.button{border:1px solid #999;border-radius:3px;padding:4px 14px;background:#f0f0f0}
.button.info{background:#2196f3;color:#fff}.button.warning{background:#ff9800;color:#fff}
.button.danger{background:#f44336;color:#fff}.button.disabled{opacity:.45}
.tabs{display:flex;gap:2px;border-bottom:1px solid #bbb;margin-top:10px}
.tab{border:1px solid #bbb;border-bottom:none;padding:4px 12px;background:#eee}
.tab.on{background:#fff;font-weight:bold}
.panel{border-left:3px solid #ddd;padding-left:10px;margin-bottom:1em}
.plotly-graph-div .modebar-container{opacity:0}.plotly-graph-div:hover .modebar-container{opacity:1}
"""


# -- pages --------------------------------------------------------------------------------------

def offline_page(title: str, body: str) -> str:
    """A whole HTML page around ``body`` with plotly.js inlined once in its head (no network)."""
    from plotly.offline import get_plotlyjs

    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script>"
            f"</head><body>{body}</body></html>")


def figure_html(figure) -> str:
    """A div that draws ``figure`` (a plotly Figure, or its JSON as a notebook output holds it)
    with the page's plotly.js."""
    import plotly.io as pio

    config = figure.get("config") if isinstance(figure, dict) else None
    return pio.to_html(figure, config=config, full_html=False, include_plotlyjs=False,
                       validate=False, default_width="100%")


def inline_markdown(text: str) -> str:
    """``text`` escaped, with markdown's bold, italics and code spans as HTML (captions and
    headings use no more)."""
    text = html.escape(text.strip(), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)


def _text(value) -> str:
    """A notebook's text field: one string, or the list of lines nbformat may store."""
    return "".join(value) if isinstance(value, list) else str(value)


def output_html(output: dict) -> str:
    """One notebook (or Output widget) output: a plotly figure, or a markdown caption; other
    outputs (printed text, widgets) are left out."""
    data = output.get("data", {})
    if PLOTLY_MIME in data:
        return figure_html(data[PLOTLY_MIME])
    if "text/markdown" in data:
        return f"<p class='caption'>{inline_markdown(_text(data['text/markdown']))}</p>"
    return ""


def headings_html(markdown: str) -> str:
    """The headings of a markdown cell (``#`` lines outside fenced code) as HTML headings."""
    parts, fenced = [], False
    for line in markdown.splitlines():
        fenced ^= line.lstrip().startswith("```")
        found = None if fenced else re.match(r"(#{1,6})\s+(.+)", line)
        if found:
            level = len(found[1])
            parts.append(f"<h{level}>{inline_markdown(found[2])}</h{level}>")
    return "".join(parts)


# -- a notebook's figures -----------------------------------------------------------------------

def export_notebook_figures(notebook, out_html: str | Path, name: str | None = None) -> Path:
    """Write one self-contained offline page with every plotly figure among ``notebook``'s
    outputs, in order, under its markdown headings and above its captions. A section (a markdown
    cell's headings and the outputs up to the next one) without figures is left out, and the
    page's note names it; the first section, the title, is always kept.

    ``notebook``: the path of an executed ``.ipynb``, or a notebook read with nbformat (then
    ``name`` says in the page which notebook it was). Raises ValueError when it has no figure
    outputs (run it first, e.g. with nbclient).
    """
    import nbformat

    if isinstance(notebook, str | Path):
        name = name or Path(notebook).name
        notebook = nbformat.read(notebook, as_version=4)
    name = name or "the notebook"
    sections = notebook_sections(notebook)
    if not any(section.n_figures for section in sections):
        raise ValueError(f"{name} has no plotly figure outputs: execute it first (nbclient, or "
                         "Run All in Jupyter) and save it")
    title, rest = sections[0], sections[1:]
    empty = [_plain(section.headings) for section in rest if not section.n_figures]
    note = (f"<p class='note'>The figures of {_e(name)}, exported by "
            "excise.commands.figure_export; plotly.js is inlined, so the page works offline."
            + (f" Left out, with no figures in this run: {_e('; '.join(empty))}." if empty else "")
            + "</p>")
    body = title.headings + note + title.outputs + "".join(
        section.headings + section.outputs for section in rest if section.n_figures)
    return _write(out_html, offline_page(_plain(title.headings) or name, body))


@dataclass
class Section:
    """A part of a notebook: a markdown cell's headings (HTML), then the outputs (HTML) of the
    cells up to the next headings, of which ``n_figures`` are plotly figures."""

    headings: str = ""
    outputs: str = ""
    n_figures: int = 0


def notebook_sections(notebook) -> list[Section]:
    """``notebook`` cut into :class:`Section` s at each markdown cell with headings (the first
    section has none when outputs come before any heading)."""
    sections = [Section()]
    for cell in notebook.cells:
        headings = headings_html(_text(cell.source)) if cell.cell_type == "markdown" else ""
        if headings:
            sections.append(Section(headings))
        for output in cell.get("outputs", []):
            sections[-1].outputs += output_html(output)
            sections[-1].n_figures += PLOTLY_MIME in output.get("data", {})
    return sections[1:] if sections[0] == Section() and len(sections) > 1 else sections


def _plain(headings: str) -> str:
    """The first heading of ``headings`` (HTML) as plain text."""
    first = re.match(r"<h\d>(.*?)</h\d>", headings)
    return html.unescape(re.sub(r"<[^>]+>", "", first[1])) if first else ""


def _write(path: str | Path, page: str) -> Path:
    """Write ``page`` to ``path`` (its folder made if missing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# -- the explorer -------------------------------------------------------------------------------

def explorer_page(explorer, out_html: str | Path) -> Path:
    """Write a static, offline snapshot of ``explorer`` (an
    :class:`~excise.commands.explore.Explorer`): its fields, status line, tables and figures as
    plain HTML, laid out like its widget, every tab shown one below the other."""
    fact = explorer.current_fact()
    note = ("<p class='note'>A static snapshot of <code>excise.explore(model)</code>: the widgets "
            "are written out as plain HTML (in JupyterLab they are live), and every tab is shown "
            "one below the other.</p>")
    body = f"<h1>excise explorer: {_e(fact.id)}</h1>{note}{widget_html(explorer.widget)}"
    return _write(out_html, offline_page(f"excise explorer: {fact.id}", body))


def widget_html(widget) -> str:
    """One ipywidget, and its children, as static HTML: boxes as rows, fields as labelled values,
    buttons as buttons, HTML widgets as their HTML, Output widgets as their figures, a Tab as its
    tab bar followed by every tab's content."""
    import ipywidgets as widgets

    if getattr(widget.layout, "display", None) == "none":
        return ""
    if isinstance(widget, widgets.Tab):
        return _tab_html(widget)
    if isinstance(widget, widgets.Box):
        inner = "".join(widget_html(child) for child in widget.children)
        return f"<div class='row'>{inner}</div>" if isinstance(widget, widgets.HBox) else inner
    if isinstance(widget, widgets.Output):
        return "".join(output_html(output) for output in widget.outputs)
    if isinstance(widget, widgets.HTML):
        return f"<div>{widget.value}</div>"
    if isinstance(widget, widgets.Button):
        state = " disabled" if widget.disabled else ""
        return f"<span class='button {widget.button_style}{state}'>{_e(widget.description)}</span>"
    if isinstance(widget, widgets.FloatProgress | widgets.IntProgress):
        return f"<progress value='{widget.value}' max='{widget.max}'></progress>"
    return _field_html(widget)


def _field_html(widget) -> str:
    """A value widget as its description and value; a ToggleButtons as its options, the chosen
    one marked."""
    import ipywidgets as widgets

    if isinstance(widget, widgets.ToggleButtons):
        labels = [option[0] if isinstance(option, tuple) else str(option)
                  for option in widget.options]
        toggles = "".join(f"<span class='toggle{' on' if label == widget.label else ''}'>"
                          f"{_e(label)}</span>" for label in labels)
        return f"<span><b>{_e(widget.description)}</b> {toggles}</span>"
    if isinstance(widget, widgets.Checkbox):
        return f"<span class='field'>{'☑' if widget.value else '☐'} {_e(widget.description)}</span>"
    value = widget.label if hasattr(widget, "label") else widget.value
    return f"<span class='field'><b>{_e(widget.description)}</b>{_e(value)}</span>"


def _tab_html(tab) -> str:
    titles = [tab.get_title(i) or f"tab {i}" for i in range(len(tab.children))]
    bar = "".join(f"<span class='tab{' on' if i == tab.selected_index else ''}'>{_e(t)}</span>"
                  for i, t in enumerate(titles))
    panels = "".join(f"<h3>{_e(title)}</h3><div class='panel'>{widget_html(child)}</div>"
                     for title, child in zip(titles, tab.children))
    return f"<div class='tabs'>{bar}</div>{panels}"


def _e(value) -> str:
    return html.escape(str(value))


# -- screenshots --------------------------------------------------------------------------------

def find_chromium() -> str:
    """The path of a Chromium (or Chrome) executable, or FileNotFoundError saying how to get one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise FileNotFoundError("no headless browser found: install Chromium (apt-get install "
                            "chromium) or put chromium on the PATH")


def chromium_command(chromium: str, profile: str | Path, width: int, height: int,
                     *action: str) -> list[str]:
    """A headless Chromium command line with a ``width`` x ``height`` window and a fresh profile
    folder; ``action``: e.g. ``"--dump-dom", url`` or ``"--screenshot=out.png", url``."""
    return [chromium, *HEADLESS_FLAGS, f"--user-data-dir={profile}",
            f"--window-size={width},{height}", f"--virtual-time-budget={DRAW_BUDGET_MS}", *action]


_MEASURE_HEIGHT = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const pre = document.createElement('pre');
  pre.id = 'page-height';
  pre.textContent = document.documentElement.scrollHeight;
  document.body.appendChild(pre);
}, 1000));
</script>"""


def page_height(html_path: str | Path, width: int, chromium: str | None = None) -> int:
    """The height (px) of ``html_path`` laid out ``width`` px wide, once its scripts have run."""
    chromium = chromium or find_chromium()
    with tempfile.TemporaryDirectory() as scratch:
        measured = Path(scratch) / "measured.html"
        page = Path(html_path).read_text(encoding="utf-8")
        measured.write_text(page.replace("</body>", _MEASURE_HEIGHT + "</body>"), encoding="utf-8")
        command = chromium_command(chromium, Path(scratch) / "profile", width, 900, "--dump-dom",
                                   measured.as_uri())
        dom = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
    found = re.search(r'<pre id="page-height">(\d+)</pre>', dom)
    if not found:
        raise RuntimeError(f"chromium did not lay out {html_path}")
    return int(found[1])


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1200,
               height: int | None = None, scale: float = 1.0, chromium: str | None = None) -> Path:
    """Screenshot ``html_path`` into ``png_path`` with headless Chromium, once plotly has drawn:
    the page laid out ``width`` CSS px wide, ``height`` tall (default: the whole page), and
    drawn at ``scale`` image pixels per CSS px (below 1: a smaller image of the same layout)."""
    chromium = chromium or find_chromium()
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    height = height or page_height(html_path, width, chromium)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = chromium_command(chromium, profile, width, height, "--hide-scrollbars",
                                   f"--force-device-scale-factor={scale}", f"--screenshot={png_path}",
                                   html_path.as_uri())
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if not png_path.exists() or png_path.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot of {html_path}: "
                           f"{result.stderr.strip()[-500:]}")
    return png_path


# -- the README's screenshots -------------------------------------------------------------------

EXPLORED_FACT = "landmark-city-eiffel-tower"
AGGREGATE_NOTEBOOK = Path("notebooks") / "04_aggregate.ipynb"


def explored(model, fact_id: str = EXPLORED_FACT, trace_samples: int = 3,
             circuit_samples: int = 2):
    """An :class:`~excise.commands.explore.Explorer` on ``model`` driven as a user drives it:
    ``fact_id`` chosen, located at the mlp site, then edited with rome at the layer the trace
    pre-filled. ``*_samples``: noise samples of the causal traces (few, to be quick)."""
    from excise.commands.explore import Explorer

    explorer = Explorer(model, background=False)
    explorer.fact_menu.value = [f.id for f in explorer.facts].index(fact_id)
    explorer.trace_samples, explorer.circuit_samples = trace_samples, circuit_samples
    explorer.site.value, explorer.editor.value = "mlp", "rome"
    for button in (explorer.locate_button, explorer.apply_button):
        button.click()
        if explorer.failed:
            raise RuntimeError(f"the explorer failed: {explorer.message}")
        log.info("explorer: %s", explorer.message)
    return explorer


def executed_notebook(path: str | Path, timeout: int = 1800):
    """``path`` read with nbformat and run top to bottom with nbclient, in its own folder."""
    import nbclient
    import nbformat

    path = Path(path).resolve()
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def main(argv: list[str] | None = None) -> None:
    """Write ``explorer.html``/``.png`` and ``aggregate.html``/``.png`` into ``--screenshots``."""
    parser = argparse.ArgumentParser(description="Static pages and PNG screenshots of the "
                                     "explorer and of the aggregate notebook's figures.")
    parser.add_argument("--screenshots", type=Path, required=True, help="output folder")
    parser.add_argument("--fact", default=EXPLORED_FACT, help="bundled fact the explorer edits")
    parser.add_argument("--notebook", type=Path, default=AGGREGATE_NOTEBOOK)
    parser.add_argument("--width", type=int, default=1200, help="page width (CSS px)")
    parser.add_argument("--scale", type=float, default=0.7,
                        help="image px per CSS px (GitHub shows README images at most ~880 px wide)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.screenshots
    explorer_html = _explorer_snapshot(args.fact, out / "explorer.html")
    log.info("wrote %s", screenshot(explorer_html, out / "explorer.png", args.width,
                                    scale=args.scale))
    aggregate_html = export_notebook_figures(executed_notebook(args.notebook),
                                             out / "aggregate.html", name=args.notebook.as_posix())
    log.info("wrote %s", screenshot(aggregate_html, out / "aggregate.png", args.width,
                                    scale=args.scale))


def _explorer_snapshot(fact_id: str, out_html: Path) -> Path:
    """Load the default model, explore ``fact_id`` and write the snapshot (the model is freed
    on return, before the notebook's kernel loads its own)."""
    from excise.model import load_model

    return explorer_page(explored(load_model(device="cpu"), fact_id), out_html)


if __name__ == "__main__":
    main()
