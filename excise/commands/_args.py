"""What the subcommands share: how facts, models and outputs are named, and checks made up front.

Every command names facts the same way (``--facts SET --ids a,b``), takes ``--model`` and
``--no-progress``, and checks its output paths *before* loading a model or computing anything,
so a typo costs a second, not an edit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL_HELP = "model folder or hub id (default: the bundled SmolLM2-135M-Instruct)"


def add_command(sub, name: str, summary: str, description: str):
    """A subparser with a one-line ``summary`` (in ``excise --help``) and a ``description``."""
    return sub.add_parser(name, help=summary, description=description,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_facts(parser, required: bool = True, what: str = "facts to use") -> None:
    """``--facts SET`` and ``--ids a,b`` (also repeatable); ``--id``/``--fact`` are old spellings."""
    parser.add_argument("--facts", required=required, metavar="SET",
                        help="JSONL fact file, or a bundled set name ('all', 'capitals', ...)")
    parser.add_argument("--ids", "--id", "--fact", dest="ids", action="append", default=None,
                        metavar="ID[,ID...]",
                        help=f"comma-separated fact ids, repeatable ({what}; default: every fact "
                             "in the file)")


def add_model(parser, help: str = DEFAULT_MODEL_HELP) -> None:
    parser.add_argument("--model", default=None, help=help)


def add_progress(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def fact_ids(args) -> list[str]:
    """The ids given with ``--ids`` (comma-separated, repeatable), in order, without repeats."""
    ids = [i.strip() for chunk in (args.ids or []) for i in chunk.split(",") if i.strip()]
    return list(dict.fromkeys(ids))


def select_facts(args, at_most: int | None = None) -> list:
    """The facts ``--facts`` / ``--ids`` name; refuses an empty file, unknown ids and too many."""
    from excise.facts import load_facts

    facts = load_facts(args.facts)
    if not facts:
        raise ValueError(f"{args.facts} holds no facts; add JSON lines with id, subject, prompt, "
                         "target (see the README's Facts section)")
    wanted = fact_ids(args)
    if wanted:
        by_id = {f.id: f for f in facts}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            sample = ", ".join(list(by_id)[:5])
            raise ValueError(f"no fact with id {missing[0]!r} in {args.facts} (ids look like: "
                             f"{sample}, ...)")
        facts = [by_id[i] for i in wanted]
    if at_most is not None and len(facts) > at_most:
        raise ValueError(f"{args.facts} has {len(facts)} facts; pick {at_most} with --ids ID")
    return facts


def check_new_folder(path, overwrite: bool = False, what: str = "--save") -> Path:
    """Refuse, before any work, a folder that cannot be created or is not empty."""
    from excise.export import check_target

    folder = Path(path).expanduser()
    try:
        check_target(folder, overwrite)
    except ValueError as err:
        raise ValueError(f"{what}: {err}".replace("pass overwrite=True", "pass --overwrite")) from err
    return folder


def check_new_file(path, force: bool = False, what: str = "-o") -> Path:
    """Refuse, before any work, an output file that exists (without ``force``) or cannot be written."""
    from excise.export import check_writable_parent

    file = Path(path).expanduser()
    if file.is_dir():
        raise ValueError(f"{what} {file} is a folder; give a file path")
    if file.exists() and not force:
        raise ValueError(f"{what} {file} exists; pass --force to overwrite it")
    try:
        check_writable_parent(file)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err
    return file


def add_budgets(parser) -> None:
    """``--budget NAME=VALUE`` (repeatable): an attack budget of verify's probes."""
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                        help="an attack budget, e.g. lora_steps=10,30 or quant_bits=4 (repeatable; "
                             "names: the fields of excise.verify.probes.base.Setup)")


def parse_budgets(args) -> dict:
    """``--budget`` values as verify's ``budgets=``: numbers, and comma lists as tuples."""
    from excise.verify.probes.base import Setup

    defaults = Setup(related=[]).budgets()
    out = {}
    for item in args.budget or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ValueError(f"--budget {item!r}: give NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(defaults))}")
        default = defaults[name]
        kind = type(default[0]) if isinstance(default, tuple) else type(default)
        try:
            parts = [kind(v) for v in value.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(f"--budget {item!r}: {value!r} is not a {kind.__name__}") from err
        out[name] = tuple(parts) if isinstance(default, tuple) else parts[0]
    return out
