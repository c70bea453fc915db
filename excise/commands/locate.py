"""``excise locate``: placeholder until the locate subcommand lands (owned by the locate work)."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("locate", help="(not yet available)")
