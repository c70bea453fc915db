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
    def last_prompt_positions(self) -> torch.Tensor:
        return torch.tensor([n - 1 for n in self.prompt_lengths], device=self.tokens.device)

    @property
    def first_target_ids(self) -> torch.Tensor:
        """``[batch]`` first target token of each row."""
        return torch.tensor([ids[0] for ids in self.target_ids], device=self.tokens.device)

    def first_answer_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """``[batch, d_vocab]`` log-probabilities at each row's last prompt position."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, self.last_prompt_positions].float().log_softmax(-1)


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


def target_logprob(logits: torch.Tensor, target_ids: list[int]) -> torch.Tensor:
    """Sequence log-probability ``[batch]`` of one target from logits at its read positions.

    ``logits`` is ``[batch, n_target, d_vocab]``: position ``j`` predicts ``target_ids[j]``.
    """
    logprobs = logits.float().log_softmax(-1)
    index = torch.tensor(target_ids, device=logits.device)
    return logprobs[:, torch.arange(len(target_ids)), index].sum(-1)


def target_logprobs(logits: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Sequence log-probability of each row's target, ``[batch]``; differentiable.

    ``logits`` is ``[batch, pos, d_vocab]`` from a forward pass over ``batch.tokens``.
    """
    logprobs = logits.log_softmax(dim=-1)
    totals = []
    for b, (positions, ids) in enumerate(zip(batch.answer_positions, batch.target_ids)):
        index = torch.tensor(ids, device=logits.device)
        totals.append(logprobs[b, positions, index].sum())
    return torch.stack(totals)


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
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=list(fwd_hooks)).float()
        logprob.append(target_logprobs(logits, batch))
        for b, (positions, ids) in enumerate(zip(batch.answer_positions, batch.target_ids)):
            row = logits[b, positions]  # [n_target, d_vocab]
            index = torch.tensor(ids, device=row.device)
            chosen = row.gather(-1, index[:, None])  # [n_target, 1]
            ranks = (row > chosen).sum(-1)  # [n_target]
            rank.append(int(ranks[0]))
            known.append(bool((ranks == 0).all()))
    return Scores(torch.cat(logprob).cpu(), torch.tensor(rank), torch.tensor(known))


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
