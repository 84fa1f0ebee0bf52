"""A plain float64 numpy llama forward, written from the math: the oracle for the engine.

Weights use the GGUF names and layout (W[out, in]); RoPE rotates adjacent pairs
(x[2i], x[2i+1]) by pos * theta^(-2i/head_dim), as llama2.c and GGUF llama models do.
"""
import numpy as np


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, theta):
    """x: (T, n_heads, head_dim) rotated pairwise; returns a new array."""
    T, H, D = x.shape
    freqs = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)        # (D/2,)
    ang = positions[:, None].astype(np.float64) * freqs[None, :]        # (T, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(cfg, w, tokens):
    """Logits (T, vocab) after every position of `tokens`, causal attention from position 0.

    cfg: xllm.config.ModelConfig; w: GGUF name -> float64 array.
    """
    tokens = np.asarray(tokens)
    T = len(tokens)
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = np.arange(T)
    x = w["token_embd.weight"][tokens].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for l in range(cfg.n_layers):
        p = f"blk.{l}."
        h = rmsnorm(x, w[p + "attn_norm.weight"], cfg.norm_eps)
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(T, H, D), pos, cfg.rope_theta)
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(T, KV, D), pos, cfg.rope_theta)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, D)
        k = np.repeat(k, H // KV, axis=1)                  # GQA: query head i reads kv head i // group
        v = np.repeat(v, H // KV, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        att = scores / scores.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
        x = x + o @ w[p + "attn_output.weight"].T
        h = rmsnorm(x, w[p + "ffn_norm.weight"], cfg.norm_eps)
        f = silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)
        x = x + f @ w[p + "ffn_down.weight"].T
    x = rmsnorm(x, w["output_norm.weight"], cfg.norm_eps)
    cls = w["token_embd.weight"] if cfg.tied_embeddings else w["output.weight"]
    return x @ cls.T
