"""Subcommands of the ``excise`` CLI; each module exposes ``register(subparsers)``."""

from excise.commands import demo, facts, forget, locate, verify
from excise.commands import eval as eval_command

COMMANDS = [facts.register, locate.register, forget.register, verify.register, eval_command.register,
            demo.register]
