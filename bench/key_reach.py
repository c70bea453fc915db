"""How far a rank-one edit reaches each wording: ``k . u`` per key, for the default direction and
for a direction made to reach the text-initial key too.

    python bench/key_reach.py [--limit 12] [--split tune]

A rank-one edit ``W + u delta^T`` adds ``(k . u) delta`` wherever the MLP sees key ``k``; the
default ``rome`` makes ``k* . u = 1`` for its balanced key (:func:`excise.edit.keys.balanced_key`)
and keeps ``u`` away from 32 other subjects' keys (:func:`excise.edit.rank_one.protected_direction`).
For the first ``--limit`` known facts of ``--split`` this prints ``k . u`` for

* **running**: the subject's key in the fact's prompt after context prefixes (what the prefixed
  prompts and most paraphrases see);
* **text-initial**: the subject right after BOS (what subject-first wordings such as "France's
  capital is" see);
* **held-out**: each held-out wording that contains the subject (mean);
* **others at the start**: other subjects right after BOS (mean over six): where an edit that
  reaches text-initial wordings would also fire;

for the default direction and for ``two keys``: ``u`` of least ``C'``-norm with both the running
and the text-initial key at ``k . u = 1``, other subjects' text-initial keys added to the
protected statistics (the same growth limit on ``|u|``). Only keys and statistics are computed
(no value optimisation, no edit).
"""

from __future__ import annotations

import argparse
import logging

import torch

from excise.check import known_facts
from excise.edit.keys import (
    BLANK_TARGET,
    CONTRAST_WEIGHT,
    balanced_key,
    contrast_keys,
    mlp_keys,
    subject_batch,
    subject_key,
    with_contrast,
)
from excise.edit.prompts import rewriting_prompts
from excise.edit.rank_one import default_layer, protected_direction
from excise.edit.stats import SampleSpec, key_stats
from excise.facts import load_facts
from excise.model import load_model

OTHERS = ("Spain", "Italy", "Japan", "Brazil", "London", "Toyota")


def two_key_direction(keys: list[torch.Tensor], second_moment, ridge: float = 1e-2) -> torch.Tensor:
    """``u = C^-1 K (K^T C^-1 K)^-1 1``: least ``C``-norm with ``k . u = 1`` for every key in ``keys``."""
    c = second_moment.to(torch.float64)
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
    stacked = torch.stack([k.to(torch.float64) for k in keys], 1)  # [d_mlp, n_keys]
    solved = torch.linalg.solve(c, stacked)
    return (solved @ torch.linalg.solve(stacked.T @ solved, torch.ones(len(keys), dtype=c.dtype))).float()


def protected_two_keys(keys, second_moment, others, weight: float, max_growth: float = 1.5):
    """:func:`two_key_direction` on ``C + weight * mean(k_o k_o^T)``, the weight quartered while
    ``|u|`` exceeds ``max_growth`` times the unprotected one (as the default direction does)."""
    plain = two_key_direction(keys, second_moment)
    while weight >= 1e-2:
        u = two_key_direction(keys, with_contrast(second_moment, others, weight))
        if u.norm() <= max_growth * plain.norm():
            return u, weight
        weight /= 4
    return plain, 0.0


def reach(keys, default: torch.Tensor, two: torch.Tensor) -> str:
    """``"a | b"``: the mean ``k . u`` of ``keys`` under the default and the two-key direction."""
    if not len(keys):
        return "n/a | n/a"
    stacked = torch.stack(list(keys))  # [n, d_mlp]
    return f"{float((stacked @ default).mean()):.2f} | {float((stacked @ two).mean()):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--split", default="tune")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = load_model(device="cpu")
    layer = default_layer(model)
    second_moment = key_stats(model, [layer], SampleSpec(), False)[layer].second_moment
    facts = known_facts(model, load_facts("all", split=args.split), args.limit)
    others_start = torch.stack([subject_key(model, layer, ["{}"], s) for s in OTHERS])
    print(f"layer {layer}; k . u per key, under the default direction and the two-key one")
    kinds = ("running", "text-initial", "held-out (mean)", "others at the start (mean)")
    print("| fact | subject tokens | " + " | ".join(f"{k}: default | {k}: two keys" for k in kinds) + " |")
    print("|---" * (2 + 2 * len(kinds)) + "|")
    for fact in facts:
        templates = rewriting_prompts(model, fact.prompt, 4)
        running = subject_key(model, layer, templates[1:], fact.subject)
        start = subject_key(model, layer, ["{}"], fact.subject)
        held = [subject_key(model, layer, [t.replace(fact.subject, "{}", 1)], fact.subject)
                for t in fact.held_out_texts if fact.subject in t]
        others, subjects = contrast_keys(model, layer, fact, 32)
        default, *_ = protected_direction(layer, balanced_key(model, layer, templates, fact.subject),
                                          second_moment, others, CONTRAST_WEIGHT)
        batch, positions = subject_batch(model, ["{}"] * len(subjects), subjects, [BLANK_TARGET] * len(subjects))
        with_start = torch.cat([others, mlp_keys(model, layer, batch.tokens, positions)])
        two, _ = protected_two_keys([running, start], second_moment, with_start, CONTRAST_WEIGHT)

        n_tokens = len(model.to_tokens(" " + fact.subject, prepend_bos=False)[0])
        cells = [reach([running], default, two), reach([start], default, two),
                 reach(held, default, two), reach(others_start, default, two)]
        print(f"| {fact.id} | {n_tokens} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
