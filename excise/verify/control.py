"""Controls for attacks: the fact's prompt about subjects the model never knew.

An attack that finds the forgotten answer proves little on its own: it may find it because the
answer is what the relation's prompt suggests for *any* subject (" English" for languages, " Paris"
for a French-sounding landmark), not because this subject's fact survived. Every attack therefore
runs, in the same attacked state, on the fact's own prompt filled with made-up subjects
(:data:`CONTROL_SUBJECTS`) and the same answer. When the attack finds the answer for them about as
well, its outcome is "uninformative" (:func:`control_explains`).
"""

from __future__ import annotations

from excise.facts import Probe

CONTROL_SUBJECTS = ("Zorbla Quaxton", "Vennick Throale", "Mirabet Oskelund")
CONTROL_SHARE = 0.5
"""An attack's return counts only when the control reaches less than this share of it."""


def control_probes(fact, subjects=CONTROL_SUBJECTS) -> list[Probe]:
    """``fact``'s prompt about made-up subjects, with ``fact``'s answer: what an attack would
    find for a fact the model never knew."""
    return [Probe(fact.prompt.format(subject), fact.target) for subject in subjects]


def control_explains(fact_value: float, control_value: float, share: float = CONTROL_SHARE) -> bool:
    """True when the control (made-up subjects) reaches at least ``share`` of what the attack
    reached for the fact (a probability, or a share of hits), so the attack says nothing about it."""
    return control_value >= share * fact_value
