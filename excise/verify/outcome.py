"""Compare a probe's before and after readings, and turn them into a verdict with a reason.

Each probe yields one :class:`ProbeOutcome` per fact with a ``status``:

* ``"recovered"``: after the edit the probe still finds the answer;
* ``"forgotten"``: the probe knew it before the edit and does not find it after;
* ``"uninformative"``: the probe did not find the answer even before the edit (e.g. a small model
  at chance on multiple choice), so it says nothing about the edit;
* ``"skipped"``: the probe could not run (the reason says why, e.g. too few facts of the relation).

A probe's reading of one model state is a small dataclass. Readings that score the answer
(logit lens, few-shot, relearning) derive from :class:`Scored` and are judged with the forgetting
criterion of :mod:`excise.criteria` in reverse: the answer is *recovered* when it is not
forgotten, i.e. it is ranked first again or keeps more than 10% of its original probability.
Readings with a yes/no answer (question, multiple choice, linear probe) derive from
:class:`Answered` and are recovered when the answer is found after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from excise.criteria import PROB_DROP, forgotten
from excise.scoring import Scores

STATUSES = ("recovered", "forgotten", "uninformative", "skipped")


@dataclass(frozen=True)
class Reading:
    """A probe's measurement of one fact on one model state (subclasses add the numbers)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scored(Reading):
    """The answer's ``rank`` (0 = top) and ``prob`` as the probe reads them."""

    rank: int
    prob: float


@dataclass(frozen=True)
class Answered(Reading):
    """Whether the probe finds the answer (``known``)."""

    known: bool


@dataclass
class ProbeOutcome:
    """One probe on one fact: status, the reason in words, and the readings before/after.

    ``before``/``after`` are the probe's :class:`Reading` s; both are ``None`` when it was skipped.
    """

    probe: str
    status: str
    reason: str
    before: Reading | None = None
    after: Reading | None = None

    def to_dict(self) -> dict:
        return {"probe": self.probe, "status": self.status, "reason": self.reason,
                "before": _plain(self.before), "after": _plain(self.after)}


def _plain(reading: Reading | None) -> dict | None:
    return None if reading is None else reading.to_dict()


def returns(before_rank: int, before_prob: float, after_rank: int, after_prob: float) -> bool:
    """True when the answer is *not* forgotten between the two measurements (excise.criteria)."""
    def one(rank, prob):
        logprob = torch.tensor([prob]).clamp_min(1e-45).log()
        return Scores(logprob, torch.tensor([rank]), torch.tensor([rank == 0]))
    return not bool(forgotten(one(before_rank, before_prob), one(after_rank, after_prob))[0])


def found(rank: int, prob: float) -> bool:
    """Whether a scored reading finds the answer (top-ranked, or p >= 0.05): a probe that does not
    find it before the edit says nothing about the edit."""
    return rank == 0 or prob >= 0.05


def judge_scored(probe: str, before: Scored, after: Scored, what: str) -> ProbeOutcome:
    """Outcome of a probe with ``rank``/``prob`` readings (``what`` names them in the reason)."""
    if not found(before.rank, before.prob):
        return ProbeOutcome(probe, "uninformative", f"{what}: the answer was not found before the edit "
                            f"(rank {before.rank}, p={before.prob:.3f})", before, after)
    back = returns(before.rank, before.prob, after.rank, after.prob)
    status = "recovered" if back else "forgotten"
    reason = (f"{what}: rank {after.rank}, p={after.prob:.3f} after "
              f"(before: rank {before.rank}, p={before.prob:.3f})")
    return ProbeOutcome(probe, status, reason, before, after)


def judge_known(probe: str, before: Answered, after: Answered, what: str) -> ProbeOutcome:
    """Outcome of a probe with a yes/no ``known`` reading."""
    if not before.known:
        return ProbeOutcome(probe, "uninformative", f"{what}: not answered even before the edit",
                            before, after)
    status = "recovered" if after.known else "forgotten"
    word = "still answered" if after.known else "no longer answered"
    return ProbeOutcome(probe, status, f"{what}: {word}", before, after)


def skipped(probe: str, reason: str) -> ProbeOutcome:
    return ProbeOutcome(probe, "skipped", reason)


def verdict(prompt_forgotten: bool, paraphrases: tuple[int, int], outcomes: list[ProbeOutcome],
            after_rank: int, after_prob: float, before_prob: float,
            held_out: tuple[int, int] = (0, 0)) -> tuple[str, str]:
    """``(label, reason)`` for one fact: "not forgotten", "recoverable" or "forgotten".

    ``paraphrases`` and ``held_out`` (the held-out paraphrases) are ``(forgotten, total)``.
    """
    if not prompt_forgotten:
        drop = 1 - after_prob / max(before_prob, 1e-12)
        return "not forgotten", (f"the prompt still gives the answer (rank {after_rank}, "
                                 f"p={after_prob:.3f}, a {drop:.0%} drop; forgetting needs rank > 0 "
                                 f"and a {PROB_DROP:.0%} drop)")
    gone, total = paraphrases
    where = "on prompt" + (f" and {gone}/{total} paraphrases" if total else "")
    where += f" and {held_out[0]}/{held_out[1]} held-out paraphrases" if held_out[1] else ""
    back = [o for o in outcomes if o.status == "recovered"]
    if not back:
        checked = [o.probe for o in outcomes if o.status == "forgotten"]
        return "forgotten", f"forgotten {where}; no probe recovers it (checked: {', '.join(checked) or 'none'})"
    return "recoverable", f"forgotten {where}; recoverable by " + "; ".join(o.reason for o in back)
