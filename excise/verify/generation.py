"""Greedy and sampled generation without a KV cache, and ROME's n-gram entropy fluency metric.

TransformerBridge runs every forward through its hook points, so edits made with hooks and with
weights alike take effect; we therefore generate by re-running the right-padded batch each step
(no KV cache: the Hugging Face cached ``generate`` does not go through the bridge correctly).
Cost: ``max_new_tokens`` forwards of the batch.

Fluency follows ROME (Meng et al. 2022, ``experiments/py/eval_utils_counterfact.py``): for each
generated text, the entropy (bits) of its 2-gram and 3-gram frequency distributions weighted by
2/3 and 4/3 and averaged; a model that repeats itself scores low.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch

_WORD = re.compile(r"\w+|[^\w\s]")


@torch.no_grad()
def generate(model, prompts: list[str], max_new_tokens: int = 20, sample: bool | list[bool] = False,
             top_k: int = 5, seed: int = 0) -> list[str]:
    """Continue each prompt by ``max_new_tokens`` tokens; greedy, or top-k sampling when ``sample``.

    ``sample`` may be one flag for all prompts or one per prompt (so greedy and sampled
    continuations share a batch). Returns the generated text only (prompt excluded).
    """
    flags = torch.tensor(sample if isinstance(sample, list) else [sample] * len(prompts))
    rows = [model.to_tokens(p, truncate=False)[0].tolist() for p in prompts]
    lengths = [len(r) for r in rows]
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.full((len(rows), max(lengths) + max_new_tokens), pad, dtype=torch.long,
                        device=model.cfg.device)  # [batch, pos]
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_new_tokens):
        logits = model(tokens[:, : max(lengths)])  # [batch, pos, d_vocab]
        last = logits[torch.arange(len(rows)), torch.tensor(lengths) - 1].float().cpu()  # [batch, d_vocab]
        top = last.topk(top_k, dim=-1)  # [batch, top_k]
        choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator)[:, 0]
        nxt = torch.where(flags, top.indices[torch.arange(len(rows)), choice], last.argmax(-1))
        for i in range(len(rows)):
            tokens[i, lengths[i]] = nxt[i]
            lengths[i] += 1
    return [model.tokenizer.decode(tokens[i, len(r):lengths[i]].tolist()) for i, r in enumerate(rows)]


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy``: weighted mean of the n-gram entropies (bits) of ``text``."""
    words = _WORD.findall(text)
    values = []
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        values.append(entropy * weight)
    return sum(values) / len(values)


def fluency(model, prompts: list[str], max_new_tokens: int = 30, seed: int = 0) -> dict:
    """Mean n-gram entropy of greedy and of top-5 sampled continuations of ``prompts``.

    Both kinds are generated in one batch. Returns ``{"greedy", "sampled"}`` entropies and the
    texts (``"samples"``) for the report.
    """
    texts = generate(model, prompts * 2, max_new_tokens, sample=[False] * len(prompts) + [True] * len(prompts),
                     seed=seed)
    texts_g, texts_s = texts[: len(prompts)], texts[len(prompts):]
    mean = lambda texts: sum(ngram_entropy(t) for t in texts) / len(texts)  # noqa: E731
    return {"greedy": mean(texts_g), "sampled": mean(texts_s),
            "samples": {"greedy": texts_g, "sampled": texts_s}}
