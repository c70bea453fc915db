"""``excise demo``: the main job on the default model (locate -> forget -> verify one fact).

A causal trace locates the fact, a rank-one edit at the default lookup layer forgets it (the
trace's peak is printed beside it), and every verification probe checks the result; the HTML and
JSON reports land in ``--out``.
"""

from __future__ import annotations

import argparse

from excise.commands._args import add_command, add_model, add_progress


def register(sub) -> None:
    demo = add_command(sub, "demo", "locate, forget and verify one fact on the default model",
                       __doc__)
    add_model(demo)
    demo.add_argument("--ids", "--fact", dest="fact", default=None, metavar="ID",
                      help="bundled fact id (default: landmark-city-eiffel-tower)")
    demo.add_argument("--out", default="out", help="folder for the reports (default: out/)")
    add_progress(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from excise.commands.workflows import DEMO_FACT, run_demo

    run_demo(model=args.model, out=args.out, fact_id=args.fact or DEMO_FACT,
             progress=not args.no_progress)
    return 0
