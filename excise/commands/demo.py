"""``excise demo``: the main job on the default model (locate -> forget -> verify one fact)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    demo = sub.add_parser("demo", help="locate, forget and verify one fact on the default model")
    demo.add_argument("--model", default=None, help="model folder or hub id (default: SmolLM2-135M-Instruct)")
    demo.add_argument("--fact", default=None, help="bundled fact id (default: the Eiffel Tower's city)")
    demo.add_argument("--out", default="out", help="folder for the reports (default: out/)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from excise.commands.workflows import DEMO_FACT, run_demo

    run_demo(model=args.model, out=args.out, fact_id=args.fact or DEMO_FACT)
    return 0
