"""The value side of a rank-one edit: which MLP output the subject should produce instead.

ROME splits an edit into a *key* (what the MLP sees at the subject's last token) and a *value*
(what it should write). The value is found by optimisation, without touching weights: a vector
``delta`` ``[d_model]`` is trained on the fact's prompt, the prompt after a few context prefixes
and (``paraphrases=True``) the fact's paraphrase templates, bare and prefixed, so that

* ``objective="forget"``: the answer distribution becomes the model's own distribution with the
  target's first token removed (KL to that renormalised distribution), plus a hinge that pushes
  the target's first token ``margin`` nats down. This drives the target down without pushing the
  probability onto one specific other answer (``toward_unknown``: the distribution aimed at is
  the one the same prompt gets about made-up subjects, :mod:`excise.edit.unknown_answers`);
* ``objective="replace"``: the new target becomes the answer (ROME's classic edit);

while a KL term keeps the model's other predictions about the subject (``"{} is a"``-style
prompts, and the other facts the editor's own probes of the subject find:
:mod:`excise.edit.subject_probes`, which also adds the probes that state the fact itself to the
prompts to forget) and a weight decay keeps ``delta`` small relative to the MLP's original output.
Adam reaches the forgetting goal in a few steps, each moving every coordinate of ``delta`` by about
the step size, which a KL term barely bends; ``hold_kept`` instead takes each step off the
gradients of the kept probes' answers, so those answers stay put to first order.

How ``delta`` enters the forward pass: for MEMIT it is added at the subject's last token only.
For ROME, given the edit's direction ``u = C^-1 k* / (k*^T C^-1 k*)``, the rank-one edit
``W + u delta^T`` is simulated *exactly*: every token gets ``(k . u) delta``. The optimisation then
sees what the edit will really do: paraphrases whose subject key is only partly aligned with
``k*`` get a proportionally smaller push (and ``delta`` grows until they are forgotten too), and a
KL term on the tokens before the subject (ordinary text) penalises a direction that fires there.
Optimisation stops early once every prompt meets the goal (forget: the target's sequence
probability fell by ``margin`` nats and it is no longer ranked first), or, with ``patience``, once
its steps stop closing in on that goal; each step's record is kept in the info (``"history"``).
Prompts the edit's direction barely reaches (``k . u`` far below the other prompts': in practice
a subject that opens the text) are named in the info and the log, since they will probably keep
the answer; ``min_reach`` leaves them out of the losses and the goal.

Each step runs only what ``delta`` can change: blocks ``layer..`` from the cached residual stream
entering block ``layer`` (:class:`excise.runner.Runner`), and the unembedding only at the positions
a loss reads (the answer positions and the text before the subject, each distinct token prefix of
that text once: :func:`_distinct_text`). The first step, taken while
``delta`` is still zero, checks that partial forward against the unedited model's full forward; a
model where they differ is optimised with full forwards instead (float32 ones, whatever
``low_precision`` says).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

import torch

from excise.components import frozen, mlp_out_module
from excise.criteria import TRAINING_MARGIN, dethroned_and_fell
from excise.edit.answer_probes import answer_probes
from excise.edit.keys import subject_batch
from excise.edit.prompts import fact_templates
from excise.edit.subject_probes import SPECIFIC_MIN_CONFIDENCE, SPECIFICITY, subject_probes
from excise.edit.unknown_answers import unknown_answer_logprobs
from excise.hooks import act_name, trace
from excise.interrupt import checkpoint
from excise.precision import bfloat16_matmuls, fast_bfloat16
from excise.runner import Runner
from excise.scoring import row_sums
from excise.tokens import encode_target

log = logging.getLogger(__name__)

ESSENCE_TEMPLATES = ("{} is a", "{} is known for")
LOW_REACH = 0.2
"""A prompt to forget whose ``k . u`` is below this share of the best-reached prompt's is named
as barely reached (:func:`reached`)."""
REPLACE_GOAL = 0.05
"""Replacing, the optimisation may stop once the new target's mean per-token loss is under this."""


