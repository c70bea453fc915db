"""Shared machinery of the editors: parameter names, frozen weights, prompts, keys and hooks.

* :func:`context_prefixes`: short texts the model itself writes from varied openings; a fact's
  prompt is also evaluated after each of them so that the computed key and value generalise
  beyond one exact wording (ROME's "context templates").
* :func:`fact_templates`: the prompt and the fact's paraphrases, bare and prefixed (what a value
  is optimised on).
* :func:`subject_last_position`: where the subject's last token sits in a tokenized prompt.
* :func:`mlp_keys`: the input of the MLP output projection (``blocks.{l}.mlp.hook_post``) at
  chosen positions, captured with a forward pre-hook on the live module.
* :func:`add_at_positions`: a forward hook that adds a vector to a module's output at chosen
  positions (how MEMIT optimises the value without touching weights); :func:`add_rank_one`
  simulates a rank-one weight update exactly (how ROME optimises it).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from excise.components import mlp_out_module
from excise.scoring import build_batch

log = logging.getLogger(__name__)

OPENINGS = ("The", "Therefore", "Because", "I", "You", "It is", "In the", "When", "A", "We")


def param_name(model, param: torch.Tensor) -> str:
    """The name of live parameter ``param`` in ``model.original_model.named_parameters()``."""
    for name, candidate in model.original_model.named_parameters():
        if candidate is param:
            return name
    raise KeyError("parameter not found in model.original_model")


@contextmanager
def frozen(model):
    """Turn off ``requires_grad`` on every parameter inside ``with`` (restored on exit)."""
    params = list(model.original_model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@torch.no_grad()
def context_prefixes(model, n: int = 6, length: int = 8, seed: int = 0) -> list[str]:
    """``n`` short texts (``length`` tokens) the model samples from :data:`OPENINGS`.

    Cached on the model object (they depend only on the model and the arguments).
    """
    cache = model.__dict__.setdefault("_excise_prefixes", {})
    key = (n, length, seed)
    if key not in cache:
        cache[key] = _sample_prefixes(model, n, length, seed)
    return cache[key]


def _sample_prefixes(model, n: int, length: int, seed: int) -> list[str]:
    from excise.edit.stats import sample_texts

    texts = sample_texts(model, [OPENINGS[i % len(OPENINGS)] for i in range(n)], length, seed)
    prefixes = []
    for text in texts:
        text = " ".join(text.replace("{", "(").replace("}", ")").split())
        prefixes.append(text.rstrip(".") + ".")
    return prefixes


def rewriting_prompts(model, template: str, n_prefixes: int = 6) -> list[str]:
    """The template itself and the template after each context prefix (all with one ``{}``)."""
    return [template, *(f"{p} {template}" for p in context_prefixes(model, n_prefixes))]


def fact_templates(model, fact, n_prefixes: int = 4, paraphrases: bool = True) -> list[str]:
    """Templates a fact is edited on: its prompt (bare and after ``n_prefixes`` context prefixes)
    and, with ``paraphrases``, each paraphrase bare and after one prefix (round-robin).

    Editing on several wordings of the relation is what makes the edit generalise to wordings
    it never saw; the prefixes keep it from depending on the subject opening the text.
    """
    templates = rewriting_prompts(model, fact.prompt, n_prefixes)
    if paraphrases and fact.paraphrases:
        prefixes = context_prefixes(model, max(1, n_prefixes))
        for i, para in enumerate(fact.paraphrases):
            templates += [para, f"{prefixes[i % len(prefixes)]} {para}"]
    return templates


def subject_last_position(model, template: str, subject: str) -> int:
    """Index (BOS included) of the subject's last token in ``model.to_tokens(template.format(subject))``."""
    head = template[: template.index("{}")] + subject
    n_head = model.to_tokens(head, truncate=False).shape[-1]
    n_full = model.to_tokens(template.format(subject), truncate=False).shape[-1]
    if n_head > n_full:
        raise ValueError(f"cannot find the subject {subject!r} in the tokens of {template!r}")
    return n_head - 1


def subject_batch(model, templates: list[str], subjects: list[str], targets: list[str]):
    """Right-padded batch of ``template.format(subject) + target`` and subject positions ``[batch]``."""
    prompts = [t.format(s) for t, s in zip(templates, subjects)]
    batch = build_batch(model, prompts, targets)
    positions = [subject_last_position(model, t, s) for t, s in zip(templates, subjects)]
    return batch, torch.tensor(positions, device=batch.tokens.device)


@torch.no_grad()
def mlp_keys(model, layer: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``[batch, d_mlp]``: input of the layer's MLP output projection at ``positions[b]``."""
    captured = {}

    def hook(module, args):
        captured["k"] = args[0].detach()  # [batch, pos, d_mlp]

    handle = mlp_out_module(model, layer).register_forward_pre_hook(hook)
    try:
        model(tokens)
    finally:
        handle.remove()
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return captured["k"][rows, positions]


@contextmanager
def add_at_positions(module, delta: torch.Tensor, positions: torch.Tensor):
    """Inside ``with``, add ``delta`` ``[d_model]`` to ``module``'s output at ``positions[b]`` of row b."""

    def hook(mod, args, output):
        rows = torch.arange(output.shape[0], device=output.device)
        bump = torch.zeros_like(output)
        bump[rows, positions] = delta.to(output.dtype)
        return output + bump

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def add_rank_one(module, direction: torch.Tensor, delta: torch.Tensor):
    """Inside ``with``, act as if ``module``'s weight were ``W + direction delta^T``.

    The output at every position gets ``(k . direction) delta`` where ``k`` ``[d_mlp]`` is the
    module's input there: the exact effect of the rank-one update, on the subject and on every
    other token, without touching the weight.
    """

    def hook(mod, args, output):
        coeff = args[0] @ direction.to(args[0].dtype)  # [batch, pos]
        return output + coeff[..., None] * delta.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def first_answer_logprobs(logits: torch.Tensor, batch) -> torch.Tensor:
    """``[batch, d_vocab]`` log-probabilities at each row's last prompt position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, batch.last_prompt_positions].float().log_softmax(-1)


def first_target_ids(batch) -> torch.Tensor:
    """``[batch]`` first target token of each row."""
    return torch.tensor([ids[0] for ids in batch.target_ids], device=batch.tokens.device)
