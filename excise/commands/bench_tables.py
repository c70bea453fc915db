"""Saved results of many facts as tables: the benches' ``--json`` rows and the trace cache.

``bench/forget_quality.py --json`` and ``bench/robustness.py --json`` write ``{"about", "rows"}``,
each row an editor (``method`` or ``editor``) on a split with, per measure, ``hits`` of ``total``.
:func:`bench_dataframe` turns them into a ``pandas.DataFrame``, tidy by default (one row per
editor x measure, with its 95% Wilson interval, what a plotting library wants) or wide (one row
per editor, a column per measure: what a paper's table shows). :func:`traces_dataframe` does the
same for the causal traces of :mod:`excise.commands.aggregate` (one row per fact x site x token
category x layer). pandas is optional (``pip install 'excise[notebooks]'``).
"""

from __future__ import annotations

import json
from pathlib import Path

from excise._optional import require_pandas
from excise.commands.eval_summary import wilson

EXTRAS = ("perplexity_change", "seconds_per_edit")
"""Per-row numbers some benches add beside their measures."""


def read_bench(path: str | Path) -> dict:
    """A bench's ``--json`` file as ``{"about": ..., "rows": [...]}``, or a one-line error that
    says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no bench results there; write them with the bench's "
                                f"--json option, e.g. python bench/forget_quality.py --json {path}")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno}); rerun the bench "
                         "with --json to rewrite it") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("rows"), list):
        raise ValueError(f"{path}: not a bench result (no \"rows\" list); bench_dataframe reads "
                         "what bench/forget_quality.py or bench/robustness.py write with --json")
    return saved


def _rows(source) -> list[dict]:
    if isinstance(source, (str, Path)):
        return read_bench(source)["rows"]
    if isinstance(source, dict):
        return source["rows"]
    return list(source)


def bench_dataframe(source, wide: bool = False):
    """A bench's rows (a ``--json`` path, its loaded dict, or the rows) as a ``pandas.DataFrame``.

    Tidy (default): columns ``method, split, n, measure, hits, total, rate, low, high`` (``low`` /
    ``high``: the 95% Wilson interval of ``rate``), plus ``perplexity_change`` and
    ``seconds_per_edit`` where the bench wrote them. ``wide=True``: one row per bench row,
    ``method, split, n``, then each measure's rate and the extras.
    """
    pd = require_pandas("bench_dataframe")
    tidy, wide_rows = [], []
    for row in _rows(source):
        name = row.get("method", row.get("editor"))
        if name is None or "columns" not in row:
            raise ValueError(f"not a bench row (needs a method or editor and columns): {row!r:.80}")
        about = {"method": name, "split": row.get("split"), "n": row.get("n")}
        extras = {key: row[key] for key in EXTRAS if key in row}
        cells = {"forgotten": row["forgotten"]} if "forgotten" in row else {}  # robustness rows
        rates = {}
        for measure, cell in {**cells, **row["columns"]}.items():
            interval = wilson(cell["hits"], cell["total"])
            rates[measure] = interval["rate"]
            tidy.append({**about, "measure": measure, "hits": cell["hits"], "total": cell["total"],
                         "rate": interval["rate"], "low": interval["low"], "high": interval["high"],
                         **extras})
        wide_rows.append({**about, **rates, **extras})
    return pd.DataFrame(wide_rows if wide else tidy)


def traces_dataframe(records: list[dict]):
    """The trace cache's records (:func:`excise.commands.aggregate.read_records`) as a tidy
    ``pandas.DataFrame``: ``fact, relation, site, category, layer, effect`` (the indirect effect,
    a difference of probabilities), with each fact's ``clean`` and ``corrupted`` probabilities. A
    category the prompt lacks (no further tokens when the subject ends right before the last
    token) has no rows."""
    pd = require_pandas("traces_dataframe")
    tidy = [{"fact": r["fact"], "relation": r["relation"], "site": r["site"], "category": category,
             "layer": layer, "effect": effect, "clean": r["clean"], "corrupted": r["corrupted"]}
            for r in records for category, curve in r["effects"].items() if curve is not None
            for layer, effect in enumerate(curve)]  # None: no such token (nothing between subject and end)
    return pd.DataFrame(tidy, columns=["fact", "relation", "site", "category", "layer", "effect",
                                       "clean", "corrupted"])
