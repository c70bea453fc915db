"""How robust is each editor's forgetting? Share of forgotten facts each verify probe or attack recovers.

    python bench/robustness.py --limit 8 [--split tune] [--editors rome,memit]
        [--probes relearn,quantization] [--budget relearn_steps=10] [--split-groups 4]

For every editor (``rome``: the default rank-one edit at the lookup layer; ``memit`` on the one
fact; zero-ablation of the top-20 attributed neurons; gradient ascent on all weights; and, on
request, ``rome-plain``: plain ROME, as ``bench/forget_quality.py`` defines it, and
``rome-previous`` / ``rome-previous(trace layer)``: the rank-one edit before issue 14 at layer 4 /
at its MLP causal trace's peak, and any tuned rank-one row ``rome[field=value;...]`` that
``bench/forget_quality.py --methods`` takes) and every fact (known facts of one part of the fixed
split, round-robin over the relations), the fact is edited, :func:`excise.verify.verify` runs the
probes, and the edit is undone.

The table prints, per editor, the share of facts forgotten on the prompt and, per probe, the share
of *forgotten* facts it recovers among those where it was informative (it found the answer before
the edit and its made-up-subject control did not explain the return). Attacks with several budgets
get a column per budget: candidate-set sizes B (logit-lens extraction, rephrasing), bit widths
(quantization), step counts (relearning, LoRA relearning). ``--split-groups N`` adds split
relearning: groups of N facts of one relation are edited one after another, and each half is
attacked by fine-tuning on the other half. The time of each verification step is printed as a
share of the whole. Lower recovery is more robust. ``--json PATH`` also writes the table's counts
(per editor and column: recovered hits of total informative facts, and the rate) for
``notebooks/04_aggregate.ipynb``, rewritten as each editor finishes. ``--reasons`` prints, under
each fact, every probe's reason: its readings before and after, and for the relearning attacks
the probability at every budget and the made-up-subject control's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import defaultdict

from forget_quality import (  # bench/ is on the path as a script
    PLAIN,
    PREVIOUS,
    tuned_settings,
    with_settings,
)

from excise.check import known_facts
from excise.edit import ablate, finetune, memit, rome
from excise.facts import load_facts
from excise.locate import attributed_neurons, causal_trace
from excise.model import load_model
from excise.verify import verify
from excise.verify.control import control_explains
from excise.verify.outcome import found, returns
from excise.verify.probes.registry import PROBES

EDITORS = {
    "rome": lambda m, f: rome(m, f, progress=False),
    "memit": lambda m, f: memit(m, [f], progress=False),
    "ablate-zero(top20 neurons)": lambda m, f: ablate(m, attributed_neurons(m, f, layers=range(12)),
                                                      how="zero", fact_ids=[f.id], progress=False),
    "finetune-ga(all)": lambda m, f: finetune(m, [f], "gradient_ascent", progress=False),
    "rome-plain": lambda m, f: rome(m, f, layer=4, contrast=0, settings=PLAIN, progress=False),
    "rome-previous": lambda m, f: rome(m, f, layer=4, settings=PREVIOUS, progress=False),
    "rome-previous(trace layer)": lambda m, f: rome(
        m, f, layer=causal_trace(m, f, site="mlp", samples=5, progress=False), settings=PREVIOUS, progress=False),
}
DEFAULT_EDITORS = "rome,memit,ablate-zero(top20 neurons),finetune-ga(all)"


def editor_named(name: str):
    """One of :data:`EDITORS`, or a tuned rank-one row ``rome[field=value;...]`` as
    ``bench/forget_quality.py`` reads it (``rome[contrast_nearest=32]``). Raises ``ValueError``
    with a one-line message for a name that is neither."""
    if name.startswith("rome["):
        settings, update = tuned_settings(name)
        return with_settings(settings, **update)
    if name not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; choose from {', '.join(EDITORS)} or rome[field=value;...]")
    return EDITORS[name]


def _budget_columns(o) -> dict[str, tuple[bool, bool]]:
    """Per budget of an attack, ``(informative, recovered)`` read from its readings."""
    before, after = o.before, o.after
    if after is None:
        return {}
    if o.probe == "lens_extraction":
        return {f"B={b}": (before.found("head", b) or before.found("delta", b),
                           after.found("head", b) or after.found("delta", b))
                for b in after.budgets}
    if o.probe == "rephrase":
        return {f"B={b}": (bool(before.hits[j]), bool(after.hits[j])) for j, b in enumerate(after.candidates)}
    if o.probe == "quantization":
        from excise.verify.probes.quantization import bit_status

        statuses = [bit_status(before, after, j) for j in range(len(after.bits))]
        return {f"{b}-bit": (s in ("recovered", "forgotten"), s == "recovered")
                for b, s in zip(after.bits, statuses)}
    if o.probe.startswith("relearn") and getattr(after, "budgets", None):
        known = found(before.rank, before.prob)
        return {f"{b.steps} steps": (known, returns(before.rank, before.prob, b.rank, b.prob)
                                     and not control_explains(b.prob, b.control_prob))
                for b in after.budgets}
    return {}


def run(model, facts, args, budgets, after_editor=None) -> tuple[dict[str, list], dict[str, dict[str, float]]]:
    """Edit, verify and undo each fact with each editor; ``after_editor(rows)`` is called once
    each editor has done all facts (``--json`` writes what is done so far)."""
    rows, timings = defaultdict(list), defaultdict(lambda: defaultdict(float))
    probes = [p for p in args.probes.split(",") if p != "relearn_split"]
    for name in args.editors.split(","):
        editor = editor_named(name)
        for fact in facts:
            start = time.perf_counter()
            edit = editor(model, fact)
            try:
                report = verify(model, fact, probes=probes, fluency_tokens=0, perplexity=False,
                                progress=False, budgets=budgets)
            finally:
                edit.undo(model)
            for step, seconds in report.timings.items():
                timings[name][step] += seconds
            fr = report.facts[0]
            rows[name].append(fr)
            print(f"  {name:28s} {fact.id:32s} {fr.verdict:14s} {time.perf_counter() - start:6.0f}s "
                  + " ".join(f"{o.probe}={o.status}" for o in fr.probes), flush=True)
            if args.reasons:
                for o in fr.probes:
                    print(f"    {o.probe}: {o.reason}", flush=True)
        if after_editor is not None:
            after_editor(rows)
    return rows, timings


def run_split(model, facts, args, budgets) -> dict[str, list]:
    """Split relearning: groups of ``args.split_groups`` facts of one relation, edited in turn."""
    by_relation = defaultdict(list)
    for fact in facts:
        by_relation[fact.relation].append(fact)
    groups = [g[i:i + args.split_groups] for g in by_relation.values()
              for i in range(0, len(g) - args.split_groups + 1, args.split_groups)]
    rows = defaultdict(list)
    for name in args.editors.split(","):
        editor = editor_named(name)
        for group in groups:
            edits = []
            try:
                for fact in group:
                    edits.append(editor(model, fact))
                report = verify(model, group, probes=["relearn_split"], fluency_tokens=0,
                                perplexity=False, progress=False, budgets=budgets)
            finally:
                for edit in reversed(edits):
                    edit.undo(model)
            rows[name].extend(report.facts)
            print(f"  {name:28s} split group {', '.join(f.id for f in group)}: "
                  + " ".join(f"{f.probe('relearn_split').status}" for f in report.facts), flush=True)
    return rows


def recovery_cells(gone) -> dict[str, list[bool]]:
    """Per column (probe, or probe and budget), whether each forgotten fact came back, over the
    facts where the column was informative."""
    cells = defaultdict(list)
    for r in gone:
        for o in r.probes:
            if o.status in ("recovered", "forgotten"):
                cells[o.probe].append(o.status == "recovered")
            elif o.probe not in cells:
                cells[o.probe] = []
            for budget, (informative, back) in _budget_columns(o).items():
                if informative:
                    cells[f"{o.probe} {budget}"].append(back)
                else:
                    cells.setdefault(f"{o.probe} {budget}", [])
    return cells


def json_rows(rows, split: str) -> list[dict]:
    """The table as dicts: per editor, facts forgotten and per column the recovered ``hits`` of
    ``total`` informative forgotten facts and their ``rate``."""
    def count(values):
        return {"hits": sum(values), "total": len(values), "rate": sum(values) / len(values) if values else None}

    out = []
    for name, reports in rows.items():
        gone = [r for r in reports if r.summary.prompt_forgotten]
        out.append({"editor": name, "split": split, "n": len(reports),
                     "forgotten": count([r.summary.prompt_forgotten for r in reports]),
                     "columns": {c: count(v) for c, v in recovery_cells(gone).items()}})
    return out


def summarize(rows) -> tuple[dict[str, dict], list[str]]:
    table, columns = {}, []
    for name, reports in rows.items():
        gone = [r for r in reports if r.summary.prompt_forgotten]
        entry = {"forgotten": f"{len(gone)}/{len(reports)}"}
        cells = recovery_cells(gone)
        shares = []
        for column, values in cells.items():
            if column not in columns:
                columns.append(column)
            if values:
                share = sum(values) / len(values)
                entry[column] = f"{share:.0%} ({len(values)})"
                if " " not in column:
                    shares.append(share)
            else:
                entry[column] = "n/a"
        entry["mean"] = sum(shares) / len(shares) if shares else float("nan")
        table[name] = entry
    return table, columns


def print_table(table: dict[str, dict], columns: list[str]) -> None:
    header = ["editor", "forgotten", *columns, "mean recovered (status columns)"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, e in table.items():
        print(f"| {name} | {e['forgotten']} | " + " | ".join(e.get(c, "n/a") for c in columns)
              + f" | {e['mean']:.0%} |")


def print_timings(timings: dict[str, dict[str, float]], n_facts: int) -> None:
    print("\nVerification time per fact (both states; edits excluded), and each step's share:")
    for name, steps in timings.items():
        total = sum(steps.values())
        parts = ", ".join(f"{step} {100 * s / total:.0f}%" for step, s in
                          sorted(steps.items(), key=lambda kv: -kv[1]))
        print(f"  {name}: {total / n_facts:.1f} s/fact: {parts}")


def main() -> None:
    from excise.commands._args import parse_budgets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=8, help="facts per editor")
    parser.add_argument("--split", default="tune", choices=("tune", "held_out"))
    parser.add_argument("--editors", default=DEFAULT_EDITORS,
                        help=f"comma-separated, of: {', '.join(EDITORS)}, rome[field=value;...]")
    parser.add_argument("--probes", default=",".join(p for p in PROBES if p != "relearn_split"),
                        help="comma-separated verify probes")
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                        help="an attack budget (excise.verify.probes.base.Setup field), repeatable")
    parser.add_argument("--split-groups", type=int, default=0,
                        help="also run split relearning on groups of this many facts of a relation")
    parser.add_argument("--reasons", action="store_true",
                        help="print each probe's reason (its readings before and after) under each fact")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the table as JSON rows here (for notebooks/04_aggregate)")
    args = parser.parse_args()
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its folder does not exist")
    logging.basicConfig(level=logging.WARNING)
    for name in args.editors.split(","):
        try:
            editor_named(name)
        except ValueError as error:
            parser.error(f"--editors: {error}")
    budgets = parse_budgets(args)
    model = load_model(device="cpu")
    facts = known_facts(model, load_facts("all", split=args.split), args.limit)
    print(f"robustness of forgetting on {len(facts)} {args.split} facts ({', '.join(f.id for f in facts)}); "
          f"budgets: {budgets or 'verify defaults'}")

    def write_json(rows) -> None:  # whole, then renamed into place: never a half-written file
        if args.json:
            with open(f"{args.json}.partial", "w", encoding="utf-8") as handle:
                json.dump({"about": {"model": "default", "args": vars(args), "budgets": budgets},
                           "rows": json_rows(rows, args.split)}, handle, indent=1, default=str)
            os.replace(f"{args.json}.partial", args.json)

    rows, timings = run(model, facts, args, budgets, after_editor=write_json)
    table, columns = summarize(rows)
    print_table(table, columns)
    print("Cells: share of forgotten facts the probe recovers (n informative facts).")
    print_timings(timings, len(facts))
    if args.split_groups:
        pool = known_facts(model, load_facts("all", split=args.split), args.limit * 4)
        split_table, split_columns = summarize(run_split(model, pool, args, budgets))
        print("\nSplit relearning (groups of facts of one relation, edited in turn):")
        print_table(split_table, split_columns)


if __name__ == "__main__":
    main()
