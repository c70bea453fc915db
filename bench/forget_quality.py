"""Forgetting quality of each editor on the default model, over the bundled fact sets.

    python bench/forget_quality.py --limit 40 [--layer 4] [--baseline-limit 8] [--batch 50]
        [--memit-passes 1,2] [--sequence 50]

For every method it prints one table row: efficacy (prompt forgotten per excise.criteria),
paraphrases forgotten (``rome`` trains on the fact's paraphrases, so they are in-sample; the
``rome(held-out paraphrases)`` row edits on the first paraphrase only and scores the others),
neighbours kept, the subject's other facts kept, perplexity change on the held-out text, and
seconds per fact. Rows forget many facts together: ``memit N-pass batch`` (one least-squares
update per layer for all of them, per pass; ``--memit-passes``) and ``rome sequence`` (one
rank-one edit per fact, one after another); there a neighbour that is itself in the batch is not
counted. Only facts the model knows (greedy decoding produces the target) are used, taken
round-robin over the relations. Targets from the issue: efficacy >= 95%, paraphrases >= 85%,
neighbours >= 95%, same-subject >= 90%, perplexity <= +2%; batch of 50: efficacy >= 90%,
neighbours >= 90%.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from dataclasses import replace

import torch

from excise.comparison import GROUPS, compare
from excise.edit import ablate, finetune, memit, rome
from excise.edit.sequence import rome_sequence
from excise.facts import load_facts
from excise.locate import attributed_neurons
from excise.model import load_model
from excise.scoring import score_targets
from excise.text import perplexity


def pick_facts(model, limit):
    by_relation = defaultdict(list)
    for fact in load_facts("all"):
        by_relation[fact.relation].append(fact)
    order = []
    while any(by_relation.values()):
        for rel in list(by_relation):
            if by_relation[rel]:
                order.append(by_relation[rel].pop(0))
    chosen = []
    for fact in order:
        if len(chosen) >= limit:
            break
        if bool(score_targets(model, [fact.text], [fact.target]).known[0]):
            chosen.append(fact)
    return chosen


def held_out_split(fact):
    """``(fact to edit on, fact to score)``: the edit sees the first paraphrase, is scored on the rest."""
    return replace(fact, paraphrases=fact.paraphrases[:1]), replace(fact, paraphrases=fact.paraphrases[1:])


def single_fact_methods(args):
    return {
        "rome": lambda m, f: rome(m, f, layer=args.layer, progress=False),
        "rome(held-out paraphrases)": lambda m, f: rome(m, held_out_split(f)[0], layer=args.layer,
                                                        progress=False),
        "ablate-zero(top20 neurons)": lambda m, f: ablate(m, attributed_neurons(m, f, layers=range(12)),
                                                           progress=False),
        "finetune-ga(all)": lambda m, f: finetune(m, [f], "gradient_ascent", progress=False),
        "finetune-npo(all)": lambda m, f: finetune(m, [f], "npo", lr=1e-4, progress=False),
        "finetune-cx(all)": lambda m, f: finetune(m, [f], "counterexample", progress=False),
        "finetune-ga(mlp L)": lambda m, f: finetune(
            m, [f], "gradient_ascent", params=[__import__("excise").MLP(args.layer)], progress=False),
    }


def evaluate(model, edit, facts, ppl0, with_ppl=True):
    """Forgotten / kept counts per probe group (:meth:`excise.comparison.Comparison.tally`). In a
    batch, a neighbour or same-subject probe that states another fact of the batch is meant to be
    forgotten too, so it is not counted as kept."""
    totals = defaultdict(lambda: [0, 0])
    for comparison in compare(model, facts, before=edit.reverted(model)):
        for group in GROUPS:
            hit, total = comparison.tally(group)
            totals[group][0] += hit
            totals[group][1] += total
    if with_ppl:
        totals["ppl"] = [perplexity(model) / ppl0 - 1, 1]
    return totals


def table_row(name, n, agg, seconds):
    def pct(kind):
        hit, total = agg.get(kind, (0, 0))
        return f"{100 * hit / total:5.1f}% ({total:3d})" if total else "   n/a     "
    ppl = agg.get("ppl")
    ppl_text = f"{100 * ppl[0] / ppl[1]:+6.2f}%" if ppl and ppl[1] else "   n/a"
    return (f"| {name:28s} | {n:3d} | {pct('prompt')} | {pct('paraphrases')} | {pct('neighbors')} | "
            f"{pct('same_subject')} | {ppl_text} | {seconds:6.1f} |")


HEADER = ("| method                       |   n | efficacy      | paraphrases   | neighbours    | "
          "same subject  | ppl     | s/edit |\n|---|---|---|---|---|---|---|---|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="facts for single-fact editors")
    parser.add_argument("--baseline-limit", type=int, default=8, help="facts for fine-tuning baselines")
    parser.add_argument("--batch", type=int, default=50, help="facts in the MEMIT batch (0: skip)")
    parser.add_argument("--sequence", type=int, default=50,
                        help="facts forgotten by one rank-one edit each, in sequence (0: skip)")
    parser.add_argument("--memit-passes", default="1,2",
                        help="comma-separated memit pass counts, one batch row each")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--methods", default="all", help="comma-separated method names, or none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    ppl0 = perplexity(model)
    facts = pick_facts(model, max(args.limit, args.batch, args.sequence))
    print(f"default model, {len(facts)} known facts picked; baseline perplexity {ppl0:.3f}")
    print(HEADER, flush=True)
    for name, method in single_fact_methods(args).items():
        if args.methods != "all" and name.split("(")[0] not in args.methods.split(","):
            continue
        n = args.baseline_limit if name.startswith("finetune") else args.limit
        agg, seconds = defaultdict(lambda: [0.0, 0]), 0.0
        for fact in facts[:n]:
            start = time.perf_counter()
            edit = method(model, fact)
            seconds += time.perf_counter() - start
            scored = held_out_split(fact)[1] if "held-out" in name else fact
            for kind, (hit, total) in evaluate(model, edit, [scored], ppl0).items():
                agg[kind][0] += hit
                agg[kind][1] += total
            edit.undo(model)
            print(f"  after {fact.id}: " + table_row(name, len(facts[:n]), agg, seconds),
                  file=sys.stderr, flush=True)
        print(table_row(name, len(facts[:n]), agg, seconds / max(1, len(facts[:n]))), flush=True)
    many = {f"memit {p}-pass batch": (args.batch, lambda m, fs, p=int(p): memit(m, fs, passes=p,
                                                                                progress=False))
            for p in args.memit_passes.split(",") if p}
    many["rome sequence"] = (args.sequence, lambda m, fs: rome_sequence(m, fs, layer=args.layer,
                                                                        progress=False))
    for name, (n, method) in many.items():
        if not n:
            continue
        batch = facts[:n]
        start = time.perf_counter()
        edit = method(model, batch)
        seconds = time.perf_counter() - start
        agg = evaluate(model, edit, batch, ppl0)
        print(table_row(f"{name} of {len(batch)}", len(batch), agg, seconds / len(batch)), flush=True)
        edit.undo(model)


if __name__ == "__main__":
    main()
