"""Key statistics for rank-one and batch edits: ``C = E[k k^T]`` of the MLP output-projection input.

A rank-one edit of ``W`` (``[d_mlp, d_model]``, ``out = k @ W``) changes the output for the
subject's key ``k*`` while disturbing other keys as little as possible *on average over the
keys the model actually sees*; that average is taken with ``C``, the second moment of ``k``
(``blocks.{l}.mlp.hook_post``) over a text sample. No corpus is reachable offline, so the default
sample is text the model itself generates from varied short openings; ``corpus=PATH`` uses a
user's own text instead. Each ``C`` is computed once per (base weights, layer, sample) and cached
in ``excise.model.cache_dir()/stats``; the number of tokens used travels with it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from excise.components import mlp_out_module
from excise.edit._common import OPENINGS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSpec:
    """Which text the statistics come from: generated (``corpus=None``) or a user's file."""

    corpus: str | None = None
    n_sequences: int = 64
    length: int = 96
    seed: int = 0

    @property
    def tag(self) -> str:
        if self.corpus is None:
            return f"generated-{self.n_sequences}x{self.length}-seed{self.seed}"
        digest = hashlib.sha256(Path(self.corpus).read_bytes()).hexdigest()[:16]
        return f"corpus-{digest}-{self.n_sequences}x{self.length}"


@dataclass
class KeyStats:
    """``second_moment`` ``[d_mlp, d_mlp]`` and ``mean`` ``[d_mlp]`` of the keys, over ``n_tokens``."""

    second_moment: torch.Tensor
    mean: torch.Tensor
    n_tokens: int
    sample: str


@torch.no_grad()
def sample_texts(model, openings: list[str], length: int, seed: int = 0, batch_size: int = 32) -> list[str]:
    """Texts of ``length`` new tokens the model samples (top-k 50) after each opening."""
    from excise.export import plain_hf_model

    plain = plain_hf_model(model)
    tokenizer = model.tokenizer
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts = []
    try:
        for start in range(0, len(openings), batch_size):
            chunk = openings[start:start + batch_size]
            tokens = model.to_tokens(chunk, padding_side="left", truncate=False)
            prompt_len = tokens.shape[1]
            mask = _left_pad_mask(model, chunk, tokens)
            out = plain.generate(
                tokens, attention_mask=mask, do_sample=True, top_k=50, max_new_tokens=length,
                min_new_tokens=length, pad_token_id=tokenizer.pad_token_id,
            )
            for opening, row in zip(chunk, out):
                texts.append(opening + tokenizer.decode(row[prompt_len:], skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
    return texts


def _left_pad_mask(model, texts, tokens) -> torch.Tensor:
    """Attention mask ``[batch, pos]`` for left-padded ``tokens`` (pad id may equal eos/bos)."""
    mask = torch.zeros_like(tokens)
    for i, text in enumerate(texts):
        n = model.to_tokens(text, truncate=False).shape[-1]
        mask[i, tokens.shape[1] - n:] = 1
    return mask


def sample_tokens(model, spec: SampleSpec) -> list[torch.Tensor]:
    """The token rows (BOS included when the model uses one) the statistics are taken over."""
    if spec.corpus is None:
        openings = [OPENINGS[i % len(OPENINGS)] for i in range(spec.n_sequences)]
        texts = sample_texts(model, openings, spec.length, spec.seed)
        n_ctx = model.cfg.n_ctx  # re-tokenized text can be longer than what was sampled
        return [model.to_tokens(t, truncate=False)[0][:n_ctx] for t in texts]
    path = Path(spec.corpus)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path} not found: pass a plain-text file")
    ids = model.tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if len(ids) < spec.length:
        raise ValueError(f"corpus {path} has only {len(ids)} tokens; give at least {spec.length}")
    bos = model.to_tokens("", truncate=False)[0].tolist()
    rows = [bos + ids[i:i + spec.length] for i in range(0, len(ids) - spec.length + 1, spec.length)]
    return [torch.tensor(r, device=model.cfg.device) for r in rows[: spec.n_sequences]]


def cached_sample_tokens(model, spec: SampleSpec, base_hash: str) -> list[torch.Tensor]:
    """:func:`sample_tokens`, cached on disk next to the statistics computed from them."""
    from safetensors.torch import load_file, save_file

    from excise.model import cache_dir

    path = cache_dir() / "stats" / base_hash[:20] / spec.tag / "sample.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        return [stored[str(i)].to(model.cfg.device) for i in range(len(stored))]
    rows = sample_tokens(model, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({str(i): r.cpu().contiguous() for i, r in enumerate(rows)}, str(path))
    return rows


def key_stats(model, layers: list[int], spec: SampleSpec | None = None, progress: bool = True,
              base_hash: str | None = None) -> dict[int, KeyStats]:
    """``KeyStats`` for each of ``layers``, from the disk cache or computed in one pass."""
    from excise.model import cache_dir, weights_hash

    spec = spec or SampleSpec()
    base_hash = base_hash or weights_hash(model)
    folder = cache_dir() / "stats" / base_hash[:20] / spec.tag
    found = {layer: _read(folder / f"layer{layer}.safetensors") for layer in layers}
    todo = [layer for layer, stats in found.items() if stats is None]
    if todo:
        rows = cached_sample_tokens(model, spec, base_hash)
        computed = _accumulate(model, todo, rows, spec.tag, progress)
        folder.mkdir(parents=True, exist_ok=True)
        for layer, stats in computed.items():
            _write(folder / f"layer{layer}.safetensors", stats)
            found[layer] = stats
    return found


@torch.no_grad()
def _accumulate(model, layers, rows, tag: str, progress: bool, batch_size: int = 16) -> dict[int, KeyStats]:
    d_mlp = model.cfg.d_mlp
    sums = {layer: torch.zeros(d_mlp, dtype=torch.float64) for layer in layers}
    outers = {layer: torch.zeros(d_mlp, d_mlp, dtype=torch.float64) for layer in layers}
    n_tokens = 0
    pad = model.tokenizer.pad_token_id or 0
    for start in tqdm(range(0, len(rows), batch_size), desc="key statistics", disable=not progress):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long, device=model.cfg.device)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool, device=model.cfg.device)
        for i, row in enumerate(chunk):
            tokens[i, : len(row)], mask[i, : len(row)] = row, True
        keys = _all_keys(model, layers, tokens)
        for layer in layers:
            k = keys[layer][mask].double().cpu()  # [n, d_mlp]
            sums[layer] += k.sum(0)
            outers[layer] += k.T @ k
        n_tokens += int(mask.sum())
    return {layer: KeyStats((outers[layer] / n_tokens).float(), (sums[layer] / n_tokens).float(),
                            n_tokens, tag) for layer in layers}


def _all_keys(model, layers, tokens) -> dict[int, torch.Tensor]:
    captured, handles = {}, []
    for layer in layers:
        def hook(module, args, layer=layer):
            captured[layer] = args[0].detach()  # [batch, pos, d_mlp]
        handles.append(mlp_out_module(model, layer).register_forward_pre_hook(hook))
    try:
        model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _read(path: Path) -> KeyStats | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        return KeyStats(handle.get_tensor("second_moment"), handle.get_tensor("mean"),
                        int(meta["n_tokens"]), meta["sample"])


def _write(path: Path, stats: KeyStats) -> None:
    from safetensors.torch import save_file

    partial = path.with_suffix(".partial")
    save_file({"second_moment": stats.second_moment.contiguous(), "mean": stats.mean.contiguous()},
              str(partial), metadata={"n_tokens": str(stats.n_tokens), "sample": stats.sample})
    partial.rename(path)
