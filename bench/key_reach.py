"""How far a rank-one edit reaches each wording: ``k . u`` per key, for the default direction and
for a direction made to reach the text-initial key too.

    python bench/key_reach.py [--limit 12] [--split tune] [--early-layers 0,1,4] [--near 256]

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

``--early-layers``: whether a *separate* direction at an early layer could reach the subject right
after BOS and nothing else. A token right after BOS sees only BOS, so its key there is a function of
the token alone, computed here for the whole vocabulary. For each country of :data:`EARLY`, ``u``
has ``k . u = 1`` on its text-initial key and is protected against the ``--near`` vocabulary tokens
it reaches most (the same growth limit); the table gives ``k . u`` on the other countries' text-
initial keys (the countries are protected when they are among the nearest, which is the point: a
rule that needs no list of neighbours) and on the rest of the vocabulary.
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
from excise.edit.rank_one import default_layer, protected_direction, rank_one_direction
from excise.edit.stats import SampleSpec, key_stats
from excise.facts import load_facts
from excise.hooks import act_name
from excise.model import load_model

OTHERS = ("Spain", "Italy", "Japan", "Brazil", "London", "Toyota")
EARLY = ("Germany", "France", "Italy", "Spain", "Japan", "Poland", "Canada", "Brazil")


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


@torch.no_grad()
def text_initial_keys(model, layer: int, chunk: int = 2048) -> torch.Tensor:
    """``[d_vocab, d_mlp]``: every token's MLP key at ``layer`` right after BOS."""
    bos = int(model.to_tokens("", prepend_bos=True)[0, 0])
    name, keys = act_name("neuron", layer), []
    for start in range(0, model.cfg.d_vocab, chunk):
        ids = torch.arange(start, min(model.cfg.d_vocab, start + chunk))
        tokens = torch.stack([torch.full_like(ids, bos), ids], 1)  # [chunk, 2]
        _, cache = model.run_with_cache(tokens, names_filter=name, stop_at_layer=layer + 1)
        keys.append(cache[name][:, 1])
    return torch.cat(keys)


def early_reach(model, layers: list[int], near: int) -> None:
    """The ``--early-layers`` table (see the module docstring)."""
    ids = {s: int(model.to_tokens(s, prepend_bos=False)[0, -1]) for s in EARLY}
    print(f"\nk . u of a direction for the subject right after BOS, protected against the {near} "
          "vocabulary tokens it reaches most")
    print("| layer | subject | protection weight | " + " | ".join(EARLY) + " | rest of the vocabulary: p99.9 / max |")
    print("|---" * (4 + len(EARLY)) + "|")
    for layer in layers:
        second_moment = key_stats(model, [layer], SampleSpec(), False)[layer].second_moment
        keys = text_initial_keys(model, layer)  # [d_vocab, d_mlp]
        for subject in EARLY[:2]:
            own = ids[subject]
            plain, _ = rank_one_direction(layer, keys[own], second_moment)
            reached = keys @ plain
            reached[own] = -float("inf")
            u, _, _, weight = protected_direction(layer, keys[own], second_moment,
                                                  keys[reached.topk(near).indices], CONTRAST_WEIGHT)
            on = keys @ u
            rest = torch.ones(len(on), dtype=torch.bool)
            rest[list(ids.values())] = False
            cells = [f"{float(on[ids[s]]):.2f}" for s in EARLY]
            print(f"| {layer} | {subject} | {weight:g} | " + " | ".join(cells)
                  + f" | {float(on[rest].abs().quantile(0.999)):.2f} / {float(on[rest].abs().max()):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--split", default="tune")
    parser.add_argument("--early-layers", default="", help="e.g. 0,1,4: the text-initial table")
    parser.add_argument("--near", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = load_model(device="cpu")
    if args.early_layers:
        early_reach(model, [int(x) for x in args.early_layers.split(",")], args.near)
        return
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
