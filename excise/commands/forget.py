"""``excise forget``: edit facts out of a model and write the edited model as a Hugging Face folder.

    excise forget --facts FILE.jsonl [--ids a,b] [--method rome|memit|ablate|finetune]
                  [--model M] [--layer L] [--passes N] [--corpus TEXT] --save FOLDER
                  [--report FILE.json]

Several facts are edited at once (rome becomes a MEMIT batch edit). FOLDER receives the edited
model (loadable with plain ``transformers``) and the Edit in ``FOLDER/excise_edit/``; ``--report``
writes before/after scores of every probe. The source model's folder is never written to. Facts
the model does not know are refused (there is nothing to forget) unless ``--allow-unknown``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from excise.commands._args import (
    add_command,
    add_facts,
    add_model,
    add_progress,
    check_new_file,
    check_new_folder,
    select_facts,
)
from excise.commands.workflows import METHODS, edit_facts, forget_report, runs_memit

log = logging.getLogger(__name__)

MEMIT_DEFAULT_PASSES = 2  # excise.edit.batch.DEFAULT_PASSES (a test keeps them equal)


def register(sub) -> None:
    parser = add_command(sub, "forget", "remove facts from a model and save the edited model",
                         __doc__)
    add_facts(parser, what="the facts to forget")
    parser.add_argument("--method", choices=METHODS, default="rome",
                        help="editor (default: rome; several facts with rome run memit)")
    add_model(parser)
    parser.add_argument("--layer", type=int, default=None,
                        help="MLP layer for rome (default: the lookup layer, 4 of 30, scaled); "
                             "for memit, its last layer (default: layers 3-5 of 30, scaled)")
    parser.add_argument("--passes", type=int, default=None,
                        help=f"memit passes (default: {MEMIT_DEFAULT_PASSES}; 1 spares more "
                             "neighbours, forgets fewer facts)")
    parser.add_argument("--top", type=int, default=20,
                        help="neurons to ablate per fact (ablate only; default: 20)")
    parser.add_argument("--corpus", default=None,
                        help="text file for key statistics / means (default: text the model writes)")
    parser.add_argument("--save", required=True, help="empty folder for the edited model")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow a non-empty --save folder and an existing --report file")
    parser.add_argument("--report", default=None, help="write before/after scores as JSON here")
    parser.add_argument("--allow-unknown", action="store_true",
                        help="edit facts the model does not know too (default: refuse them)")
    add_progress(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from excise.edit import save_model
    from excise.export import check_not_source
    from excise.model import load_model

    facts = select_facts(args)
    if args.passes is not None and not runs_memit(args.method, len(facts)):
        raise ValueError(f"--passes is a setting of memit (several facts at once); {args.method} on "
                         f"{len(facts)} fact(s) has no passes: drop --passes")
    if args.layer is not None and args.layer < 0:
        raise ValueError(f"--layer {args.layer}: layers count from 0")
    save = check_new_folder(args.save, args.overwrite)
    report_path = check_new_file(args.report, args.overwrite, "--report") if args.report else None
    model = load_model(args.model)
    check_not_source(model, save)  # before the edit, not after it
    if args.layer is not None and args.layer >= model.cfg.n_layers:
        raise ValueError(f"--layer {args.layer}: the model has layers 0-{model.cfg.n_layers - 1}")
    if not args.allow_unknown:
        refuse_unknown(model, facts)
    progress = not args.no_progress
    edit = edit_facts(model, facts, args.method, layer=args.layer, corpus=args.corpus, top=args.top,
                      passes=args.passes, progress=progress)
    save_model(model, save, overwrite=args.overwrite)  # writes the edit into save/excise_edit/
    report = forget_report(model, edit, facts)
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(outcome_lines(edit, report, save, report_path))
    return 0


def refuse_unknown(model, facts) -> None:
    """Raise when the model does not produce a fact's target greedily: there is nothing to forget."""
    from excise.scoring import score_targets

    scores = score_targets(model, [f.text for f in facts], [f.target for f in facts])
    unknown = [(f, int(scores.rank[i]), float(scores.prob[i]))
               for i, f in enumerate(facts) if not bool(scores.known[i])]
    if unknown:
        fact, rank, prob = unknown[0]
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(
            f"the model does not know {fact.id!r}{more}: {fact.text!r} -> {fact.target!r} has "
            f"first-token rank {rank}, p = {prob:.3g}, so there is nothing to forget. `excise facts "
            "check` lists the facts it knows; --allow-unknown edits anyway")


def outcome_lines(edit, report: dict, save: Path, report_path: Path | None) -> str:
    """What was done and measured: per fact, whether the prompt is forgotten by excise.criteria."""
    where = ""
    if "layer" in edit.settings:
        where = f" at layer {edit.settings['layer']}"
    elif "layers" in edit.settings:
        where = f" at layers {edit.settings['layers']}"
    lines = []
    for row in (r for r in report["probes"] if r["kind"] == "prompt"):
        verdict = "forgotten" if row["forgotten"] else "NOT forgotten"
        lines.append(f"{row['fact']}: prompt {verdict} (excise.criteria: rank {row['rank_before']} -> "
                     f"{row['rank_after']}, p {row['prob_before']:.3g} -> {row['prob_after']:.3g})")
    done = sum(r["forgotten"] for r in report["probes"] if r["kind"] == "prompt")
    lines.append(f"{edit.method}{where}: {done} of {len(edit.fact_ids)} fact(s) forgotten on the "
                 f"prompt; edited model in {save}, edit in {save / 'excise_edit'}"
                 + (f", report in {report_path}" if report_path else ""))
    return "\n".join(lines)
