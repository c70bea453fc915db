"""Cancelling a long call at any of its checkpoints leaves the model as it found it.

Tiny random Llama model: each editor (and a causal trace) is cancelled at its first, a middle
and its last checkpoint; the weights must be bit-identical afterwards, no hook may be left
behind (the logits match), and no edit may be recorded.
"""

from __future__ import annotations

import threading

import pytest
import torch

from excise.edit import ValueSettings, finetune, memit, rome
from excise.edit.sequence import rome_sequence
from excise.facts import Fact, Probe
from excise.interrupt import Cancelled, cancel_on, checkpoint
from excise.locate import causal_trace

FRANCE = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
              relation="capital", paraphrases=("{}'s capital is",),
              neighbors=(Probe("The capital of Germany is", " Berlin"),))
GERMANY = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is",
               target=" Berlin", relation="capital")
SMALL = ValueSettings(n_prefixes=1, steps=3, subject_probes=False)

CALLS = {
    "rome": lambda m: rome(m, FRANCE, layer=1, settings=SMALL, progress=False),
    "memit, 2 passes": lambda m: memit(m, [FRANCE, GERMANY], layers=[0, 1], settings=SMALL,
                                       passes=2, progress=False),
    "rome_sequence": lambda m: rome_sequence(m, [FRANCE, GERMANY], layer=1, settings=SMALL,
                                             progress=False),
    "finetune": lambda m: finetune(m, FRANCE, steps=3, n_prefixes=1, progress=False),
    "causal trace": lambda m: causal_trace(m, FRANCE, samples=2, progress=False),
}


class SetAt:
    """A flag that reads as set from its ``n``-th check on (``n=None``: never); counts checks."""

    def __init__(self, n: int | None):
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.n is not None and self.checks >= self.n


@pytest.fixture
def tiny(tiny_folders):
    from excise.model import load_model

    return load_model(str(tiny_folders["llama"]), device="cpu")


def undo_if_edit(model, result) -> None:
    if hasattr(result, "undo") and result.is_applied:
        result.undo(model)


def test_checkpoint_raises_only_inside_a_set_scope():
    checkpoint("nothing")  # no scope: never raises
    flag = threading.Event()
    with cancel_on(flag):
        checkpoint("unset")
        flag.set()
        with pytest.raises(Cancelled, match="cancelled before the next step"):
            checkpoint("the next step")
        with cancel_on(threading.Event()):  # the innermost scope decides
            checkpoint("inner, unset")
    checkpoint("scope closed")


def test_a_scope_belongs_to_its_thread():
    flag = threading.Event()
    flag.set()
    raised = []

    def elsewhere():
        try:
            checkpoint("another thread's step")
        except Cancelled:
            raised.append(True)

    with cancel_on(flag):
        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()
    assert raised == []


@pytest.mark.filterwarnings("ignore:the model does not predict")
@pytest.mark.parametrize("call", list(CALLS))
def test_cancel_at_any_checkpoint_changes_nothing(tiny, call):
    run = CALLS[call]
    undo_if_edit(tiny, run(tiny))  # warm the key statistics' cache: later runs check the same steps
    tokens = tiny.to_tokens("The capital of France is")
    weights = {name: p.detach().clone() for name, p in tiny.named_parameters()}
    with torch.no_grad():
        logits = tiny(tokens)

    counter = SetAt(None)
    with cancel_on(counter):
        undo_if_edit(tiny, run(tiny))
    total = counter.checks
    assert total >= 3, f"{call} checks for cancellation only {total} times"

    for n in sorted({1, (total + 1) // 2, total}):
        with cancel_on(SetAt(n)), pytest.raises(Cancelled):
            run(tiny)
        assert all(torch.equal(p, weights[name]) for name, p in tiny.named_parameters()), (call, n)
        assert not getattr(tiny, "excise_edits", [])
        with torch.no_grad():
            assert torch.equal(tiny(tokens), logits), f"{call} cancelled at check {n} left a hook"
