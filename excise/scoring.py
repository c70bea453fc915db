"""Score how strongly a model predicts a target after a prompt, for single- and multi-token targets.

A target that spans several tokens is scored by its full sequence log-probability under teacher
forcing: ``log p(t1 | prompt) + log p(t2 | prompt, t1) + ...``. A fact counts as *known* when greedy
decoding would produce the whole target (every target token is the argmax at its position); its
*rank* is the rank of the first target token among the vocabulary (0 = top).

Prompts and targets are tokenized and padded by :mod:`excise.tokens`, so "prompt" + "target" is
scored exactly as the model sees a prompt followed by its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from excise.hooks import forward_until, trace
from excise.tokens import check_length, encode_prompt, encode_target, pad_rows


@dataclass
class PromptBatch:
    """Prompts and targets packed into one right-padded token tensor.

    ``tokens`` is ``[batch, pos]``; for row ``b``, the target tokens ``target_ids[b]`` are
    predicted at positions ``answer_positions[b]`` (the last prompt token, then the target tokens
    but the last). ``prompt_lengths[b]`` counts BOS and prompt tokens.
    """

    tokens: torch.Tensor
    prompt_lengths: list[int]
    target_ids: list[list[int]]

    @property
    def answer_positions(self) -> list[list[int]]:
        return [[n - 1 + j for j in range(len(t))] for n, t in zip(self.prompt_lengths, self.target_ids)]

    @property
    def first_target_ids(self) -> torch.Tensor:
        """``[batch]`` first target token of each row."""
        return torch.tensor([ids[0] for ids in self.target_ids], device=self.tokens.device)

    def answer_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows``, ``positions`` ``[n_answer]``: every answer position, row by row (CPU)."""
        rows = [b for b, positions in enumerate(self.answer_positions) for _ in positions]
        positions = [p for ps in self.answer_positions for p in ps]
        return torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long)

    def answer_ids(self) -> torch.Tensor:
        """``[n_answer]`` the token each answer position should predict, row by row (CPU)."""
        return torch.tensor([t for ids in self.target_ids for t in ids], dtype=torch.long)

    def first_answer_index(self) -> torch.Tensor:
        """``[batch]`` where each row's first answer position sits in :meth:`answer_index` (CPU)."""
        lengths = torch.tensor([0] + [len(t) for t in self.target_ids[:-1]], dtype=torch.long)
        return lengths.cumsum(0)


def build_batch(model, prompts: Sequence[str], targets: Sequence[str]) -> PromptBatch:
    """Pack ``prompts[i] + targets[i]`` pairs into a right-padded token batch."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    prompt_ids = [encode_prompt(model, p) for p in prompts]
    target_ids = [encode_target(model, t) for t in targets]
    rows = [p + t[:-1] for p, t in zip(prompt_ids, target_ids)]
    for i, row in enumerate(rows):
        check_length(model, len(row), f"prompt {i} ({prompts[i]!r}) with its target")
    tokens, _ = pad_rows(model, rows)
    return PromptBatch(tokens, [len(p) for p in prompt_ids], target_ids)


def final_residual(model, tokens: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
    """The residual stream ``[batch, pos, d_model]`` entering the final norm, from a forward that
    stops there (differentiable when gradients are on; ``fwd_hooks`` apply as usual).

    Callers unembed only the positions they read (:func:`unembed_final`): over every position of
    a short prompt, the unembedding and its softmax (and, when training, their gradients) are a
    large share of the work.
    """
    with model.hooks(fwd_hooks=list(fwd_hooks)), \
            trace({"final": model.ln_final}, inputs=True, detach=False) as seen:
        forward_until(model, tokens, [model.ln_final])
    return seen["final"].input


def unembed_final(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., d_vocab]`` of final residuals ``[..., d_model]``: final norm, unembed, and
    the soft-cap of models that cap their logits (Gemma 2), which the bridge's full forward
    applies after the unembedding."""
    logits = model.unembed(model.ln_final(resid))
    cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def answer_logits(model, batch: PromptBatch, fwd_hooks=()) -> torch.Tensor:
    """``[n_answer, d_vocab]`` logits at every row's answer positions, row by row (what the full
    forward gives there, without unembedding the other positions). ``fwd_hooks`` that may act at
    or after the final norm (a name filter, or an ``ln_final``/``unembed`` hook) get the full
    forward instead, so they fire exactly once."""
    rows, positions = batch.answer_index()
    if any(not isinstance(name, str) or name.startswith(_AFTER_BLOCKS) for name, _ in fwd_hooks):
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=list(fwd_hooks))  # [batch, pos, d_vocab]
        return logits[rows.to(logits.device), positions.to(logits.device)]
    resid = final_residual(model, batch.tokens, fwd_hooks)  # [batch, pos, d_model]
    return unembed_final(model, resid[rows.to(resid.device), positions.to(resid.device)])


