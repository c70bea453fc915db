"""Text generation, two ways: through the bridge (edits and hooks apply) or fast (a plain copy).

* :func:`generate` continues prompts greedily or by top-k sampling by re-running the right-padded
  batch through the ``TransformerBridge`` at every step (no KV cache: Hugging Face's cached
  ``generate`` does not go through the bridge's hook points correctly). Everything the model
  currently holds, hooks included, shapes the text: this is what verification reads.
  Cost: ``max_new_tokens`` forwards of the batch.
* :func:`sample_texts` samples text from a plain Hugging Face copy of the current weights with a
  KV cache (:func:`excise.export.plain_hf_model`): fast, but hooks do not apply. The editors use
  it for the text their key statistics and context prefixes are taken over.
"""

from __future__ import annotations

import torch

from excise.tokens import encode_prompt, pad_rows


@torch.no_grad()
def generate(model, prompts: list[str], max_new_tokens: int = 20, sample: bool | list[bool] = False,
             top_k: int = 5, seed: int = 0) -> list[str]:
    """Continue each prompt by ``max_new_tokens`` tokens; greedy, or top-k sampling when ``sample``.

    ``sample`` may be one flag for all prompts or one per prompt (so greedy and sampled
    continuations share a batch). Returns the generated text only (prompt excluded).
    """
    flags = torch.tensor(sample if isinstance(sample, list) else [sample] * len(prompts))
    rows = [encode_prompt(model, p) for p in prompts]
    lengths = [len(r) for r in rows]
    tokens, _ = pad_rows(model, rows, width=max(lengths) + max_new_tokens)  # [batch, pos]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_new_tokens):
        logits = model(tokens[:, : max(lengths)])  # [batch, pos, d_vocab]
        last = logits[torch.arange(len(rows)), torch.tensor(lengths) - 1].float().cpu()  # [batch, d_vocab]
        top = last.topk(top_k, dim=-1)  # [batch, top_k]
        choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator)[:, 0]
        nxt = torch.where(flags, top.indices[torch.arange(len(rows)), choice], last.argmax(-1))
        for i in range(len(rows)):
            tokens[i, lengths[i]] = nxt[i]
            lengths[i] += 1
    return [model.tokenizer.decode(tokens[i, len(r):lengths[i]].tolist()) for i, r in enumerate(rows)]


@torch.no_grad()
def sample_texts(model, openings: list[str], length: int, seed: int = 0, batch_size: int = 32) -> list[str]:
    """Texts of ``length`` new tokens sampled (top-k 50) after each opening, opening included.

    Runs on a plain Hugging Face copy of the weights with a KV cache; the global random state is
    restored afterwards, so sampling here does not change the caller's random numbers.
    """
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
            out = plain.generate(
                tokens, attention_mask=_left_pad_mask(model, chunk, tokens), do_sample=True, top_k=50,
                max_new_tokens=length, min_new_tokens=length, pad_token_id=tokenizer.pad_token_id,
            )
            for opening, row in zip(chunk, out):
                texts.append(opening + tokenizer.decode(row[prompt_len:], skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
    return texts


def _left_pad_mask(model, texts, tokens) -> torch.Tensor:
    """Attention mask ``[batch, pos]`` for left-padded ``tokens`` (the pad id may equal eos/bos)."""
    mask = torch.zeros_like(tokens)
    for i, text in enumerate(texts):
        mask[i, tokens.shape[1] - len(encode_prompt(model, text)):] = 1
    return mask
