"""The HTML report renders in a real browser (headless Chromium): figures drawn, no console errors."""

from __future__ import annotations

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


def render(chromium: str, page, profile) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(chromium, tiny_folders, tmp_path):
    from test_verify import capital_fact

    from excise.model import load_model
    from excise.verify import verify

    model = load_model(str(tiny_folders["llama"]), device="cpu")
    report = verify(model, capital_fact(), pool=[], probes=("logit_lens", "formats", "relearn"),
                    relearn_steps=2, fluency_tokens=2, perplexity=False, circuits=True, progress=False)
    page = report.to_html(tmp_path / "report.html")
    n_figures = len(report.figures())
    result = render(chromium, page, tmp_path / "profile")
    dom = result.stdout
    assert "excise verification report" in dom
    # plotly replaces each figure's div content with <svg class="main-svg"> elements once drawn
    assert dom.count('class="main-svg"') >= n_figures, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if "error" in line.lower()]
    assert not errors, errors


def test_broken_page_is_caught(chromium, tmp_path):
    """The oracle itself: a page whose script throws logs a console error and draws no SVG."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('boom'); undefinedCall();</script></body></html>")
    result = render(chromium, page, tmp_path / "profile")
    assert 'class="main-svg"' not in result.stdout
    assert any("CONSOLE" in line and ("boom" in line or "undefinedCall" in line)
               for line in result.stderr.splitlines()), result.stderr[-2000:]