_AFTER_BLOCKS = ("ln_final", "unembed", "hook_unembed")
"""Hook names that fire at or after the final norm: :func:`final_residual` never reaches them."""


def first_answer_logprobs(model, batch: PromptBatch, fwd_hooks=()) -> torch.Tensor:
    """``[batch, d_vocab]`` float32 log-probabilities at each row's last prompt position (the
    distribution of the answer's first token; differentiable), from :func:`answer_logits`."""
    logits = answer_logits(model, batch, fwd_hooks)  # [n_answer, d_vocab]
    return logits[batch.first_answer_index().to(logits.device)].float().log_softmax(-1)


def answer_logprobs(model, batch: PromptBatch, fwd_hooks=()) -> torch.Tensor:
    """Sequence log-probability ``[batch]`` of each row's target (float32; differentiable)."""
    return sequence_logprobs(batch, answer_logits(model, batch, fwd_hooks))


def sequence_logprobs(batch: PromptBatch, logits: torch.Tensor) -> torch.Tensor:
    """``[batch]`` float32 sequence log-probability of each row's target from :func:`answer_logits`
    ``[n_answer, d_vocab]`` (differentiable)."""
    logprobs = logits.float().log_softmax(-1)
    ids = batch.answer_ids().to(logprobs.device)
    picked = logprobs.gather(-1, ids[:, None])[:, 0]  # [n_answer]
    return row_sums(picked, batch.answer_index()[0], len(batch.target_ids))


def row_sums(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[n_rows]`` sums of ``values`` ``[n]`` by their ``rows`` ``[n]`` (differentiable): each
    row's sequence log-probability from the log-probs of its answer tokens."""
    return values.new_zeros(n_rows).index_add(0, rows.to(values.device), values)


def target_logprob(logits: torch.Tensor, target_ids: list[int]) -> torch.Tensor:
    """Sequence log-probability ``[batch]`` of one target from logits at its read positions.

    ``logits`` is ``[batch, n_target, d_vocab]``: position ``j`` predicts ``target_ids[j]``.
    """
    logprobs = logits.float().log_softmax(-1)
    index = torch.tensor(target_ids, device=logits.device)
    return logprobs[:, torch.arange(len(target_ids)), index].sum(-1)


@dataclass
class Scores:
    """Scores of ``n`` (prompt, target) pairs.

    ``logprob`` ``[n]``: sequence log-probability of the target; ``rank`` ``[n]``: rank of the first
    target token (0 = top); ``known`` ``[n]``: greedy decoding produces the whole target.
    """

    logprob: torch.Tensor
    rank: torch.Tensor
    known: torch.Tensor

    @property
    def prob(self) -> torch.Tensor:
        return self.logprob.exp()

    def __len__(self) -> int:
        return len(self.logprob)

    def take(self, rows) -> Scores:
        """The scores of ``rows`` (indices, a slice or a mask), in that order."""
        return Scores(self.logprob[rows], self.rank[rows], self.known[rows])


@torch.no_grad()
def score_targets(
    model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32, fwd_hooks=()
) -> Scores:
    """Score each target after its prompt (see :class:`Scores`), in batches of ``batch_size``.

    ``fwd_hooks`` (TransformerLens ``(name, fn)`` pairs) are applied to every forward.
    """
    logprob, rank, known = [], [], []
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(model, prompts[start : start + batch_size], targets[start : start + batch_size])
        logits = answer_logits(model, batch, fwd_hooks).float()  # [n_answer, d_vocab]
        chosen = logits.gather(-1, batch.answer_ids().to(logits.device)[:, None])  # [n_answer, 1]
        logprob.append(sequence_logprobs(batch, logits).cpu())
        token_ranks = (logits > chosen).sum(-1).tolist()  # [n_answer]
        first = 0
        for ids_b in batch.target_ids:
            ranks = token_ranks[first:first + len(ids_b)]
            rank.append(ranks[0])
            known.append(all(r == 0 for r in ranks))
            first += len(ids_b)
    return Scores(torch.cat(logprob), torch.tensor(rank), torch.tensor(known))


def score_fact(model, fact, **kwargs) -> Scores:
    """Scores of ``fact``'s main prompt followed by each of its paraphrases (row 0 is the prompt)."""
    prompts = [fact.text, *fact.paraphrase_texts]
    return score_targets(model, prompts, [fact.target] * len(prompts), **kwargs)


@torch.no_grad()
def top_predictions(model, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``prompt`` with their probabilities."""
    logits = model(model.to_tokens(prompt))[0, -1].float()
    probs = logits.softmax(-1)
    top = probs.topk(k)
    return [(model.tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]