@dataclass(frozen=True)
class ValueSettings:
    """Hyper-parameters of the value optimisation (ROME's defaults where they apply).

    ``paraphrases``: also optimise on the fact's paraphrase templates (bare and prefixed), so the
    edit covers other wordings of the relation. ``text_kl_weight``: weight of the KL term that
    keeps the predictions at the tokens *before* the subject unchanged; it only bites when the
    edit is simulated exactly (``direction=`` in :func:`compute_value`), where it penalises a
    rank-one direction that also fires on ordinary text. ``essence_templates``: prompts about
    the subject alone whose predictions a KL term keeps (minus the target, when forgetting).
    ``margin``: nats the target's first token is pushed down, and the goal that stops the
    optimisation early (:data:`excise.criteria.TRAINING_MARGIN`). ``subject_probes``: probe the
    subject with :data:`~excise.edit.subject_probes.SUBJECT_TEMPLATES` and forget where the model
    states the fact, keep (KL, like the essence prompts) where it states another.
    ``specific_probes``: of those, keep only the probes whose answer is the subject's own (far
    likelier than after made-up subjects: ``specificity=`` of
    :func:`~excise.edit.subject_probes.subject_probes`) rather than a template's continuation.
    ``hold_kept``: take each step only along directions that leave the log-probs of the subject
    probes' kept answers unchanged to first order (the step projected off their gradients): the
    keep term alone barely bends Adam's first steps, which reach the goal in a few.
    ``low_precision``: run the matrix products of the blocks the optimisation runs in bfloat16
    (:func:`excise.precision.bfloat16_matmuls`; the weights are restored bit for bit afterwards;
    the logits stay float32, and a goal reached counts once a float32 forward confirms it):
    None (the default) does where the model's weights are float32 on hardware that multiplies
    bfloat16 natively (:func:`excise.precision.fast_bfloat16`), True does on any device, False
    never does. ``bench/edit_speed.py`` measures the time saved and ``bench/forget_quality.py``
    (row ``rome[low_precision=False]``) what it changes in the edits.
    ``patience``: stop once ``patience`` steps in a row have not brought the prompts still short of
    the goal ``min_progress`` (a share) closer to it than the best step before them (the nats they
    lack: :func:`_shortfalls`): a prompt the edit's direction barely reaches, or one hovering at
    the margin, would otherwise hold the optimisation to ``steps`` for nothing; 0 never stops early
    short of the goal. ``stall_past_reach``: with ``direction=``, count a stall only once every
    prompt the direction reaches (``k . u`` at :data:`LOW_REACH` of the best or more) meets the
    goal, so that only the barely reached ones are left short of it.
    ``same_answer``: ask the unedited model up to this many prompts about *other* subjects that
    it answers with the fact's target (:mod:`excise.edit.answer_probes`), and keep their whole
    answer distributions, target included (a KL term, weight ``same_answer_weight``), so the value
    does not take the answer from them; 0 asks none. Only with ``direction=`` (the exact rank-one
    simulation): a value added at this subject's token alone cannot reach them.
    ``min_reach``: with ``direction=`` (the exact rank-one simulation), a prompt to forget whose
    subject key the edit reaches with ``k . u`` below this share of the best-reached prompt's
    ``k . u`` is left out of the losses and of the goal (see :func:`reached`); 0 keeps them all
    (the default: leaving them out is faster but kept fewer of the subject's other facts on the
    tuning facts; README).
    ``toward_unknown``: forgetting, aim each prompt's answer distribution at what the same
    prompt gets about made-up subjects (:mod:`excise.edit.unknown_answers`), minus the target,
    instead of at the model's own distribution minus the target.
    """

    n_prefixes: int = 4
    steps: int = 25
    lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.1
    clamp_norm: float = 2.0
    margin: float = TRAINING_MARGIN
    paraphrases: bool = True
    text_kl_weight: float = 0.5
    essence_templates: tuple[str, ...] = ESSENCE_TEMPLATES
    subject_probes: bool = True
    specific_probes: bool = False
    min_reach: float = 0.0
    low_precision: bool | None = None
    patience: int = 0
    min_progress: float = 0.05
    stall_past_reach: bool = False
    same_answer: int = 0
    same_answer_weight: float = 1.0
    toward_unknown: bool = False
    hold_kept: bool = False


def objective_target(fact, objective: str, new_target: str | None) -> str:
    """The answer an edit works on: the fact's target to forget, or the new target to write."""
    if objective == "forget":
        return fact.target
    if objective == "replace":
        target = new_target or fact.new_target
        if not target:
            raise ValueError(f"fact {fact.id!r}: objective='replace' needs new_target= "
                             "(or a 'new_target' field in the fact)")
        return target
    raise ValueError(f"unknown objective {objective!r}; use 'forget' or 'replace'")


