"""Input checks shared by the locators: a fact's tokens, clean/corrupted pairs, known targets.

Every bad input fails here with a message that says what is wrong and how to fix it, before any
tensor reaches the model. Tokenization itself is :mod:`excise.tokens`'.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from excise.scoring import target_logprob
from excise.tokens import (
    check_length,
    encode_prompt,
    encode_target,
    fill_prompt,
    subject_positions,
    token_labels,
)

log = logging.getLogger(__name__)


@dataclass
class FactTokens:
    """A fact tokenized for tracing.

    ``tokens`` ``[1, pos]`` is BOS + prompt + target[:-1]; the target ids are predicted at
    ``read`` (the last prompt position, then each target position but the last).
    """

    tokens: torch.Tensor
    n_prompt: int
    target_ids: list[int]
    subject_positions: list[int]
    labels: list[str]
    prompt: str

    @property
    def read(self) -> list[int]:
        return [self.n_prompt - 1 + j for j in range(len(self.target_ids))]


def fact_tokens(model, fact) -> FactTokens:
    """Tokenize ``fact`` for tracing; raise on a missing subject or an over-long prompt."""
    text, _ = fill_prompt(fact.prompt, fact.subject)
    ids = encode_prompt(model, text)
    target = encode_target(model, fact.target)
    check_length(model, len(ids) + len(target) - 1, f"prompt {text!r} with its target")
    subject = subject_positions(model, fact.prompt, fact.subject, warn=True)
    tokens = torch.tensor([ids + target[:-1]], device=model.cfg.device)
    return FactTokens(tokens, len(ids), target, subject, token_labels(model, ids), text)


def warn_if_unknown(model, ft: FactTokens, logits: torch.Tensor, target: str) -> None:
    """Warn (with probability and rank) when the model does not predict the target greedily."""
    row = logits[0].float()  # [n_target, d_vocab]
    index = torch.tensor(ft.target_ids, device=row.device)
    chosen = row.gather(-1, index[:, None])
    ranks = (row > chosen).sum(-1)
    if bool((ranks == 0).all()):
        return
    prob = float(target_logprob(logits[:1], ft.target_ids).exp())
    warnings.warn(
        f"the model does not predict {target!r} after {ft.prompt!r} (p = {prob:.3g}, rank of "
        f"first token = {int(ranks[0])}); tracing anyway, but the map explains a weak prediction",
        stacklevel=3,
    )


def pair_tokens(model, clean, corrupted) -> tuple[torch.Tensor, torch.Tensor]:
    """Token tensors ``[1, pos]`` of a clean/corrupted pair; they must have the same length."""
    def as_tokens(x):
        if isinstance(x, str):
            return model.to_tokens(x, truncate=False)
        x = torch.as_tensor(x)
        return (x[None] if x.ndim == 1 else x).to(model.cfg.device)

    a, b = as_tokens(clean), as_tokens(corrupted)
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise ValueError("activation patching takes one clean and one corrupted sequence")
    if a.shape[1] != b.shape[1]:
        la, lb = token_labels(model, a[0]), token_labels(model, b[0])
        first = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
        raise ValueError(
            f"clean has {len(la)} tokens {la} but corrupted has {len(lb)} tokens {lb}; they differ "
            f"from position {first} on ({la[first:]} vs {lb[first:]}): patching needs the same "
            "length, so pick a corrupted prompt whose differing words tokenize to as many tokens"
        )
    check_length(model, a.shape[1], "the clean prompt")
    return a, b


def differing(model, clean: torch.Tensor, corrupted: torch.Tensor) -> list[int]:
    """Positions where the pair differs; raise if they are identical."""
    diff = (clean[0] != corrupted[0]).nonzero().flatten().tolist()
    if not diff:
        raise ValueError("clean and corrupted prompts are identical: nothing to patch")
    return diff
