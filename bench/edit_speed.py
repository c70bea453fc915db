"""What a rank-one edit and a verification cost, against their slower peers in the same process.

    python bench/edit_speed.py [--facts 6] [--verify-editors 3] [--sections stats,attack,value,precision,reads,verify]

On the default model (CPU), for the first ``--facts`` known ``tune`` facts:

* **key statistics** over the default text sample at the default layer, at two early layers
  together and at the last layer: the forward pass stopped once those layers' keys are read
  (:func:`excise.hooks.forward_until`, what :func:`excise.edit.stats.key_stats` runs) against the
  whole forward pass, in alternating order; both must give the same statistics, bit for bit;
* **value optimisation** (:func:`excise.edit.value.compute_value` with the value added at the
  subject's last token, as ``memit`` runs it; ``rome`` runs the same loop) with its partial
  forward (blocks ``layer..`` from the cached residual, logits only at the read positions)
  against the same optimisation with full forwards (the partial forward disabled), in
  alternating order; both must give the same value;
* **rome**: the whole edit with float32 products (key statistics cached; prefixes generated
  before timing);
* **precision**: the whole default ``rome``, its value optimisation's matrix products in
  bfloat16 where the CPU has them (:mod:`excise.precision`), against ``low_precision=False``,
  in alternating order: seconds, steps, the cosine of the two updates and the fact's target
  log-probability after each;
* **reads**: the whole default ``rome``, whose value optimisation unembeds the text before the
  subject once per distinct token prefix (:func:`excise.edit.value._distinct_text`), against the
  same with every row's text positions read, as in **precision**;
* **attack step and scoring**: one step of the relearning attack (full fine-tuning on the first
  8 facts' prompts at most; Adam at lr 0, so the weights stay) and the scoring forward of 4x ``--facts`` prompts
  in one batch (as :func:`excise.scoring.score_targets` runs it), with logits only at the answer
  positions (:func:`excise.scoring.answer_logits`, what both use) against the full forward's
  logits at every position, in alternating order;
* **verify**: ``--verify-editors`` edits of one fact (rome at three layers) verified one after
  another with small attack budgets (:data:`VERIFY`), with the "before" measurements reused
  (``reuse_before=True``, the default) against ``reuse_before=False``.

Prints seconds and ratios. Run it alone: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager, nullcontext

import torch

from excise.check import known_facts
from excise.edit import rome
from excise.edit import stats as stats_module
from excise.edit import value as value_module
from excise.edit.rank_one import default_layer
from excise.edit.value import ValueSettings
from excise.facts import load_facts
from excise.model import load_model, weights_hash
from excise.precision import fast_bfloat16
from excise.scoring import answer_logprobs, build_batch, score_targets, sequence_logprobs
from excise.verify import state_cache, verify
from excise.verify.probes.relearn import adam

SECTIONS = ("stats", "attack", "value", "precision", "reads", "verify")

VERIFY = dict(relearn_steps=5, relearn_facts=8, progress=False,
              budgets={"relearn_long_steps": 5, "lora_steps": (5,), "quant_bits": (4,), "gen_seeds": 1})
"""Small attack budgets, as notebooks/03_verify.ipynb uses (fluency and perplexity as verify's
defaults)."""


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def value_seconds(model, fact, layer: int, partial: bool) -> tuple[torch.Tensor, float, int]:
    """The value optimisation in float32 (the bfloat16 products have a section of their own)."""
    same = value_module._same
    if not partial:
        value_module._same = lambda *args: False  # as if the partial forward differed
    try:
        (delta, info), seconds = timed(value_module.compute_value, model, fact, layer,
                                       settings=ValueSettings(low_precision=False))
    finally:
        value_module._same = same
    assert info["partial_forward"] == partial
    return delta, seconds, info["steps"]


def full_logprobs(model, batch) -> torch.Tensor:
    """The peer of :func:`excise.scoring.answer_logprobs`: every position unembedded."""
    rows, positions = batch.answer_index()
    return sequence_logprobs(batch, model(batch.tokens)[rows, positions])


def attack_step_seconds(model, batch, logprobs, optimizer) -> float:
    start = time.perf_counter()
    with torch.enable_grad():
        optimizer.zero_grad(set_to_none=True)
        (-logprobs(model, batch).mean()).backward()
        optimizer.step()
    return time.perf_counter() - start


def answer_only_vs_full(model, facts, repeats: int = 4) -> None:
    """Seconds per relearning-attack step and per scoring batch, answer positions only vs all."""
    train = facts[:8]
    batch = build_batch(model, [f.text for f in train], [f.target for f in train])
    params = list(model.original_model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = adam(params, lr=0.0)  # a real Adam step that leaves the weights as they are
    steps = {"answer": 0.0, "full": 0.0}
    try:
        for k in range(repeats + 1):
            order = ("answer", "full") if k % 2 == 0 else ("full", "answer")
            for name in order:
                took = attack_step_seconds(model, batch, answer_logprobs if name == "answer" else full_logprobs,
                                           optimizer)
                steps[name] += took if k else 0.0  # the first round warms up
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    scored = build_batch(model, [f.text for f in facts] * 4, [f.target for f in facts] * 4)
    scoring = {"answer": 0.0, "full": 0.0}
    with torch.no_grad():
        for k in range(repeats):
            for name in (("answer", "full") if k % 2 == 0 else ("full", "answer")):
                _, took = timed(answer_logprobs if name == "answer" else full_logprobs, model, scored)
                scoring[name] += took
    print(f"relearning-attack step ({len(train)} facts, {tuple(batch.tokens.shape)} tokens): "
          f"{steps['answer'] / repeats:.2f} s answer positions only, {steps['full'] / repeats:.2f} s all "
          f"positions (ratio {steps['answer'] / steps['full']:.2f})")
    print(f"scoring {tuple(scored.tokens.shape)} tokens: {scoring['answer'] / repeats:.2f} s answer positions "
          f"only, {scoring['full'] / repeats:.2f} s all positions (ratio {scoring['answer'] / scoring['full']:.2f})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=6)
    parser.add_argument("--verify-editors", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, any of {', '.join(SECTIONS)} (default: all)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = load_model(device="cpu")
    facts = known_facts(model, load_facts("all", split="tune"), args.facts)
    layer = default_layer(model)
    if "stats" in sections:
        early_vs_whole_forward(model, [[layer], [layer - 1, layer + 1], [model.cfg.n_layers - 1]])
    rome(model, facts[0], progress=False).undo(model)  # statistics and prefixes, outside the timings
    if "attack" in sections:
        answer_only_vs_full(model, facts)
    if "value" in sections:
        value_and_rome(model, facts, layer)
    if "precision" in sections:
        print(f"bfloat16 matrix products natively on this CPU: {fast_bfloat16('cpu')}")
        rome_vs_peer(model, facts, ("bf16 products", "float32"), ValueSettings(low_precision=False))
    if "reads" in sections:
        rome_vs_peer(model, facts, ("distinct text", "every row"), peer_context=every_text_row)
    if "verify" in sections:
        verify_reuse(model, facts[0], [layer, max(0, layer - 2), layer + 2][: args.verify_editors])


def early_vs_whole_forward(model, layer_sets: list[list[int]], repeats: int = 2) -> None:
    """Seconds of the key statistics of each layer set, the forward pass stopped after the
    deepest layer's keys vs run whole (the full forward as the stopping hook's peer)."""
    rows = stats_module.cached_sample_tokens(model, stats_module.SampleSpec(), weights_hash(model))
    stopped = stats_module.forward_until
    whole = lambda model, tokens, modules: model(tokens)  # noqa: E731  (the peer: every block, logits)
    print(f"key statistics over {sum(map(len, rows))} tokens of the default text sample:")
    print("| layers | forward stopped (s) | whole forward (s) | ratio |")
    print("|---|---|---|---|")
    try:
        for layers in layer_sets:
            took, results = {"stopped": 0.0, "whole": 0.0}, {}
            for k in range(repeats):
                for name in (("stopped", "whole") if k % 2 == 0 else ("whole", "stopped")):
                    stats_module.forward_until = stopped if name == "stopped" else whole
                    results[name], seconds = timed(stats_module._accumulate, model, layers, rows, "bench", False)
                    took[name] += seconds / repeats
            for layer in layers:
                assert torch.equal(results["stopped"][layer].second_moment, results["whole"][layer].second_moment)
            print(f"| {layers} | {took['stopped']:.1f} | {took['whole']:.1f} | {took['stopped'] / took['whole']:.2f} |",
                  flush=True)
    finally:
        stats_module.forward_until = stopped


def value_and_rome(model, facts, layer: int) -> None:
    """Per fact: the value optimisation with the partial forward vs full forwards, and rome, all
    in float32."""
    print("| fact | steps | value, partial forward (s) | value, full forwards (s) | ratio | rome, float32 (s) |")
    print("|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for k, fact in enumerate(facts):
        runs = {}
        for partial in ((True, False) if k % 2 == 0 else (False, True)):
            runs[partial] = value_seconds(model, fact, layer, partial)
        (d_part, s_part, steps), (d_full, s_full, _) = runs[True], runs[False]
        assert torch.allclose(d_part, d_full, rtol=1e-3, atol=1e-4), fact.id
        edit, s_rome = timed(rome, model, fact, progress=False, settings=ValueSettings(low_precision=False))
        edit.undo(model)
        totals = [totals[0] + s_part, totals[1] + s_full, totals[2] + s_rome]
        print(f"| {fact.id} | {steps} | {s_part:.1f} | {s_full:.1f} | {s_part / s_full:.2f} | {s_rome:.1f} |",
              flush=True)
    print(f"| all {len(facts)} | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f} | "
          f"{totals[2] / len(facts):.1f} per edit |", flush=True)



def rome_vs_peer(model, facts, names: tuple[str, str], peer_settings: ValueSettings | None = None,
                 peer_context=nullcontext) -> None:
    """Per fact: the whole default ``rome`` against its peer (``rome`` with the value settings
    ``peer_settings``, inside ``peer_context()``), in alternating order; the steps each took and
    how alike the two updates are (cosine of ``dW``, and the target's log-probability on the
    fact's prompt after each, in float32). ``names`` label the default and the peer."""
    ours, theirs = names
    print(f"| fact | steps {ours} / {theirs} | rome, {ours} (s) | rome, {theirs} (s) | ratio | cos(dW) | "
          f"target log-prob after, {ours} / {theirs} |")
    print("|---|---|---|---|---|---|---|")
    totals = {True: 0.0, False: 0.0}
    for k, fact in enumerate(facts):
        runs = {}
        for default in ((True, False) if k % 2 == 0 else (False, True)):
            with nullcontext() if default else peer_context():
                settings = ValueSettings() if default else (peer_settings or ValueSettings())
                edit, seconds = timed(rome, model, fact, progress=False, settings=settings)
            after = float(score_targets(model, [fact.text], [fact.target]).logprob[0])
            update = torch.cat([delta.float().flatten() for delta in edit.deltas.values()])
            edit.undo(model)
            runs[default] = (seconds, edit.info["value"]["steps"], update, after)
            totals[default] += seconds
        (s_a, n_a, u_a, a_a), (s_b, n_b, u_b, a_b) = runs[True], runs[False]
        cos = float(torch.nn.functional.cosine_similarity(u_a, u_b, dim=0))
        print(f"| {fact.id} | {n_a} / {n_b} | {s_a:.1f} | {s_b:.1f} | {s_a / s_b:.2f} | {cos:.4f} | "
              f"{a_a:.2f} / {a_b:.2f} |", flush=True)
    print(f"| all {len(facts)} | | {totals[True]:.1f} | {totals[False]:.1f} | {totals[True] / totals[False]:.2f} | | |",
          flush=True)


@contextmanager
def every_text_row():
    """Inside ``with``: the value optimisation reads the text before the subject at every row's
    positions, repeated token prefixes included (what it did before :func:`value_module._distinct_text`)."""
    distinct = value_module._distinct_text
    value_module._distinct_text = lambda tokens, mask: mask.long()  # each position once, its own copy
    try:
        yield
    finally:
        value_module._distinct_text = distinct


def verify_reuse(model, fact, layers: list[int]) -> None:
    """Verify rome edits of ``fact`` at ``layers``, reusing the before state and not."""
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
