"""``Report``: everything :func:`excise.verify.verify` measured, as JSON and as one HTML page.

A :class:`FactReport` holds one fact's typed results: its :class:`~excise.comparison.Comparison`
(every group scored before and after), the :class:`Summary` counts drawn from it, the verdict and
one :class:`~excise.verify.outcome.ProbeOutcome` per probe. Text ("3/5") is made only at the
edges: the printed table, ``to_json`` and the HTML page.

The HTML page is self-contained: plotly.js is inlined once (in the first figure), every other
figure reuses it, and nothing is fetched from the network, so the file opens offline and can be
attached to an erasure request as evidence.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from excise.comparison import GROUPS, Comparison
from excise.facts import Fact
from excise.scoring import Scores
from excise.verify.outcome import ProbeOutcome
from excise.verify.paper_metrics import PaperMetrics, mean_metrics
from excise.verify.quality import Quality


@dataclass(frozen=True)
class Tally:
    """``hits`` out of ``total``; prints as ``"hits/total"``."""

    hits: int
    total: int

    def __str__(self) -> str:
        return f"{self.hits}/{self.total}"


SUMMARY_TALLIES = {"paraphrases_forgotten": "paraphrases forgotten",
                   "held_out_paraphrases_forgotten": "held-out paraphrases forgotten",
                   "neighbors_kept": "neighbours kept", "same_subject_kept": "same subject kept",
                   "same_answer_kept": "same answer kept",
                   "kept_weakened": "kept, p more than halved"}
"""The :class:`Summary` tallies and their column titles, in the order tables show them."""


@dataclass(frozen=True)
class Summary:
    """One fact at a glance: the prompt forgotten?, paraphrases and held-out paraphrases forgotten,
    and, among the neighbours, same-subject and same-answer facts known before the edit, how many
    are still known; ``kept_weakened``: of those still known, how many lost more than half their
    probability (damage that "kept" alone hides)."""

    prompt_forgotten: bool
    paraphrases_forgotten: Tally
    neighbors_kept: Tally
    same_subject_kept: Tally
    held_out_paraphrases_forgotten: Tally = Tally(0, 0)
    same_answer_kept: Tally = Tally(0, 0)
    kept_weakened: Tally = Tally(0, 0)

    @classmethod
    def of(cls, comparison: Comparison) -> Summary:
        tally = {group: Tally(*comparison.tally(group)) for group in GROUPS[1:]}
        return cls(comparison.prompt_forgotten, tally["paraphrases"], tally["neighbors"],
                   tally["same_subject"], tally["held_out_paraphrases"], tally["same_answer"],
                   Tally(*comparison.weakened_tally()))

    def cells(self) -> dict:
        """The summary as printed: the prompt's bool and ``"hits/total"`` strings."""
        return {"prompt_forgotten": self.prompt_forgotten,
                **{name: str(getattr(self, name)) for name in SUMMARY_TALLIES}}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FactReport:
    """One fact: verdict and reason, summary, its comparison before/after, probe outcomes."""

    fact: Fact
    verdict: str
    reason: str
    summary: Summary
    comparison: Comparison
    probes: list[ProbeOutcome]
    n_related: int = 0
    metrics: PaperMetrics | None = None

    @property
    def id(self) -> str:
        return self.fact.id

    @property
    def scores(self) -> dict[str, dict[str, dict]]:
        """``scores[group]["before" | "after"]`` as lists: ``{"rank", "prob", "known"}``."""
        c = self.comparison
        return {g: {"before": scores_dict(c.before[g]), "after": scores_dict(c.after[g])} for g in GROUPS}

    def probe(self, name: str) -> ProbeOutcome:
        for o in self.probes:
            if o.probe == name:
                return o
        raise KeyError(f"fact {self.id!r} has no {name!r} probe (ran: {[o.probe for o in self.probes]})")

    def figure(self, name: str):
        """The figure of probe ``name`` (e.g. ``"logit_lens"``, ``"relearn"``) for this fact."""
        from excise.verify.probes.registry import registry

        drawn = {n: p for n, p in registry().items() if p.figure is not None}
        if name not in drawn:
            raise KeyError(f"no figure for probe {name!r}; probes with figures: {sorted(drawn)}")
        return drawn[name].figure(self)

    @classmethod
    def from_dict(cls, record: dict, facts: list[Fact]) -> FactReport:
        """The fact report ``to_dict`` gave ``record``; its pairs leave out the other ``facts``
        verified with it, as verify did."""
        from excise.comparison import fact_pairs
        from excise.verify.report_io import outcome_from_dict, scores_from_dict

        fact = Fact.from_dict(record["fact"])
        scores = record["scores"]
        others = [f for f in facts if f.id != fact.id]
        comparison = Comparison(fact, fact_pairs(fact, others),
                                {g: scores_from_dict(s["before"]) for g, s in scores.items()},
                                {g: scores_from_dict(s["after"]) for g, s in scores.items()})
        summary = record["summary"]
        tallies = {k: Tally(**v) for k, v in summary.items() if isinstance(v, dict)}
        if "kept_weakened" not in tallies:  # a report from before that tally: count it from its scores
            tallies["kept_weakened"] = Tally(*comparison.weakened_tally())
        metrics = record.get("metrics")
        return cls(fact=fact, verdict=record["verdict"], reason=record["reason"],
                   summary=Summary(prompt_forgotten=summary["prompt_forgotten"], **tallies),
                   comparison=comparison, probes=[outcome_from_dict(o) for o in record.get("probes", [])],
                   n_related=record.get("n_related", 0),
                   metrics=None if metrics is None else PaperMetrics(**metrics))

    def to_dict(self) -> dict:
        return {"fact": self.fact.to_dict(), "verdict": self.verdict, "reason": self.reason,
                "summary": self.summary.to_dict(), "scores": self.scores, "n_related": self.n_related,
                "metrics": None if self.metrics is None else self.metrics.to_dict(),
                "probes": [o.to_dict() for o in self.probes]}


