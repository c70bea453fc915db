"""``excise eval``: edit each fact of a set on fresh weights, verify it, and aggregate the results.

    excise eval --facts capitals --method rome --limit 40 --out eval-rome
    excise eval --facts counterfact.json --format counterfact --method memit --limit 100
    excise eval --facts all --split held_out --probes logit_lens,relearn --budget relearn_steps=10

Writes, in the --out folder: ``rows.jsonl`` (one row per fact), ``facts/ID.json`` (each fact's full
verification report), ``summary.json``, ``table.md`` and ``eval.html`` (rates with 95% intervals, per
split of the bundled facts). Run the same command again to resume an interrupted evaluation.
"""

from __future__ import annotations

import argparse

from excise.commands._args import add_budgets, add_command, add_model, add_progress, parse_budgets

FORMATS = ("jsonl", "counterfact", "known1000")


def register(sub) -> None:
    from excise.commands.workflows import METHODS
    from excise.verify.probes.registry import PROBES

    p = add_command(sub, "eval", "edit and verify every fact of a set; one table, JSON and HTML",
                    __doc__)
    p.add_argument("--facts", required=True, metavar="SET",
                   help="a bundled set name ('all', 'capitals', ...), a JSONL fact file, or a ROME "
                        "JSON file with --format")
    p.add_argument("--format", choices=FORMATS, default="jsonl",
                   help="--facts file format (default: jsonl or a bundled set)")
    p.add_argument("--split", choices=("tune", "held_out"), default=None,
                   help="only this split of the bundled facts (default: both)")
    p.add_argument("--method", choices=METHODS, default="rome", help="editor (default: rome)")
    p.add_argument("--limit", type=int, default=None,
                   help="stop after this many facts the model knows (default: all)")
    add_model(p)
    p.add_argument("--probes", default=",".join(PROBES),
                   help=f"comma-separated probes, of {', '.join(PROBES)} (default: all)")
    add_budgets(p)
    p.add_argument("--fluency-tokens", type=int, default=0,
                   help="tokens generated per prompt for fluency (default: 0, skipped)")
    p.add_argument("--no-perplexity", action="store_true", help="skip held-out perplexity")
    p.add_argument("--out", default=None, help="output folder (default: eval-METHOD)")
    add_progress(p)
    p.set_defaults(run=run_eval)


def load_eval_facts(args) -> list:
    """The facts ``--facts``/``--format``/``--split`` name."""
    from excise.facts import fact_split, load_facts

    if args.format == "jsonl":
        facts = load_facts(args.facts)
    else:
        from excise.importers import import_facts

        facts, _ = import_facts(args.facts, args.format)
    if args.split:
        facts = [f for f in facts if fact_split(f.id) == args.split]
    if not facts:
        raise ValueError(f"{args.facts} holds no facts" + (f" in the {args.split} split" if args.split else ""))
    return facts


def run_eval(args: argparse.Namespace) -> int:
    from excise.verify.probes.registry import PROBES

    probes = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    bad = set(probes) - set(PROBES)
    if bad:
        raise ValueError(f"unknown probe(s) {sorted(bad)}; choose from {', '.join(PROBES)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: give a positive number of facts")
    budgets = parse_budgets(args)
    facts = load_eval_facts(args)
    from excise.commands.evaluation import evaluate
    from excise.model import load_model

    model = load_model(args.model)
    run = evaluate(model, facts, method=args.method, out=args.out or f"eval-{args.method}",
                   limit=args.limit, probes=probes, budgets=budgets, fluency_tokens=args.fluency_tokens,
                   perplexity=not args.no_perplexity, model_name=args.model or "default",
                   progress=not args.no_progress)
    print((run.folder / "table.md").read_text(encoding="utf-8"))
    print(f"rows:  {run.files['rows.jsonl']}\nhtml:  {run.files['eval.html']}")
    return 0
