"""Linear probe: read a forgotten answer out of the hidden states with a tuned lens.

A classifier trained on other facts of a relation cannot name an answer it never saw, and a
regression from hidden states to answer embeddings fitted on ``n`` facts only predicts vectors in
the span of those ``n`` answers (leave-one-out accuracy is near chance that way). So the probe
keeps the model's own readout as its prior and learns only a correction: a *tuned lens*
(Belrose et al. 2023) per layer, ``T(h) = h + h Δ + b``, read out through the model's final norm
and unembedding and trained with cross-entropy over the relation's answers.

For the training facts (other facts of the relation; never the forgotten one, never one sharing
its answer) we take the residual stream ``blocks.{l}.hook_resid_post`` at the prompt's last token
and fit ``Δ`` ``[d_model, d_model]`` and ``b`` ``[d_model]`` (zero-initialised, L2 penalty on ``Δ``)
so that ``T(h_i)`` ranks answer ``i`` first among the *training* answers. The forgotten answer is
then ranked among all candidates (the training answers plus it): because ``T`` starts from the
identity and the readout is the model's own, it can name an answer absent from training. The
probe *recovers* the fact when the forgotten answer ranks first at some layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from excise.hooks import act_name
from excise.tokens import encode_prompt, encode_target, pad_rows
from excise.verify.outcome import Answered, judge_known
from excise.verify.probes.base import RobustnessProbe, Skipped
from excise.verify.probes.relearn import adam


@dataclass(frozen=True)
class LinearProbeReading(Answered):
    """The forgotten answer's rank among ``n_candidates`` per layer (``ranks`` ``[layer]``), its
    best ``rank`` and that ``layer``; ``known``: rank 0 at some layer."""

    ranks: list[int]
    rank: int
    layer: int
    n_candidates: int
    n_train: int


@torch.no_grad()
def last_token_states(model, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
    """``[layer, n, d_model]`` residual stream after each layer at each prompt's last token."""
    names = [act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        rows = [encode_prompt(model, p) for p in prompts[start:start + batch_size]]
        tokens, _ = pad_rows(model, rows)  # [batch, pos]
        last = torch.tensor([len(r) - 1 for r in rows], device=tokens.device)  # [batch]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        chunks.append(torch.stack([cache[n][torch.arange(len(rows)), last] for n in names]))
    return torch.cat(chunks, dim=1).float().cpu()


def tuned_lens_logits(model, h_train, labels, h_test, readout, steps: int = 60, lr: float = 1e-2,
                      l2: float = 1e-2) -> torch.Tensor:
    """Fit ``T_l(h) = h + h Δ_l + b_l`` for every layer at once (independent losses, one loop).

    ``h_train`` ``[layer, n, d_model]`` -> ``labels`` ``[n]``; ``readout`` ``[d_model, c]`` holds
    the candidates' unembedding columns, and the training softmax runs over the labels' columns
    only. Returns centred candidate logits of ``h_test`` ``[layer, m, c]``.
    """
    n_layers, _, d_model = h_train.shape
    delta = torch.zeros(n_layers, d_model, d_model, requires_grad=True)
    bias = torch.zeros(n_layers, 1, d_model, requires_grad=True)
    seen = labels.unique()  # training answers only
    remap = torch.full((readout.shape[1],), -1, dtype=torch.long)
    remap[seen] = torch.arange(len(seen))
    target = remap[labels].repeat(n_layers)  # [layer * n]
    norm_flags = [p.requires_grad for p in model.ln_final.parameters()]
    for p in model.ln_final.parameters():
        p.requires_grad_(False)
    try:
        # the L2 penalty ``l2 * |Δ|²`` enters as Adam's weight decay (its gradient, ``2 l2 Δ``,
        # added to Δ's), which the fused step applies without materialising the penalty's graph
        groups = [{"params": [delta], "weight_decay": 2 * l2}, {"params": [bias]}]
        optimizer = adam(groups, lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                logits = _read(model, h_train + h_train @ delta + bias, readout[:, seen])
                loss = F.cross_entropy(logits.flatten(0, 1), target) * n_layers
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            # centre each candidate's logit on its mean over the training prompts, so that
            # answers seen in training get no head start over the unseen (forgotten) one
            offset = _read(model, h_train + h_train @ delta + bias, readout).mean(1, keepdim=True)
            return _read(model, h_test + h_test @ delta + bias, readout) - offset  # [layer, m, c]
    finally:
        for p, flag in zip(model.ln_final.parameters(), norm_flags):
            p.requires_grad_(flag)


def _read(model, resid: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """``[layer, n, c]`` candidate logits of residual states ``[layer, n, d_model]`` (final norm)."""
    normed = model.ln_final(resid.to(model.cfg.device)).float().cpu()  # [layer, n, d_model]
    return normed @ readout


def probe(model, fact, train, min_train: int = 6, steps: int = 60) -> LinearProbeReading:
    """Train the per-layer tuned lens on ``train`` probes; rank ``fact``'s answer at each layer.

    Fewer than ``min_train`` training facts are refused (``ValueError``): a probe fitted on a
    handful of points says nothing.
    """
    if len(train) < min_train:
        raise ValueError(f"the linear probe needs >= {min_train} facts of the relation, got {len(train)}")
    states = last_token_states(model, [p.prompt for p in train] + [fact.text])  # [layer, n+1, d_model]
    answers = list(dict.fromkeys([fact.target.strip()] + [p.target.strip() for p in train]))
    ids = [encode_target(model, " " + a)[0] for a in answers]
    w_u = model.unembed.W_U if hasattr(model.unembed, "W_U") else model.W_U  # [d_model, d_vocab]
    readout = w_u.detach()[:, ids].float().cpu()  # [d_model, c]
    labels = torch.tensor([answers.index(p.target.strip()) for p in train])  # [n]
    logits = tuned_lens_logits(model, states[:, :-1], labels, states[:, -1:], readout,
                               steps=steps)[:, 0]  # [layer, c]
    ranks = (logits > logits[:, :1]).sum(-1).tolist()  # [layer]
    best = min(range(len(ranks)), key=lambda i: (ranks[i], -i))
    return LinearProbeReading(known=ranks[best] == 0, ranks=ranks, rank=ranks[best], layer=best,
                              n_candidates=len(answers), n_train=len(train))


def measure(model, facts, setup) -> list[LinearProbeReading | Skipped]:
    """Per fact: :func:`probe` trained on ``setup.related``; skipped when it refuses to run."""
    readings = []
    for fact, related in zip(facts, setup.related):
        try:
            readings.append(probe(model, fact, related))
        except ValueError as err:
            readings.append(Skipped(str(err)))
    return readings


def judge(before: LinearProbeReading, after: LinearProbeReading, comparison=None):
    return judge_known("linear_probe", before, after,
                       f"linear probe (rank {after.rank} of {after.n_candidates} at layer {after.layer})")


PROBE = RobustnessProbe("linear_probe", measure, judge)
