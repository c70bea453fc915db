"""Before/after circuits: causal traces, head and neuron attributions, attention of located heads.

For each fact we record, on one model state:

* ROME's causal trace over ``(layer, position)`` at the MLP site (:func:`excise.locate.causal_trace`):
  where restoring a clean state brings the fact back;
* the direct logit attribution of every head (``[layer, head]``) and every MLP neuron
  (``[layer, neuron]``) to the target at the last prompt position
  (:func:`excise.locate.direct_logit_attribution`): which components write the answer;
* the attention pattern of every head at the prompt's last position (the full query x key
  pattern is :func:`attention_pattern`'s, which :mod:`excise.verify.circuit_views` draws).

:func:`pair_states` then lines the two states up: neurons are reduced to those that matter in
either state, and the heads whose attention is drawn are the located ones (largest attribution
before the edit) plus those whose attention changed most.
"""

from __future__ import annotations

import json
import warnings

import torch

from excise.hooks import act_name


def trace_facts(model, facts, samples: int = 5, progress: bool = False) -> list[dict]:
    """Per fact: the causal trace (``Localization`` as a dict), ``heads``, ``neurons``, ``attention``."""
    from excise.locate import causal_trace, direct_logit_attribution

    out = []
    for fact in facts:
        with warnings.catch_warnings():  # an edited model "does not know" the fact: expected
            warnings.simplefilter("ignore", UserWarning)
            trace = causal_trace(model, fact, site="mlp", samples=samples, progress=progress)
            heads = direct_logit_attribution(model, fact, site="head").scores  # [layer, head]
            neurons = direct_logit_attribution(model, fact, site="neuron").scores  # [layer, neuron]
        record = json.loads(trace.to_json())
        record["heads"] = heads.tolist()
        record["neurons"] = neurons  # a tensor until pair_states keeps only the ones that matter
        record["attention"] = last_position_attention(model, fact.text).tolist()
        out.append(record)
    return out


def pair_states(before: list[dict], after: list[dict], n_neurons: int = 20) -> dict:
    """``{"before": [...], "after": [...]}`` with neurons reduced to the same top ``n_neurons``.

    The kept neurons are those with the largest ``|attribution|`` in either state, so a neuron the
    edit silenced and one it recruited both appear; each state stores ``{"index": [[layer, i], ...],
    "scores": [...]}`` over the same list.
    """
    paired_b, paired_a = [], []
    for b, a in zip(before, after):
        nb, na = b["neurons"], a["neurons"]  # [layer, neuron] tensors from trace_facts
        cells = _top_cells(torch.maximum(nb.abs(), na.abs()), n_neurons)
        index = [list(cell) for cell in cells]
        paired_b.append({**b, "neurons": {"index": index, "scores": [float(nb[c]) for c in cells]}})
        paired_a.append({**a, "neurons": {"index": index, "scores": [float(na[c]) for c in cells]}})
    return {"before": paired_b, "after": paired_a}


@torch.no_grad()
def attention_pattern(model, prompt: str) -> torch.Tensor:
    """``[layer, head, query_pos, key_pos]``: every head's attention over the prompt's tokens.

    Row ``q`` of a head is the distribution over the positions ``<= q`` that position ``q`` reads
    from (causal: zero above the diagonal); positions are ``model.to_tokens(prompt)``'s.
    """
    names = [act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(model.to_tokens(prompt), names_filter=lambda n: n in names)
    return torch.stack([cache[n][0] for n in names]).float().cpu()  # [layer, head, query_pos, key_pos]


def last_position_attention(model, prompt: str) -> torch.Tensor:
    """``[layer, head, pos]``: how much each head attends from the last token to each position."""
    return attention_pattern(model, prompt)[:, :, -1]


def changed_heads(before: dict, after: dict, k: int = 3) -> list[tuple[int, int]]:
    """The ``k`` heads whose last-position attention changed most (L1), as ``(layer, head)``."""
    change = (torch.tensor(after["attention"]) - torch.tensor(before["attention"])).abs().sum(-1)
    return _top_cells(change, k)


def located_heads(before: dict, k: int = 2) -> list[tuple[int, int]]:
    """The ``k`` heads that wrote the target most directly before the edit, as ``(layer, head)``."""
    return _top_cells(torch.tensor(before["heads"]).abs(), k)


def _top_cells(grid: torch.Tensor, k: int) -> list[tuple[int, int]]:
    order = grid.flatten().argsort(descending=True)[:k]
    width = grid.shape[1]
    return [(int(i) // width, int(i) % width) for i in order]
