"""``Localization``: the one result type of every locator.

A localization is a score tensor whose axes are named (``("layer", "position")`` for causal traces
and per-position patching, ``("layer", "head")`` for heads, ``("layer", "neuron")`` for neurons),
the labels of each axis (token strings for positions), and the method and settings that made it.
``top(k)`` turns the scores into addressed components (:mod:`excise.components`) that the editors
accept; ``plot()`` draws it; ``to_json()`` / ``from_json()`` store it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from excise.components import MLP, Component, Head, Neuron

_MLP_SITES = {"mlp", "mlp_out"}


@dataclass
class Localization:
    """Scores over named axes, with labels, method, settings and extras.

    ``scores`` has one dimension per name in ``axes``; ``labels[axis]`` names each index of that
    axis (token strings for ``"position"``). ``site`` is the activation the scores are about.
    """

    scores: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    method: str
    site: str | None = None
    settings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)
        if self.scores.ndim != len(self.axes):
            raise ValueError(f"scores have {self.scores.ndim} dims but axes are {self.axes}")
        for axis, size in zip(self.axes, self.scores.shape):
            if axis in self.labels and len(self.labels[axis]) != size:
                raise ValueError(f"axis {axis!r} has {size} entries but {len(self.labels[axis])} labels")

    def top(self, k: int) -> list[Component]:
        """The ``k`` highest-scoring components, best first.

        ``("layer", "position")`` maps of the MLP site give ``MLP(layer)`` ranked by each layer's
        best position; ``("layer", "head")`` gives ``Head``; ``("layer", "neuron")`` gives
        ``Neuron``. Residual-stream and attention-output maps name no editable component.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.scores.float()
        if self.axes == ("layer", "position"):
            if self.site not in _MLP_SITES:
                raise ValueError(
                    f"a {self.method} map of site {self.site!r} names no editable component; "
                    "locate with site='mlp' (causal_trace) or 'mlp_out' (activation_patch) for MLP layers"
                )
            best = scores.max(dim=1).values  # [layer]
            order = best.argsort(descending=True)[:k]
            return [MLP(int(layer)) for layer in order]
        if self.axes in (("layer", "head"), ("layer", "neuron")):
            flat = scores.flatten()
            order = flat.argsort(descending=True)[:k]
            width = scores.shape[1]
            kind = Head if self.axes[1] == "head" else Neuron
            return [kind(int(i) // width, int(i) % width) for i in order]
        raise ValueError(f"top() does not know how to name components of axes {self.axes}")

    def plot(self):
        """A plotly figure of the scores (see :func:`excise.locate.plots.plot_localization`)."""
        from excise.locate.plots import plot_localization

        return plot_localization(self)

    def to_json(self) -> str:
        return json.dumps({
            "scores": self.scores.detach().float().cpu().tolist(),
            "axes": list(self.axes),
            "labels": self.labels,
            "method": self.method,
            "site": self.site,
            "settings": self.settings,
            "meta": self.meta,
        })

    @classmethod
    def from_json(cls, text: str) -> Localization:
        record = json.loads(text)
        missing = {"scores", "axes", "labels", "method"} - set(record)
        if missing:
            raise ValueError(f"not a Localization record: missing {sorted(missing)}")
        return cls(
            scores=torch.tensor(record["scores"], dtype=torch.float32),
            axes=tuple(record["axes"]),
            labels={k: list(v) for k, v in record["labels"].items()},
            method=record["method"],
            site=record.get("site"),
            settings=record.get("settings", {}),
            meta=record.get("meta", {}),
        )
