"""Exact parameter counts and training FLOPs of a jaxllm ModelConfig, without building the model.

N counts embeddings, as Hoffmann et al. 2022 do (Kaplan et al. 2020 leave them out): `ParamCount.embedding` holds
the token embedding, learned positions and an untied LM head; the rest is `non_embedding`. Imports no JAX, so
the planner runs anywhere in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxllm.config import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # token embedding (V·E), learned positions (T·E, gpt2 only), LM head (E·V) when untied
    non_embedding: int  # transformer blocks and the final norm

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding


def param_count(m: ModelConfig) -> ParamCount:
    """Exactly the parameters jaxllm.model builds for this config (tests/test_scaling.py checks against it)."""
    e, f, v = m.n_embd, m.hidden, m.vocab_size
    q_width, kv_width = m.n_head * m.head_dim, m.kv_heads * m.head_dim  # attention widths H·Dh and KV·Dh
    if m.family == "gpt2":
        attention = e * (q_width + 2 * kv_width) + (q_width + 2 * kv_width) + q_width * e + e  # qkv, out, biases
        mlp = e * f + f + f * e + e  # fc and proj with biases
        per_layer = attention + mlp + 2 * (2 * e)  # two LayerNorms, scale and bias each
        final_norm, positions = 2 * e, m.block_size * e
    else:  # llama: no biases, RMSNorm has a scale only, SwiGLU has three matrices
        per_layer = e * q_width + 2 * e * kv_width + q_width * e + 3 * e * f + 2 * e
        final_norm, positions = e, 0
    lm_head = 0 if m.tie_embeddings else e * v
    return ParamCount(embedding=v * e + positions + lm_head, non_embedding=m.n_layer * per_layer + final_norm)


def flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token (forward and backward) of one model at full context, m.block_size tokens.

    Convention: a multiply-add is 2 FLOPs; backward costs twice the forward, so training is 3x forward.
    - Weights: 6 FLOPs per weight per token for every non-embedding parameter (norm scales and biases are counted
      as if they were matmul weights: under 1% of the count) plus the LM head's E·V weights, which cost their
      matmul whether or not they are tied to the embedding. Embedding and position lookups cost nothing.
    - Attention: scores Q·K^T and the weighted sum of V cost 2·2·T·H·Dh forward per token per layer, so
      12·L·T·H·Dh for training, over the full T x T score matrix. Not halved for the causal mask: our XLA
      attention computes the masked half too (the same count as PaLM, Chowdhery et al. 2022, appendix B).
    """
    counts = param_count(m)
    matmul_weights = counts.non_embedding + m.vocab_size * m.n_embd
    attention = 12 * m.n_layer * m.block_size * m.n_head * m.head_dim
    return 6.0 * matmul_weights + attention


# ---------------------------------------------------------------------------------------------------------------
# Planner methods: budget C (FLOPs) -> parameters N and tokens D with C = 6·N·D
