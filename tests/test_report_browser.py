"""The HTML report renders in a real browser (headless Chromium): figures drawn, no console errors,
and in every drawn figure no legend overlaps a colour bar and no two colour bars overlap."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

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
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           f"--window-size={width},900", "--virtual-time-budget=15000", "--dump-dom",
           page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


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
    """Render ``page`` with :data:`GEOMETRY` added; return the per-figure boxes it measured."""
    out.write_text(page.read_text(encoding="utf-8").replace("</body>", GEOMETRY + "</body>"),
                   encoding="utf-8")
    return out


def measured(dom: str) -> list[dict]:
    found = re.search(r'<pre id="geometry">(.*?)</pre>', dom, re.S)
    assert found, "the geometry script did not run"
    return json.loads(html.unescape(found.group(1)))


def overlaps(a, b) -> bool:
    """Two ``[left, top, right, bottom]`` boxes share more than a pixel each way."""
    return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1


def layout_problems(figures: list[dict]) -> list[str]:
    problems = []
    for n, fig in enumerate(figures):
        name = f"figure {n} ({fig['title'][:60]!r})"
        bars = fig["colorbars"]
        problems += [f"{name}: legend overlaps colour bar {i}" for legend in fig["legends"]
                     for i, bar in enumerate(bars) if overlaps(legend, bar)]
        problems += [f"{name}: colour bars {i} and {j} overlap" for i in range(len(bars))
                     for j in range(i + 1, len(bars)) if overlaps(bars[i], bars[j])]
    return problems


def test_report_renders_in_headless_chromium(chromium, tiny_folders, tmp_path):
    from test_verify import capital_fact

    from excise.model import load_model
    from excise.verify import verify

    model = load_model(str(tiny_folders["llama"]), device="cpu")
    report = verify(model, capital_fact(), pool=[], probes=("logit_lens", "formats", "relearn"),
                    relearn_steps=2, fluency_tokens=2, perplexity=False, circuits=True, progress=False)
    page = report.to_html(tmp_path / "report.html")
    n_figures = len(report.figures())
    for width in (1000, 1400):
        result = render(chromium, geometry(page, tmp_path / f"measured{width}.html"),
                        tmp_path / "profile", width)
        dom = result.stdout
        assert "excise verification report" in dom
        # plotly replaces each figure's div content with <svg class="main-svg"> elements once drawn
        assert dom.count('class="main-svg"') >= n_figures, result.stderr[-2000:]
        console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
        errors = [line for line in console if "error" in line.lower()]
        assert not errors, errors
        figures = measured(dom)
        assert len(figures) == n_figures and all(f["drawn"] for f in figures), figures
        assert sum(len(f["colorbars"]) for f in figures) >= 4  # circuit figures: two scales each
        assert any(f["legends"] for f in figures)
        assert not layout_problems(figures), layout_problems(figures)


def test_overlap_oracle_flags_plotly_default_placement(chromium, tmp_path):
    """The oracle itself: plotly's default places a second colour bar and a legend on the first."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Heatmap(z=[[0, 1]]), go.Heatmap(z=[[1, 0]], xaxis="x2", colorscale="RdBu"),
                     go.Bar(y=[1], name="a"), go.Bar(y=[2], name="b")])
    fig.update_layout(xaxis={"domain": [0, 0.45]}, xaxis2={"domain": [0.55, 1]})
    page = tmp_path / "default.html"
    page.write_text(f"<html><body>{fig.to_html(full_html=False, include_plotlyjs=True)}</body></html>")
    figures = measured(render(chromium, geometry(page, tmp_path / "m.html"), tmp_path / "profile").stdout)
    problems = layout_problems(figures)
    assert any("colour bars 0 and 1 overlap" in p for p in problems), figures
    assert any("legend overlaps colour bar" in p for p in problems), figures


def test_broken_page_is_caught(chromium, tmp_path):
    """The oracle itself: a page whose script throws logs a console error and draws no SVG."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('boom'); undefinedCall();</script></body></html>")
    result = render(chromium, page, tmp_path / "profile")
    assert 'class="main-svg"' not in result.stdout
    assert any("CONSOLE" in line and ("boom" in line or "undefinedCall" in line)
               for line in result.stderr.splitlines()), result.stderr[-2000:]
