"""Evaluate an editor over a whole fact set: edit each fact on fresh weights, verify it, aggregate.

:func:`evaluate` is what ``excise eval`` runs. For every fact (in order, up to ``limit``) it

1. skips a fact the unedited model does not know (there is nothing to forget; the row says so);
2. edits it alone with ``method`` (:func:`~excise.commands.workflows.edit_facts`);
3. verifies it with the chosen probes and budgets (:func:`excise.verify.verify`);
4. undoes the edit (bit-exact), so the next fact starts from the original weights again;
5. appends the fact's row to ``out/rows.jsonl`` (flushed and synced) and writes its full report to
   ``out/facts/<id>.json``.

A run that stops (Ctrl-C, a crash, a closed laptop) is resumed by running the same command
again: facts with a row are not redone, a half-written last line is dropped. A folder holding a
run with other settings (model, method, probes, budgets) is refused rather than mixed.

At the end (and after every fact, so an interrupted run still has one), :mod:`.eval_summary`
turns the rows into ``summary.json``, ``table.md`` and ``eval.html``: rates with 95% intervals.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from excise.commands.eval_summary import write_summary

log = logging.getLogger(__name__)

ROWS = "rows.jsonl"
SETTINGS = "settings.json"


@dataclass
class EvalRun:
    """What :func:`evaluate` produced: the per-fact ``rows``, the ``summary`` and the files."""

    rows: list[dict]
    summary: dict
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)


def evaluate(model, facts, method: str = "rome", out: str | Path = "eval", limit: int | None = None,
             probes=None, budgets: dict | None = None, fluency_tokens: int = 0, perplexity: bool = True,
             model_name: str = "", progress: bool = True) -> EvalRun:
    """Edit and verify each of ``facts`` alone, until ``limit`` facts the model knows are done;
    write and return the results.

    ``probes``: verify's probes (default: all); ``budgets``: attack budgets
    (:class:`~excise.verify.probes.base.Setup` fields). Resumes a run found in ``out``.
    """
    from excise.verify.probes.registry import PROBES

    facts = list(facts)
    if not facts:
        raise ValueError("evaluate needs at least one fact")
    folder = Path(out).expanduser()
    settings = {"model": model_name or getattr(model, "excise_name", ""), "method": method,
                "probes": list(probes if probes is not None else PROBES),
                "budgets": dict(budgets or {}), "fluency_tokens": fluency_tokens,
                "perplexity": perplexity}
    rows = _start(folder, settings)
    done = {r["fact"] for r in rows}
    todo = [f for f in facts if f.id not in done]
    evaluated = sum("verdict" in r for r in rows)
    bar = tqdm(total=limit or len(facts), initial=evaluated if limit else len(rows),
               desc=f"eval {method}", unit="fact", disable=not progress)
    for fact in todo:
        if limit and evaluated >= limit:
            break
        bar.set_postfix_str(fact.id)
        row, report = _one_fact(model, fact, method, settings)
        if report is not None:
            _write_atomic(folder / "facts" / f"{_safe(fact.id)}.json", report.to_json())
        _append_row(folder / ROWS, row)
        rows.append(row)
        evaluated += "verdict" in row
        bar.update(int("verdict" in row or not limit))
        write_summary(rows, folder, settings)
    bar.close()
    summary = write_summary(rows, folder, settings)
    return EvalRun(rows, summary, folder, {name: folder / name for name in
                                           (ROWS, "summary.json", "table.md", "eval.html")})


def _one_fact(model, fact, method: str, settings: dict):
    """One fact's row (and report): skipped when the model does not know it."""
    from excise.commands.workflows import edit_facts
    from excise.facts import fact_split
    from excise.scoring import score_targets
    from excise.verify import verify

    row = {"fact": fact.id, "relation": fact.relation, "split": fact_split(fact.id)}
    if not bool(score_targets(model, [fact.text], [fact.target]).known[0]):
        return {**row, "skipped": "the model does not know this fact (nothing to forget)"}, None
    start = time.perf_counter()
    edit = edit_facts(model, [fact], method, progress=False)
    edit_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        report = verify(model, fact, probes=settings["probes"], budgets=settings["budgets"],
                        fluency_tokens=settings["fluency_tokens"], perplexity=settings["perplexity"],
                        progress=False)
        verify_s = time.perf_counter() - start
    finally:
        edit.undo(model)
    f = report.facts[0]
    before, after = report.before.perplexity, report.after.perplexity
    row.update(verdict=f.verdict, reason=f.reason, summary=f.summary.to_dict(),
               probes={o.probe: o.status for o in f.probes},
               metrics=None if f.metrics is None else f.metrics.to_dict(),
               perplexity_change=None if before is None else after / before - 1,
               edit_s=edit_s, verify_s=verify_s)
    return row, report


def _start(folder: Path, settings: dict) -> list[dict]:
    """The rows of a run to resume in ``folder`` (refusing other settings), or a new run's []."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / SETTINGS
    if saved.exists():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if previous.get(k) != json.loads(json.dumps(settings[k])))
            raise ValueError(f"{folder} holds an evaluation with other settings ({', '.join(changed)}); "
                             "give another --out folder, or delete that one to start over")
    else:
        if (folder / ROWS).exists() or any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty and holds no evaluation; give an empty or new "
                             "--out folder")
        _write_atomic(saved, json.dumps(settings, indent=1))
    return _read_rows(folder / ROWS)


def _read_rows(path: Path) -> list[dict]:
    """Complete rows of ``path``; a half-written last line (an interrupted append) is dropped."""
    if not path.exists():
        return []
    rows, good = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
            good.append(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a half-written row", path)
            break
    _write_atomic(path, "".join(f"{line}\n" for line in good))
    return rows


def _append_row(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _safe(fact_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in fact_id)
