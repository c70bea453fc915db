"""``excise forget``: placeholder until the forget subcommand lands (owned by the forget work)."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("forget", help="(not yet available)")
