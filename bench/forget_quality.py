"""Forgetting quality of each editor on the default model, on the tuning and the held-out facts.

    python bench/forget_quality.py --limit 40 [--baseline-limit 8] [--batch 50]
        [--memit-passes 2] [--sequence 50] [--methods rome,rome-previous,rome-plain,"rome[kl_weight=8]"]
        [--json assets/aggregate/forget_quality.json]

Facts: the bundled facts the model knows (greedy decoding produces the target), round-robin over
the relations, ``--limit`` from each part of the fixed split (:func:`excise.facts.fact_split`):
settings were chosen on ``tune``; ``held_out`` facts were never looked at while choosing them.
Every single-fact row is printed for both parts.

Columns (:mod:`excise.comparison`'s groups, judged by :mod:`excise.criteria`): efficacy (the
prompt forgotten); paraphrases forgotten (the fact's paraphrases, given to the editor: in-sample);
**held-out wordings** forgotten (``held_out_paraphrases``: subject-first, question and longer
forms no editor reads), then the same among the wordings the model stated before the edit
(one whose answer it ranked second can only count as forgotten if its probability still falls by
90%: :meth:`~excise.comparison.Comparison.tally_known`), then among those that open with a
one-token subject ("France's capital is") and among the rest; neighbours kept (other subjects, same
relation); the subject's other facts kept (``same_subject``, never given to the editor);
same-answer facts kept (other subjects with the same answer); of all those kept, the share whose
probability more than halved (damage that "kept" hides; :func:`excise.criteria.weakened`);
perplexity change on the held-out text; seconds per edit; value-optimisation steps per edit
(rank-one rows: a cost that does not depend on the machine).

Rows: ``rome`` is what ``excise.rome(model, fact)`` and ``excise forget`` do without options;
``rome-15-steps`` the default with at most 15 value-optimisation steps instead of 25 (faster,
forgets less: README); ``rome-min-reach`` the default with the prompts to forget that the
edit's direction barely reaches left out of the value optimisation (``min_reach=LOW_REACH``:
faster, keeps fewer same-subject facts: README); ``rome-previous`` the default before issue 14
(layer 4 as this bench used, 2 essence prompts, no probes of its own); ``rome-plain`` plain ROME
(no contrast keys, the prompt only, no text or essence terms beyond ROME's one, one layer);
``rome[field=value;...]`` (any number, named in ``--methods``) the default with those fields of
:class:`~excise.edit.value.ValueSettings` or :class:`~excise.edit.rank_one.RomeSettings` changed,
e.g. ``rome[lr=0.2;kl_weight=8.0]`` or ``rome[contrast=128]``, so a trade-off curve needs no edit
of this file. Batch rows: ``memit N-pass batch``, ``rome sequence`` and, with ``--sequence``, each
``rome[...]`` row's ``rome[...] sequence`` forget many facts; a probe to keep that states another
fact of the batch is not counted.
Targets (issue 14): efficacy >= 97%, held-out wordings >= 85%, neighbours >= 97%, same subject
>= 90%, same answer >= 90%, perplexity <= +1%, <= 5 s per edit; batch of 50: efficacy and
neighbours >= 95%.

``--json PATH`` also writes every printed row as a dict (method, split, n, each column's hits,
total and rate, perplexity change, seconds per edit), rewritten after each row, for the figures of
``notebooks/04_aggregate.ipynb`` (:mod:`excise.commands.aggregate_figures`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import sys
import time
from collections import defaultdict

import torch

from excise.check import known_facts
from excise.comparison import GROUPS, compare
from excise.edit import ablate, finetune, memit, rome
from excise.edit.rank_one import RomeSettings
from excise.edit.sequence import rome_sequence
from excise.edit.value import ESSENCE_TEMPLATES, LOW_REACH, ValueSettings
from excise.facts import SPLITS, load_facts
from excise.locate import attributed_neurons
from excise.model import load_model
from excise.text import perplexity
from excise.tokens import subject_positions

PREVIOUS = ValueSettings(subject_probes=False, essence_templates=ESSENCE_TEMPLATES)
PLAIN = ValueSettings(paraphrases=False, text_kl_weight=0.0, subject_probes=False,
                      essence_templates=("{} is a",))
STEPS_15 = ValueSettings(steps=15)
MIN_REACH = ValueSettings(min_reach=LOW_REACH)


def with_settings(settings: ValueSettings, **update):
    """The default rank-one edit with value ``settings`` and ``update`` (fields of
    :class:`RomeSettings`, such as ``contrast``), as a bench method."""
    return lambda m, f: rome(m, f, settings=settings, progress=False, **update)


def single_fact_methods(args):
    return {
        "rome": lambda m, f: rome(m, f, progress=False),
        "rome-15-steps": with_settings(STEPS_15),
        "rome-min-reach": with_settings(MIN_REACH),
        "rome-previous": lambda m, f: rome(m, f, layer=4, settings=PREVIOUS, progress=False),
        "rome-plain": lambda m, f: rome(m, f, layer=4, contrast=0, settings=PLAIN, progress=False),
        "ablate-zero(top20 neurons)": lambda m, f: ablate(m, attributed_neurons(m, f, layers=range(12)),
                                                           progress=False),
        "finetune-ga(all)": lambda m, f: finetune(m, [f], "gradient_ascent", progress=False),
        "finetune-npo(all)": lambda m, f: finetune(m, [f], "npo", lr=1e-4, progress=False),
        "finetune-cx(all)": lambda m, f: finetune(m, [f], "counterexample", progress=False),
    }


def tuned_settings(spec: str) -> tuple[ValueSettings, dict]:
    """The settings the method ``rome[field=value;...]`` names: the default
    :class:`ValueSettings` with its fields among them set, and the :class:`RomeSettings` fields
    among them (``contrast``, ``contrast_weight``, ``ridge``, ``max_update_ratio``) as keyword
    arguments of :func:`~excise.edit.rank_one.rome`. Values are Python literals, without commas
    (``--methods`` is comma-separated). Raises ``ValueError`` with a one-line message for a
    malformed spec or an unknown field."""
    if not (spec.startswith("rome[") and spec.endswith("]")):
        raise ValueError(f"{spec!r}: write a tuned rome row as rome[field=value;...], e.g. rome[kl_weight=8.0]")
    value_fields = {f.name for f in dataclasses.fields(ValueSettings)}
    update_fields = {f.name for f in dataclasses.fields(RomeSettings)}
    changes, update = {}, {}
    for item in filter(None, spec[len("rome["):-1].split(";")):
        name, equals, text = (part.strip() for part in item.partition("="))
        if not equals or name not in value_fields | update_fields:
            raise ValueError(f"{spec!r}: {item!r} is not field=value with a ValueSettings or RomeSettings "
                             f"field ({', '.join(sorted(value_fields | update_fields))})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{spec!r}: the value of {name} must be a Python literal, got {text!r}") from None
        (update if name in update_fields else changes)[name] = value
    return dataclasses.replace(ValueSettings(), **changes), update


MANY_FACTS = ("memit",)
"""``--methods`` names of the batch rows beyond the single-fact ones (``rome`` also runs the
sequence of rank-one edits)."""


def tuned_methods(names: list[str]) -> dict[str, tuple[ValueSettings, dict]]:
    """The ``rome[field=value;...]`` rows among ``names`` (``--methods``, split at commas), each
    with its :func:`tuned_settings`. Raises ``ValueError`` with a one-line message for a name
    that is no row of this bench, so that a misspelt row is refused before the model loads
    instead of skipped."""
    known = [*single_fact_methods(None), *MANY_FACTS]
    tuned = {}
    for name in names:
        if name.startswith("rome["):
            tuned[name] = tuned_settings(name)
        elif name not in (*known, "all", "none"):
            raise ValueError(f"{name!r} is no row of this bench; name any of {', '.join(known)}, "
                             "rome[field=value;...], all or none")
    return tuned


def held_out_by_subject_place(model, comparison) -> dict[str, tuple[int, int]]:
    """``(forgotten, total)`` of the held-out wordings that open with a one-token subject, and of
    the rest. A subject that opens the text right after BOS as a single token ("France's capital
    is") is a token of its own (no leading space), whose key at the lookup layer the rank-one edit
    barely reaches (README); a longer subject ends on the same token wherever it stands. So the two
    parts of the held-out column measure different limits."""
    gone = comparison.forgotten("held_out_paraphrases").bool()
    fact = comparison.fact  # its held-out templates, in the order of the pairs
    first = torch.tensor([t.startswith("{}") and len(subject_positions(model, t, fact.subject)) == 1
                          for t in fact.held_out_paraphrases], dtype=torch.bool)
    return {"held_out_one_token_first": (int((gone & first).sum()), int(first.sum())),
            "held_out_rest": (int((gone & ~first).sum()), int((~first).sum()))}


def evaluate(model, edit, facts, ppl0, with_ppl=True):
    """Forgotten / kept counts per probe group (:meth:`excise.comparison.Comparison.tally`). In a
    batch, a neighbour or same-subject probe that states another fact of the batch is meant to be
    forgotten too, so it is not counted as kept."""
    totals = defaultdict(lambda: [0, 0])
    for comparison in compare(model, facts, before=edit.reverted(model)):
        tallies = {group: comparison.tally(group) for group in GROUPS}
        tallies["held_out_known"] = comparison.tally_known("held_out_paraphrases")
        tallies.update(held_out_by_subject_place(model, comparison))
        tallies["kept_weakened"] = comparison.weakened_tally()
        for kind, (hit, total) in tallies.items():
            totals[kind][0] += hit
            totals[kind][1] += total
    if with_ppl:
        totals["ppl"] = [perplexity(model) / ppl0 - 1, 1]
    return totals


COLUMNS = {"prompt": "efficacy", "paraphrases": "paraphrases", "held_out_paraphrases": "held-out wordings",
           "held_out_known": "held-out, known before", "held_out_one_token_first": "held-out, one-token subject first",
           "held_out_rest": "held-out, the rest", "neighbors": "neighbours",
           "same_subject": "same subject", "same_answer": "same answer", "kept_weakened": "kept, p halved"}


def table_row(name, split, n, agg, seconds):
    def pct(kind):
        hit, total = agg.get(kind, (0, 0))
        return f"{100 * hit / total:5.1f}% ({total:3d})" if total else "   n/a     "
    ppl = agg.get("ppl")
    ppl_text = f"{100 * ppl[0] / ppl[1]:+6.2f}%" if ppl and ppl[1] else "   n/a"
    steps = agg.get("value_steps")
    steps_text = f"{steps[0] / steps[1]:5.1f}" if steps and steps[1] else "  n/a"
    return (f"| {name:26s} | {split:8s} | {n:3d} | " + " | ".join(pct(g) for g in COLUMNS)
            + f" | {ppl_text} | {seconds:6.1f} | {steps_text} |")


def json_row(name, split, n, agg, seconds):
    """The row :func:`table_row` prints, as a dict: per column ``{"hits", "total", "rate"}``."""
    columns = {}
    for group, label in COLUMNS.items():
        hit, total = agg.get(group, (0, 0))
        columns[label] = {"hits": hit, "total": total, "rate": hit / total if total else None}
    ppl, steps = agg.get("ppl"), agg.get("value_steps")
    return {"method": name, "split": split, "n": n, "columns": columns,
            "perplexity_change": ppl[0] / ppl[1] if ppl and ppl[1] else None, "seconds_per_edit": seconds,
            "value_steps_per_edit": steps[0] / steps[1] if steps and steps[1] else None}


def write_json(path, rows, about):
    """``{"about": ..., "rows": [...]}`` to ``path`` (written whole, then renamed into place)."""
    if not path:
        return
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"about": about, "rows": rows}, handle, indent=1)
    os.replace(tmp, path)


HEADER = ("| method | split | n | " + " | ".join(COLUMNS.values()) + " | ppl | s/edit | value steps/edit |\n"
          + "|---" * (len(COLUMNS) + 6) + "|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="facts per split for single-fact editors")
    parser.add_argument("--baseline-limit", type=int, default=8, help="facts per split for fine-tuning baselines")
    parser.add_argument("--batch", type=int, default=50, help="facts in the MEMIT batch (0: skip)")
    parser.add_argument("--sequence", type=int, default=50,
                        help="facts forgotten by one rank-one edit each, in sequence (0: skip)")
    parser.add_argument("--memit-passes", default="2",
                        help="comma-separated memit pass counts, one batch row each")
    parser.add_argument("--methods", default="all",
                        help="comma-separated rows to run, all, or none (memit: the batch rows; rome: "
                             "also the sequence)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="which parts of the fact split to run")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its folder does not exist")
    wanted = args.methods.split(",")
    try:
        tuned = tuned_methods(wanted)
    except ValueError as error:
        parser.error(f"--methods: {error}")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    ppl0 = perplexity(model)
    splits = args.splits.split(",")
    facts = {split: known_facts(model, load_facts("all", split=split),
                                max(args.limit, args.batch, args.sequence)) for split in splits}
    print("default model; known facts picked per split: "
          + ", ".join(f"{k} {len(v)}" for k, v in facts.items()) + f"; baseline perplexity {ppl0:.3f}")
    print(HEADER, flush=True)
    rows, about = [], {"model": "default", "baseline_perplexity": ppl0, "args": vars(args),
                       "known_facts": {k: len(v) for k, v in facts.items()}}
    rows_of_tuned = {spec: with_settings(settings, **update) for spec, (settings, update) in tuned.items()}
    for name, method in {**single_fact_methods(args), **rows_of_tuned}.items():
        if args.methods != "all" and name not in wanted:
            continue
        for split in splits:
            n = args.baseline_limit if name.startswith("finetune") else args.limit
            agg, seconds, chosen = defaultdict(lambda: [0.0, 0]), 0.0, facts[split][:n]
            for fact in chosen:
                start = time.perf_counter()
                edit = method(model, fact)
                seconds += time.perf_counter() - start
                for kind, (hit, total) in evaluate(model, edit, [fact], ppl0).items():
                    agg[kind][0] += hit
                    agg[kind][1] += total
                if edit.info.get("value", {}).get("steps") is not None:  # rank-one edits
                    agg["value_steps"][0] += edit.info["value"]["steps"]
                    agg["value_steps"][1] += 1
                edit.undo(model)
                print(f"  after {fact.id}: " + table_row(name, split, len(chosen), agg, seconds),
                      file=sys.stderr, flush=True)
            print(table_row(name, split, len(chosen), agg, seconds / max(1, len(chosen))), flush=True)
            rows.append(json_row(name, split, len(chosen), agg, seconds / max(1, len(chosen))))
            write_json(args.json, rows, about)
    many = {f"memit {p}-pass batch": (args.batch, lambda m, fs, p=int(p): memit(m, fs, passes=p,
                                                                                progress=False))
            for p in args.memit_passes.split(",") if p}
    many["rome sequence"] = (args.sequence, lambda m, fs: rome_sequence(m, fs, progress=False))
    for spec, (settings, update) in tuned.items():  # each tuned row's settings for every edit
        many[f"{spec} sequence"] = (args.sequence, lambda m, fs, s=settings, u=update: rome_sequence(
            m, fs, settings=s, progress=False, **u))
    for name, (n, method) in many.items():
        if not n or (args.methods != "all" and name.split()[0] not in wanted):
            continue
        batch = facts[splits[0]][:n]
        start = time.perf_counter()
        edit = method(model, batch)
        seconds = time.perf_counter() - start
        agg = evaluate(model, edit, batch, ppl0)
        print(table_row(f"{name} of {len(batch)}", splits[0], len(batch), agg, seconds / len(batch)),
              flush=True)
        rows.append(json_row(f"{name} of {len(batch)}", splits[0], len(batch), agg, seconds / len(batch)))
        write_json(args.json, rows, about)
        edit.undo(model)


if __name__ == "__main__":
    main()