def scores_dict(scores: Scores) -> dict:
    """JSON-able lists of a :class:`~excise.scoring.Scores`."""
    return {"rank": scores.rank.tolist(), "prob": scores.prob.tolist(), "known": scores.known.tolist()}


@dataclass
class Report:
    """The result of :func:`excise.verify.verify`; ``before``/``after`` hold model-level quality;
    ``timings`` the seconds each step took (scores, each probe, quality), both states together."""

    facts: list[FactReport]
    before: Quality
    after: Quality
    settings: dict = field(default_factory=dict)
    model: str = ""
    edits: list[dict] = field(default_factory=list)
    circuits: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, fact_id: str) -> FactReport:
        for f in self.facts:
            if f.id == fact_id:
                return f
        raise KeyError(f"no fact {fact_id!r} in this report (facts: {[f.id for f in self.facts]})")

    def to_dict(self) -> dict:
        return {"model": self.model, "settings": self.settings, "edits": self.edits,
                "before": self.before.to_dict(), "after": self.after.to_dict(),
                "facts": [f.to_dict() for f in self.facts], "circuits": self.circuits,
                "timings": self.timings}

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Report:
        """Read a report back from :meth:`to_json`'s text or file, typed, without recomputing."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).expanduser().read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, record: dict) -> Report:
        """The report :meth:`to_dict` gave ``record``, typed (facts, comparisons, readings)."""
        from excise.verify.report_io import quality_from_dict

        if not isinstance(record, dict) or "facts" not in record:
            raise ValueError("not an excise verification report: no 'facts' field (write one with "
                             "Report.to_json or excise verify --json)")
        facts = [Fact.from_dict(f["fact"]) for f in record["facts"]]
        return cls(facts=[FactReport.from_dict(f, facts) for f in record["facts"]],
                   before=quality_from_dict(record["before"]), after=quality_from_dict(record["after"]),
                   settings=record.get("settings", {}), model=record.get("model", ""),
                   edits=record.get("edits", []), circuits=record.get("circuits"),
                   timings=record.get("timings", {}))

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1, default=_default)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    def paper_metrics(self) -> dict[str, float]:
        """The papers' metrics (:mod:`excise.verify.paper_metrics`) averaged over the facts."""
        return mean_metrics([f.metrics for f in self.facts if f.metrics is not None])

    def to_dataframe(self):
        """One ``pandas.DataFrame`` row per fact x probe: the fact's verdict, summary counts and
        paper metrics, and the probe's status and reason. Needs pandas
        (``pip install 'excise[notebooks]'``)."""
        from excise._optional import require_pandas

        pd = require_pandas("Report.to_dataframe")
        rows = []
        for f in self.facts:
            base = {"fact": f.id, "relation": f.fact.relation, "verdict": f.verdict,
                    "prompt_forgotten": f.summary.prompt_forgotten}
            for name in SUMMARY_TALLIES:
                tally = getattr(f.summary, name)
                base[name] = tally.hits / tally.total if tally.total else None
            if f.metrics is not None:
                base.update({f"{family}.{k}": v for family in ("rewrite_score", "delta_acc", "counterfact")
                             for k, v in (getattr(f.metrics, family) or {}).items()})
            for o in f.probes or [None]:
                rows.append({**base, "probe": o and o.probe, "status": o and o.status,
                             "reason": o and o.reason})
        return pd.DataFrame(rows)

    def table(self) -> list[dict]:
        """One row per fact: verdict, summary and each probe's status (for printing)."""
        return [{"fact": f.id, "verdict": f.verdict, **f.summary.cells(),
                 **{o.probe: o.status for o in f.probes}} for f in self.facts]

    def figures(self) -> list[tuple[str, object]]:
        """``(title, go.Figure)`` pairs shown in the HTML report."""
        from excise.verify import figures
        from excise.verify.probes.registry import registry

        probes = registry()
        out = [("Probe outcomes", figures.probe_matrix(self))]
        for f in self.facts:
            for o in f.probes:
                probe = probes[o.probe]
                if probe.figure is not None and o.after is not None:
                    out.append((f"{probe.title}: {f.id}", probe.figure(f)))
        if self.circuits:
            for i, f in enumerate(self.facts):
                b, a = self.circuits["before"][i], self.circuits["after"][i]
                out.append((f"Causal trace before/after: {f.id}", figures.circuit_diff(b, a)))
                out.append((f"Head and neuron attribution before/after: {f.id}",
                            figures.attribution_diff(b, a)))
                out.append((f"Attention before/after: {f.id}", figures.attention_change(b, a)))
        return out

    def to_html(self, path: str | Path) -> Path:
        """Write one self-contained HTML page (tables + figures, plotly.js inlined once)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = [f"<h1>excise verification report</h1><p>model: {_e(self.model)}; before = "
                 f"{_e(self.settings.get('before', ''))}</p>", _edits_html(self.edits),
                 _quality_html(self.before, self.after), _facts_html(self), _metrics_html(self)]
        for n, (title, fig) in enumerate(self.figures()):
            body = fig.to_html(full_html=False, include_plotlyjs=(n == 0), default_width="100%")
            parts.append(f"<h2>{_e(title)}</h2>{body}")
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>excise report</title>"
                f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
        path.write_text(page, encoding="utf-8")
        return path


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}"
        ".recovered,.recoverable{background:#fdd}.forgotten{background:#dfd}"
        ".uninformative,.skipped{color:#888}.not{background:#fee}")


def _e(value) -> str:
    return html.escape(str(value))


def _default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _rows(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _edits_html(edits: list[dict]) -> str:
    if not edits:
        return ""
    rows = [[e["method"], ", ".join(e["components"]), ", ".join(e["fact_ids"])] for e in edits]
    return "<h2>Edits</h2>" + _rows(["method", "components", "facts"], rows)


def _quality_html(before: Quality, after: Quality) -> str:
    rows = []
    if after.perplexity is not None:
        rows.append(["perplexity (held-out text)", f"{before.perplexity:.2f}", f"{after.perplexity:.2f}"])
    for kind in ("greedy", "sampled"):
        if after.fluency is not None:
            rows.append([f"fluency, {kind} (n-gram entropy)", f"{getattr(before.fluency, kind):.3f}",
                         f"{getattr(after.fluency, kind):.3f}"])
    return "<h2>Model quality</h2>" + _rows(["metric", "before", "after"], rows) if rows else ""


def _metrics_html(report: Report) -> str:
    """The papers' metrics per fact (rewrite score, delta-accuracy, CounterFact scores)."""
    per = [(f.id, f.metrics) for f in report.facts if f.metrics is not None]
    names = list(report.paper_metrics())
    if not names:
        return ""
    rows = []
    for fact_id, m in per:
        flat = {f"{family}.{k}": v for family in ("rewrite_score", "delta_acc", "counterfact")
                for k, v in (getattr(m, family) or {}).items()}
        rows.append([fact_id, *(f"{flat[n]:+.3f}" if n in flat else "" for n in names)])
    mean = report.paper_metrics()
    rows.append(["mean", *(f"{mean[n]:+.3f}" for n in names)])
    return ("<h2>Paper metrics</h2><p>Rewrite score (Hase et al. 2023): (p before - p after) / p before "
            "of the forgotten answer; delta-acc (Patil et al. 2024): accuracy after minus before on "
            "the probes to keep; CounterFact ES/PS/NS and magnitudes (Meng et al. 2022) where the fact "
            "has a new target.</p>" + _rows(["fact", *names], rows))


