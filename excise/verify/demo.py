"""The main job on the default model: locate -> forget -> verify one fact, write the reports.

``excise demo`` (and ``make demo``) call :func:`run_demo`: a causal trace finds the MLP layer
that carries "The Eiffel Tower is in the city of Paris", a rank-one edit at that layer makes the
model forget it, and :func:`excise.verify.verify` checks the result with every probe and the
before/after circuits. The HTML and JSON reports land in ``out/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_FACT = "landmark-city-eiffel-tower"


def run_demo(model=None, out: str | Path = "out", fact_id: str = DEMO_FACT, relearn_steps: int = 20,
             progress: bool = True) -> Path:
    """Run locate -> forget -> verify on ``fact_id``; returns the HTML report's path.

    ``model`` is a loaded bridge, a model name/folder, or None for the default model. The edit
    is undone before returning when ``model`` was passed in loaded, so the caller's model is
    left as it came.
    """
    from excise.edit import rome
    from excise.facts import find_fact, load_facts
    from excise.locate import causal_trace
    from excise.model import load_model
    from excise.verify.core import verify

    given = model is not None and not isinstance(model, str | Path)
    bridge = model if given else load_model(None if model is None else str(model))
    fact = find_fact(load_facts("all"), fact_id)
    trace = causal_trace(bridge, fact, site="mlp", samples=5, progress=progress)
    layer = trace.top(1)[0].layer
    log.info("causal trace: strongest MLP layer for %s is %d", fact.id, layer)
    edit = rome(bridge, fact, layer=layer, progress=progress)
    try:
        report = verify(bridge, fact, relearn_steps=relearn_steps, circuits=True, progress=progress)
    finally:
        if given:
            edit.undo(bridge)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    html = report.to_html(out / "report.html")
    report.to_json(out / "report.json")
    trace.plot().write_html(out / "trace.html", include_plotlyjs=True)
    verdict = report.facts[0]
    print(f"{fact.id}: {verdict.verdict} - {verdict.reason}")
    print(f"report: {html.resolve()}\njson:   {(out / 'report.json').resolve()}")
    return html
