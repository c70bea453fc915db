"""Causal tracing (Meng et al. 2022, ROME): which hidden states carry a fact?

Run the prompt three ways. *Clean*: as is, the model predicts the target. *Corrupted*: Gaussian
noise (default 3x the standard deviation of the token embeddings) is added to the subject tokens'
embeddings, so the model loses the fact. *Restored*: corrupted, except that one clean state is put
back at (layer, position). The probability of the target with the restored state measures how much
that state alone carries the fact. For ``site="resid"`` the state is the residual stream entering
block ``layer``; for ``"mlp"``/``"attn"`` the block outputs over a window of ``window`` layers
centred on ``layer`` are restored (ROME's setting), at one position.

Fast path: a restore at layer ``l`` leaves blocks before it unchanged, so each restored run starts
from the cached corrupted residual at the first restored layer (:class:`excise.runner.Runner`),
all positions x noise samples of a layer are one batched forward, and only the target positions are
unembedded. Restoring a position before the subject changes nothing (noise only reaches later
positions), so those cells are the corrupted score without running anything.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
from tqdm.auto import tqdm

from excise.hooks import act_name, site_name
from excise.interrupt import checkpoint
from excise.locate._inputs import fact_tokens, warn_if_unknown
from excise.locate.localization import Localization
from excise.runner import Runner, chunks, rows_per_chunk
from excise.scoring import target_logprob

log = logging.getLogger(__name__)

SITES = ("resid", "mlp", "attn")
"""The sites a causal trace restores (names of :data:`excise.hooks.SITES`)."""


def embedding_std(model) -> float:
    """Standard deviation of the token embedding matrix (read from the live parameter)."""
    weight = next(model.embed.parameters())  # [d_vocab, d_model]
    return float(weight.detach().float().std())


def causal_trace(model, fact, site: str = "resid", samples: int = 10, noise: float | None = None,
                 window: int = 10, seed: int = 0, progress: bool = True) -> Localization:
    """Trace ``fact`` at ``site``; scores ``[layer, position]`` are target probabilities.

    ``site``: ``"resid"``, ``"mlp"`` or ``"attn"`` (:data:`excise.hooks.SITES`). ``noise`` is the
    absolute noise scale (default ``3 * embedding_std(model)``); ``samples`` noise draws are
    averaged. ``meta`` holds ``subject_positions`` (indices into ``model.to_tokens(prompt)``),
    ``clean_score``, ``corrupted_score``, ``subject``, ``n_tokens``.
    """
    site = site_name(site, SITES)
    if samples < 1 or window < 1:
        raise ValueError("samples and window must be >= 1")
    ft = fact_tokens(model, fact)
    scale = 3 * embedding_std(model) if noise is None else float(noise)
    n_layers, pos = model.cfg.n_layers, ft.tokens.shape[1]
    clean_names = [act_name(site, layer) for layer in range(n_layers)]
    clean = Runner(model, ft.tokens, clean_names)
    clean_logits = clean.logits[:, ft.read]
    warn_if_unknown(model, ft, clean_logits, fact.target)
    clean_score = float(target_logprob(clean_logits, ft.target_ids).exp())

    started = time.perf_counter()
    corrupted, corrupted_score = _corrupted_states(model, ft, samples, scale, seed)
    scores = torch.full((n_layers, ft.n_prompt), corrupted_score)
    first = ft.subject_positions[0]
    positions = list(range(first, ft.n_prompt))
    _warn_if_slow(time.perf_counter() - started, n_layers * len(positions), pos, site)
    with torch.no_grad():
        for layer in tqdm(range(n_layers), desc=f"causal trace ({site})", disable=not progress):
            checkpoint(f"tracing layer {layer}")
            probs = _restore_layer(clean, corrupted, ft, site, layer, positions, samples, window)
            scores[layer, first:] = probs
    log.info("causal trace %s: clean %.4f corrupted %.4f", site, clean_score, corrupted_score)
    return Localization(
        scores=scores, axes=("layer", "position"),
        labels={"layer": [str(i) for i in range(n_layers)], "position": ft.labels},
        method="causal_trace", site=site,
        settings={"samples": samples, "noise": scale, "window": window if site != "resid" else 1,
                  "seed": seed},
        meta={"subject_positions": ft.subject_positions, "clean_score": clean_score,
              "corrupted_score": corrupted_score, "subject": fact.subject, "n_tokens": pos},
        prompt=ft.prompt, target=fact.target, fact_id=getattr(fact, "id", None),
    )


SLOW_SECONDS = 120.0


def _warn_if_slow(one_pass: float, restored_runs_per_sample: int, n_tokens: int, site: str) -> None:
    """Warn, with an estimate, when the trace will take long (a long prompt): each restored run
    costs about half of what the noisy forward of the prompt (``one_pass``, all samples) cost,
    since it starts at its own layer."""
    estimate = 0.5 * one_pass * restored_runs_per_sample
    log.info("causal trace (%s): about %.0f s expected", site, estimate)
    if estimate > SLOW_SECONDS:
        warnings.warn(f"causal trace ({site}) of a {n_tokens}-token prompt: about {estimate / 60:.0f} "
                      f"min expected on this machine ({restored_runs_per_sample} restored runs per "
                      "noise sample); shorten the prompt or lower samples= to go faster", stacklevel=3)


def _corrupted_states(model, ft, samples: int, scale: float, seed: int):
    """Residual streams entering every block under ``samples`` noise draws, and the mean score.

    Returns ``{layer: [samples, pos, d_model]}`` and the corrupted target probability.
    """
    generator = torch.Generator().manual_seed(seed)
    subject = ft.subject_positions
    noise = torch.randn(samples, len(subject), model.cfg.d_model, generator=generator) * scale
    noise = noise.to(model.cfg.device)

    def add_noise(embed, hook):  # [samples, pos, d_model]
        embed = embed.clone()
        embed[:, subject] += noise.to(embed.dtype)
        return embed

    names = [act_name("resid", layer) for layer in range(model.cfg.n_layers)]
    runner = Runner(model, ft.tokens.expand(samples, -1), names, fwd_hooks=[("hook_embed", add_noise)])
    probs = target_logprob(runner.logits[:, ft.read], ft.target_ids).exp()
    states = {layer: runner.cache[name] for layer, name in enumerate(names)}
    return states, float(probs.mean())


def _restore_layer(clean: Runner, corrupted: dict, ft, site: str, layer: int, positions: list[int],
                   samples: int, window: int) -> torch.Tensor:
    """Mean restored probability ``[len(positions)]`` for one layer (rows = positions x samples)."""
    n_layers = clean.n_layers
    if site == "resid":
        start, restored = layer, [layer]
    else:
        start = max(0, layer - window // 2)
        restored = list(range(start, min(n_layers, layer - (-window // 2))))
    n_rows = len(positions) * samples
    row_pos = torch.tensor(positions).repeat_interleave(samples)  # [rows]
    row_sample = torch.arange(samples).repeat(len(positions))  # [rows]
    out = torch.empty(n_rows)
    for part in chunks(n_rows, rows_per_chunk(ft.tokens.shape[1])):
        pos_, sample_ = row_pos[part], row_sample[part]
        rows = torch.arange(len(pos_))
        resid = corrupted[start][sample_].clone()  # [rows, pos, d_model]
        hooks = []
        if site == "resid":
            resid[rows, pos_] = clean.cache[act_name("resid", layer)][0, pos_]
        else:
            for restored_layer in restored:
                name = act_name(site, restored_layer)
                hooks.append((name, _restore_hook(clean.cache[name][0], rows, pos_)))
        logits = clean.run_from(start, resid, ft.read, hooks)
        out[part] = target_logprob(logits, ft.target_ids).exp().cpu()
    return out.view(len(positions), samples).mean(-1)


def _restore_hook(clean_act: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor):
    """A hook writing ``clean_act[positions[r]]`` into row ``r`` (``clean_act`` ``[pos, d_model]``)."""
    def hook(act, hook):  # [rows, pos, d_model]
        act = act.clone()
        act[rows, positions] = clean_act[positions].to(act.dtype)
        return act
    return hook
