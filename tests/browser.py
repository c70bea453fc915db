"""Headless Chromium for the browser tests (loaded with ``pytest_plugins = ["browser"]``).

The ``chromium`` fixture (installs Debian's package in CI when missing), :func:`render` (a page's
DOM once its scripts ran, its console on stderr), :func:`console_errors`, and the layout oracle:
:data:`GEOMETRY` measures every drawn figure's legend and colour bars in the page,
:func:`layout_problems` names the overlaps.

Test modules import the helpers before pytest loads this module as a plugin, too late for pytest
to rewrite its asserts, so it asks not to be rewritten: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from excise.commands.figure_export import chromium_command

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path to Chromium; installs Debian's package when missing (CI runs as root with apt)."""
    if not shutil.which("chromium"):
        if not shutil.which("apt-get"):
            pytest.skip("chromium is not installed and apt-get is unavailable")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return shutil.which("chromium") or CHROMIUM


def render(chromium: str, page, profile, width: int = 1000) -> subprocess.CompletedProcess:
    """Load ``page`` headless, ``width`` px wide; stdout is the DOM once plotly has drawn."""
    cmd = chromium_command(chromium, profile, width, 900, "--dump-dom", page.resolve().as_uri())
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    """The lines of Chromium's stderr where the page's console logged an error."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]


# Runs in the page once plotly has drawn: per figure, the bounding boxes of plotly's legend
# (g.legend) and colour bars (g.colorbar), written into <pre id="geometry"> for --dump-dom.
GEOMETRY = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const figures = [...document.querySelectorAll('.plotly-graph-div')].map(div => ({
    title: (div.querySelector('.gtitle') || {}).textContent || '',
    drawn: div.querySelector('svg.main-svg') !== null,
    legends: [...div.querySelectorAll('g.legend')].map(box),
    colorbars: [...div.querySelectorAll('g.colorbar')].map(box)}));
  const pre = document.createElement('pre');
  pre.id = 'geometry';
  pre.textContent = JSON.stringify(figures);
  document.body.appendChild(pre);
}, 3000));
</script>"""


def geometry(page, out):
    """Write ``page`` with :data:`GEOMETRY` added to ``out``; render ``out`` to measure it."""
    out.write_text(page.read_text(encoding="utf-8").replace("</body>", GEOMETRY + "</body>"),
                   encoding="utf-8")
    return out


def measured(dom: str) -> list[dict]:
    """The per-figure boxes :data:`GEOMETRY` wrote into ``dom``."""
    found = re.search(r'<pre id="geometry">(.*?)</pre>', dom, re.S)
    assert found, "the geometry script did not run"
    return json.loads(html.unescape(found.group(1)))


def overlaps(a, b) -> bool:
    """Two ``[left, top, right, bottom]`` boxes share more than a pixel each way."""
    return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1


def layout_problems(figures: list[dict]) -> list[str]:
    """Per measured figure: a legend over a colour bar, or two colour bars over each other."""
    problems = []
    for n, fig in enumerate(figures):
        name = f"figure {n} ({fig['title'][:60]!r})"
        bars = fig["colorbars"]
        problems += [f"{name}: legend overlaps colour bar {i}" for legend in fig["legends"]
                     for i, bar in enumerate(bars) if overlaps(legend, bar)]
        problems += [f"{name}: colour bars {i} and {j} overlap" for i in range(len(bars))
                     for j in range(i + 1, len(bars)) if overlaps(bars[i], bars[j])]
    return problems
