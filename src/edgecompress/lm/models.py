"""Small Hugging Face causal LMs built from configs with random weights (nothing downloaded).

The GGUF exporter reads the same three architectures: Llama, Qwen2 and GPT-2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._extras import require

ARCHITECTURES = ("llama", "qwen2", "gpt2")


def _transformers() -> Any:
    return require("transformers", "llm", "building Hugging Face language models")


def tiny_llama(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4,
               kv_heads: int | None = None, ffn: int | None = None, context: int = 512,
               tie: bool = False, seed: int = 0) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""
    tf = _transformers()
    cfg = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         intermediate_size=ffn or 3 * hidden, max_position_embeddings=context,
                         tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0,
                         pad_token_id=None, rms_norm_eps=1e-5, rope_theta=10000.0)
    return _build(tf.LlamaForCausalLM, cfg, seed)


def tiny_qwen2(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4,
               kv_heads: int | None = None, ffn: int | None = None, context: int = 512,
               tie: bool = False, seed: int = 0) -> nn.Module:
    """A randomly initialised ``Qwen2ForCausalLM`` (Llama-like with q/k/v biases)."""
    tf = _transformers()
    cfg = tf.Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         intermediate_size=ffn or 3 * hidden, max_position_embeddings=context,
                         tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0,
                         rms_norm_eps=1e-6, rope_theta=10000.0, use_sliding_window=False)
    return _build(tf.Qwen2ForCausalLM, cfg, seed)


def tiny_gpt2(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4,
              context: int = 512, seed: int = 0) -> nn.Module:
    """A randomly initialised ``GPT2LMHeadModel`` (LayerNorm, GELU, learned positions, tied head)."""
    tf = _transformers()
    cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                        n_positions=context, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return _build(tf.GPT2LMHeadModel, cfg, seed)


def _build(cls: Any, cfg: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    model.config.use_cache = False  # whole windows in training and measurement
    return model


def architecture(model: nn.Module) -> str:
    """``llama``, ``qwen2`` or ``gpt2`` for a supported HF causal LM (ConfigError otherwise)."""
    from ..errors import ConfigError

    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ARCHITECTURES:
        raise ConfigError(f"{type(model).__name__} (model_type {kind!r}) is not a supported "
                          f"causal LM; supported: Hugging Face {', '.join(ARCHITECTURES)} models "
                          f"(e.g. ec.lm.tiny_llama(...) or transformers.LlamaForCausalLM)")
    return kind


def is_causal_lm(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in ARCHITECTURES
