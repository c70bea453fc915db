"""Tokens: how prompts, answers and subjects become token ids, and how rows are padded.

Every stage tokenizes the same way, here:

* a prompt is tokenized as TransformerLens does (``model.to_tokens``: BOS prepended when the
  model's config asks for it), an answer without special tokens, so "prompt" + "answer" is
  exactly what the model sees when it reads a prompt followed by its answer;
* a subject is found in a filled-in prompt by the tokenizer's character offsets: its positions
  are the tokens that overlap the subject's characters (BOS included in the count);
* rows of different lengths are right-padded into one ``[batch, pos]`` tensor with a mask of the
  real tokens. In a causal model no real token attends to the padding after it, so a forward
  over the padded batch gives each row's real positions exactly their unpadded values.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

REPLACEMENT = "\ufffd"


def pad_id(model) -> int:
    """The id used for padding (the tokenizer's pad token, else 0)."""
    return model.tokenizer.pad_token_id or 0


def pad_rows(model, rows: Sequence, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows into ``tokens`` ``[batch, pos]`` and a real-token ``mask`` ``[batch, pos]``.

    ``rows`` are lists or 1-d tensors of ids; ``width`` (default: the longest row) leaves room
    for tokens appended later (generation). Both tensors are on the model's device.
    """
    width = max(len(r) for r in rows) if width is None else width
    device = model.cfg.device
    tokens = torch.full((len(rows), width), pad_id(model), dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.as_tensor(row, device=device)
        mask[i, : len(row)] = True
    return tokens, mask


def encode_prompt(model, text: str) -> list[int]:
    """Token ids of a prompt as the model sees it (BOS prepended when the model expects it)."""
    return model.to_tokens(text, truncate=False)[0].tolist()


def encode_target(model, text: str) -> list[int]:
    """Token ids of an answer continuing a prompt (no special tokens)."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {text!r} encodes to no tokens; give a non-empty answer")
    return list(ids)


def token_labels(model, ids) -> list[str]:
    """One string per token id (for axis labels and messages).

    A character split over several byte-level tokens (é, 東, emoji) decodes to U+FFFD token by
    token; such a run is decoded together and each of its tokens labelled with the whole text and
    its place in the run (``"東 (1/2)"``), so labels stay readable.
    """
    ids = [int(i) for i in ids]
    labels = [model.tokenizer.decode([i]) for i in ids]
    start = 0
    while start < len(ids):
        if REPLACEMENT not in labels[start]:
            start += 1
            continue
        end = start + 1  # grow the run until it decodes cleanly (or 4 bytes' worth of tokens)
        while end < len(ids) and end - start < 4 and REPLACEMENT in model.tokenizer.decode(ids[start:end]):
            end += 1
        text = model.tokenizer.decode(ids[start:end])
        n = end - start
        for k in range(n):
            labels[start + k] = text if n == 1 else f"{text} ({k + 1}/{n})"
        start = end
    return labels


def token_id(model, answer) -> int:
    """One token id from an id or a string that must encode to exactly one token."""
    if isinstance(answer, int):
        return answer
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer {answer!r} is {len(ids)} tokens {token_labels(model, ids)}; "
                         "activation patching compares single-token answers: pass one token")
    return ids[0]


def check_length(model, n_tokens: int, what: str) -> None:
    """Raise when ``what`` (``n_tokens`` long) does not fit the model's context."""
    if n_tokens > model.cfg.n_ctx:
        raise ValueError(f"{what} has {n_tokens} tokens, more than the model's context length of "
                         f"{model.cfg.n_ctx}; shorten it")


def fill_prompt(template: str, subject: str) -> tuple[str, int]:
    """The filled prompt and the character offset where the subject starts in it.

    ``template`` holds ``{}`` where the subject goes, or contains the subject verbatim.
    """
    if "{}" in template:
        return template.format(subject), template.index("{}")
    start = template.find(subject)
    if start < 0:
        raise ValueError(
            f"subject {subject!r} not found in prompt {template!r}: write the prompt as a "
            "template with '{}' where the subject goes, or include the subject verbatim"
        )
    return template, start


def subject_positions(model, template: str, subject: str, warn: bool = False) -> list[int]:
    """Indices into ``model.to_tokens(filled prompt)`` of the tokens overlapping the subject.

    ``warn``: warn when the subject does not fall on token boundaries (a token it shares with
    the text around it, e.g. "Paris" in "Parisian"): its first or last token then also carries
    other characters, and a key read there is not the subject's alone.
    """
    text, start = fill_prompt(template, subject)
    ids = encode_prompt(model, text)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(ids) - len(enc["input_ids"])
    if shift < 0 or ids[shift:] != list(enc["input_ids"]):
        raise ValueError("cannot align the tokenizer's offsets with model.to_tokens; "
                         "this tokenizer is not supported for subject positions")
    end = start + len(subject)
    found = [shift + i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    if not found:
        raise ValueError(f"subject at characters {start}..{end} of {text!r} covers no token")
    first, last = enc["offset_mapping"][found[0] - shift], enc["offset_mapping"][found[-1] - shift]
    if warn and (text[first[0]:start].strip() or text[end:last[1]].strip()):
        spans = text[min(first[0], start):max(last[1], end)]
        warnings.warn(f"subject {subject!r} does not fall on token boundaries in {text!r}: its tokens "
                      f"cover {spans!r}; the subject's positions include the extra characters "
                      "(write the subject as whole words of the prompt)", stacklevel=2)
    return found


def subject_last_position(model, template: str, subject: str) -> int:
    """Index (BOS included) of the subject's last token in the filled-in ``template``."""
    return subject_positions(model, template, subject)[-1]
