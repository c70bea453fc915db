"""Which edits of a sequence break which facts: per probe, after each edit alone and in sequence.

    python bench/sequence_damage.py --limit 20 [--json out/sequence_damage.json]

Takes the first ``--limit`` known ``tune`` facts (the ones ``bench/forget_quality.py`` picks),
and scores every probe to keep (neighbours, same subject, same answer; not those that state a
fact of the sequence) that the unedited model states: after each default ``rome`` edit alone
(undone before the next), and after each edit of the sequence ``rome_sequence`` makes (its
``after_each`` callback).
Prints how many probes the sequence breaks, how many of those no single edit breaks (damage that
only a sequence does), the edits at which probes break, and per edit its value scale and update
size alone and in the sequence. ``--json`` writes every score.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter

import torch

from excise.check import known_facts
from excise.edit import rome, rome_sequence
from excise.facts import load_facts
from excise.model import load_model
from excise.scoring import score_targets

GROUPS = ("neighbors", "same_subject", "same_answer")


def probes_to_keep(facts) -> list[dict]:
    stated = {(f.text, f.target) for f in facts} | {(t, f.target) for f in facts for t in f.paraphrase_texts}
    return [{"fact": i, "group": group, "prompt": p.prompt, "target": p.target}
            for i, f in enumerate(facts) for group in GROUPS for p in getattr(f, group)
            if (p.prompt, p.target) not in stated]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20, help="facts in the sequence")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every score here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    facts = known_facts(model, load_facts("all", split="tune"), args.limit)
    probes = probes_to_keep(facts)
    prompts, targets = [p["prompt"] for p in probes], [p["target"] for p in probes]

    def known() -> list[bool]:
        return score_targets(model, prompts, targets).known.tolist()

    before = known()
    alone, sizes = [], []
    for fact in facts:
        start = time.perf_counter()
        edit = rome(model, fact, progress=False)
        alone.append(known())
        sizes.append({"fact": fact.id, "alone_scale": edit.info["value"]["mlp_output_norm"],
                      "alone_ratio": edit.info["update"]["ratio"],
                      "alone_seconds": time.perf_counter() - start})
        edit.undo(model)
    in_sequence = []

    def record(edit) -> None:  # after each edit of the sequence, on the model as it stands
        in_sequence.append(known())
        size = sizes[len(in_sequence) - 1]
        size.update(sequence_scale=edit.info["value"]["mlp_output_norm"],
                    sequence_ratio=edit.info["update"]["ratio"])

    rome_sequence(model, facts, progress=False, after_each=record).undo(model)

    watched = [i for i, ok in enumerate(before) if ok]
    broken = [i for i in watched if not in_sequence[-1][i]]
    only_sequence = [i for i in broken if all(state[i] for state in alone)]
    first = Counter(next(k for k, state in enumerate(in_sequence) if not state[i]) for i in broken)
    print(f"{len(facts)} facts; {len(watched)} probes to keep that the unedited model states")
    print(f"broken after the sequence: {len(broken)}; of those, broken by no edit alone: {len(only_sequence)}")
    for group in GROUPS:
        total = [i for i in watched if probes[i]["group"] == group]
        print(f"  {group}: kept {sum(in_sequence[-1][i] for i in total)}/{len(total)}")
    print("edits at which probes first break (edit: probes): "
          + ", ".join(f"{facts[k].id} {n}" for k, n in first.most_common()))
    print("| edit | breaks alone | value scale alone / in sequence | update ratio alone / in sequence |")
    print("|---|---|---|---|")
    for k, size in enumerate(sizes):
        print(f"| {size['fact']} | {sum(not alone[k][i] for i in watched)} | "
              f"{size['alone_scale']:.1f} / {size['sequence_scale']:.1f} | "
              f"{size['alone_ratio']:.3f} / {size['sequence_ratio']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"facts": [f.id for f in facts], "probes": probes, "before": before,
                       "alone": alone, "sequence": in_sequence, "sizes": sizes}, handle)


if __name__ == "__main__":
    main()
