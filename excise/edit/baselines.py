"""Fine-tuning baselines that located edits are compared against.

* ``"gradient_ascent"``: minimise the target's log-likelihood on the fact's prompts;
* ``"counterexample"``: fine-tune towards another answer (the fact's ``new_target``, else the
  first neighbour's answer);
* ``"npo"``: negative preference optimisation, ``-(2/beta) log sigmoid(-beta (log p - log p_ref))``,
  which slows down once the target is less likely than under the reference model.

Either all parameters are trained (``params=None``) or only those owned by located components
(``params=[Neuron(..), Head(..), MLP(..)]`` -> their output projections; or parameter names).
Training stops once every training prompt meets the forgetting criterion of
:mod:`excise.criteria` (with ``margin`` nats to spare), or after ``steps`` steps. Adam's state
and steps are float32 whatever the model's dtype (:class:`_Float32Adam`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from excise.components import parameter_names
from excise.criteria import TRAINING_MARGIN, dethroned_and_fell
from excise.edit.prompts import rewriting_prompts
from excise.edit.record import Edit, compute_dtype, make_edit
from excise.interrupt import checkpoint
from excise.scoring import answer_logits, answer_logprobs, build_batch, sequence_logprobs

log = logging.getLogger(__name__)

OBJECTIVES = ("gradient_ascent", "counterexample", "npo")


@dataclass(frozen=True)
class FinetuneSettings:
    """Settings of :func:`finetune`, recorded with its Edit.

    ``steps`` (at most) Adam steps at learning rate ``lr`` (default: 3e-5 on all parameters,
    1e-3 on located ones); ``beta``: NPO's temperature; ``n_prefixes``: context prefixes the
    prompt is trained after; ``margin``: nats past the forgetting criterion training stops at.
    """

    objective: str = "gradient_ascent"
    steps: int = 30
    lr: float | None = None
    beta: float = 0.1
    n_prefixes: int = 4
    margin: float = TRAINING_MARGIN


def finetune(model, facts, objective: str = "gradient_ascent", params=None, *, steps: int = 30,
             lr: float | None = None, beta: float = 0.1, n_prefixes: int = 4,
             margin: float = TRAINING_MARGIN, progress: bool = True) -> Edit:
    """Fine-tune ``model`` to forget ``facts`` (one Fact or a list); applies and returns the Edit.

    ``params``: None (all parameters), located components, or parameter names; the other
    arguments: see :class:`FinetuneSettings`.
    """
    from excise.model import weights_hash

    facts = [facts] if hasattr(facts, "prompt") else list(facts)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    names, components = _trainable(model, params)
    lr = lr if lr is not None else (3e-5 if params is None else 1e-3)
    base_hash = weights_hash(model)
    prompts, answers, forget_targets = _training_rows(model, facts, objective, n_prefixes)
    train = build_batch(model, prompts, answers)
    check = build_batch(model, prompts, forget_targets)
    live = dict(model.original_model.named_parameters())
    originals = {n: live[n].detach().clone() for n in names}
    flags = {n: p.requires_grad for n, p in live.items()}
    for n, p in live.items():
        p.requires_grad_(n in names)
    history = []
    try:
        with torch.no_grad():
            ref = answer_logprobs(model, train)  # [rows]
            before = answer_logprobs(model, check)
        optimizer = _Float32Adam([live[n] for n in names], lr=lr)
        for step in tqdm(range(steps), desc=f"finetune ({objective})", disable=not progress):
            checkpoint("a fine-tuning step")
            logits = answer_logits(model, train)  # [n_answer, d_vocab]
            logprob = sequence_logprobs(train, logits)
            done = _forgotten(model, logits, check, before, margin, objective)
            history.append({"step": step, "mean_logprob": float(logprob.detach().mean())})
            if done:
                break
            loss = _loss(objective, logprob, ref, beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        new_weights = {n: live[n].detach().clone() for n in names}
    finally:  # an interrupted run (an error, Ctrl-C) must not leave the model half trained
        with torch.no_grad():
            for n in names:
                live[n].copy_(originals[n])
        for n, p in live.items():
            p.requires_grad_(flags[n])
    info = {"steps": len(history), "goal_met": bool(done), "trained_parameters": len(names),
            "history": history[-3:], "lr": lr}
    settings = {**asdict(FinetuneSettings(objective, steps, lr, beta, n_prefixes, margin)),
                "params": "all" if params is None else [str(p) for p in names]}
    return make_edit(model, f"finetune:{objective}", new_weights, settings=settings,
                     fact_ids=[f.id for f in facts], components=components, base_hash=base_hash,
                     info=info)


class _Float32Adam:
    """Adam whose state and steps are float32 whatever the parameters' dtype.

    A bfloat16 or float16 parameter is trained through a float32 copy: its gradient is copied
    there, Adam steps the copy, and the copy is written back rounded to the parameter's dtype.
    Stepping half-precision weights directly loses small steps to rounding, and in float16
    Adam's ``eps`` (1e-8) rounds to zero, so a zero gradient gives 0/0 = NaN weights.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        self.params = params
        self.copies = [p if compute_dtype(p.dtype) == p.dtype else p.detach().float().requires_grad_()
                       for p in params]
        self.optimizer = torch.optim.Adam(self.copies, lr=lr)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        pairs = [(p, c) for p, c in zip(self.params, self.copies) if c is not p]
        for param, copy in pairs:
            copy.grad = None if param.grad is None else param.grad.float()
        self.optimizer.step()
        for param, copy in pairs:
            param.copy_(copy)


def _trainable(model, params) -> tuple[list[str], list]:
    all_names = [n for n, _ in model.original_model.named_parameters()]
    if params is None:
        return all_names, []
    params = list(params)
    if all(isinstance(p, str) for p in params):
        unknown = [p for p in params if p not in all_names]
        if unknown:
            raise ValueError(f"no parameter named {unknown[0]!r} in model.original_model")
        return params, []
    names = parameter_names(model, params)
    if not names:
        raise ValueError("the given components own no parameters")
    return names, params


def _training_rows(model, facts, objective: str, n_prefixes: int):
    prompts, answers, targets = [], [], []
    for fact in facts:
        answer = fact.target
        if objective == "counterexample":
            answer = fact.new_target or (fact.neighbors[0].target if fact.neighbors else None)
            if not answer:
                raise ValueError(f"fact {fact.id!r}: counterexample fine-tuning needs a new_target "
                                 "or at least one neighbour whose answer can serve as one")
        for template in rewriting_prompts(model, fact.prompt, n_prefixes):
            prompts.append(template.format(fact.subject))
            answers.append(answer)
            targets.append(fact.target)
    return prompts, answers, targets


def _loss(objective: str, logprob, ref, beta: float) -> torch.Tensor:
    if objective == "gradient_ascent":
        return logprob.mean()
    if objective == "counterexample":
        return -logprob.mean()
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * (logprob - ref)).mean()


@torch.no_grad()
def _forgotten(model, logits, check, before, margin, objective) -> bool:
    """Every row's original target fell ``margin`` nats and lost rank one (``logits``: the
    training rows' :func:`~excise.scoring.answer_logits`, which are the check rows' unless the
    training rows hold a counter-answer)."""
    if objective == "counterexample":
        logits = answer_logits(model, check)
    seq = sequence_logprobs(check, logits)
    top = logits[check.first_answer_index().to(logits.device)].argmax(-1)
    return bool(dethroned_and_fell(before, seq, top != check.first_target_ids, margin).all())
