"""``excise demo``: the main job on the default model.

For now: check which bundled facts the default model knows (``excise facts check all``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    demo = sub.add_parser("demo", help="run the main job on the default model")
    demo.add_argument("--model", default=None, help="model folder or hub id (default: SmolLM2-135M-Instruct)")
    demo.add_argument("--out", default="out", help="folder for the demo's outputs (default: out/)")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from excise.commands.facts import run_check

    out = Path(args.out)
    check = argparse.Namespace(file="all", model=args.model, out=str(out / "known_facts.jsonl"), quiet=True)
    return run_check(check)
