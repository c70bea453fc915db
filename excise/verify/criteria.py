"""When is a fact forgotten, and when is a fact kept? One definition for editors, benches and reports.

* **forgotten** (efficacy, paraphrases): after the edit the target is no longer ranked first
  (its first token is not the argmax, so greedy decoding no longer produces it) *and* its sequence
  probability fell by at least 90% relative to before the edit.
* **kept** (neighbours, the subject's other facts): greedy decoding still produces the whole
  target after the edit (``Scores.known``).
"""

from __future__ import annotations

import math

import torch

from excise.scoring import Scores

PROB_DROP = 0.90


def forgotten(before: Scores, after: Scores, prob_drop: float = PROB_DROP) -> torch.Tensor:
    """``[n]`` bool: target not ranked first after the edit and its probability fell by ``prob_drop``."""
    fell = after.logprob <= before.logprob + math.log1p(-prob_drop)
    return (after.rank > 0) & fell


def kept(after: Scores) -> torch.Tensor:
    """``[n]`` bool: the expected answer is still produced by greedy decoding."""
    return after.known.clone()
