"""Cooperative cancellation of long computations (edits, traces, statistics, attacks).

A caller that wants to stop a long call from elsewhere (the explorer's Cancel button, running
the call in a worker thread) wraps it in :func:`cancel_on` with a :class:`threading.Event`.
Every long loop in excise calls :func:`checkpoint` once per step (a value-optimisation step,
a fine-tuning step, a traced layer, a batch of key statistics); once the event is set, the
next checkpoint raises :class:`Cancelled`. The loops' callers already clean up on any
exception (editors restore the weights they wrote, hooks are removed on exit), so a
cancelled call leaves the model as it found it.

Outside :func:`cancel_on` a checkpoint costs one context-variable lookup and never raises.
The scope is per thread (a :class:`contextvars.ContextVar`): cancelling a job in a worker
thread does not touch calls running elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Cancelled(Exception):
    """A call was cancelled at one of its checkpoints; whatever it had changed is undone."""


class _Flag(Protocol):
    def is_set(self) -> bool: ...


_flag: ContextVar[_Flag | None] = ContextVar("excise_cancel_flag", default=None)


@contextmanager
def cancel_on(flag: _Flag) -> Iterator[None]:
    """Inside ``with``, every :func:`checkpoint` raises :class:`Cancelled` once ``flag.is_set()``
    (a :class:`threading.Event`, or anything with ``is_set()``). Nested scopes: the innermost
    flag is the one checked."""
    token = _flag.set(flag)
    try:
        yield
    finally:
        _flag.reset(token)


def checkpoint(where: str) -> None:
    """Raise :class:`Cancelled` if the enclosing :func:`cancel_on` flag is set; ``where`` names
    the step about to start (it becomes the error's message)."""
    flag = _flag.get()
    if flag is not None and flag.is_set():
        raise Cancelled(f"cancelled before {where}")
