"""Activation patching: copy one clean activation into the corrupted run and see how much returns.

The clean prompt (``"The Eiffel Tower is located in"``) and the corrupted prompt (``"The
Colosseum is located in"``, same token length) differ in the subject. Patching the clean value of
one activation into the corrupted run and measuring the normalised logit difference
``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``, with ``LD = logit(answer) -
logit(wrong_answer)`` at the last position, gives 0 for "no effect" and 1 for "fully restores the
clean behaviour". Same numbers as ``transformer_lens.patching``, far faster: patched runs are
batched (several layers' patches per forward), each run joins its batch at its own layer from the
cached corrupted residual there instead of starting at the embeddings
(:class:`~excise.runner.Runner`), only the last position is unembedded, and patches
before the first differing token (identical in both runs) are 0 without running anything.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from excise.components import Head, Neuron
from excise.hooks import AXIS, SITES, act_name, site_name
from excise.interrupt import checkpoint
from excise.locate._inputs import differing, pair_tokens
from excise.locate.localization import Localization
from excise.runner import Runner, chunks, rows_per_chunk
from excise.tokens import encode_prompt, fill_prompt, token_id, token_labels

log = logging.getLogger(__name__)


class PatchSetup:
    """Clean and corrupted runs of a pair, with the caches and metric patching needs."""

    @torch.no_grad()
    def __init__(self, model, clean, corrupted, answer, wrong_answer, sites=tuple(SITES)):
        self.model = model
        self.clean_tokens, self.corrupted_tokens = pair_tokens(model, clean, corrupted)
        self.diff = differing(model, self.clean_tokens, self.corrupted_tokens)
        self.answer, self.wrong = token_id(model, answer), token_id(model, wrong_answer)
        n = model.cfg.n_layers
        names = [act_name(s, layer) for layer in range(n) for s in sites]
        resid = [act_name("resid", layer) for layer in range(n)]
        self.clean = Runner(model, self.clean_tokens, names)
        self.corrupted = Runner(model, self.corrupted_tokens, resid)
        self.read = [self.clean_tokens.shape[1] - 1]
        self.clean_ld = float(self.logit_diff(self.clean.logits[:, self.read]))
        self.corrupted_ld = float(self.logit_diff(self.corrupted.logits[:, self.read]))
        if abs(self.clean_ld - self.corrupted_ld) < 1e-6:
            raise ValueError("the clean and corrupted runs give the same logit difference: the "
                             "metric cannot be normalised; choose prompts the model answers differently")

    def about(self) -> dict:
        """The fixed fields of a Localization of this pair: clean prompt and answer token."""
        return {"prompt": self.model.to_string(self.clean_tokens[0]),
                "target": token_labels(self.model, [self.answer])[0]}

    def meta(self) -> dict:
        """What a localization of this pair records besides its fixed fields."""
        return {"corrupted": self.model.to_string(self.corrupted_tokens[0]),
                "wrong_answer": token_labels(self.model, [self.wrong])[0],
                "clean_logit_diff": self.clean_ld, "corrupted_logit_diff": self.corrupted_ld,
                "differing_positions": self.diff}

    def logit_diff(self, logits: torch.Tensor) -> torch.Tensor:
        """``[batch]`` answer-minus-wrong logit at the (single) read position."""
        return logits[:, -1, self.answer] - logits[:, -1, self.wrong]

    def normalise(self, ld: torch.Tensor) -> torch.Tensor:
        return (ld - self.corrupted_ld) / (self.clean_ld - self.corrupted_ld)

    def run_layers(self, jobs, budget_tokens: int = 2048, on_batch=None) -> list[torch.Tensor]:
        """Normalised metric of every patched run of several layers, batched across layers.

        ``jobs`` is a list of ``(layer, n_rows, make_patch)``; the result has one tensor
        ``[n_rows]`` per job. Rows are taken in layer order and cut into batches of at most
        ``budget_tokens`` tokens. Within a batch, each job's rows join the batch at their own
        layer, starting from the cached corrupted residual there (blocks below a patch are
        exactly the corrupted run), so no block runs on a row it cannot change and the batch
        grows as it climbs. ``make_patch(runs, rows, join)`` returns the hooks that patch the
        job's runs ``runs`` held in batch rows ``rows``; ``join`` ``[len(rows), pos, d_model]``
        is their residual entering the job's layer, which it may edit in place.
        ``on_batch(n_runs)`` is called after each batch (progress bars).
        """
        pos = self.clean_tokens.shape[1]
        order = sorted(range(len(jobs)), key=lambda j: jobs[j][0])
        flat = [(j, r) for j in order for r in range(jobs[j][1])]  # (job, run) in layer order
        out = [torch.empty(n) for _, n, _ in jobs]
        for part in chunks(len(flat), rows_per_chunk(pos, budget_tokens)):
            batch = flat[part]
            hooks, segments, joins = [], [], {}
            for j, runs, rows in _segments(batch):
                layer = jobs[j][0]
                base = self.corrupted.cache[act_name("resid", layer)]  # [1, pos, d_model]
                join = base.expand(len(rows), -1, -1).clone()
                hooks += jobs[j][2](runs, rows, join)
                joins.setdefault(layer, []).append(join)
                segments.append((j, runs, rows))
            joins = {layer: torch.cat(parts) for layer, parts in joins.items()}
            start = min(joins)
            logits = self.clean.run_from(start, joins.pop(start), self.read, hooks, joins)
            metric = self.normalise(self.logit_diff(logits)).float().cpu()
            for j, runs, rows in segments:
                out[j][runs] = metric[rows]
            if on_batch is not None:
                on_batch(len(batch))
        return out


def _segments(batch: list[tuple[int, int]]):
    """``(job, runs, rows)`` for each stretch of consecutive batch rows of one job."""
    first = 0
    for k in range(1, len(batch) + 1):
        if k == len(batch) or batch[k][0] != batch[first][0]:
            yield batch[first][0], slice(batch[first][1], batch[k - 1][1] + 1), torch.arange(first, k)
            first = k


def activation_patch(model, clean, corrupted, answer, wrong_answer, site: str = "resid",
                     components=None, progress: bool = True) -> Localization:
    """Patch every clean activation of ``site`` into the corrupted run, one at a time.

    ``clean``/``corrupted``: prompts (strings, BOS added) or token tensors of equal length.
    ``answer``/``wrong_answer``: single tokens (strings or ids). ``site`` (:data:`excise.hooks.SITES`):
    ``resid``, ``attn``, ``mlp`` (scores ``[layer, position]``), ``head`` (``[layer, head]``, all
    positions, on ``attn.hook_z``) or ``neuron`` (``[layer, neuron]``, all positions, on
    ``mlp.hook_post``). ``components``: optional list of ``Head``/``Neuron`` to patch (others stay
    NaN), useful because all neurons is ``n_layers * d_mlp`` patched runs.
    """
    site = site_name(site)
    setup = PatchSetup(model, clean, corrupted, answer, wrong_answer, sites=(site,))
    return patch_with(setup, site, components, progress)


@torch.no_grad()
def patch_with(setup: PatchSetup, site: str, components=None, progress: bool = True) -> Localization:
    """:func:`activation_patch` on a prepared :class:`PatchSetup` (reused by AtP*)."""
    cfg = setup.model.cfg
    pos = setup.clean_tokens.shape[1]
    if site in ("head", "neuron"):
        width = cfg.n_heads if site == "head" else cfg.d_mlp
        scores = torch.full((cfg.n_layers, width), float("nan"))
        wanted = _wanted(components, site, cfg.n_layers, width)
    else:
        scores = torch.zeros(cfg.n_layers, pos)
        wanted = {layer: list(range(setup.diff[0], pos)) for layer in range(cfg.n_layers)}
    layers = sorted(wanted)
    jobs = [(layer, len(wanted[layer]), _patcher(setup, site, layer, torch.tensor(wanted[layer])))
            for layer in layers]
    with tqdm(total=sum(n for _, n, _ in jobs), desc=f"activation patch ({site})", disable=not progress,
              unit="run") as bar:
        def advance(n_runs: int) -> None:
            bar.update(n_runs)
            checkpoint("the next activation-patching batch")

        results = setup.run_layers(jobs, on_batch=advance)
    for layer, result in zip(layers, results):
        scores[layer, torch.tensor(wanted[layer])] = result
    axis = AXIS[site]
    labels = {"layer": [str(i) for i in range(cfg.n_layers)],
              axis: token_labels(setup.model, setup.clean_tokens[0]) if axis == "position"
              else [str(i) for i in range(scores.shape[1])]}
    return Localization(scores, ("layer", axis), labels, "activation_patch", site,
                        {"metric": "normalised_logit_diff"}, setup.meta(), **setup.about())


def _wanted(components, site: str, n_layers: int, width: int) -> dict[int, list[int]]:
    if components is None:
        return {layer: list(range(width)) for layer in range(n_layers)}
    kind = Head if site == "head" else Neuron
    wanted: dict[int, list[int]] = {}
    for c in components:
        if not isinstance(c, kind):
            raise ValueError(f"site {site!r} patches {kind.__name__} components, got {c!r}")
        wanted.setdefault(c.layer, []).append(c.head if site == "head" else c.index)
    return wanted


def _patcher(setup: PatchSetup, site: str, layer: int, index: torch.Tensor):
    """``make_patch`` for :meth:`PatchSetup.run_layers`: run ``r`` patches ``index[r]`` at ``layer``."""
    name = act_name(site, layer)
    clean = setup.clean.cache.get(name)

    def make_patch(runs: slice, rows: torch.Tensor, join: torch.Tensor):
        idx = index[runs]
        if site == "resid":  # the rows enter the batch at this layer: patch their input
            join[torch.arange(len(idx)), idx] = clean[0, idx].to(join.dtype)
            return []

        def hook(act, hook):
            act = act.clone()
            if site in ("attn", "mlp"):  # [batch, pos, d_model], idx = positions
                act[rows, idx] = clean[0, idx].to(act.dtype)
            elif site == "head":  # [batch, pos, head, d_head], idx = heads
                act[rows, :, idx] = clean[0][:, idx].transpose(0, 1).to(act.dtype)
            else:  # neuron: [batch, pos, d_mlp], idx = neurons
                act[rows, :, idx] = clean[0][:, idx].T.to(act.dtype)
            return act
        return [(name, hook)]
    return make_patch


def counterfactual_pair(model, fact, facts) -> tuple[str, str, int, int]:
    """``(clean, corrupted, answer, wrong_answer)`` for ``fact`` from a same-relation fact set.

    The counterfactual is the first other fact with the same ``relation``, whose subject gives
    ``fact``'s prompt the same token length and whose target starts with another token; answers
    are the first tokens of the two targets.
    """
    text, _ = fill_prompt(fact.prompt, fact.subject)
    n = len(encode_prompt(model, text))
    first = model.tokenizer(fact.target, add_special_tokens=False)["input_ids"][0]
    for other in facts:
        if other.id == fact.id or fact.relation is None or other.relation != fact.relation:
            continue
        corrupted = fact.prompt.replace("{}", other.subject) if "{}" in fact.prompt \
            else text.replace(fact.subject, other.subject)
        wrong = model.tokenizer(other.target, add_special_tokens=False)["input_ids"][0]
        if wrong != first and len(encode_prompt(model, corrupted)) == n:
            return text, corrupted, first, wrong
    raise ValueError(
        f"no fact of relation {fact.relation!r} in the given set has a subject with the same token "
        f"length as {fact.subject!r} ({n} prompt tokens) and another answer; add one, or call "
        "activation_patch with a corrupted prompt of your own"
    )


def fact_activation_patch(model, fact, facts, site: str = "resid", progress: bool = True,
                          **kwargs) -> Localization:
    """Activation patching of ``fact`` against a counterfactual subject picked from ``facts``
    (see :func:`counterfactual_pair`)."""
    clean, corrupted, answer, wrong = counterfactual_pair(model, fact, facts)
    loc = activation_patch(model, clean, corrupted, answer, wrong, site=site, progress=progress,
                           **kwargs)
    loc.fact_id, loc.prompt, loc.target = fact.id, clean, fact.target
    return loc