@dataclass
class _Reads:
    """The positions a loss reads, as indices into the flat list of read positions.

    ``rows``, ``positions`` ``[n_read]``: the read positions (row-major); ``first`` ``[batch]``:
    each row's last prompt position; ``answer``, ``answer_token``, ``answer_row`` ``[n_answer]``:
    each answer token's position, id and row; ``text`` ``[n_text]``: the tokens before the subject,
    each distinct token prefix once, and ``text_weight`` ``[n_text]`` how many rows share it
    (:func:`_distinct_text`).
    """

    rows: torch.Tensor
    positions: torch.Tensor
    first: torch.Tensor
    answer: torch.Tensor
    answer_token: torch.Tensor
    answer_row: torch.Tensor
    text: torch.Tensor
    text_weight: torch.Tensor

    @classmethod
    def of(cls, batch, text_mask: torch.Tensor) -> _Reads:
        copies = _distinct_text(batch.tokens, text_mask)  # [batch, pos]
        text_mask = copies > 0
        need = text_mask.clone()  # [batch, pos]
        for b, positions in enumerate(batch.answer_positions):
            need[b, positions] = True
        index = torch.full(need.shape, -1, dtype=torch.long)
        index[need] = torch.arange(int(need.sum()))
        rows, positions = need.nonzero(as_tuple=True)
        answer_row, answer_position = batch.answer_index()
        answer = index[answer_row, answer_position]
        first = answer[batch.first_answer_index()]
        return cls(rows, positions, first, answer, batch.answer_ids(), answer_row, index[text_mask],
                   copies[text_mask].float())

    def read(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From log-probs ``[n_read, d_vocab]``: the first answer token's distribution ``[batch,
        d_vocab]``, each row's target sequence log-prob ``[batch]`` and the text positions'
        distributions ``[n_text, d_vocab]``."""
        device = logprobs.device
        picked = logprobs[self.answer.to(device), self.answer_token.to(device)]  # [n_answer]
        seq = row_sums(picked, self.answer_row, len(self.first))
        return logprobs[self.first.to(device)], seq, logprobs[self.text.to(device)]


@dataclass
class _Problem:
    """Everything the optimisation loop needs, computed once from the unedited model."""

    batch: object
    positions: torch.Tensor  # [batch] subject's last token
    n_rewrite: int
    reads: _Reads
    runner: Runner | None  # None: optimise with full forwards
    layer: int
    resid: torch.Tensor  # [batch, pos, d_model] entering block `layer`
    logits0: torch.Tensor | None  # [n_read, d_vocab] the full forward's, before the edit (until checked)
    lp0: torch.Tensor  # [batch, d_vocab] answer log-probs before the edit
    seq0: torch.Tensor  # [n_rewrite] target sequence log-probs before the edit
    first: torch.Tensor  # [n_rewrite] first answer token
    keys: torch.Tensor  # [n_rewrite, d_mlp] the MLP's key at the subject, before the edit
    aimed: torch.Tensor  # [n_rewrite] bool: prompts the losses and the goal count
    forget_q: torch.Tensor  # [n_rewrite, d_vocab] the distribution aimed at, without the target
    essence_q: torch.Tensor  # [n_essence, d_vocab] what the essence prompts should predict
    text_lp0: torch.Tensor  # [n_text, d_vocab] next-token log-probs before the subject, before the edit
    base_norm: float
    exact_seq0: torch.Tensor | None = None  # [n_rewrite] seq0 from float32 products (seq0 may be rebased)
    reachable: torch.Tensor | None = None  # [n_rewrite] bool: k . u at LOW_REACH of the best or more
    n_others: int = 0  # rows at the batch's end about other subjects with the same answer
    others_q: torch.Tensor | None = None  # [n_others, d_vocab] what they should predict (target included)
    unknown_lp: torch.Tensor | None = None  # [n_rewrite, d_vocab] made-up subjects' answers (toward_unknown)


def compute_value(model, fact, layer: int, objective: str = "forget", new_target: str | None = None,
                  settings: ValueSettings | None = None,
                  direction: torch.Tensor | None = None,
                  output_scale: float | None = None) -> tuple[torch.Tensor, dict]:
    """Optimise ``delta`` ``[d_model]`` for the MLP output of ``layer`` at the subject's last token.

    Without ``direction`` ``delta`` is added at the subject's last token only (what MEMIT needs).
    With ``direction`` ``u`` ``[d_mlp]`` the rank-one edit ``W + u delta^T`` is simulated exactly
    (every token gets ``(k . u) delta``), so the loss sees the edit's true effect on the prompts,
    on the subject's other prompts and on the text before the subject.
    ``delta`` is float32 whatever the model's dtype (the losses are taken in float32 too); the
    forward pass adds it in the model's dtype, and runs its matrix products in bfloat16 where
    ``settings.low_precision`` says so (:func:`low_precision`).
    ``delta``'s scale (its norm clamp and weight decay) is the MLP's output norm at the subject on
    the prompts to forget; ``output_scale`` caps it (:func:`output_scale` of the unedited model,
    for an edit that follows others: earlier edits can inflate this subject's MLP output, and a
    clamp relative to the inflated output lets each later edit grow).
    Returns ``delta`` and an info dict (prompts used, steps taken, losses, probabilities); its
    ``"history"`` holds each step's record (loss and its terms, the value's norm, the shortfalls of
    :func:`_shortfalls`), so a stop can be read as it happened: what the last steps still bought.
    """
    s = settings or ValueSettings()
    answer = objective_target(fact, objective, new_target)
    templates, essence, found = _templates(model, fact, s)
    # without a direction the value is added at this subject only, and cannot reach other subjects
    others = answer_probes(model, fact, s.same_answer) if s.same_answer and direction is not None else []
    module = mlp_out_module(model, layer)
    with frozen(model):
        prob = _prepare(model, layer, fact, templates, answer, objective, essence, others,
                        toward_unknown=s.toward_unknown and objective == "forget")
        held = _held_answers(model, found, templates, essence) if s.hold_kept else None
        if output_scale is not None and output_scale < prob.base_norm:
            prob.base_norm = float(output_scale)
        prompts = [t.format(fact.subject) for t in templates]
        reach, low = None, []
        if direction is not None:
            reach = prob.keys.float() @ direction.to(prob.keys.device, torch.float32)  # [n_rewrite]
            if objective == "forget" and s.min_reach > 0:
                prob.aimed = reached(reach, s.min_reach).to(prob.first.device)
            prob.reachable = reached(reach, LOW_REACH).to(prob.first.device)
            low = [(p, float(r), bool(a)) for p, ok, r, a in zip(prompts, prob.reachable, reach, prob.aimed) if not ok]
            _say_low_reach(fact, low, len(prompts), float(reach.max()), layer)
        delta = torch.zeros(model.cfg.d_model, dtype=torch.float32,  # whatever the model's dtype
                            device=prob.batch.tokens.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=s.lr)
        history = []
        bf16 = low_precision(model, layer, s)
        rejected = 0  # goals reached with bfloat16 products that float32 ones did not confirm
        exact_step = -1  # the last step whose goal a float32 forward judged
        n_batch = prob.batch.tokens.shape[0]
        with ExitStack() as precision:
            products = precision.enter_context(bfloat16_matmuls(_downstream(model, layer))) if bf16 else None
            for step in range(s.steps):
                checkpoint("a value-optimisation step")
                # held answers need each row's gradient apart: one copy of delta per batch row
                rows_delta = delta.unsqueeze(0).repeat(n_batch, 1) if held else delta
                edit = partial(_edited, module, rows_delta, prob.positions, direction)  # the value's hook
                with edit():
                    logits = _read_logits(model, prob)
                    if step == 0 and not _checked(prob, logits, bf16):
                        precision.close()  # full forwards run in float32 (bfloat16 would unembed coarsely)
                        bf16, products = False, None
                        logits = _read_logits(model, prob)  # this step again, as the references were read
                    elif step == 0 and bf16:  # every loss compares forwards of one precision
                        _set_references(prob, logits, objective)
                logprobs = logits.float().log_softmax(-1)
                loss, done, seq, record = _loss(logprobs, prob, objective, s, delta,
                                                with_text=direction is not None)
                history.append({"step": step, **record})
                if done and bf16:
                    done, exact_seq = _goal_in_float32(model, prob, products, edit, objective, s)
                    seq, rejected, exact_step = exact_seq, rejected + (not done), step
                if done or step == s.steps - 1 or _stalled(history, s):
                    break  # the returned delta is the one just evaluated
                optimizer.zero_grad()
                held_grads = _held_gradients(logprobs, prob, held, rows_delta) if held else None
                loss.backward()
                before_step = delta.detach().clone()
                optimizer.step()
                with torch.no_grad():
                    if held_grads is not None:
                        delta.copy_(before_step + _off(held_grads, delta - before_step))
                    max_norm = s.clamp_norm * prob.base_norm
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
            if bf16 and exact_step != step:  # the goal and log-probs reported are float32's
                done, seq = _goal_in_float32(model, prob, products, edit, objective, s)
    info = {
        "objective": objective, "answer": answer, "rewrite_prompts": prompts,
        "steps": len(history), "goal_met": done, "final": history[-1], "history": history,
        "stopped": "goal" if done else "steps" if len(history) == s.steps else "stalled",
        "exact": direction is not None,
        "partial_forward": prob.runner is not None, "low_precision": bf16,
        "goal_rejected_in_float32": rejected,
        "target_logprob_before": prob.exact_seq0.tolist(), "target_logprob_after": seq.detach().tolist(),
        "mlp_output_norm": prob.base_norm, "delta_norm": float(delta.detach().norm()),
        "kept_prompts": [t.format(fact.subject) for t in essence],
        "same_answer_prompts": [t.format(subject) for t, subject in others],
        "reach": None if reach is None else [round(float(r), 4) for r in reach],
        "low_reach_prompts": [p for p, _, _ in low],
        "left_out_prompts": [p for p, aimed in zip(prompts, prob.aimed.tolist()) if not aimed],
        "subject_probes": None if found is None else {
            "forget": list(found.forget), "keep": list(found.keep), "keep_answers": list(found.keep_answers)},
    }
    return delta.detach(), info


def _held_answers(model, found, templates, essence) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch rows ``[n_held]`` of the subject probes kept (their place after the prompts to
    forget) and the token ``[n_held]`` of each one's kept answer (the probes' own ids, else the
    answer's first token); None when there are none."""
    if found is None:
        return None
    ids = found.keep_ids or [encode_target(model, a)[0] for a in found.keep_answers]
    pairs = [(len(templates) + essence.index(t), i) for t, i in zip(found.keep, ids) if t in essence]
    if not pairs:
        return None
    rows, ids = zip(*pairs)
    return torch.tensor(rows), torch.tensor(ids)


