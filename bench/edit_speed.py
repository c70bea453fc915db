"""What a rank-one edit and a verification cost, against their slower peers in the same process.

    python bench/edit_speed.py [--facts 6] [--verify-editors 3]

On the default model (CPU), for the first ``--facts`` known ``tune`` facts:

* **value optimisation** (:func:`excise.edit.value.compute_value` with the value added at the
  subject's last token, as ``memit`` runs it; ``rome`` runs the same loop) with its partial
  forward (blocks ``layer..`` from the cached residual, logits only at the read positions)
  against the same optimisation with full forwards (the partial forward disabled), in
  alternating order; both must give the same value;
* **rome**: the whole default edit (key statistics cached; prefixes generated before timing);
* **verify**: ``--verify-editors`` edits of one fact (rome at three layers) verified one after
  another with small attack budgets (:data:`VERIFY`), with the "before" measurements reused
  (``reuse_before=True``, the default) against ``reuse_before=False``.

Prints seconds and ratios. Run it alone: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from excise.check import known_facts
from excise.edit import rome
from excise.edit import value as value_module
from excise.edit.rank_one import default_layer
from excise.facts import load_facts
from excise.model import load_model
from excise.verify import state_cache, verify

VERIFY = dict(relearn_steps=5, relearn_facts=8, progress=False,
              budgets={"relearn_long_steps": 5, "lora_steps": (5,), "quant_bits": (4,), "gen_seeds": 1})
"""Small attack budgets, as notebooks/03_verify.ipynb uses (fluency and perplexity as verify's
defaults)."""


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def value_seconds(model, fact, layer: int, partial: bool) -> tuple[torch.Tensor, float, int]:
    same = value_module._same
    if not partial:
        value_module._same = lambda full, partial_logits: False  # as if the partial forward differed
    try:
        (delta, info), seconds = timed(value_module.compute_value, model, fact, layer)
    finally:
        value_module._same = same
    assert info["partial_forward"] == partial
    return delta, seconds, info["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=6)
    parser.add_argument("--verify-editors", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    facts = known_facts(model, load_facts("all", split="tune"), args.facts)
    layer = default_layer(model)
    rome(model, facts[0], progress=False).undo(model)  # statistics and prefixes, outside the timings

    print("| fact | steps | value, partial forward (s) | value, full forwards (s) | ratio | rome (s) |")
    print("|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for k, fact in enumerate(facts):
        runs = {}
        for partial in ((True, False) if k % 2 == 0 else (False, True)):
            runs[partial] = value_seconds(model, fact, layer, partial)
        (d_part, s_part, steps), (d_full, s_full, _) = runs[True], runs[False]
        assert torch.allclose(d_part, d_full, rtol=1e-3, atol=1e-4), fact.id
        edit, s_rome = timed(rome, model, fact, progress=False)
        edit.undo(model)
        totals = [totals[0] + s_part, totals[1] + s_full, totals[2] + s_rome]
        print(f"| {fact.id} | {steps} | {s_part:.1f} | {s_full:.1f} | {s_part / s_full:.2f} | {s_rome:.1f} |",
              flush=True)
    print(f"| all {len(facts)} | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f} | "
          f"{totals[2] / len(facts):.1f} per edit |", flush=True)

    fact = facts[0]
    layers = [layer, max(0, layer - 2), layer + 2][: args.verify_editors]
    seconds = {}
    for reuse in (True, False):
        state_cache.clear()
        seconds[reuse] = 0.0
        for edit_layer in layers:
            edit = rome(model, fact, layer=edit_layer, progress=False)
            try:
                _, took = timed(verify, model, fact, reuse_before=reuse, **VERIFY)
            finally:
                edit.undo(model)
            seconds[reuse] += took
    print(f"verify of {len(layers)} edits of {fact.id}: {seconds[True]:.1f} s reusing the before state, "
          f"{seconds[False]:.1f} s measuring it each time (ratio {seconds[True] / seconds[False]:.2f})")


if __name__ == "__main__":
    main()
