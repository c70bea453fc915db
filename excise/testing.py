"""Tiny random language models for fast tests on three architectures, and one per model family.

Every later feature is tested on GPT-2 (``Conv1D`` weights, learned positions), Llama (gated MLP,
rotary, grouped-query attention) and GPT-NeoX (parallel attention + MLP, fused QKV). The models are
built in-process with a small byte-level BPE tokenizer trained on a few sentences, saved to a folder
and loaded back through :func:`excise.load_model`, so the tests exercise the same path users take.

:data:`FAMILIES` goes wider for the support table (:mod:`excise.commands.support`): one tiny config
per family of small open models users load (GPT-2, Pythia, Llama 3.2, Qwen 2.5, Gemma 2, SmolLM,
Mistral, Phi, Phi-3, OLMo, OLMo 2), each built from the family's own Hugging Face config class and
keeping the quirks that could break an editor: grouped-query attention, tied embeddings, biases,
soft-capping, extra norms, sliding windows, parallel blocks, fused projections, partial rotary.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
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


# The families' tiny configs. Widths are shared; each function keeps what its family does
# differently. ``_common`` ids match :func:`tiny_tokenizer` (``<|bos|>`` = 0, ``<|eos|>`` = 1).
D_MODEL, D_MLP, N_LAYERS, N_HEADS, N_KV_HEADS, N_CTX = 64, 128, 2, 4, 2, 128
SLIDING_WINDOW = 8
"""Short enough that the support check's longer prompts reach past it."""


def _common(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                max_position_embeddings=N_CTX)


def _rotary_sizes(vocab_size: int) -> dict:
    """Sizes of a gated-MLP rotary decoder with grouped-query attention (2 query heads per KV head)."""
    return dict(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS, **_common(vocab_size))


def gpt2_family(vocab_size: int):
    """GPT-2: ``Conv1D`` weights, learned positions, biases everywhere, tied embeddings."""
    from transformers import GPT2Config

    return GPT2Config(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX,
                      tie_word_embeddings=True, **_common(vocab_size))


def pythia_family(vocab_size: int):
    """Pythia (GPT-NeoX): parallel attention + MLP, fused QKV, rotary on a quarter of each head."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=D_MODEL, intermediate_size=4 * D_MODEL, num_hidden_layers=N_LAYERS,
                         num_attention_heads=N_HEADS, use_parallel_residual=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.25},
                         tie_word_embeddings=False, **_common(vocab_size))


def llama32_family(vocab_size: int):
    """Llama 3.2 (1B/3B): grouped-query attention, tied embeddings, Llama 3 rotary scaling."""
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return LlamaConfig(rope_parameters=rope, tie_word_embeddings=True, **_rotary_sizes(vocab_size))


def qwen25_family(vocab_size: int):
    """Qwen 2.5 (0.5B-3B): biases on q/k/v only, grouped-query attention, tied embeddings."""
    from transformers import Qwen2Config

    return Qwen2Config(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                  "rope_theta": 1000000.0},
                       **_rotary_sizes(vocab_size))


def gemma2_family(vocab_size: int):
    """Gemma 2: soft-capped attention scores and final logits, norms after attention and MLP too
    (RMSNorm scaling by 1 + weight), local (sliding-window) and global layers alternating, heads
    wider than ``d_model / n_heads`` with their own query scale, embeddings scaled by
    sqrt(d_model) and tied, GeGLU MLP, grouped-query attention. The caps (30 and 50 in Gemma 2)
    are scaled to a random tiny model's logits and scores, so that they bite."""
    from transformers import Gemma2Config

    return Gemma2Config(head_dim=32, query_pre_attn_scalar=32, final_logit_softcapping=0.5,
                        attn_logit_softcapping=0.05, sliding_window=SLIDING_WINDOW,
                        layer_types=["sliding_attention", "full_attention"][:N_LAYERS],
                        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                        **_rotary_sizes(vocab_size))


def smollm_family(vocab_size: int):
    """SmolLM / SmolLM2 (Llama architecture): grouped-query attention, tied embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(tie_word_embeddings=True, **_rotary_sizes(vocab_size))


def mistral_family(vocab_size: int):
    """Mistral 7B v0.1: grouped-query attention, sliding-window attention, untied embeddings."""
    from transformers import MistralConfig

    return MistralConfig(sliding_window=SLIDING_WINDOW, tie_word_embeddings=False,
                         head_dim=D_MODEL // N_HEADS, **_rotary_sizes(vocab_size))


def phi3_family(vocab_size: int):
    """Phi-3 / Phi-3.5 / Phi-4-mini: fused ``qkv_proj`` and ``gate_up_proj``, grouped-query
    attention (Phi-3.5 and Phi-4-mini), untied embeddings."""
    from transformers import Phi3Config

    return Phi3Config(tie_word_embeddings=False, original_max_position_embeddings=N_CTX,
                      **_rotary_sizes(vocab_size))


def phi_family(vocab_size: int):
    """Phi-1.5 / Phi-2: parallel attention + MLP sharing one LayerNorm, rotary on half of each
    head, biases everywhere (the untied unembedding too)."""
    from transformers import PhiConfig

    return PhiConfig(hidden_size=D_MODEL, intermediate_size=4 * D_MODEL, num_hidden_layers=N_LAYERS,
                     num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS,
                     tie_word_embeddings=False, **_common(vocab_size))


def olmo_family(vocab_size: int):
    """OLMo: LayerNorm without learned weights, tied embeddings (OLMo-1B), q/k/v clipped (OLMo-7B
    clips at 8; scaled here to a random tiny model's activations, so that it bites)."""
    from transformers import OlmoConfig

    return OlmoConfig(clip_qkv=0.3, tie_word_embeddings=True, **_rotary_sizes(vocab_size))


def olmo2_family(vocab_size: int):
    """OLMo 2: norms after attention and MLP (none before), RMS-normed queries and keys, untied."""
    from transformers import Olmo2Config

    return Olmo2Config(tie_word_embeddings=False, **_rotary_sizes(vocab_size))


FAMILIES: dict[str, Callable] = {
    "GPT-2": gpt2_family,
    "Pythia": pythia_family,
    "Llama 3.2": llama32_family,
    "Qwen 2.5": qwen25_family,
    "Gemma 2": gemma2_family,
    "SmolLM2": smollm_family,
    "Mistral": mistral_family,
    "Phi-3": phi3_family,
    "Phi-2": phi_family,
    "OLMo": olmo_family,
    "OLMo 2": olmo2_family,
}
"""Family name (as users call the models) -> ``config(vocab_size)``: a tiny random config of the
family's own config class. The names differ from :data:`ARCHITECTURES`, so :func:`save_tiny_model`
takes either."""


def save_tiny_model(arch: str, folder: str | Path, seed: int = 0, **config) -> Path:
    """Build a random tiny ``arch`` model with the tiny tokenizer and save it as an HF folder.

    ``arch`` is one of :data:`ARCHITECTURES` (``config`` overrides its sizes) or a family of
    :data:`FAMILIES` (``config`` overrides fields of the family's config).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    if arch in ARCHITECTURES:
        hf_config = tiny_config(arch, vocab_size=len(tokenizer), **config)
    elif arch in FAMILIES:
        hf_config = FAMILIES[arch](len(tokenizer))
        for name, value in config.items():
            setattr(hf_config, name, value)
    else:
        raise ValueError(f"unknown tiny model {arch!r}; choose one of {ARCHITECTURES} or {tuple(FAMILIES)}")
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