def _held_gradients(logprobs, prob: _Problem, held, rows_delta: torch.Tensor) -> torch.Tensor:
    """``[n_held, d_model]``: the gradient with respect to the value of each held answer's
    log-prob, from the log-probs ``[n_read, d_vocab]`` of this step's forward (graph kept), in one
    backward pass: each batch row added its own copy of the value (``rows_delta`` ``[batch,
    d_model]``), and rows do not mix in a forward."""
    rows, ids = held
    lp = prob.reads.read(logprobs)[0]
    picked = lp[rows.to(lp.device), ids.to(lp.device)]  # [n_held]
    (grads,) = torch.autograd.grad(picked.sum(), rows_delta, retain_graph=True)  # [batch, d_model]
    return grads[rows.to(grads.device)]


def _off(grads: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``step`` ``[d_model]`` minus its part in the span of ``grads`` ``[n, d_model]``."""
    basis, _ = torch.linalg.qr(grads.T)  # [d_model, n] orthonormal
    return step - basis @ (basis.T @ step)


def reached(reach: torch.Tensor, min_reach: float) -> torch.Tensor:
    """``[n]`` bool: the prompts to forget that a rank-one edit reaches, from each prompt's
    ``k . u`` ``[n]`` (its subject key against the edit's direction, which scales the value the
    edit adds there): those at ``min_reach`` of the best-reached prompt's or more.

    A subject that *opens* the text has a very different key (the first position after BOS is
    where attention sinks), and for some subjects the direction barely reaches it: the value
    would have to grow many times over to move those prompts, and the optimisation spends its
    steps and the value's norm on them in vain. ``info["low_reach_prompts"]`` names those below
    :data:`LOW_REACH`; ``ValueSettings.min_reach`` leaves them out of the losses and the goal, so
    the edit stops once the prompts it can reach are forgotten (verification still scores them).
    """
    best = reach.max()
    if not best > 0:
        return torch.ones_like(reach, dtype=torch.bool)
    return reach >= min_reach * best


def _say_low_reach(fact, low: list[tuple[str, float, bool]], n_prompts: int, best: float, layer: int) -> None:
    """Log the prompts to forget below :data:`LOW_REACH` (``(prompt, k . u, optimised)`` each): a
    warning when the fact's own prompt is one of them (the edit will probably not forget what it
    was asked to), else at info level."""
    if not low:
        return
    listed = "; ".join(f"{p!r} (k.u {r:.2f}{'' if a else ', left out'})" for p, r, a in low)
    level = logging.WARNING if fact.text in [p for p, _, _ in low] else logging.INFO
    log.log(level, "the rank-one edit at layer %d barely reaches %d of %d prompts to forget (best k.u "
            "%.2f), which will probably keep the answer: %s. Where the subject opens the text its key "
            "differs; another layer may reach it.", layer, len(low), n_prompts, best, listed)


def output_scale(model, fact, layer: int, objective: str = "forget", new_target: str | None = None,
                 settings: ValueSettings | None = None) -> float:
    """The scale :func:`compute_value` gives ``delta`` on ``model`` as it is now (the MLP's mean
    output norm at the subject on the prompts to forget): measured on the unedited model before
    a sequence of edits, it is each later edit's ``output_scale``."""
    s = settings or ValueSettings()
    answer = objective_target(fact, objective, new_target)
    templates, essence, _ = _templates(model, fact, s)
    with frozen(model):
        return _prepare(model, layer, fact, templates, answer, objective, essence).base_norm


