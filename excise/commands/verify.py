"""``excise verify``: check that an edited model forgot facts, with every probe, and write reports.

    excise verify --model EDITED_DIR --original default --facts facts.jsonl --html out.html --json out.json
    excise verify --model default --edit out/edit --facts capitals --fact capital-france

``--model`` is the edited model (a saved folder) or, with ``--edit``, the base model that the saved
edit is applied to (then "before" is the same model with the edit reverted).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from excise.verify.probes.registry import PROBES

    p = sub.add_parser("verify", help="verify that facts are forgotten (scores, probes, HTML report)")
    p.add_argument("--model", default=None, help="edited model folder, or the base model with --edit")
    p.add_argument("--original", default=None, help="the unedited model (folder, hub id or 'default')")
    p.add_argument("--edit", default=None, help="a saved edit folder to apply to --model first")
    p.add_argument("--facts", required=True, help="JSONL fact file or bundled set name")
    p.add_argument("--fact", action="append", default=None, help="only these fact ids (repeatable)")
    p.add_argument("--probes", default=",".join(PROBES),
                   help=f"comma-separated probes, of {', '.join(PROBES)} (default: all)")
    p.add_argument("--relearn-steps", type=int, default=20)
    p.add_argument("--fluency-tokens", type=int, default=30, help="0 skips fluency")
    p.add_argument("--no-perplexity", action="store_true")
    p.add_argument("--circuits", action="store_true", help="add before/after causal traces (slow)")
    p.add_argument("--html", default=None, help="write the HTML report here")
    p.add_argument("--json", default=None, help="write the JSON report here")
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from excise.facts import find_fact, load_facts
    from excise.model import load_model
    from excise.verify.core import verify
    from excise.verify.probes.registry import PROBES

    probes = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    bad = set(probes) - set(PROBES)
    if bad:
        raise ValueError(f"unknown probe(s) {sorted(bad)}; choose from {', '.join(PROBES)}")
    facts = load_facts(args.facts)
    if args.fact:
        facts = [find_fact(facts, fid) for fid in args.fact]
    model = load_model(args.model)
    if args.edit:
        from excise.edit import load

        load(args.edit).apply(model)
    original = load_model(args.original) if args.original else None
    if original is None and not getattr(model, "excise_edits", None):
        print("warning: no --original and no --edit: 'before' equals 'after'")
    report = verify(model, facts, original=original, probes=probes, relearn_steps=args.relearn_steps,
                    fluency_tokens=args.fluency_tokens, perplexity=not args.no_perplexity,
                    circuits=args.circuits)
    for row in report.table():
        print(f"{row['fact']}: {row['verdict']}  " + "  ".join(
            f"{k}={v}" for k, v in row.items() if k not in ("fact", "verdict")))
    for f in report.facts:
        print(f"  {f.id}: {f.reason}")
    if args.json:
        report.to_json(args.json)
        print(f"json: {args.json}")
    if args.html:
        print(f"html: {report.to_html(args.html)}")
    return 0
