"""``excise locate``: run a locator on one fact and print / save where it lives.

The fact comes from a fact file by id (``excise locate capitals --id capital-france``) or from the
command line (``--subject``, ``--prompt`` with ``{}``, ``--target``). ``--html`` writes the figure
with plotly.js inlined; ``--json`` writes the :class:`~excise.locate.Localization`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

METHODS = ("causal_trace", "activation_patch", "attribution_patch", "knowledge_neurons",
           "direct_logit_attribution")


def register(sub) -> None:
    p = sub.add_parser("locate", help="find the layers, heads or neurons that hold a fact")
    p.add_argument("facts", nargs="?", default=None,
                   help="a JSONL fact file or bundled set name (with --id)")
    p.add_argument("--id", dest="fact_id", default=None, help="id of the fact in the fact file")
    p.add_argument("--subject", default=None, help="subject (instead of a fact file)")
    p.add_argument("--prompt", default=None, help="prompt template with {} for the subject")
    p.add_argument("--target", default=None, help="answer, leading space included (e.g. ' Paris')")
    p.add_argument("--method", default="causal_trace", choices=METHODS)
    p.add_argument("--site", default=None,
                   help="resid|attn|mlp|head|neuron. causal_trace: resid|mlp|attn (default mlp); "
                        "activation_patch: any (default resid); attribution_patch: head|neuron "
                        "(default neuron); direct_logit_attribution: head|neuron (default head)")
    p.add_argument("--samples", type=int, default=10, help="noise samples (causal_trace)")
    p.add_argument("--steps", type=int, default=20, help="integration steps (knowledge_neurons)")
    p.add_argument("--counterfactuals", default=None,
                   help="fact file to pick the corrupted subject from (patching; default: FACTS)")
    p.add_argument("--top", type=int, default=10, help="how many components to print")
    p.add_argument("--model", default=None, help="model folder or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--html", default=None, help="write the figure here (plotly.js inlined)")
    p.add_argument("--json", default=None, help="write the Localization as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run_locate)


def _fact(args):
    from excise.facts import Fact, find_fact, load_facts

    if args.facts:
        if not args.fact_id:
            raise ValueError("give --id to pick a fact from the fact file")
        return find_fact(load_facts(args.facts), args.fact_id)
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
    model = load_model(args.model)
    loc = _locate(model, fact, args)
    print(f"{loc.method} ({loc.site}) of {fact.prompt.format(fact.subject)!r} -> {fact.target!r}")
    for key in ("clean_score", "corrupted_score"):
        if key in loc.meta:
            print(f"  {key}: {loc.meta[key]:.4f}")
    try:
        top = loc.top(args.top)
        print("top components: " + ", ".join(c.key for c in top))
    except ValueError as err:
        print(f"  ({err})")
    if args.json:
        Path(args.json).write_text(loc.to_json(), encoding="utf-8")
        print(f"wrote {args.json}")
    if args.html:
        loc.plot().write_html(args.html, include_plotlyjs=True)
        print(f"wrote {args.html}")
    return 0
