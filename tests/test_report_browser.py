"""The HTML report renders in a real browser (headless Chromium): figures drawn, no console errors,
and in every drawn figure no legend overlaps a colour bar and no two colour bars overlap."""

from __future__ import annotations

from browser import console_errors, geometry, layout_problems, measured, render

pytest_plugins = ["browser"]


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
        assert not console_errors(result.stderr), console_errors(result.stderr)
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
