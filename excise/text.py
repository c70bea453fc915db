"""Held-out text for perplexity, and the perplexity metric itself.

excise ships a few paragraphs of plain English prose written by its authors
(``assets/text/heldout.txt``, installed as ``excise/bundled_text``) so that perplexity can be
measured offline. None of it mentions the bundled facts' subjects or answers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from excise.tokens import pad_rows

TEXT_FOLDER = Path(__file__).resolve().parent / "bundled_text"


def heldout_paragraphs() -> list[str]:
    """The held-out paragraphs (about 900 words of everyday prose)."""
    text = (TEXT_FOLDER / "heldout.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


@torch.no_grad()
def perplexity(model, texts: list[str] | None = None, batch_size: int = 8) -> float:
    """Token-level perplexity of ``model`` on ``texts`` (default: the held-out paragraphs).

    Each text is scored on its own (BOS prepended when the model expects it); the result is
    ``exp(mean negative log-likelihood over all predicted tokens)``.
    """
    texts = texts if texts is not None else heldout_paragraphs()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        rows = [model.to_tokens(t)[0] for t in texts[start:start + batch_size]]
        tokens, real = pad_rows(model, rows)
        mask = real[:, 1:]  # [batch, pos-1]: predicted tokens that are real
        logprobs = model(tokens).float().log_softmax(-1)[:, :-1]  # [batch, pos-1, d_vocab]
        nll = -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos-1]
        total_nll += float(nll[mask].sum())
        total_tokens += int(mask.sum())
    return float(torch.exp(torch.tensor(total_nll / total_tokens)))
