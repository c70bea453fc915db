"""Jobs of several stages: locate -> edit -> verify, as the CLI and notebooks run them.

This module sits above the stages (it imports locate, edit and verify; none of them imports it):

* :func:`run_demo`: the main job on the default model: a causal trace locates "The Eiffel Tower
  is located in the city of Paris" (its figure is saved beside the report), a rank-one edit at
  the default lookup layer (:func:`~excise.edit.rank_one.default_layer`, earlier than the
  trace's peak, where relearning does not bring the fact back) forgets it, and
  :func:`excise.verify.verify` checks the result with every probe and the before/after circuits;
  reports land in ``out/``.
* :func:`edit_facts`: one editor on one or several facts, as ``excise forget`` chooses it.
* :func:`forget_report`: every probe group of the edited facts before and after the edit
  (:class:`excise.comparison.Comparison`), and perplexity, as JSON-able data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_FACT = "landmark-city-eiffel-tower"
METHODS = ("rome", "memit", "ablate", "finetune")


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
    from excise.verify import verify

    given = model is not None and not isinstance(model, str | Path)
    bridge = model if given else load_model(None if model is None else str(model))
    fact = find_fact(load_facts("all"), fact_id)
    trace = causal_trace(bridge, fact, site="mlp", samples=5, progress=progress)
    peak, why = trace.edit_layer()
    edit = rome(bridge, fact, progress=progress)
    log.info("demo: %s; the trace's peak: %s", edit.info["layer_choice"], why)
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
    print(f"edit: rome, {edit.info['layer_choice']}; the causal trace peaks at layer {peak}")
    print(f"report: {html.resolve()}\njson:   {(out / 'report.json').resolve()}")
    return html


def runs_memit(method: str, n_facts: int) -> bool:
    """Whether ``method`` on ``n_facts`` facts runs memit (rome does, for more than one fact)."""
    return method == "memit" or (method == "rome" and n_facts > 1)


def edit_facts(model, facts, method: str, layer=None, corpus=None, top: int = 20, passes=None,
               progress: bool = True):
    """Run ``method`` on ``facts`` (all at once when several) and return the applied Edit.

    For memit, ``layer`` is the last of :data:`~excise.edit.batch.DEFAULT_SPREAD` layers; for
    ablate, the ``top`` neurons of each fact by :func:`~excise.locate.attributed_neurons`.
    """
    from excise.edit import ablate, finetune, memit, rome
    from excise.edit.batch import layers_ending_at
    from excise.locate import attributed_neurons

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if runs_memit(method, len(facts)):
        layers = None if layer is None else layers_ending_at(layer)
        chosen = {} if passes is None else {"passes": passes}
        return memit(model, facts, layers=layers, corpus=corpus, progress=progress, **chosen)
    if method == "rome":
        return rome(model, facts[0], layer=layer, corpus=corpus, progress=progress)
    if method == "finetune":
        return finetune(model, facts, progress=progress)
    components = [n for fact in facts for n in attributed_neurons(model, fact, k=top)]
    return ablate(model, components, fact_ids=[f.id for f in facts], progress=progress)


def forget_report(model, edit, facts) -> dict:
    """Scores of every prompt, paraphrase, neighbour and same-subject probe, before and after."""
    from excise.comparison import compare
    from excise.text import perplexity

    comparisons = compare(model, facts, before=edit.reverted(model))
    ppl_after = perplexity(model)
    with edit.reverted(model):
        ppl_before = perplexity(model)
    return {"method": edit.method, "facts": [f.id for f in facts],
            "settings": json.loads(json.dumps(edit.settings, default=str)),
            "perplexity_before": ppl_before, "perplexity_after": ppl_after,
            "probes": [row for c in comparisons for row in c.rows()]}
