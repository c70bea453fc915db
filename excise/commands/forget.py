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

log = logging.getLogger(__name__)

METHODS = ("rome", "memit", "ablate", "finetune")


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
        report = before_after(model, edit, facts)
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"forgot {len(facts)} fact(s) with {edit.method}; edited model in {save}")
    return 0


def runs_memit(method: str, n_facts: int) -> bool:
    """Whether ``method`` on ``n_facts`` facts runs memit (rome does, for more than one fact)."""
    return method == "memit" or (method == "rome" and n_facts > 1)


def edit_facts(model, facts, method: str, layer=None, corpus=None, top: int = 20, passes=None):
    """Run ``method`` on ``facts`` (all at once when several) and return the applied Edit.

    For memit, ``layer`` is the last of :data:`~excise.edit.batch.DEFAULT_SPREAD` layers."""
    from excise.edit import ablate, finetune, memit, rome
    from excise.edit.batch import layers_ending_at

    if runs_memit(method, len(facts)):
        layers = None if layer is None else layers_ending_at(layer)
        chosen = {} if passes is None else {"passes": passes}
        return memit(model, facts, layers=layers, corpus=corpus, **chosen)
    if method == "rome":
        return rome(model, facts[0], layer=layer, corpus=corpus)
    if method == "finetune":
        return finetune(model, facts)
    from excise.edit.ablation import attributed_neurons

    components = []
    for fact in facts:
        components.extend(attributed_neurons(model, fact, k=top))
    return ablate(model, components, fact_ids=[f.id for f in facts])


def before_after(model, edit, facts) -> dict:
    """Scores of every prompt, paraphrase, neighbour and same-subject probe, before and after."""
    from excise.scoring import score_targets
    from excise.text import perplexity
    from excise.verify.criteria import forgotten, kept

    rows = []
    for fact in facts:
        groups = {"prompt": [(fact.text, fact.target)],
                  "paraphrase": [(p, fact.target) for p in fact.paraphrase_texts],
                  "neighbor": [(p.prompt, p.target) for p in fact.neighbors],
                  "same_subject": [(p.prompt, p.target) for p in fact.same_subject]}
        pairs = [(kind, p, t) for kind, items in groups.items() for p, t in items]
        prompts, targets = [p for _, p, _ in pairs], [t for _, _, t in pairs]
        after = score_targets(model, prompts, targets)
        with edit.reverted(model):
            before = score_targets(model, prompts, targets)
        gone, still = forgotten(before, after), kept(after)
        for i, (kind, prompt, target) in enumerate(pairs):
            rows.append({"fact": fact.id, "kind": kind, "prompt": prompt, "target": target,
                         "prob_before": float(before.prob[i]), "prob_after": float(after.prob[i]),
                         "rank_before": int(before.rank[i]), "rank_after": int(after.rank[i]),
                         "forgotten": bool(gone[i]), "kept": bool(still[i])})
    ppl_after = perplexity(model)
    with edit.reverted(model):
        ppl_before = perplexity(model)
    return {"method": edit.method, "facts": [f.id for f in facts], "settings": _plain(edit.settings),
            "perplexity_before": ppl_before, "perplexity_after": ppl_after, "probes": rows}


def _plain(value):
    return json.loads(json.dumps(value, default=str))
