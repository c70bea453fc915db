"""Input checks shared by the locators: subject spans, target tokens, context length.

Every bad input fails here with a message that says what is wrong and how to fix it, before any
tensor reaches the model.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

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


def fill_prompt(fact) -> tuple[str, int]:
    """The filled prompt and the character offset where the subject starts in it."""
    if "{}" in fact.prompt:
        start = fact.prompt.index("{}")
        return fact.prompt.format(fact.subject), start
    start = fact.prompt.find(fact.subject)
    if start < 0:
        raise ValueError(
            f"subject {fact.subject!r} not found in prompt {fact.prompt!r}: write the prompt as a "
            "template with '{}' where the subject goes, or include the subject verbatim"
        )
    return fact.prompt, start


def token_labels(model, ids) -> list[str]:
    return [model.tokenizer.decode([int(i)]) for i in ids]


def prompt_ids(model, text: str) -> list[int]:
    return model.to_tokens(text, truncate=False)[0].tolist()


def subject_positions(model, text: str, start: int, length: int) -> list[int]:
    """Indices into ``model.to_tokens(text)`` of the tokens overlapping ``text[start:start+length]``."""
    ids = prompt_ids(model, text)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(ids) - len(enc["input_ids"])
    if shift < 0 or ids[shift:] != list(enc["input_ids"]):
        raise ValueError("cannot align the tokenizer's offsets with model.to_tokens; "
                         "this tokenizer is not supported for subject tracing")
    end = start + length
    found = [shift + i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    if not found:
        raise ValueError(f"subject at characters {start}..{end} of {text!r} covers no token")
    return found


def encode_target(model, target: str) -> list[int]:
    ids = model.tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} encodes to no tokens; give a non-empty answer")
    return list(ids)


def check_length(model, n_tokens: int, what: str) -> None:
    if n_tokens > model.cfg.n_ctx:
        raise ValueError(f"{what} has {n_tokens} tokens, more than the model's context length of "
                         f"{model.cfg.n_ctx}; shorten it")


def fact_tokens(model, fact) -> FactTokens:
    """Tokenize ``fact`` for tracing; raise on a missing subject or an over-long prompt."""
    text, start = fill_prompt(fact)
    ids = prompt_ids(model, text)
    target = encode_target(model, fact.target)
    check_length(model, len(ids) + len(target) - 1, f"prompt {text!r} with its target")
    subject = subject_positions(model, text, start, len(fact.subject))
    tokens = torch.tensor([ids + target[:-1]], device=model.cfg.device)
    return FactTokens(tokens, len(ids), target, subject, token_labels(model, ids), text)


def target_logprob(logits: torch.Tensor, target_ids: list[int]) -> torch.Tensor:
    """Sequence log-probability ``[batch]`` from logits ``[batch, n_target, d_vocab]`` at the read positions."""
    logprobs = logits.float().log_softmax(-1)
    index = torch.tensor(target_ids, device=logits.device)
    return logprobs[:, torch.arange(len(target_ids)), index].sum(-1)


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


def token_id(model, answer) -> int:
    """One token id from an id or a string that must encode to exactly one token."""
    if isinstance(answer, int):
        return answer
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer {answer!r} is {len(ids)} tokens {token_labels(model, ids)}; "
                         "activation patching compares single-token answers: pass one token")
    return ids[0]


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
