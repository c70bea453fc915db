"""``excise verify``: placeholder until the verify subcommand lands (owned by the verify work)."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("verify", help="(not yet available)")
