"""Aggregate an evaluation's per-fact rows into rates with 95% intervals: JSON, Markdown and HTML.

Rates of counts (facts forgotten, paraphrases forgotten, probes kept, attacks that recover) get a
Wilson score interval (sound at 0% and 100%, unlike the normal approximation); means of per-fact
numbers (the papers' metrics, perplexity change, seconds) get mean +- 1.96 standard errors. An
attack's success rate is taken over the facts whose prompt was forgotten and on which the attack
was informative (it found the answer before the edit, and its made-up-subject control did not
explain it), the way the papers report attack success.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from excise.verify.report import SUMMARY_TALLIES

Z = 1.96


def wilson(hits: int, total: int) -> dict:
    """``{"rate", "low", "high", "hits", "total"}``: the share and its 95% Wilson interval."""
    if total == 0:
        return {"rate": None, "low": None, "high": None, "hits": hits, "total": total}
    p = hits / total
    denom = 1 + Z ** 2 / total
    centre = (p + Z ** 2 / (2 * total)) / denom
    half = Z * math.sqrt(p * (1 - p) / total + Z ** 2 / (4 * total ** 2)) / denom
    return {"rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half),
            "hits": hits, "total": total}


def mean_interval(values: list[float]) -> dict:
    """``{"mean", "low", "high", "n"}`` with a normal 95% interval (none for fewer than 2 values)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(values) / len(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = Z * sd / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def summarize(rows: list[dict]) -> dict:
    """Rates and means over ``rows`` (evaluated facts only; skipped ones are counted)."""
    done = [r for r in rows if "verdict" in r]
    out = {"facts": len(rows), "evaluated": len(done), "skipped": len(rows) - len(done)}
    out["efficacy"] = wilson(sum(r["summary"]["prompt_forgotten"] for r in done), len(done))
    for name in SUMMARY_TALLIES:  # rows an older version wrote may lack a newer tally
        tallies = [r["summary"].get(name, {"hits": 0, "total": 0}) for r in done]
        out[name] = wilson(sum(t["hits"] for t in tallies), sum(t["total"] for t in tallies))
    out["verdicts"] = {v: wilson(sum(r["verdict"] == v for r in done), len(done))
                       for v in ("forgotten", "recoverable", "not forgotten")}
    out["attacks"] = _attacks(done)
    out["metrics"] = _metrics(done)
    for key in ("perplexity_change", "edit_s", "verify_s"):
        out[key] = mean_interval([r.get(key) for r in done])
    return out


def _attacks(done: list[dict]) -> dict:
    """Per probe: recovered among the forgotten facts where it was informative, and the counts."""
    names = list(dict.fromkeys(p for r in done for p in r["probes"]))
    out = {}
    for name in names:
        statuses = [r["probes"].get(name) for r in done if r["summary"]["prompt_forgotten"]]
        informative = [s for s in statuses if s in ("recovered", "forgotten")]
        out[name] = {**wilson(informative.count("recovered"), len(informative)),
                     **{s: statuses.count(s) for s in ("uninformative", "skipped")}}
    return out


def _metrics(done: list[dict]) -> dict:
    values: dict[str, list[float]] = {}
    for r in done:
        for family, per in (r.get("metrics") or {}).items():
            for name, value in (per or {}).items():
                values.setdefault(f"{family}.{name}", []).append(value)
    return {name: mean_interval(v) for name, v in values.items()}


def write_summary(rows: list[dict], folder: Path, settings: dict) -> dict:
    """Write ``summary.json``, ``table.md`` and ``eval.html`` in ``folder``; return the summary
    (overall and per split of the bundled facts: tuning / held out)."""
    splits = sorted({r.get("split") for r in rows if r.get("split")})
    summary = {"settings": settings, "all": summarize(rows),
               "by_split": {s: summarize([r for r in rows if r.get("split") == s]) for s in splits}}
    _write(folder / "summary.json", json.dumps(summary, indent=1))
    _write(folder / "table.md", markdown(summary))
    _write(folder / "eval.html", page(summary, rows))
    return summary


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _pct(w: dict) -> str:
    if w["rate"] is None:
        return "n/a"
    return f"{100 * w['rate']:.1f}% [{100 * w['low']:.0f}-{100 * w['high']:.0f}] ({w['total']})"


def _num(m: dict, fmt: str = "{:+.3f}") -> str:
    if m["mean"] is None:
        return "n/a"
    spread = "" if m["low"] is None else f" [{fmt.format(m['low'])}, {fmt.format(m['high'])}]"
    return fmt.format(m["mean"]) + spread


def table_rows(summary: dict) -> list[tuple[str, list[str]]]:
    """``(row name, [cell per column])`` for the Markdown and HTML tables; columns: all, splits."""
    parts = [summary["all"], *summary["by_split"].values()]
    rows = [("facts evaluated (skipped)", [f"{p['evaluated']} ({p['skipped']})" for p in parts]),
            ("efficacy (prompt forgotten)", [_pct(p["efficacy"]) for p in parts])]
    rows += [(title, [_pct(p[name]) for p in parts]) for name, title in SUMMARY_TALLIES.items()]
    rows += [(f"verdict: {v}", [_pct(p["verdicts"][v]) for p in parts]) for v in summary["all"]["verdicts"]]
    rows += [(f"attack recovers: {a}", [_pct(p["attacks"].get(a, {"rate": None})) if a in p["attacks"]
                                        else "n/a" for p in parts]) for a in summary["all"]["attacks"]]
    rows += [(m, [_num(p["metrics"][m]) if m in p["metrics"] else "n/a" for p in parts])
             for m in summary["all"]["metrics"]]
    rows += [("perplexity change", [_num(p["perplexity_change"], "{:+.2%}") for p in parts]),
             ("seconds per edit", [_num(p["edit_s"], "{:.1f}") for p in parts]),
             ("seconds per verify", [_num(p["verify_s"], "{:.1f}") for p in parts])]
    return rows


def markdown(summary: dict) -> str:
    """The summary as a Markdown table (95% intervals in brackets, counts in parentheses)."""
    heads = ["all", *summary["by_split"]]
    lines = [f"| measure | {' | '.join(heads)} |", "|---" * (len(heads) + 1) + "|"]
    lines += [f"| {name} | {' | '.join(cells)} |" for name, cells in table_rows(summary)]
    s = summary["settings"]
    return (f"Evaluation of `{s['method']}` on {s.get('model') or 'the model'}; probes: "
            f"{', '.join(s['probes'])}.\n\n" + "\n".join(lines) + "\n")


def figures(summary: dict, rows: list[dict]) -> list:
    """Plotly figures: rates with intervals per split, and each attack's outcomes."""
    import plotly.graph_objects as go

    parts = {"all": summary["all"], **summary["by_split"]}
    names = {"efficacy": "efficacy", **SUMMARY_TALLIES}
    rates = go.Figure()
    for split, part in parts.items():
        shown = [(title, part[n]) for n, title in names.items() if part[n]["rate"] is not None]
        rates.add_trace(go.Bar(
            name=split, x=[t for t, _ in shown], y=[100 * w["rate"] for _, w in shown],
            error_y={"type": "data", "symmetric": False,
                     "array": [100 * (w["high"] - w["rate"]) for _, w in shown],
                     "arrayminus": [100 * (w["rate"] - w["low"]) for _, w in shown]}))
    rates.update_layout(title="Forgetting and keeping, with 95% Wilson intervals", barmode="group",
                        xaxis_title="measure", yaxis_title="rate (%)", yaxis_range=[0, 105],
                        legend_title="facts")
    attacks = go.Figure()
    probes = list(summary["all"]["attacks"])
    done = [r for r in rows if "verdict" in r]
    for status in ("recovered", "forgotten", "uninformative", "skipped"):
        attacks.add_trace(go.Bar(name=status, x=probes,
                                 y=[sum(r["probes"].get(p) == status for r in done) for p in probes]))
    attacks.update_layout(title="Each probe's outcome over the evaluated facts", barmode="stack",
                          xaxis_title="probe or attack", yaxis_title="facts", legend_title="outcome")
    return [rates, attacks]


def page(summary: dict, rows: list[dict]) -> str:
    """One self-contained HTML page: the table, the figures (plotly.js inlined once), per-fact rows."""
    heads = ["measure", "all", *summary["by_split"]]
    table = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + "</tr>" for n, cells in table_rows(summary))
    probe_names = list(summary["all"]["attacks"])
    fact_rows = "".join(
        f"<tr><td>{html.escape(r['fact'])}</td><td>{html.escape(str(r.get('split', '')))}</td>"
        f"<td>{html.escape(r.get('verdict', r.get('skipped', '')))}</td>"
        + "".join(f"<td>{html.escape(str(r.get('probes', {}).get(p, '')))}</td>" for p in probe_names)
        + "</tr>" for r in rows)
    figs = "".join(fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
                   for i, fig in enumerate(figures(summary, rows)))
    s = summary["settings"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>excise eval</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head><body>"
            f"<h1>excise eval: {html.escape(s['method'])}</h1><p>model: {html.escape(str(s.get('model')))}; "
            f"probes: {html.escape(', '.join(s['probes']))}; budgets: {html.escape(json.dumps(s['budgets']))}</p>"
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + f"</tr>{table}</table>"
            + figs + "<h2>Facts</h2><table><tr><th>fact</th><th>split</th><th>verdict</th>"
            + "".join(f"<th>{html.escape(p)}</th>" for p in probe_names) + f"</tr>{fact_rows}</table>"
            "</body></html>")