def _templates(model, fact, s: ValueSettings) -> tuple[list[str], list[str], object]:
    """The prompts to forget (the fact's wordings, then the subject probes that state it), the
    prompts whose predictions are kept, and the subject probes found (or None)."""
    templates = fact_templates(model, fact, s.n_prefixes, s.paraphrases)
    essence = list(s.essence_templates)
    found = None
    if s.subject_probes:
        found = (subject_probes(model, fact, min_confidence=SPECIFIC_MIN_CONFIDENCE, specificity=SPECIFICITY)
                 if s.specific_probes else subject_probes(model, fact))
        templates += [t for t in found.forget if t not in templates]
        essence += [t for t in found.keep if t not in essence]
    return templates, essence, found


def _edited(module, delta: torch.Tensor, positions: torch.Tensor, direction: torch.Tensor | None):
    """Inside ``with``, ``module``'s output gets ``delta`` ``[d_model]``: at ``positions[b]`` of
    row ``b`` (``direction=None``), or at every token scaled by ``k . direction``, where ``k``
    ``[d_mlp]`` is the module's input there: the exact effect of the rank-one update
    ``W + direction delta^T``, on the subject and on every other token, without touching ``W``."""
    def add(key, inputs, output):  # inputs [batch, pos, d_mlp], output [batch, pos, d_model]
        step = delta.to(output.device, output.dtype)  # float32 delta, in the layer's dtype and device
        if direction is None:  # a delta [d_model], or [batch, d_model]: one per row
            rows = torch.arange(output.shape[0], device=output.device)
            bump = torch.zeros_like(output)
            bump[rows, positions.to(output.device)] = step
            return output + bump
        coeff = inputs @ direction.to(inputs.device, inputs.dtype)  # [batch, pos]
        return output + coeff[..., None] * (step[:, None] if step.dim() == 2 else step)

    return trace({"mlp_out": module}, edit_output=add)


