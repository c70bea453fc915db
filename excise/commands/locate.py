"""``excise locate``: run a locator on one fact and print / save where it lives.

The fact comes from a fact file by id (``excise locate --facts capitals --ids capital-france``)
or from the command line (``--subject``, ``--prompt`` with ``{}``, ``--target``). ``--html`` writes the figure
with plotly.js inlined; ``--json`` writes the :class:`~excise.locate.Localization`.
"""

from __future__ import annotations

import argparse

from excise.commands._args import (
    add_command,
    add_model,
    add_progress,
    check_new_file,
    fact_ids,
    select_facts,
)

METHODS = ("causal_trace", "activation_patch", "attribution_patch", "knowledge_neurons",
           "direct_logit_attribution")


def register(sub) -> None:
    p = add_command(sub, "locate", "find the layers, heads or neurons that hold a fact", __doc__)
    p.add_argument("facts_file", nargs="?", default=None, metavar="FACTS",
                   help="a JSONL fact file or bundled set name (same as --facts)")
    p.add_argument("--facts", default=None, metavar="SET",
                   help="JSONL fact file, or a bundled set name ('all', 'capitals', ...)")
    p.add_argument("--ids", "--id", dest="ids", action="append", default=None, metavar="ID",
                   help="id of the fact in the fact file")
    p.add_argument("--subject", default=None, help="subject (instead of a fact file)")
    p.add_argument("--prompt", default=None, help="prompt template with {} for the subject")
    p.add_argument("--target", default=None, help="answer, leading space included (e.g. ' Paris')")
    p.add_argument("--method", default="causal_trace", choices=METHODS,
                   help="locator (default: causal_trace)")
    p.add_argument("--site", default=None,
                   help="resid|attn|mlp|head|neuron. causal_trace: resid|mlp|attn (default mlp); "
                        "activation_patch: any (default resid); attribution_patch: head|neuron "
                        "(default neuron); direct_logit_attribution: head|neuron (default head)")
    p.add_argument("--samples", type=int, default=10, help="noise samples (causal_trace; default: 10)")
    p.add_argument("--steps", type=int, default=20,
                   help="integration steps (knowledge_neurons; default: 20)")
    p.add_argument("--counterfactuals", default=None,
                   help="fact file to pick the corrupted subject from (patching; default: FACTS)")
    p.add_argument("--top", type=int, default=10, help="how many components to print (default: 10)")
    add_model(p)
    p.add_argument("--html", default=None, help="write the figure here (plotly.js inlined)")
    p.add_argument("--json", default=None, help="write the Localization as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite existing --html/--json files")
    add_progress(p)
    p.set_defaults(run=run_locate)


def _fact(args):
    from excise.facts import Fact

    args.facts = args.facts or args.facts_file
    if args.facts:
        if len(fact_ids(args)) != 1:
            raise ValueError("give --ids ID to pick one fact from the fact file")
        return select_facts(args)[0]
    if not (args.subject and args.prompt and args.target):
        raise ValueError("give a fact file with --id, or all of --subject, --prompt and --target")
    prompt = args.prompt if "{}" in args.prompt else args.prompt.replace(args.subject, "{}", 1)
    if "{}" not in prompt:
        raise ValueError(f"subject {args.subject!r} not found in prompt {args.prompt!r}: "
                         "write '{}' where the subject goes")
    return Fact(id="cli", subject=args.subject, prompt=prompt, target=args.target)


def _locate(model, fact, args):
    import excise.locate as L

    progress = not args.no_progress
    if args.method == "causal_trace":
        return L.causal_trace(model, fact, site=args.site or "mlp", samples=args.samples,
                              progress=progress)
    if args.method == "knowledge_neurons":
        return L.knowledge_neurons(model, fact, steps=args.steps, progress=progress)
    if args.method == "direct_logit_attribution":
        return L.direct_logit_attribution(model, fact, site=args.site or "head")
    from excise.facts import load_facts

    source = args.counterfactuals or args.facts
    if not source:
        raise ValueError(f"{args.method} needs a counterfactual subject: give a fact file "
                         "(FACTS or --counterfactuals) with other facts of the same relation")
    facts = load_facts(source)
    if args.method == "activation_patch":
        return L.fact_activation_patch(model, fact, facts, site=args.site or "resid",
                                       progress=progress)
    from excise.locate.patch import counterfactual_pair

    clean, corrupted, answer, wrong = counterfactual_pair(model, fact, facts)
    return L.attribution_patch(model, clean, corrupted, answer, wrong, site=args.site or "neuron",
                               verify_top=0, progress=progress)


def run_locate(args: argparse.Namespace) -> int:
    from excise.model import load_model

    fact = _fact(args)
    html = check_new_file(args.html, args.force, "--html") if args.html else None
    json_path = check_new_file(args.json, args.force, "--json") if args.json else None
    model = load_model(args.model)
    loc = _locate(model, fact, args)
    print(f"{loc.method} ({loc.site}) of {fact.prompt.format(fact.subject)!r} -> {fact.target!r}")
    for key in ("clean_score", "corrupted_score", "clean_logit_diff", "corrupted_logit_diff"):
        if key in loc.meta:
            print(f"  {key}: {loc.meta[key]:.4f}")
    try:
        top = loc.top(args.top)
        print("top components: " + ", ".join(f"{c.key} ({score:.4g})"
                                              for c, score in zip(top, top_scores(loc, top))))
    except ValueError as err:
        print(f"  ({err})")
    if json_path:
        json_path.write_text(loc.to_json(), encoding="utf-8")
        print(f"wrote {json_path}")
    if html:
        loc.plot().write_html(html, include_plotlyjs=True)
        print(f"wrote {html}")
    return 0


def top_scores(loc, components) -> list[float]:
    """The score behind each of ``loc.top(k)``'s components (an MLP layer: its best position)."""
    rows = {loc.layer_number(r): r for r in range(loc.scores.shape[0])}
    out = []
    for c in components:
        row = loc.scores[rows[c.layer]].float()
        if hasattr(c, "head"):
            out.append(float(row[c.head]))
        elif hasattr(c, "index"):
            out.append(float(row[c.index]))
        else:
            out.append(float(row.max()))
    return out
