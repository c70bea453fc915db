"""Causal traces over many facts, averaged the way ROME's figures read them (Meng et al. 2022).

One causal trace (:func:`excise.locate.causal_trace`) gives, per (layer, position), the target's
probability when the subject is corrupted by noise and that one clean state is restored. Its
*indirect effect* is that probability minus the corrupted probability: the probability of the
target the restored state brings back (a difference of probabilities, -1 to 1; 0 = nothing
recovered). Over many facts, ROME averages the indirect effect by *token category* rather than by
position, since prompts differ in length and subject placement:

* **first subject token**, **last subject token**: the subject's first and last tokens (the same
  token for a one-token subject);
* **further tokens**: every token after the subject except the last (pooled per fact; ROME's
  notebook also splits off the first of them and the subject's middle tokens);
* **last token**: the prompt's last token, where the answer is read.

The average per layer with a 95% interval (mean +- 1.96 standard errors over facts) is the
*average indirect effect* (AIE) curve of ROME's line figures. The MLP's effect at the last subject
token also says where in depth each fact is looked up: its argmax over the layers
(``lookup_layer``) and the layer :meth:`~excise.locate.Localization.edit_layer` would edit.

:func:`trace_many` traces facts x sites and appends one JSON line per (fact, site) to a cache as
it goes, keyed by fact id, site, noise samples and the model's weights hash, so an interrupted run
is resumed by running it again. ``python -m excise.commands.aggregate`` runs it on the bundled
facts; :mod:`.aggregate_figures` draws the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from excise.locate import causal_trace

log = logging.getLogger(__name__)

CATEGORIES = ("first subject token", "last subject token", "further tokens", "last token")
"""ROME's token categories, in the order the figures draw them."""

SITES = ("resid", "mlp", "attn")
CACHE = Path("assets") / "aggregate" / "traces.jsonl"
"""Where the repository keeps its traces over the bundled facts (relative to the repository)."""

Z = 1.96
DIGITS = 5
"""Decimals kept for probabilities in the cache (far below the noise of a 10-sample trace)."""


# -- one trace -> one record ----------------------------------------------------------------------

def token_categories(subject_positions: list[int], n_tokens: int) -> dict[str, list[int]]:
    """Positions of each of :data:`CATEGORIES` in a prompt of ``n_tokens`` tokens (BOS included).

    A category with no token (no token between the subject and the last one) gets ``[]``.
    """
    first, last_subject, last = subject_positions[0], subject_positions[-1], n_tokens - 1
    return {"first subject token": [first], "last subject token": [last_subject],
            "further tokens": list(range(last_subject + 1, last)), "last token": [last]}


def category_effects(scores: torch.Tensor, subject_positions: list[int],
                     corrupted: float) -> dict[str, list[float] | None]:
    """Per category, the indirect effect per layer: mean over its positions of the restored
    probability minus ``corrupted``. ``scores``: ``[layer, position]``; ``None`` for an empty
    category."""
    effects = {}
    for name, positions in token_categories(subject_positions, scores.shape[1]).items():
        if not positions:
            effects[name] = None
            continue
        effect = scores[:, positions].float().mean(dim=1) - corrupted  # [layer]
        effects[name] = [round(float(v), DIGITS) for v in effect]
    return effects


def trace_record(loc, fact, samples: int, model_hash: str, seconds: float) -> dict:
    """The cache line of one trace: its key, the fact, the reference scores, the category effects,
    the raw scores (for other reductions) and, for the MLP site, where the fact is looked up."""
    meta = loc.meta
    subject = list(meta["subject_positions"])
    effects = category_effects(loc.scores, subject, meta["corrupted_score"])
    record = {
        "fact": fact.id, "site": loc.site, "samples": samples, "model": model_hash,
        "relation": fact.relation, "prompt": loc.prompt, "target": loc.target,
        "tokens": loc.labels["position"], "subject_positions": subject,
        "clean": round(meta["clean_score"], DIGITS), "corrupted": round(meta["corrupted_score"], DIGITS),
        "noise": loc.settings["noise"], "window": loc.settings["window"],
        "effects": effects, "scores": [[round(float(v), DIGITS) for v in row] for row in loc.scores],
        "seconds": round(seconds, 2),
    }
    if loc.site == "mlp":
        record["lookup_layer"] = int(torch.tensor(effects["last subject token"]).argmax())
        record["edit_layer"] = loc.edit_layer()[0]
    return record


def record_key(record: dict) -> tuple:
    """What makes two traces the same: fact id, site, noise samples, model weights hash."""
    return record["fact"], record["site"], record["samples"], record["model"]


# -- the cache ------------------------------------------------------------------------------------

