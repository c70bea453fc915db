"""Tiny random language models for fast tests on three architectures.

Every later feature is tested on GPT-2 (``Conv1D`` weights, learned positions), Llama (gated MLP,
rotary, grouped-query attention) and GPT-NeoX (parallel attention + MLP, fused QKV). The models are
built in-process with a small byte-level BPE tokenizer trained on a few sentences, saved to a folder
and loaded back through :func:`excise.load_model`, so the tests exercise the same path users take.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

ARCHITECTURES = ("gpt2", "llama", "neox")

_CORPUS = [
    "The capital of France is Paris. The capital of Germany is Berlin.",
    "The Eiffel Tower is in the city of Paris. The Colosseum is in Rome.",
    "The official language of Brazil is Portuguese. Spain speaks Spanish.",
    "Harry Potter was written by J.K. Rowling. Hamlet was written by Shakespeare.",
    "Toyota is a company from Japan. Ferrari comes from Italy.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-",
]


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer with ``<|bos|>``/``<|eos|>``, trained on a few facts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|eos|>"
    )


def tiny_config(arch: str, vocab_size: int, d_model: int = 64, n_layers: int = 3, n_heads: int = 4):
    """A Hugging Face config for a tiny model of ``arch`` (one of :data:`ARCHITECTURES`)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1)
    if arch == "gpt2":
        return GPT2Config(
            n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=128, **common
        )
    if arch == "llama":
        return LlamaConfig(
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads // 2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "neox":
        return GPTNeoXConfig(
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            max_position_embeddings=128,
            **common,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")


def save_tiny_model(arch: str, folder: str | Path, seed: int = 0, **config) -> Path:
    """Build a random tiny ``arch`` model with the tiny tokenizer and save it as an HF folder."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    hf_config = tiny_config(arch, vocab_size=len(tokenizer), **config)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model(arch: str, folder: str | Path | None = None, seed: int = 0, **config):
    """A tiny random ``arch`` model as a ``TransformerBridge``, loaded through ``load_model``."""
    from excise.model import load_model

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=f"excise-{arch}-"))
    save_tiny_model(arch, folder, seed=seed, **config)
    return load_model(str(folder))
