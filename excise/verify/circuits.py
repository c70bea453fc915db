"""Before/after circuits: causal traces and last-position attention of an edited model.

For each fact we record, on one model state, ROME's causal trace over ``(layer, position)`` at the
MLP site (:func:`excise.locate.causal_trace`) and the attention pattern of every head at the
prompt's last position. Comparing the two states shows where the edit cut the flow of the fact
(the trace's difference) and which heads now attend elsewhere (the heads whose rows changed
most are drawn by :func:`excise.verify.figures.attention_change`).
"""

from __future__ import annotations

import json
import warnings

import torch


def trace_facts(model, facts, samples: int = 5, progress: bool = False) -> list[dict]:
    """Per fact: the causal trace (``Localization`` as a dict) plus ``attention`` ``[layer, head, pos]``."""
    from excise.locate import causal_trace

    out = []
    for fact in facts:
        with warnings.catch_warnings():  # an edited model "does not know" the fact: expected
            warnings.simplefilter("ignore", UserWarning)
            trace = causal_trace(model, fact, site="mlp", samples=samples, progress=progress)
        record = json.loads(trace.to_json())
        record["attention"] = last_position_attention(model, fact.text).tolist()
        out.append(record)
    return out


@torch.no_grad()
def last_position_attention(model, prompt: str) -> torch.Tensor:
    """``[layer, head, pos]``: how much each head attends from the last token to each position."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(model.to_tokens(prompt), names_filter=lambda n: n in names)
    return torch.stack([cache[n][0, :, -1] for n in names]).float().cpu()  # [layer, head, pos]


def changed_heads(before: dict, after: dict, k: int = 3) -> list[tuple[int, int]]:
    """The ``k`` heads whose last-position attention changed most (L1), as ``(layer, head)``."""
    change = (torch.tensor(after["attention"]) - torch.tensor(before["attention"])).abs().sum(-1)
    order = change.flatten().argsort(descending=True)[:k]
    width = change.shape[1]
    return [(int(i) // width, int(i) % width) for i in order]