@torch.no_grad()
def _prepare(model, layer: int, fact, templates, answer, objective, essence_templates, others=(),
             toward_unknown: bool = False) -> _Problem:
    """The batch (prompts to forget, essence prompts, then ``others``: ``(template, subject)``
    pairs about other subjects whose answers are kept whole) and the unedited model's references
    (``toward_unknown``: the prompts to forget aim at made-up subjects' answers)."""
    n_rewrite = len(templates)
    essence = list(essence_templates)
    all_templates = templates + essence + [t for t, _ in others]
    subjects = [fact.subject] * (n_rewrite + len(essence)) + [subject for _, subject in others]
    batch, positions = subject_batch(model, all_templates, subjects,
                                     [answer] * n_rewrite + [fact.target] * (len(essence) + len(others)))
    entering = act_name("resid", layer)
    # one forward: logits, the MLP's output, and the block inputs a partial forward starts from
    with trace({"mlp_out": mlp_out_module(model, layer)}, inputs=True, outputs=True) as seen:
        runner = Runner(model, batch.tokens, [entering])
    base_norm = _output_norm(seen["mlp_out"].output[:n_rewrite], positions[:n_rewrite])
    rows = torch.arange(n_rewrite)
    keys = seen["mlp_out"].input[rows.to(seen["mlp_out"].input.device),
                                 positions[:n_rewrite].to(seen["mlp_out"].input.device)]
    reads = _Reads.of(batch, _before_subject_mask(model, all_templates, batch.tokens.shape))
    logits0 = runner.logits  # [batch, pos, d_vocab]
    full = logits0[reads.rows.to(logits0.device), reads.positions.to(logits0.device)]
    runner.logits = None  # only the read positions are needed from here on
    resid = runner.cache[entering]
    first = batch.first_target_ids[:n_rewrite]
    prob = _Problem(batch, positions, n_rewrite, reads, runner, layer, resid, full, None, None, first, keys,
                    torch.ones(n_rewrite, dtype=torch.bool, device=first.device), None, None, None, base_norm,
                    n_others=len(others))
    if toward_unknown:
        prob.unknown_lp = unknown_answer_logprobs(model, templates, answer).to(full.device)
    _set_references(prob, full, objective)
    prob.exact_seq0 = prob.seq0
    return prob


def _set_references(prob: _Problem, logits: torch.Tensor, objective: str) -> None:
    """What the losses compare with, from the unedited model's ``logits`` ``[n_read, d_vocab]``
    at the read positions: the answer distributions, the target sequence log-probs, the
    distributions to reach when forgetting and those the essence prompts and the text keep."""
    n = prob.n_rewrite
    lp0, seq0, prob.text_lp0 = prob.reads.read(logits.detach().float().log_softmax(-1))
    first_ids = prob.batch.first_target_ids.to(lp0.device)
    prob.lp0, prob.seq0 = lp0, seq0[:n]
    aim = lp0[:n] if prob.unknown_lp is None else prob.unknown_lp.to(lp0.device)
    prob.forget_q = _without_targets(aim, first_ids[:n])
    # forgetting: the essence prompts keep their distribution, minus the forgotten target itself
    end = len(first_ids) - prob.n_others  # the essence rows are n..end
    prob.essence_q = (_without_targets(lp0[n:end], first_ids[n:end]) if objective == "forget"
                      else lp0[n:end].exp())
    prob.others_q = lp0[end:].exp()  # other subjects keep their answer, the target included


def _partial_logits(runner: Runner, layer: int, resid: torch.Tensor, reads: _Reads) -> torch.Tensor:
    """``[n_read, d_vocab]``: blocks ``layer..`` run on ``resid`` (the residual entering block
    ``layer``), unembedded only at the read positions."""
    final = runner.final_resid(layer, resid)  # [batch, pos, d_model]
    picked = final[reads.rows.to(final.device), reads.positions.to(final.device)]  # [n_read, d_model]
    with torch.autocast(picked.device.type, enabled=False):  # logits always from float32 products:
        return runner.logits_of(picked[None])[0]  # bfloat16 ones would round a logit of 20 to 1/8


def _read_logits(model, prob: _Problem) -> torch.Tensor:
    """``[n_read, d_vocab]`` logits at the read positions on the model as it is now (hooks
    included): the partial forward, or a full forward where that was found to differ."""
    if prob.runner is not None:
        return _partial_logits(prob.runner, prob.layer, prob.resid, prob.reads)
    logits = model(prob.batch.tokens)
    reads = prob.reads
    return logits[reads.rows.to(logits.device), reads.positions.to(logits.device)]


def _checked(prob: _Problem, logits: torch.Tensor, low: bool) -> bool:
    """Whether the first step's partial-forward ``logits``, read while ``delta`` is zero, are the
    unedited model's full forward's (to bfloat16's rounding where the products ran in bfloat16:
    ``low``). Where they differ, the partial forward is dropped (``prob.runner = None``) and the
    optimisation goes on with full forwards, in float32; the caller then reads this step again."""
    full, prob.logits0 = prob.logits0, None  # needed only for this check
    if prob.runner is None or _same(full, logits, low):
        return True
    log.info("the partial forward from block %d differs from the full forward on this model; "
             "optimising with full forwards in float32", prob.layer)
    prob.runner = None
    return False


