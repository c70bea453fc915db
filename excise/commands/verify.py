"""``excise verify``: check that an edited model forgot facts, with every probe, and write reports.

    excise verify --model EDITED_DIR --facts capitals --ids capital-france --html out.html
    excise verify --model EDITED_DIR --original default --facts facts.jsonl --json out.json
    excise verify --model default --edit EDIT_DIR --facts capitals --ids capital-france

``--model`` is the edited model or, with ``--edit``, the base model the saved edit is applied to.
"Before" is ``--original`` when given; else the model with its edits reverted: the ``--edit``, or
the edit an ``excise forget`` folder carries in ``excise_edit/``. With none of these, verify
refuses before any work. ``--exit-code`` makes the exit status say the verdict (for scripts).
"""

from __future__ import annotations

import argparse

from excise.commands._args import (
    add_budgets,
    add_command,
    add_facts,
    add_model,
    add_progress,
    check_new_file,
    parse_budgets,
    select_facts,
)

VERDICT_EXIT = {"forgotten": 0, "recoverable": 1, "not forgotten": 1}


def register(sub) -> None:
    from excise.verify.probes.registry import PROBES

    p = add_command(sub, "verify", "verify that facts are forgotten (scores, probes, HTML report)",
                    __doc__)
    add_model(p, "the edited model (folder), or the base model with --edit")
    p.add_argument("--original", default=None,
                   help="the unedited model (folder, hub id or 'default'); default: the edited "
                        "model with its edit reverted")
    p.add_argument("--edit", default=None, help="a saved edit folder to apply to --model first")
    add_facts(p, what="the facts to verify")
    p.add_argument("--probes", default=",".join(PROBES),
                   help=f"comma-separated probes, of {', '.join(PROBES)} (default: all)")
    p.add_argument("--relearn-steps", type=int, default=20,
                   help="Adam steps of the relearning attack (default: 20)")
    add_budgets(p)
    p.add_argument("--fluency-tokens", type=int, default=30,
                   help="tokens generated per prompt for fluency; 0 skips fluency (default: 30)")
    p.add_argument("--no-perplexity", action="store_true", help="skip held-out perplexity")
    p.add_argument("--circuits", action="store_true", help="add before/after causal traces (slow)")
    p.add_argument("--html", default=None, help="write the HTML report here")
    p.add_argument("--json", default=None, help="write the JSON report here")
    p.add_argument("--force", action="store_true", help="overwrite existing --html/--json files")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 0 only when every fact is forgotten; 1 when one is recoverable or "
                        "not forgotten (default: exit 0 whatever the verdict)")
    add_progress(p)
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from excise.verify.probes.registry import PROBES

    probes = tuple(p.strip() for p in args.probes.split(",") if p.strip())
    bad = set(probes) - set(PROBES)
    if bad:
        raise ValueError(f"unknown probe(s) {sorted(bad)}; choose from {', '.join(PROBES)}")
    budgets = parse_budgets(args)
    facts = select_facts(args)
    outputs = [check_new_file(path, args.force, flag)
               for path, flag in ((args.html, "--html"), (args.json, "--json")) if path]
    model, original = _states(args)
    from excise.verify.core import verify

    report = verify(model, facts, original=original, probes=probes, relearn_steps=args.relearn_steps,
                    fluency_tokens=args.fluency_tokens, perplexity=not args.no_perplexity,
                    circuits=args.circuits, progress=not args.no_progress, budgets=budgets)
    for row in report.table():
        print(f"{row['fact']}: {row['verdict']}  " + "  ".join(
            f"{k}={v}" for k, v in row.items() if k not in ("fact", "verdict")))
    for f in report.facts:
        print(f"  {f.id}: {f.reason}")
    if args.json:
        report.to_json(outputs[-1])
        print(f"json: {args.json}")
    if args.html:
        print(f"html: {report.to_html(outputs[0])}")
    if args.exit_code:
        return max(VERDICT_EXIT[f.verdict] for f in report.facts)
    return 0


def _states(args):
    """``(edited model, original or None)``; refuses when no "before" state can be had."""
    from excise.model import load_model

    model = load_model(args.model)
    if args.edit:
        from excise.edit import load

        load(args.edit).apply(model)
    elif not args.original:
        _attach_carried_edit(model, args.model)
    original = load_model(args.original) if args.original else None
    return model, original


def _attach_carried_edit(model, folder) -> None:
    """Attach the edits an ``excise forget`` folder carries, so "before" is them reverted."""
    from excise.edit.record import attach, load_saved_edits
    from excise.model import default_model_folder

    edits = load_saved_edits(folder or default_model_folder())
    if not edits:
        raise ValueError(
            f"{folder or 'the default model'} carries no excise edit and no --original or --edit "
            "was given, so there is nothing to compare with: pass --original MODEL (the unedited "
            "model, e.g. 'default') or --edit EDIT_DIR")
    attach(model, edits)
