"""The ``excise`` command line: ``facts check|import``, ``locate``, ``forget``, ``verify``, ``demo``.

Each subcommand lives in its own module under ``excise/commands/`` and registers itself with
:func:`build_parser`; this file only wires them together and turns expected errors into one clear
line on stderr with exit status 2 (Ctrl-C: one line, status 130).
"""

from __future__ import annotations

import argparse
import logging
import sys

from excise.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="excise",
        description="Located unlearning: find where a model stores a fact, remove it, prove it is gone.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"excise {args.command}: interrupted; outputs are written whole or not at all, so "
              "nothing half-written was left", file=sys.stderr)
        return 130
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.filename and str(err.filename) not in str(message):
            message = f"{err.strerror or err}: {err.filename}"
        print(f"excise {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
