"""The value side of a rank-one edit: which MLP output the subject should produce instead.

ROME splits an edit into a *key* (what the MLP sees at the subject's last token) and a *value*
(what it should write). The value is found by optimisation, without touching weights: a vector
``delta`` ``[d_model]`` is added to the MLP output at the subject's last token of the fact's prompt
and of the same prompt after a few context prefixes, and trained so that

* ``objective="forget"``: the answer distribution becomes the model's own distribution with the
  target's first token removed (KL to that renormalised distribution). This drives the target
  down without pushing the probability onto one specific other answer;
* ``objective="replace"``: the new target becomes the answer (ROME's classic edit);

while a KL term keeps the model's other predictions about the subject (``"{} is a"``-style
prompts) and a weight decay keeps ``delta`` small relative to the MLP's original output.
Optimisation stops early once every prompt meets the goal (forget: the target's sequence
probability fell by ``margin`` nats and it is no longer ranked first).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from excise.components import mlp_out_module
from excise.edit._common import (
    add_at_positions,
    first_answer_logprobs,
    first_target_ids,
    frozen,
    rewriting_prompts,
    subject_batch,
)
from excise.scoring import target_logprobs

log = logging.getLogger(__name__)

ESSENCE_TEMPLATES = ("{} is a", "{} is known for")


@dataclass(frozen=True)
class ValueSettings:
    """Hyper-parameters of the value optimisation (ROME's defaults where they apply)."""

    n_prefixes: int = 4
    steps: int = 25
    lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.1
    clamp_norm: float = 4.0
    margin: float = math.log(30.0)


def _objective_targets(fact, objective: str, new_target: str | None) -> str:
    if objective == "forget":
        return fact.target
    if objective == "replace":
        target = new_target or fact.new_target
        if not target:
            raise ValueError(f"fact {fact.id!r}: objective='replace' needs new_target= "
                             "(or a 'new_target' field in the fact)")
        return target
    raise ValueError(f"unknown objective {objective!r}; use 'forget' or 'replace'")


def compute_value(model, fact, layer: int, objective: str = "forget", new_target: str | None = None,
                  settings: ValueSettings | None = None) -> tuple[torch.Tensor, dict]:
    """Optimise ``delta`` ``[d_model]`` for the MLP output of ``layer`` at the subject's last token.

    Returns ``delta`` and an info dict (prompts used, steps taken, losses, probabilities).
    """
    s = settings or ValueSettings()
    answer = _objective_targets(fact, objective, new_target)
    templates = rewriting_prompts(model, fact.prompt, s.n_prefixes)
    n_rewrite = len(templates)
    all_templates = templates + list(ESSENCE_TEMPLATES)
    batch, positions = subject_batch(model, all_templates, [fact.subject] * len(all_templates),
                                     [answer] * n_rewrite + [fact.target] * len(ESSENCE_TEMPLATES))
    module = mlp_out_module(model, layer)
    with frozen(model):
        with torch.no_grad():
            base_out = _module_output_at(model, module, batch.tokens, positions[:1])
            logits0 = model(batch.tokens)
            lp0 = first_answer_logprobs(logits0, batch)  # [batch, d_vocab]
            seq0 = target_logprobs(logits0.float(), batch)[:n_rewrite]  # [n_rewrite]
            first = first_target_ids(batch)[:n_rewrite]
            forget_q = _without_targets(lp0[:n_rewrite], first)
        delta = torch.zeros(model.cfg.d_model, device=batch.tokens.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=s.lr)
        max_norm = s.clamp_norm * float(base_out.norm())
        history = []
        for step in range(s.steps):
            with add_at_positions(module, delta, positions):
                logits = model(batch.tokens)
            lp = first_answer_logprobs(logits, batch)
            if objective == "forget":
                rows = torch.arange(n_rewrite, device=lp.device)
                push = (lp[rows, first] - (lp0[rows, first] - s.margin)).clamp_min(0).mean()
                main = _kl(forget_q, lp[:n_rewrite]) + push
                seq = target_logprobs(logits.float(), batch)[:n_rewrite]
                done = bool(((seq <= seq0 - s.margin) & (lp[:n_rewrite].argmax(-1) != first)).all())
            else:
                seq = target_logprobs(logits.float(), batch)[:n_rewrite]
                n_tok = torch.tensor([len(t) for t in batch.target_ids[:n_rewrite]], device=seq.device)
                main = (-seq / n_tok).mean()
                done = bool(main < 0.05)
            essence = _kl(lp0[n_rewrite:].exp(), lp[n_rewrite:])
            decay = s.weight_decay * delta.norm() ** 2 / float(base_out.norm()) ** 2
            loss = main + s.kl_weight * essence + decay
            history.append({"step": step, "loss": float(loss.detach()), "main": float(main.detach()),
                            "essence_kl": float(essence.detach()),
                            "delta_norm": float(delta.detach().norm())})
            if done or step == s.steps - 1:
                break  # the returned delta is the one just evaluated
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    info = {
        "objective": objective, "answer": answer, "rewrite_prompts": [t.format(fact.subject) for t in templates],
        "steps": len(history), "goal_met": done, "final": history[-1],
        "target_logprob_before": seq0.tolist(), "target_logprob_after": seq.detach().tolist(),
        "mlp_output_norm": float(base_out.norm()), "delta_norm": float(delta.detach().norm()),
    }
    return delta.detach(), info


@torch.no_grad()
def _module_output_at(model, module, tokens, positions) -> torch.Tensor:
    """``[d_model]``: ``module``'s output at ``positions[b]`` averaged over the given rows."""
    captured = {}
    handle = module.register_forward_hook(lambda m, a, out: captured.__setitem__("out", out.detach()))
    try:
        model(tokens[: len(positions)])
    finally:
        handle.remove()
    rows = torch.arange(len(positions), device=tokens.device)
    return captured["out"][rows, positions].mean(0)


def _without_targets(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, d_vocab]`` probabilities with each row's target token removed, renormalised."""
    probs = logprobs.exp().clone()
    rows = torch.arange(len(ids), device=ids.device)
    probs[rows, ids] = 0.0
    return probs / probs.sum(-1, keepdim=True)


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(p || q)`` with ``p`` ``[batch, d_vocab]`` probabilities."""
    log_p = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
    return (p * (log_p - log_q)).sum(-1).mean()
