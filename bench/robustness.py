"""How robust is each editor's forgetting? Share of facts each verify probe still recovers.

    python bench/robustness.py --limit 6 [--relearn-steps 20] [--relearn-facts 16] [--split tune]
        [--editors rome,rome-previous] [--probes relearn,logit_lens]

For every editor (``rome``: the default rank-one edit at the lookup layer; ``rome-previous``: the
rank-one edit before issue 14 as this bench ran it (layer 4, former value settings), and
``rome-previous(trace layer)`` as ``excise forget`` ran it (at the layer its MLP causal trace
chooses); zero-ablation of the top-20 attributed neurons; gradient ascent on all weights) and
every fact (known facts of one part of the fixed split, round-robin over the relations), the fact
is edited, :func:`excise.verify.verify` runs its robustness probes, and the edit is undone.
The table prints, per editor, the share of facts forgotten on the prompt and, for each probe, the
share of *forgotten* facts that the probe still recovers (among facts where the probe was
informative, i.e. found the answer before the edit). Lower is more robust. The closing note names
the editor with the lowest mean recovery and its margin over the next one.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict

from excise.check import known_facts
from excise.edit import ablate, finetune, rome
from excise.edit.value import ESSENCE_TEMPLATES, ValueSettings
from excise.facts import load_facts
from excise.locate import attributed_neurons, causal_trace
from excise.model import load_model
from excise.verify import verify

PROBES = ("logit_lens", "question", "multiple_choice", "few_shot", "linear_probe", "relearn")

PREVIOUS = ValueSettings(subject_probes=False, essence_templates=ESSENCE_TEMPLATES)

EDITORS = {
    "rome": lambda m, f: rome(m, f, progress=False),
    "rome-previous": lambda m, f: rome(m, f, layer=4, settings=PREVIOUS, progress=False),
    "rome-previous(trace layer)": lambda m, f: rome(
        m, f, layer=causal_trace(m, f, site="mlp", samples=5, progress=False), settings=PREVIOUS, progress=False),
    "ablate-zero(top20 neurons)": lambda m, f: ablate(m, attributed_neurons(m, f, layers=range(12)),
                                                      how="zero", fact_ids=[f.id], progress=False),
    "finetune-ga(all)": lambda m, f: finetune(m, [f], "gradient_ascent", progress=False),
}


def run(model, facts, args) -> dict[str, list]:
    rows = defaultdict(list)
    for name, editor in EDITORS.items():
        if args.editors != "all" and name not in args.editors.split(","):
            continue
        for fact in facts:
            start = time.perf_counter()
            edit = editor(model, fact)
            try:
                report = verify(model, fact, probes=args.probes.split(","), relearn_steps=args.relearn_steps,
                                relearn_facts=args.relearn_facts, fluency_tokens=0, perplexity=False,
                                progress=False)
            finally:
                edit.undo(model)
            fr = report.facts[0]
            rows[name].append(fr)
            print(f"  {name:28s} {fact.id:32s} {fr.verdict:14s} {time.perf_counter() - start:6.0f}s "
                  + " ".join(f"{o.probe}={o.status}" for o in fr.probes), flush=True)
    return rows


def summarize(rows, args) -> dict[str, dict]:
    table = {}
    for name, reports in rows.items():
        gone = [r for r in reports if r.summary.prompt_forgotten]
        entry = {"forgotten": f"{len(gone)}/{len(reports)}"}
        shares = []
        for probe in args.probes.split(","):
            statuses = [o.status for r in gone for o in r.probes if o.probe == probe]
            informative = [s for s in statuses if s in ("recovered", "forgotten")]
            if informative:
                share = sum(s == "recovered" for s in informative) / len(informative)
                shares.append(share)
                entry[probe] = f"{share:.0%} ({len(informative)})"
            else:
                entry[probe] = "n/a"
        entry["mean"] = sum(shares) / len(shares) if shares else float("nan")
        table[name] = entry
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=6, help="facts per editor")
    parser.add_argument("--relearn-steps", type=int, default=20, help="verify's default budget")
    parser.add_argument("--relearn-facts", type=int, default=16)
    parser.add_argument("--split", default="tune", choices=("tune", "held_out"))
    parser.add_argument("--editors", default="all", help=f"comma-separated, of: {', '.join(EDITORS)}")
    parser.add_argument("--probes", default=",".join(PROBES), help="comma-separated verify probes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = load_model(device="cpu")
    facts = known_facts(model, load_facts("all", split=args.split), args.limit)
    print(f"robustness of forgetting on {len(facts)} {args.split} facts ({', '.join(f.id for f in facts)}); "
          f"relearning: {args.relearn_steps} steps on {args.relearn_facts} facts")
    table = summarize(run(model, facts, args), args)
    probes = args.probes.split(",")
    header = ["editor", "forgotten", *probes, "mean recovered"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, e in table.items():
        print(f"| {name} | {e['forgotten']} | " + " | ".join(e[p] for p in probes)
              + f" | {e['mean']:.0%} |")
    ranked = sorted((e["mean"], name) for name, e in table.items() if e["mean"] == e["mean"])
    if len(ranked) >= 2:
        (best, name), (second, other) = ranked[0], ranked[1]
        print(f"\nMost robust: {name}: probes recover {best:.0%} of its forgotten facts on average, "
              f"{(second - best) * 100:.0f} points fewer than {other} ({second:.0%}). "
              "Cells: share of forgotten facts the probe recovers (n informative facts).")
    elif ranked:
        print(f"\nOnly {ranked[0][1]} forgot any fact; no comparison possible.")


if __name__ == "__main__":
    main()
