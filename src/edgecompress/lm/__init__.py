"""Causal language models: builders, token-level metrics and group-wise weight quantization.

Everything language-model specific that the pipeline, the ``QuantizeWeights`` pass, the GGUF
exporter and the llama.cpp runner share lives here, apart from the image-classifier code paths.
"""

from .metrics import lm_loss, logits_of, next_token_agreement, perplexity
from .models import tiny_gpt2, tiny_llama, tiny_qwen2

__all__ = ["lm_loss", "logits_of", "next_token_agreement", "perplexity", "tiny_gpt2",
           "tiny_llama", "tiny_qwen2"]
