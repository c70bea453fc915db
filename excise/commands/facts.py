"""``excise facts check`` and ``excise facts import``: curate and convert fact files."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from excise.commands._args import add_model, add_progress, check_new_file
from excise.facts import load_facts, write_facts
from excise.importers import FORMATS, import_facts


def register(sub) -> None:
    facts = sub.add_parser("facts", help="check which facts a model knows; import ROME formats")
    verbs = facts.add_subparsers(dest="verb", metavar="VERB", required=True)

    check = verbs.add_parser("check", help="score each fact on its prompt and paraphrases")
    check.add_argument("file", help="a JSONL fact file, or a bundled set name ('all' for every set)")
    add_model(check)
    check.add_argument("-o", "--out", default=None,
                       help="where to write the known subset (default: FILE.known.jsonl beside the input; "
                            "required for bundled sets)")
    check.add_argument("--force", action="store_true", help="overwrite an existing output file")
    check.add_argument("--quiet", action="store_true", help="print only the per-relation summary")
    add_progress(check)
    check.set_defaults(run=run_check)

    imp = verbs.add_parser("import", help="convert CounterFact or known_1000 JSON to excise JSONL")
    imp.add_argument("file", help="the ROME-format JSON file")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("-o", "--out", required=True, help="output JSONL path")
    imp.add_argument("--force", action="store_true", help="overwrite an existing output file")
    imp.set_defaults(run=run_import)


def _known_out_path(args) -> Path:
    if args.out:
        return Path(args.out)
    source = Path(args.file)
    if not source.is_file():
        raise ValueError(f"'{args.file}' is a bundled set: pass -o OUT.jsonl for the known subset")
    return source.with_name(source.stem + ".known.jsonl")


def run_check(args: argparse.Namespace) -> int:
    from excise.check import check_facts
    from excise.model import load_model

    facts = load_facts(args.file)
    if not facts:
        raise ValueError(f"{args.file} holds no facts; nothing to check")
    out = check_new_file(_known_out_path(args), args.force)
    model = load_model(args.model)
    rows = check_facts(model, facts, progress=not args.no_progress)
    if not args.quiet:
        print(f"{'id':40} {'rank':>4} {'p(target)':>9} {'known':>5} {'paraphrases known':>17}")
        for row in rows:
            print(f"{row.fact.id:40.40} {row.rank:4d} {row.prob:9.3f} {'yes' if row.known else 'no':>5} "
                  f"{row.paraphrases_known:>8d}/{row.n_paraphrases}")
    by_relation = defaultdict(lambda: [0, 0])
    for row in rows:
        by_relation[row.fact.relation or "-"][0] += 1
        by_relation[row.fact.relation or "-"][1] += row.known
    print(f"\n{'relation':24} {'facts':>5} {'known':>5}")
    for relation, (total, known) in sorted(by_relation.items()):
        print(f"{relation:24} {total:5d} {known:5d}")
    known_facts = [row.fact for row in rows if row.known]
    print(f"{'total':24} {len(rows):5d} {len(known_facts):5d}")
    write_facts(known_facts, out)
    print(f"\nwrote the {len(known_facts)} known facts to {out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    out = check_new_file(args.out, args.force)
    facts, dropped = import_facts(args.file, args.format)
    if not facts:
        raise ValueError(f"{args.file}: no {args.format} record could be converted; nothing written")
    write_facts(facts, out)
    print(f"converted {len(facts)} {args.format} records to {args.out}")
    for reason, count in sorted(dropped.items()):
        print(f"  dropped {count} x {reason}")
    return 0