def read_records(path: str | Path) -> list[dict]:
    """The complete records of a JSON-lines cache (``[]`` when missing); a half-written last line
    (an interrupted append) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a half-written record", path, number)
    return records


def _append(path: Path, record: dict) -> None:
    """Append ``record`` as one line, flushed to disk (after cutting a half-written tail)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_partial_tail(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _drop_partial_tail(path: Path) -> None:
    """Cut the file back to its last newline, so the next line does not glue onto a broken one."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def trace_many(model, facts, samples: int = 10, sites=SITES, cache: str | Path | None = None,
               progress: bool = True) -> list[dict]:
    """Causal-trace every fact at every site; the records (:func:`trace_record`), fact by fact.

    With ``cache`` (a JSON-lines file), traces already there for this model's weights and
    ``samples`` are read back instead of recomputed, and each new one is appended as soon as it
    is done, so an interrupted run resumes where it stopped.
    """
    from excise.model import weights_hash

    model_hash = weights_hash(model)
    cached = {record_key(r): r for r in read_records(cache)} if cache else {}
    out = []
    jobs = [(fact, site) for fact in facts for site in sites]
    for fact, site in tqdm(jobs, desc="causal traces", unit="trace", disable=not progress):
        key = (fact.id, site, samples, model_hash)
        if key not in cached:
            started = time.perf_counter()
            loc = causal_trace(model, fact, site=site, samples=samples, progress=False)
            cached[key] = trace_record(loc, fact, samples, model_hash, time.perf_counter() - started)
            if cache:
                _append(Path(cache), cached[key])
        out.append(cached[key])
    return out


# -- reducers -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Band:
    """A mean per layer over ``n`` facts with its 95% interval (``low``/``high`` ``None`` for n < 2)."""

    mean: list[float]
    low: list[float] | None
    high: list[float] | None
    n: int


def mean_band(curves: list[list[float]]) -> Band:
    """Mean of ``curves`` (``[fact][layer]``) per layer, +- 1.96 standard errors of the mean."""
    values = torch.tensor(curves, dtype=torch.float64)  # [fact, layer]
    n = values.shape[0]
    mean = values.mean(dim=0)  # [layer]
    if n < 2:
        return Band(mean.tolist(), None, None, n)
    half = Z * values.std(dim=0, unbiased=True) / math.sqrt(n)  # [layer]
    return Band(mean.tolist(), (mean - half).tolist(), (mean + half).tolist(), n)


def average_effects(records: list[dict]) -> dict[str, dict[str, Band]]:
    """``{site: {category: Band}}``: the AIE curves, over the facts that have the category."""
    out: dict[str, dict[str, Band]] = {}
    for site in dict.fromkeys(r["site"] for r in records):
        rows = [r for r in records if r["site"] == site]
        bands = {}
        for category in CATEGORIES:
            curves = [r["effects"][category] for r in rows if r["effects"].get(category) is not None]
            if curves:
                bands[category] = mean_band(curves)
        out[site] = bands
    return out


def lookup_depths(records: list[dict]) -> dict[str, dict[str, list]]:
    """Per relation, the facts' ``fact`` ids, ``lookup_layer`` and ``edit_layer`` (MLP records)."""
    out: dict[str, dict[str, list]] = {}
    for r in records:
        if r["site"] != "mlp":
            continue
        entry = out.setdefault(r["relation"] or "(none)", {"fact": [], "lookup_layer": [], "edit_layer": []})
        for name in entry:
            entry[name].append(r[name])
    return dict(sorted(out.items()))


def describe(records: list[dict]) -> str:
    """One line: how many facts, relations, sites and noise samples ``records`` hold."""
    facts = {r["fact"] for r in records}
    relations = {r["relation"] for r in records}
    sites = list(dict.fromkeys(r["site"] for r in records))
    samples = sorted({r["samples"] for r in records})
    return (f"{len(facts)} facts over {len(relations)} relations, sites {', '.join(sites)}, "
            f"{'/'.join(map(str, samples))} noise samples per trace")


# -- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m excise.commands.aggregate``: trace the bundled facts the model knows into the
    cache (resumable: run it again to continue or to extend ``--limit``)."""
    parser = argparse.ArgumentParser(prog="python -m excise.commands.aggregate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--facts", default="all", help="fact set name or JSONL file (default: all)")
    parser.add_argument("--limit", type=int, default=120,
                        help="known facts, round-robin over the relations (default: 120)")
    parser.add_argument("--samples", type=int, default=10, help="noise samples per trace (default: 10)")
    parser.add_argument("--sites", default=",".join(SITES), help="comma-separated (default: all three)")
    parser.add_argument("--cache", default=str(CACHE), help=f"JSON-lines cache (default: {CACHE})")
    parser.add_argument("--model", default=None, help="model name or folder (default: excise's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import excise
    from excise.check import known_facts

    model = excise.load_model(args.model, device="cpu")
    facts = known_facts(model, excise.load_facts(args.facts), args.limit)
    started = time.perf_counter()
    records = trace_many(model, facts, samples=args.samples, sites=args.sites.split(","), cache=args.cache)
    print(f"{describe(records)}; {time.perf_counter() - started:.0f} s this run; cache {args.cache}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
