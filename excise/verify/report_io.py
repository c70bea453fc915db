"""Typed decoding for a saved :class:`~excise.verify.report.Report`: the parts ``to_json`` flattens.

``Report.to_json`` writes plain data; ``Report.from_dict`` rebuilds it with the helpers here:
scores from their stored ranks, probabilities and known flags, model quality, and each probe's
outcome with its typed readings, so figures and ``to_dataframe`` work on a reloaded report as on a
fresh one. A reading's class is found in its probe's module (the
:class:`~excise.verify.outcome.Reading` subclass whose fields match); nested dataclasses (a
relearning curve) are rebuilt from the field types. This module knows nothing of ``Report``
itself, so the report imports it and not the other way round.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

import torch

from excise.scoring import Scores
from excise.verify.outcome import ProbeOutcome, Reading
from excise.verify.quality import Fluency, Quality


def quality_from_dict(record: dict) -> Quality:
    """The :class:`Quality` that ``Quality.to_dict`` gave ``record``."""
    fluency = record.get("fluency")
    return Quality(perplexity=record.get("perplexity"), fluency=None if fluency is None else Fluency(**fluency))


def scores_from_dict(record: dict) -> Scores:
    """:class:`Scores` from the lists ``{"rank", "prob", "known"}`` a report stores."""
    prob = torch.tensor(record["prob"], dtype=torch.float64)
    return Scores(prob.clamp_min(1e-300).log().float(), torch.tensor(record["rank"], dtype=torch.long),
                  torch.tensor(record["known"], dtype=torch.bool))


def outcome_from_dict(record: dict) -> ProbeOutcome:
    """The :class:`ProbeOutcome` that ``ProbeOutcome.to_dict`` gave ``record``, readings typed."""
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
