"""Subcommands of the ``excise`` CLI; each module exposes ``register(subparsers)``."""

from excise.commands import demo, facts, forget, locate, verify

COMMANDS = [facts.register, locate.register, forget.register, verify.register, demo.register]
