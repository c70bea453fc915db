"""``Localization``: the one result type of every locator.

A localization is a score tensor whose axes are named (``("layer", "position")`` for causal traces
and per-position patching, ``("layer", "head")`` for heads, ``("layer", "neuron")`` for neurons),
the labels of each axis (token strings for positions), and the method and settings that made it.
Every localization names what it is about in the same fixed fields (``prompt``, ``target``,
``fact_id``); what only one method has (noise scale, the corrupted prompt, ...) sits in ``meta``.
``site`` is one of the names of :data:`excise.hooks.SITES`.

``top(k)`` turns the scores into addressed components (:mod:`excise.components`) that the editors
accept; ``edit_layer()`` is the one rule for choosing the MLP layer a rank-one edit rewrites;
``plot()`` draws it; ``to_json()`` / ``from_json()`` store it; ``to_dataframe()`` tabulates it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from excise.components import MLP, Component, Head, Neuron

EARLY_FRACTION = 0.6
""":meth:`Localization.edit_layer` looks in the first 60% of the layers (ROME's restriction)."""


@dataclass
class Localization:
    """Scores over named axes, with labels, method, settings and extras.

    ``scores`` has one dimension per name in ``axes``; ``labels[axis]`` names each index of that
    axis (token strings for ``"position"``; layer numbers for ``"layer"``, which may be a subset
    of the model's layers). ``site`` is the activation the scores are about; ``prompt`` (filled
    in), ``target`` and ``fact_id`` what they explain.
    """

    scores: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    method: str
    site: str | None = None
    settings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    prompt: str | None = None
    target: str | None = None
    fact_id: str | None = None

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
            self._require_mlp_map("names no editable component")
            best = scores.max(dim=1).values  # [layer]
            order = best.argsort(descending=True)[:k]
            return [MLP(self.layer_number(int(row))) for row in order]
        if self.axes in (("layer", "head"), ("layer", "neuron")):
            flat = scores.flatten()
            order = flat.argsort(descending=True)[:k]
            width = scores.shape[1]
            kind = Head if self.axes[1] == "head" else Neuron
            return [kind(self.layer_number(int(i) // width), int(i) % width) for i in order]
        raise ValueError(f"top() does not know how to name components of axes {self.axes}")

    def layer_number(self, row: int) -> int:
        """The model layer of row ``row`` of the layer axis (its label, when labelled)."""
        labels = self.labels.get("layer")
        return int(labels[row]) if labels else row

    def edit_layer(self, early_fraction: float = EARLY_FRACTION) -> tuple[int, str]:
        """``(layer, why)``: the MLP layer a rank-one edit of this fact should rewrite.

        The argmax of this MLP map at the subject's last token, among the first
        ``early_fraction`` of the layers (as in ROME: late MLPs mostly carry the answer forward
        rather than recall it from the subject). Needs a ``("layer", "position")`` map of the
        ``"mlp"`` site that knows the subject's positions (a causal trace, or activation
        patching, where the differing positions are the subject's).
        """
        self._require_mlp_map("cannot choose an MLP layer to edit")
        positions = self.meta.get("subject_positions") or self.meta.get("differing_positions")
        if not positions:
            raise ValueError(f"this {self.method} map does not record the subject's positions; "
                             "choose the layer from a causal_trace(model, fact, site='mlp')")
        position = positions[-1]
        column = self.scores[:, position].float()  # [layer]
        n_layers = len(column)
        allowed = max(1, int(round(early_fraction * n_layers)))
        row = int(column[:allowed].argmax())
        layer = self.layer_number(row)
        method = self.method.replace("_", "-")
        why = (f"layer {layer}: largest MLP {method} effect at the subject's last token (position "
               f"{position}, effect {float(column[row]):.3f}) among layers 0-{allowed - 1} "
               f"(the first {early_fraction:.0%}); over all layers the peak is layer "
               f"{self.layer_number(int(column.argmax()))}")
        return layer, why

    def _require_mlp_map(self, what: str) -> None:
        if self.axes != ("layer", "position") or self.site != "mlp":
            raise ValueError(
                f"a {self.method} map of site {self.site!r} {what}; locate with site='mlp' "
                "(causal_trace or activation_patch) for MLP layers"
            )

    def plot(self):
        """A plotly figure of the scores (see :func:`excise.locate.plots.plot_localization`)."""
        from excise.locate.plots import plot_localization

        return plot_localization(self)

    def to_dataframe(self):
        """The scores as a long ``pandas.DataFrame``: one row per cell, a column per axis (its
        label, e.g. the token string for ``"position"``) plus ``"<axis>_index"`` and ``"score"``.
        Needs pandas (``pip install 'excise[notebooks]'``)."""
        from excise._optional import require_pandas

        pd = require_pandas("Localization.to_dataframe")
        grids = torch.meshgrid(*[torch.arange(n) for n in self.scores.shape], indexing="ij")
        columns = {}
        for axis, grid in zip(self.axes, grids):
            index = grid.flatten().tolist()
            labels = self.labels.get(axis)
            columns[axis] = [labels[i] for i in index] if labels else index
            columns[f"{axis}_index"] = index
        columns["score"] = self.scores.detach().float().cpu().flatten().tolist()
        frame = pd.DataFrame(columns)
        frame.attrs.update(method=self.method, site=self.site, prompt=self.prompt, target=self.target,
                           fact_id=self.fact_id)
        return frame

    def to_json(self) -> str:
        return json.dumps({
            "scores": self.scores.detach().float().cpu().tolist(),
            "axes": list(self.axes),
            "labels": self.labels,
            "method": self.method,
            "site": self.site,
            "settings": self.settings,
            "meta": self.meta,
            "prompt": self.prompt,
            "target": self.target,
            "fact_id": self.fact_id,
        })

    @classmethod
    def from_json(cls, text: str) -> Localization:
        """Read :meth:`to_json`'s text back (also records written before the fixed fields)."""
        record = json.loads(text)
        missing = {"scores", "axes", "labels", "method"} - set(record)
        if missing:
            raise ValueError(f"not a Localization record: missing {sorted(missing)}")
        meta = record.get("meta", {})
        return cls(
            scores=torch.tensor(record["scores"], dtype=torch.float32),
            axes=tuple(record["axes"]),
            labels={k: list(v) for k, v in record["labels"].items()},
            method=record["method"],
            site=record.get("site"),
            settings=record.get("settings", {}),
            meta=meta,
            prompt=record.get("prompt", meta.get("prompt") or meta.get("clean")),
            target=record.get("target", meta.get("target") or meta.get("answer")),
            fact_id=record.get("fact_id", meta.get("fact_id")),
        )
