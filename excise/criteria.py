"""When is a fact forgotten, and when is a fact kept? The one definition every stage uses.

* **forgotten** (efficacy, paraphrases): after the edit the target is no longer ranked first
  (its first token is not the argmax, so greedy decoding no longer produces it) *and* its sequence
  probability fell by at least 90% relative to before the edit.
* **kept** (neighbours, the subject's other facts): greedy decoding still produces the whole
  target after the edit (``Scores.known``).
* **weakened**: kept, but its sequence probability fell by more than half (:data:`WEAKENED_DROP`).
  Greedy decoding hides that damage (a neighbour at p = 0.7 before and 0.25 after is still
  kept), so reports count it beside the probes kept.

Editors that train towards forgetting (the value optimisation, the fine-tuning baselines) stop
when :func:`dethroned_and_fell` holds with :data:`TRAINING_MARGIN` nats to spare, a stricter
version of the same test, so that what they leave behind passes :func:`forgotten`.
"""

from __future__ import annotations

import math

import torch

from excise.scoring import Scores

PROB_DROP = 0.90
WEAKENED_DROP = 0.5
"""The share of a kept answer's probability whose loss counts it as :func:`weakened`."""
TRAINING_MARGIN = math.log(30.0)
"""Nats an editor's training drives the target down by: a 96.7% drop, slack over :data:`PROB_DROP`."""


def dethroned_and_fell(before_logprob: torch.Tensor, after_logprob: torch.Tensor,
                       dethroned: torch.Tensor, drop_nats: float) -> torch.Tensor:
    """``[n]`` bool: the target lost first place and its log-probability fell by ``drop_nats``."""
    return dethroned & (after_logprob <= before_logprob - drop_nats)


def forgotten(before: Scores, after: Scores, prob_drop: float = PROB_DROP) -> torch.Tensor:
    """``[n]`` bool: target not ranked first after the edit and its probability fell by ``prob_drop``."""
    return dethroned_and_fell(before.logprob, after.logprob, after.rank > 0, -math.log1p(-prob_drop))


def kept(after: Scores) -> torch.Tensor:
    """``[n]`` bool: the expected answer is still produced by greedy decoding."""
    return after.known.clone()


def weakened(before: Scores, after: Scores, prob_drop: float = WEAKENED_DROP) -> torch.Tensor:
    """``[n]`` bool: kept after the edit, yet its probability fell by more than ``prob_drop``."""
    return kept(after).bool() & (after.logprob < before.logprob + math.log1p(-prob_drop))
