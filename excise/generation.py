"""Text generation, two ways: through the bridge (edits and hooks apply) or fast (a plain model).

* :func:`generate` continues prompts greedily or by top-k sampling by re-running the right-padded
  batch through the ``TransformerBridge`` at every step (no KV cache: Hugging Face's cached
  ``generate`` does not go through the bridge's hook points correctly). Everything the model
  currently holds, hooks included, shapes the text: this is what verification reads.
  Cost: ``max_new_tokens`` forwards of the batch.
* :func:`sample_texts` samples text from a plain Hugging Face model that shares the current weights,
  with a KV cache (:func:`excise.export.plain_hf_model`): fast, but hooks do not apply. The editors use
  it for the text their key statistics and context prefixes are taken over.
"""

from __future__ import annotations

import torch

from excise.tokens import encode_prompt, pad_rows


@torch.no_grad()
def generate(model, prompts: list[str], max_new_tokens: int = 20, sample: bool | list[bool] = False,
             top_k: int = 5, seed: int = 0, temperature: float | list[float] = 1.0) -> list[str]:
    """Continue each prompt by ``max_new_tokens`` tokens; greedy, or top-k sampling when ``sample``.

    ``sample`` may be one flag for all prompts or one per prompt (so greedy and sampled
    continuations share a batch); so may ``temperature``, which divides the top-k logits before
    sampling (1.0 samples from the model's own top-k probabilities). Returns the generated text
    only (prompt excluded).
    """
    flags = torch.tensor(sample if isinstance(sample, list) else [sample] * len(prompts))
    temps = torch.tensor(temperature if isinstance(temperature, list) else [temperature] * len(prompts),
                         dtype=torch.float32)[:, None]  # [batch, 1]
    rows = [encode_prompt(model, p) for p in prompts]
    lengths = [len(r) for r in rows]
    tokens, _ = pad_rows(model, rows, width=max(lengths) + max_new_tokens)  # [batch, pos]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_new_tokens):
        logits = model(tokens[:, : max(lengths)])  # [batch, pos, d_vocab]
        last = logits[torch.arange(len(rows)), torch.tensor(lengths) - 1].float().cpu()  # [batch, d_vocab]
        top = last.topk(top_k, dim=-1)  # [batch, top_k]
        choice = torch.multinomial((top.values / temps).softmax(-1), 1, generator=generator)[:, 0]
        nxt = torch.where(flags, top.indices[torch.arange(len(rows)), choice], last.argmax(-1))
        for i in range(len(rows)):
            tokens[i, lengths[i]] = nxt[i]
            lengths[i] += 1
    return [model.tokenizer.decode(tokens[i, len(r):lengths[i]].tolist()) for i, r in enumerate(rows)]


@torch.no_grad()
def sample_texts(model, openings: list[str], length: int, seed: int = 0, batch_size: int = 32) -> list[str]:
    """Texts of ``length`` new tokens sampled (top-k 50) after each opening, opening included.

    Runs on a plain Hugging Face model sharing the weights, with a KV cache; the global random state is
    restored afterwards, so sampling here does not change the caller's random numbers.
    """
    from excise.export import plain_hf_model

    plain = plain_hf_model(model, share_weights=True)
    tokenizer = model.tokenizer
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts = []
    try:
        for start in range(0, len(openings), batch_size):
            chunk = openings[start:start + batch_size]
            tokens = model.to_tokens(chunk, padding_side="left", truncate=False)
            prompt_len = tokens.shape[1]
            out = plain.generate(
                tokens, attention_mask=_left_pad_mask(model, chunk, tokens), do_sample=True, top_k=50,
                max_new_tokens=length, min_new_tokens=length, pad_token_id=tokenizer.pad_token_id,
            )
            for opening, row in zip(chunk, out):
                texts.append(opening + tokenizer.decode(row[prompt_len:], skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
    return texts


_OWN_HOOKS = ("transformer_lens.model_bridge", "transformers.utils.output_capturing")
"""Modules whose hooks are wiring, not edits: they leave the forward computation unchanged."""


def has_hooks(model) -> bool:
    """Whether a user's forward hook or pre-hook sits on ``model``: any hook on a hook point, or a
    module hook that is neither the bridge's own wiring nor the output capturing Hugging Face
    installs on its layers (then only :func:`generate`, through the bridge, computes what the model
    currently does)."""
    from transformer_lens.hook_points import HookPoint

    for module in model.modules():
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if hooks and (isinstance(module, HookPoint) or any(
                not getattr(h, "__module__", "").startswith(_OWN_HOOKS) for h in hooks)):
            return True
    return False


@torch.no_grad()
def sample_continuations(model, prompts: list[str], max_new_tokens: int, temperature: list[float],
                         top_k: int = 50, seed: int = 0, batch_size: int = 64) -> list[str]:
    """Top-k sampled continuations of ``prompts`` (chat-framed or raw, BOS prepended as in
    :func:`generate`) at each prompt's ``temperature``; the generated text only.

    With no hook on ``model`` (:func:`has_hooks`) this samples from a plain Hugging Face model
    sharing the current weights, with a KV cache (many times faster on long continuations); otherwise it
    falls back to :func:`generate` through the bridge. The two draw different random numbers, so
    the same seed gives other samples from the same distribution. The global random state is
    restored afterwards.
    """
    if has_hooks(model):
        return generate(model, prompts, max_new_tokens, sample=True, top_k=top_k, seed=seed,
                        temperature=list(temperature))
    from excise.export import plain_hf_model

    plain = plain_hf_model(model, share_weights=True)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = [""] * len(prompts)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        by_temperature: dict[float, list[int]] = {}
        for i, t in enumerate(temperature):
            by_temperature.setdefault(float(t), []).append(i)
        for t, rows in by_temperature.items():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                encoded = [encode_prompt(model, prompts[i]) for i in chunk]
                width = max(len(e) for e in encoded)
                tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(tokens)
                for j, e in enumerate(encoded):
                    tokens[j, width - len(e):] = torch.as_tensor(e)
                    mask[j, width - len(e):] = 1
                device = next(plain.parameters()).device
                generated = plain.generate(
                    tokens.to(device), attention_mask=mask.to(device), do_sample=True, top_k=top_k,
                    temperature=t, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                    pad_token_id=pad)
                for j, i in enumerate(chunk):
                    out[i] = model.tokenizer.decode(generated[j, width:].tolist())
    finally:
        torch.random.set_rng_state(state)
    return out


def _left_pad_mask(model, texts, tokens) -> torch.Tensor:
    """Attention mask ``[batch, pos]`` for left-padded ``tokens`` (the pad id may equal eos/bos)."""
    mask = torch.zeros_like(tokens)
    for i, text in enumerate(texts):
        mask[i, tokens.shape[1] - len(encode_prompt(model, text)):] = 1
    return mask
