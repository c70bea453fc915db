"""Subcommands of the ``excise`` CLI; each module exposes ``register(subparsers)``."""

from excise.commands import demo, facts

COMMANDS = [facts.register, demo.register]
