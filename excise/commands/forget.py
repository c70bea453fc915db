"""``excise forget``: edit facts out of a model and write the edited model as a Hugging Face folder.

    excise forget --facts FILE.jsonl [--ids a,b] [--method rome|memit|ablate|finetune]
                  [--model M] [--layer L] [--passes N] [--corpus TEXT] --save FOLDER
                  [--report FILE.json]

Several facts are edited at once (rome becomes a MEMIT batch edit). FOLDER receives the edited
model (loadable with plain ``transformers``) and the Edit in ``FOLDER/excise_edit/``; ``--report``
writes before/after scores of every probe. The source model's folder is never written to.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from excise.commands.workflows import METHODS, edit_facts, forget_report, runs_memit

log = logging.getLogger(__name__)


def register(sub) -> None:
    parser = sub.add_parser("forget", help="remove facts from a model and save the edited model")
    parser.add_argument("--facts", required=True, help="JSONL fact file or bundled set name")
    parser.add_argument("--ids", help="comma-separated fact ids (default: every fact in the file)")
    parser.add_argument("--method", choices=METHODS, default="rome")
    parser.add_argument("--model", default=None, help="model folder or hub id (default: SmolLM2)")
    parser.add_argument("--layer", type=int, default=None,
                        help="MLP layer for rome (default: traced); for memit, its last layer")
    parser.add_argument("--passes", type=int, default=None,
                        help="memit passes (default: excise.edit.batch.DEFAULT_PASSES; 1 spares "
                             "more neighbours, forgets fewer facts)")
    parser.add_argument("--top", type=int, default=20, help="neurons to ablate per fact (ablate only)")
    parser.add_argument("--corpus", default=None, help="text file for key statistics / means")
    parser.add_argument("--save", required=True, help="empty folder for the edited model")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --save folder")
    parser.add_argument("--report", default=None, help="write before/after scores as JSON here")
    parser.set_defaults(run=run)


def run(args) -> int:
    from excise.edit import save_model
    from excise.facts import load_facts
    from excise.model import load_model

    facts = load_facts(args.facts)
    if args.ids:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        by_id = {f.id: f for f in facts}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise KeyError(f"no fact with id {missing[0]!r} in {args.facts}")
        facts = [by_id[i] for i in wanted]
    if args.passes is not None and not runs_memit(args.method, len(facts)):
        raise ValueError(f"--passes is a setting of memit (several facts at once); {args.method} on "
                         f"{len(facts)} fact(s) has no passes: drop --passes")
    save = Path(args.save).expanduser()
    if save.is_dir() and any(save.iterdir()) and not args.overwrite:
        raise ValueError(f"{save} is not empty; choose an empty folder or pass --overwrite")
    model = load_model(args.model)
    edit = edit_facts(model, facts, args.method, layer=args.layer, corpus=args.corpus, top=args.top,
                      passes=args.passes)
    save_model(model, save, overwrite=args.overwrite)
    edit.save(save / "excise_edit")
    if args.report:
        report = forget_report(model, edit, facts)
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"forgot {len(facts)} fact(s) with {edit.method}; edited model in {save}")
    return 0
