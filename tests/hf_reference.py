"""An independent float64 numpy llama forward with Hugging Face's conventions.

Written from transformers' modeling_llama, not from xllm: q/k exactly as stored in the
safetensors (no permutation), RoPE by rotate_half over the two halves of each head, GQA by
repeat_kv (query head h reads kv head h // (n_heads / n_kv_heads)), lm_head or the tied
embedding as the classifier.  `weights` maps HF tensor names to arrays (any float dtype).
"""
from __future__ import annotations

import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_cos_sin(n_pos, head_dim, theta):
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.arange(n_pos, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)              # [n, head_dim]
    return np.cos(emb), np.sin(emb)


def apply_rope_hf(x, cos, sin):
    """x: [n, heads, head_dim] -> rotated, HF's half-split convention."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(config: dict, weights: dict, token_ids) -> np.ndarray:
    """Logits float64 [len(token_ids), vocab_size] for every position of `token_ids`."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    d = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    hd = config.get("head_dim") or d // n_heads
    eps = config.get("rms_norm_eps", 1e-6)
    theta = config.get("rope_theta", 10000.0)
    ids = np.asarray(token_ids)
    n = len(ids)
    cos, sin = rope_cos_sin(n, hd, theta)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    rep = n_heads // n_kv

    h = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(n, n_heads, hd)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(n, n_kv, hd)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(n, n_kv, hd)
        q, k = apply_rope_hf(q, cos, sin), apply_rope_hf(k, cos, sin)
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)       # repeat_kv
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, n_heads * hd)
        h = h + attn @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        ffn = silu(x @ w[p + "mlp.gate_proj.weight"].T) * (x @ w[p + "mlp.up_proj.weight"].T)
        h = h + ffn @ w[p + "mlp.down_proj.weight"].T
    h = rms_norm(h, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else w["lm_head.weight"]
    return h @ head.T
