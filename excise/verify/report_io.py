"""Read a saved :class:`~excise.verify.report.Report` back from its JSON, typed, without recomputing.

``Report.to_json`` writes plain data; :func:`report_from_dict` rebuilds the same objects: facts,
comparisons (scores from the stored ranks, probabilities and known flags), summaries, the papers'
metrics, model quality, and each probe's outcome with its typed readings, so figures and
``to_dataframe`` work on a reloaded report as on a fresh one. A reading's class is found in its
probe's module (the :class:`~excise.verify.outcome.Reading` subclass whose fields match); nested
dataclasses (a relearning curve) are rebuilt from the field types.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

import torch

from excise.comparison import Comparison
from excise.facts import Fact
from excise.scoring import Scores
from excise.verify.outcome import ProbeOutcome, Reading
from excise.verify.paper_metrics import PaperMetrics
from excise.verify.quality import Fluency, Quality
from excise.verify.report import FactReport, Report, Summary, Tally


def report_from_dict(record: dict) -> Report:
    """The :class:`Report` that ``Report.to_dict`` gave ``record``."""
    if not isinstance(record, dict) or "facts" not in record:
        raise ValueError("not an excise verification report: no 'facts' field (write one with "
                         "Report.to_json or excise verify --json)")
    facts = [Fact.from_dict(f["fact"]) for f in record["facts"]]
    return Report(facts=[_fact_report(f, facts) for f in record["facts"]], before=_quality(record["before"]),
                  after=_quality(record["after"]), settings=record.get("settings", {}),
                  model=record.get("model", ""), edits=record.get("edits", []),
                  circuits=record.get("circuits"), timings=record.get("timings", {}))


def _quality(record: dict) -> Quality:
    fluency = record.get("fluency")
    return Quality(perplexity=record.get("perplexity"), fluency=None if fluency is None else Fluency(**fluency))


def _scores(record: dict) -> Scores:
    prob = torch.tensor(record["prob"], dtype=torch.float64)
    return Scores(prob.clamp_min(1e-300).log().float(), torch.tensor(record["rank"], dtype=torch.long),
                  torch.tensor(record["known"], dtype=torch.bool))


def _fact_report(record: dict, facts: list[Fact]) -> FactReport:
    """One fact's report; its pairs leave out the other facts verified with it, as verify did."""
    from excise.comparison import fact_pairs

    fact = Fact.from_dict(record["fact"])
    scores = record["scores"]
    others = [f for f in facts if f.id != fact.id]
    comparison = Comparison(fact, fact_pairs(fact, others), {g: _scores(s["before"]) for g, s in scores.items()},
                            {g: _scores(s["after"]) for g, s in scores.items()})
    summary = record["summary"]
    tallies = {k: Tally(**v) for k, v in summary.items() if isinstance(v, dict)}
    metrics = record.get("metrics")
    return FactReport(fact=fact, verdict=record["verdict"], reason=record["reason"],
                      summary=Summary(prompt_forgotten=summary["prompt_forgotten"], **tallies),
                      comparison=comparison, probes=[_outcome(o) for o in record.get("probes", [])],
                      n_related=record.get("n_related", 0),
                      metrics=None if metrics is None else PaperMetrics(**metrics))


def _outcome(record: dict) -> ProbeOutcome:
    return ProbeOutcome(record["probe"], record["status"], record["reason"],
                        _reading(record["probe"], record.get("before")),
                        _reading(record["probe"], record.get("after")))


def _reading(probe: str, record: dict | None) -> Reading | dict | None:
    """The typed reading of ``probe`` (a plain dict when no class of its module fits)."""
    if record is None:
        return None
    from excise.verify.probes.registry import registry

    found = registry().get(probe)
    module = sys.modules.get(found.measure.__module__) if found else None
    for value in vars(module).values() if module else ():
        if (isinstance(value, type) and issubclass(value, Reading) and dataclasses.is_dataclass(value)
                and {f.name for f in dataclasses.fields(value)} == set(record)):
            return _build(value, record)
    return record


def _build(cls, value: dict):
    """``value`` (plain JSON data) as an instance of dataclass ``cls``, recursively."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _convert(hints.get(f.name), value[f.name]) for f in dataclasses.fields(cls)})


def _convert(kind, item):
    """``item`` as type ``kind`` where that is a dataclass, a list or dict of them, or optional."""
    if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(item, dict):
        return _build(kind, item)
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin is list and args and isinstance(item, list):
        return [_convert(args[0], x) for x in item]
    if origin is dict and len(args) == 2 and isinstance(item, dict):
        return {k: _convert(args[1], v) for k, v in item.items()}
    if args and origin not in (list, dict, tuple):  # X | None
        for arg in args:
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) and isinstance(item, dict):
                return _build(arg, item)
    return item
