"""LoRA relearning attack: the relearning attack with low-rank adapters, the base weights frozen.

Full fine-tuning (:mod:`.relearn`) moves every weight; an attacker with less compute, or an
open-weights user, more often trains low-rank adapters (LoRA: each projection ``W`` becomes
``W + (alpha / r) B A`` with ``A`` ``[r, d_in]`` and ``B`` ``[d_out, r]``, ``B`` starting at zero).
An edit that only hid a fact may come back under either. This probe trains rank
``setup.lora_rank`` adapters (peft) on the attention and MLP projections of every block, on the
same data as :mod:`.relearn` (other facts of the relation), with Adam at ``setup.lora_lr`` for the
largest of ``setup.lora_steps``, recording the forgotten target and the made-up-subject control at
each of those budgets in the one run. The status is judged at the largest budget, against the
prompt's score before the edit, like :func:`.relearn.judge_relearn`.

The adapters live inside the attacked model itself, so the attacked weights are the edited ones
and TransformerBridge's hooks keep working: peft replaces each projection's Hugging Face
``nn.Linear`` (``Conv1D`` for GPT-2), which the bridge's ``LinearBridge`` wraps, by a LoRA layer
around it; the bridge's wrapper and hook points stay. Only projections a forward pass actually
runs are adapted (GPT-2's bridge keeps an unused fused ``qkv`` copy beside the split ``q``/``k``/
``v`` it runs). :func:`lora_adapters` puts every original module back, unmerged, without
peft's ``unload`` (which, looking through the bridge's attribute pass-through, would replace the
bridge's wrappers themselves), so the model leaves bit-for-bit as it came.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from excise.verify.outcome import ProbeOutcome, Scored
from excise.verify.probes.base import RobustnessProbe, Skipped
from excise.verify.probes.relearn import (
    Curve,
    RelearnReading,
    attack_groups,
    curve_figure,
    judge_relearn,
    record_steps,
    train_and_watch,
)

log = logging.getLogger(__name__)

ADAPTER = "excise_relearn"
_IN_BLOCK = re.compile(r"\.\d+\.")  # a module inside a numbered block: "model.layers.3.<...>"


def lora_targets(model) -> list[str]:
    """Names (under ``model.original_model``) of the block projections a forward pass runs: every
    ``nn.Linear``/``Conv1D`` inside a numbered block that fires on a one-token input."""
    from transformers.pytorch_utils import Conv1D

    hf = model.original_model
    candidates = {n: m for n, m in hf.named_modules()
                  if isinstance(m, torch.nn.Linear | Conv1D) and _IN_BLOCK.search(n)}
    fired: set[str] = set()
    handles = [m.register_forward_hook(lambda *_, n=n: fired.add(n)) for n, m in candidates.items()]
    try:
        with torch.no_grad():
            model(model.to_tokens("The"))
    finally:
        for h in handles:
            h.remove()
    return [n for n in candidates if n in fired]


@contextmanager
def lora_adapters(model, rank: int, alpha: float | None = None, seed: int = 0) -> Iterator[list]:
    """Rank-``rank`` LoRA adapters on ``model``'s block projections, for the ``with`` block only.

    Yields the adapters' parameters (the only trainable ones inside the block; ``A`` drawn with
    ``seed``, ``B`` zero, scale ``alpha / rank``, ``alpha`` defaulting to ``rank``). On exit,
    even on error, every adapted module is put back as it was (never merged) and every
    parameter's ``requires_grad`` restored, so the weights and the module tree are as before.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    hf = model.original_model
    names = lora_targets(model)
    if not names:
        raise ValueError("found no linear projections inside the model's blocks to adapt")
    flags = [(p, p.requires_grad) for p in hf.parameters()]
    tree = [n for n, _ in hf.named_modules()]
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=0.0, target_modules=names)
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.filterwarnings("ignore", message="fan_in_fan_out")  # GPT-2's Conv1D: handled
            torch.manual_seed(seed)
            LoraModel(hf, config, ADAPTER)
        params = [p for n, p in hf.named_parameters() if f".{ADAPTER}." in n]
        for p in params:
            p.requires_grad_(True)
        log.info("LoRA rank %d on %d projections: %d trainable parameters", rank, len(names),
                 sum(p.numel() for p in params))
        yield params
    finally:
        _remove_adapters(hf)
        for p, flag in flags:
            p.grad = None
            p.requires_grad_(flag)
    if [n for n, _ in hf.named_modules()] != tree:
        raise RuntimeError("removing the LoRA adapters did not restore the model's module tree")


def _remove_adapters(hf) -> None:
    """Put each LoRA layer's base module back in its place (outermost layers first) and drop the
    ``peft_config`` peft attached to ``hf``."""
    from peft.tuners.lora import LoraLayer

    layers = [(n, m) for n, m in hf.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        parent, _, child = name.rpartition(".")
        owner = hf.get_submodule(parent) if parent else hf
        if owner._modules.get(child) is layer:
            owner._modules[child] = layer.get_base_layer()
    hf.__dict__.pop("peft_config", None)


def relearn_lora(model, train, watch, steps: int = 40, lr: float = 1e-3, rank: int = 8,
                 budgets: Sequence[int] = (), progress: bool = False) -> Curve:
    """Train rank-``rank`` LoRA adapters on ``train`` probes for ``steps`` Adam steps at ``lr``;
    track ``watch`` at step 0, every ``steps // 5`` steps and at each of ``budgets``.

    The base weights are frozen and the adapters removed on return (see :func:`lora_adapters`).
    """
    if not train:
        raise ValueError("relearning needs at least one training fact of the same relation")
    with lora_adapters(model, rank) as params:
        curve = train_and_watch(model, params, train, watch, steps, lr,
                                record_steps(steps, None, budgets), progress,
                                desc="LoRA relearning attack")
    log.info("LoRA relearning: %d steps on %d facts, watched prob %s -> %s", steps, len(train),
             curve.prob[0], curve.prob[-1])
    return curve


def measure(model, facts, setup) -> list[RelearnReading | Skipped]:
    """One LoRA attack per group of facts sharing their training data (as :mod:`.relearn`), run
    to the largest of ``setup.lora_steps`` and judged there."""
    budgets = sorted(set(setup.lora_steps))
    if not budgets or budgets[0] < 1:
        raise ValueError(f"lora_steps must be positive step counts, got {setup.lora_steps}")

    def run(model, train, watch):
        return relearn_lora(model, train, watch, steps=budgets[-1], lr=setup.lora_lr,
                            rank=setup.lora_rank, budgets=budgets, progress=setup.progress)

    return attack_groups(model, facts, setup, run, budgets, budgets[-1])


def judge(before, after: RelearnReading, comparison) -> ProbeOutcome:
    """The attack's result at its largest budget against the prompt's score before the edit."""
    prompt = comparison.before["prompt"]
    return judge_relearn(Scored(rank=int(prompt.rank[0]), prob=float(prompt.prob[0])), after,
                         f"LoRA relearning: probability returns to {after.prob:.2f} after "
                         f"{after.judged_steps} steps on {after.curve.n_train} other facts",
                         probe="relearn_lora")


def figure(fact_report):
    """Forgotten target's probability while LoRA adapters are trained, with the control."""
    return curve_figure(fact_report, "relearn_lora", "LoRA relearning attack")


PROBE = RobustnessProbe("relearn_lora", measure, judge, figure, title="LoRA relearning attack",
                        attack=True)
