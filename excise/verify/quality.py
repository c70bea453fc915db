"""Model-level quality on one state: held-out perplexity and the fluency of generated text.

Forgetting one fact should not damage the model as a whole. Each state gets:

* **perplexity** on held-out paragraphs (:func:`excise.text.perplexity`);
* **fluency**, following ROME (Meng et al. 2022, ``experiments/py/eval_utils_counterfact.py``):
  for each text generated after the facts' prompts, the entropy (bits) of its 2-gram and 3-gram
  frequency distributions weighted by 2/3 and 4/3 and averaged; a model that repeats itself scores
  low. Greedy and top-5 sampled continuations are measured separately
  (:func:`excise.generation.generate`, through the bridge so edits and hooks apply).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass

from excise.generation import generate

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Fluency:
    """Mean n-gram entropy of ``greedy`` and ``sampled`` continuations; ``samples`` holds the texts
    (``{"greedy": [...], "sampled": [...]}``)."""

    greedy: float
    sampled: float
    samples: dict[str, list[str]]


@dataclass(frozen=True)
class Quality:
    """One state's quality; a part that was not measured is ``None``."""

    perplexity: float | None = None
    fluency: Fluency | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


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


def fluency(model, prompts: list[str], max_new_tokens: int = 30, seed: int = 0) -> Fluency:
    """Mean n-gram entropy of greedy and of top-5 sampled continuations of ``prompts``.

    Both kinds are generated in one batch.
    """
    texts = generate(model, prompts * 2, max_new_tokens, sample=[False] * len(prompts) + [True] * len(prompts),
                     seed=seed)
    texts_g, texts_s = texts[: len(prompts)], texts[len(prompts):]
    mean = lambda texts: sum(ngram_entropy(t) for t in texts) / len(texts)  # noqa: E731
    return Fluency(greedy=mean(texts_g), sampled=mean(texts_s),
                   samples={"greedy": texts_g, "sampled": texts_s})


def model_quality(model, prompts: list[str], fluency_tokens: int = 30, perplexity: bool = True) -> Quality:
    """Held-out perplexity and fluency of continuations of ``prompts``.

    ``fluency_tokens=0`` or ``perplexity=False`` skip the (costly) parts.
    """
    from excise.text import perplexity as ppl

    return Quality(perplexity=ppl(model) if perplexity else None,
                   fluency=fluency(model, prompts, fluency_tokens) if fluency_tokens else None)