def _facts_html(report: Report) -> str:
    rows = []
    for f in report.facts:
        b, a = f.comparison.before["prompt"], f.comparison.after["prompt"]
        s = f.summary
        cls = f.verdict.split()[0]
        rows.append([f"<td>{_e(f.id)}</td>", f"<td class='{cls}'>{_e(f.verdict)}</td>",
                     f"<td>{float(b.prob[0]):.3f} → {float(a.prob[0]):.4f}</td>",
                     f"<td>{int(b.rank[0])} → {int(a.rank[0])}</td>",
                     *[f"<td>{_e(getattr(s, name))}</td>" for name in SUMMARY_TALLIES],
                     f"<td>{_e(f.reason)}</td>"])
    table = _rows(["fact", "verdict", "p(target)", "rank", *SUMMARY_TALLIES.values(), "reason"], rows,
                  raw=True)
    probes = []
    for f in report.facts:
        for o in f.probes:
            probes.append([f"<td>{_e(f.id)}</td>", f"<td>{_e(o.probe)}</td>",
                           f"<td class='{o.status}'>{_e(o.status)}</td>", f"<td>{_e(o.reason)}</td>"])
    return ("<h2>Facts</h2>" + table + "<h2>Robustness probes</h2>"
            + _rows(["fact", "probe", "status", "detail"], probes, raw=True))