def _same(full: torch.Tensor, partial: torch.Tensor, low: bool = False) -> bool:
    """Whether the partial forward's logits equal the full forward's (to the rounding of the
    dtype the products ran in: bfloat16 where ``low``)."""
    tol = 1e-4 if full.dtype == torch.float32 and not low else 2e-2
    scale = float(full.float().abs().max().clamp_min(1.0))
    return bool((full.float() - partial.float()).abs().max() <= tol * scale)


def low_precision(model, layer: int, s: ValueSettings) -> bool:
    """Whether the value optimisation at ``layer`` runs its matrix products in bfloat16
    (``ValueSettings.low_precision``; None: where the weights are float32 on hardware that
    multiplies bfloat16 natively). Weights already in a 16-bit dtype never need it."""
    weight = mlp_out_module(model, layer).weight
    if s.low_precision is False or weight.dtype != torch.float32:
        return False
    return s.low_precision is True or fast_bfloat16(weight.device)


def _downstream(model, layer: int) -> list:
    """The blocks a partial forward from block ``layer`` runs (the final norm and the unembedding
    stay float32: :func:`_partial_logits`)."""
    return [model.blocks[i] for i in range(layer, model.cfg.n_layers)]


def _distinct_text(tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: at the first masked position of each distinct token prefix, how many of
    the positions in ``text_mask`` share that prefix; 0 everywhere else (the copies left out).

    A causal model's prediction at position ``p`` depends only on the tokens up to ``p``, and the
    edit acts token by token, so positions whose token prefixes are equal (every row's BOS; a
    context prefix that opens several templates) have equal logits: the unembedding and the
    text KL read each once, weighted by its copies, instead of once per row.
    """
    copies = torch.zeros(text_mask.shape, dtype=torch.long)
    first: dict[tuple[int, ...], tuple[int, int]] = {}
    rows = tokens.tolist()
    for row, position in text_mask.nonzero().tolist():
        copies[first.setdefault(tuple(rows[row][:position + 1]), (row, position))] += 1
    return copies


def _before_subject_mask(model, templates, shape) -> torch.Tensor:
    """``[batch, pos]`` True at positions whose next-token prediction precedes the subject.

    The last token before the subject is left out (its tokenization may merge with the
    subject's first token); BOS (or the first token) is always in.
    """
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, template in enumerate(templates):
        head = template[: template.index("{}")].rstrip()
        n_head = model.to_tokens(head, truncate=False).shape[-1] if head else 1
        mask[row, : max(1, n_head - 1)] = True
    return mask


def _loss(logprobs, prob: _Problem, objective: str, s: ValueSettings, delta, with_text: bool):
    """The loss, whether the goal is met, the target sequence log-probs and a history record, from
    the log-probs ``[n_read, d_vocab]`` at the read positions."""
    n = prob.n_rewrite
    lp, seq, text_lp = prob.reads.read(logprobs)
    seq = seq[:n]
    if objective == "forget":
        aimed = prob.aimed.to(lp.device)
        rows = torch.arange(n, device=lp.device)[aimed]
        first = prob.first.to(lp.device)[rows]
        push = (lp[rows, first] - (prob.lp0[rows, first] - s.margin)).clamp_min(0).mean()
        main = _kl(prob.forget_q[rows], lp[rows]) + push
    else:
        main = _replace_loss(prob, seq)
    done = _goal_met(prob, lp, seq, prob.seq0, objective, s)
    end = len(lp) - prob.n_others
    essence = _kl(prob.essence_q, lp[n:end])
    others = _kl(prob.others_q, lp[end:]) if prob.n_others else torch.zeros((), device=lp.device)
    text = (_kl(prob.text_lp0.exp(), text_lp, prob.reads.text_weight) if with_text
            else torch.zeros((), device=lp.device))
    decay = s.weight_decay * delta.norm() ** 2 / prob.base_norm ** 2
    loss = main + s.kl_weight * essence + s.same_answer_weight * others + s.text_kl_weight * text + decay
    record = {"loss": float(loss.detach()), "main": float(main.detach()), "essence_kl": float(essence.detach()),
              "same_answer_kl": float(others.detach()),
              "text_kl": float(text.detach()), "delta_norm": float(delta.detach().norm()),
              **_shortfalls(prob, lp.detach(), seq.detach(), objective, s)}
    return loss, done, seq, record


def _replace_loss(prob: _Problem, seq: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-prob of the new target over the prompts to rewrite."""
    n_tok = torch.tensor([len(t) for t in prob.batch.target_ids[:prob.n_rewrite]], device=seq.device)
    return (-seq / n_tok).mean()


def _goal_met(prob: _Problem, lp: torch.Tensor, seq: torch.Tensor, seq0: torch.Tensor, objective: str,
              s: ValueSettings) -> bool:
    """Whether the optimisation may stop, from the answer log-probs ``lp`` ``[batch, d_vocab]`` and
    the target sequence log-probs ``seq`` ``[n_rewrite]`` (``seq0`` before the edit): forgetting,
    every aimed prompt's target dethroned and fallen by the margin; replacing, the new target's
    mean per-token loss under :data:`REPLACE_GOAL`."""
    if objective != "forget":
        return bool(_replace_loss(prob, seq) < REPLACE_GOAL)
    n = prob.n_rewrite
    met = dethroned_and_fell(seq0.to(seq.device), seq, lp[:n].argmax(-1) != prob.first.to(lp.device), s.margin)
    return bool(met[prob.aimed.to(met.device)].all())


def _shortfalls(prob: _Problem, lp: torch.Tensor, seq: torch.Tensor, objective: str,
                s: ValueSettings) -> dict[str, float]:
    """How far the prompts are from the goal of :func:`_goal_met`, in nats, from the answer
    log-probs ``lp`` ``[batch, d_vocab]`` and the target sequence log-probs ``seq`` ``[n_rewrite]``:
    forgetting, summed over the aimed prompts, what the target's sequence log-prob must still fall
    to reach the margin plus what its first token must still fall to lose first place; replacing,
    the new target's mean per-token loss above the goal. ``"shortfall"`` over every aimed prompt,
    ``"reached_shortfall"`` over those the direction reaches (:attr:`_Problem.reachable`)."""
    if objective != "forget":
        short = float((_replace_loss(prob, seq) - REPLACE_GOAL).clamp_min(0))
        return {"shortfall": short, "reached_shortfall": short}
    first = prob.first.to(lp.device)
    rows = torch.arange(prob.n_rewrite, device=lp.device)
    fall = (seq - (prob.seq0.to(seq.device) - s.margin)).clamp_min(0)  # [n_rewrite]
    target = lp[rows, first]
    others = lp[:prob.n_rewrite].scatter(1, first[:, None], float("-inf")).max(-1).values
    short = fall + (target - others).clamp_min(0)  # [n_rewrite]
    aimed = prob.aimed.to(lp.device)
    reachable = aimed if prob.reachable is None else aimed & prob.reachable.to(lp.device)
    return {"shortfall": float(short[aimed].sum()), "reached_shortfall": float(short[reachable].sum())}


def _stalled(history: list[dict], s: ValueSettings) -> bool:
    """Whether the last ``s.patience`` steps (``history``'s records) brought the prompts no
    ``s.min_progress`` share closer to the goal than the best step before them (see
    :class:`ValueSettings`); never with ``patience`` 0, nor, with ``stall_past_reach``, while a
    prompt the direction reaches is short of the goal."""
    if not s.patience or len(history) <= s.patience:
        return False
    if s.stall_past_reach and history[-1]["reached_shortfall"] > 0:
        return False
    shortfalls = [record["shortfall"] for record in history]
    before = min(shortfalls[:-s.patience])
    return min(shortfalls[-s.patience:]) > (1 - s.min_progress) * before


@torch.no_grad()
def _goal_in_float32(model, prob: _Problem, products, edit, objective: str,
                     s: ValueSettings) -> tuple[bool, torch.Tensor]:
    """Whether a goal reached with bfloat16 products holds with float32 ones (the precision
    verification scores in), against the float32 log-probs before the edit; and the float32
    target sequence log-probs ``[n_rewrite]``. One forward without a backward pass, with ``edit()``
    (the value's hook) around it."""
    with products.exact(), edit():
        logits = _read_logits(model, prob)
    lp, seq, _ = prob.reads.read(logits.float().log_softmax(-1))
    seq = seq[:prob.n_rewrite]
    return _goal_met(prob, lp, seq, prob.exact_seq0, objective, s), seq


def _output_norm(output: torch.Tensor, positions: torch.Tensor) -> float:
    """Mean norm of the MLP's output ``[batch, pos, d_model]`` at ``positions[b]``: the scale of
    ``delta`` (its clamp and weight decay). A mean over all rewrite prompts, because the first
    one may open with the subject, where the output is unusually small."""
    rows = torch.arange(len(positions), device=output.device)
    return float(output[rows, positions.to(output.device)].float().norm(dim=-1).mean())


def _without_targets(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, d_vocab]`` probabilities with each row's target token removed, renormalised."""
    probs = logprobs.exp().clone()
    rows = torch.arange(len(ids), device=ids.device)
    probs[rows, ids] = 0.0
    return probs / probs.sum(-1, keepdim=True)


def _kl(p: torch.Tensor, log_q: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``KL(p || q)`` with ``p`` ``[batch, d_vocab]`` probabilities, each row
    counted ``weight[row]`` times (``[batch]``; once each without it)."""
    log_p = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
    kl = (p * (log_p - log_q)).sum(-1)  # [batch]
    if weight is None:
        return kl.mean()
    weight = weight.to(kl.device)
    return (kl * weight).sum() / weight.sum()
