"""Plain float64 numpy forwards, written from the math: the oracle for the engine.

Weights use the GGUF names and layout (W[out, in]).  One function per family, sharing the
attention:

- llama: RMSNorm, RoPE on adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/head_dim)
  (divided by a linear factor, or by Llama 3's per-frequency factors), SwiGLU FFN, optional
  biases on every projection;
- qwen2: llama with q/k/v biases and RoPE on the halves (x[i], x[i + head_dim/2]);
- gpt2: LayerNorm with bias, learned absolute positions added to the embedding, fused QKV,
  biases everywhere, GELU (tanh form) FFN.
"""
import numpy as np


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def layernorm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def inv_freq(head_dim, theta, linear_factor=1.0, freq_factors=None):
    """Angle per position of pair i: theta^(-2i/head_dim) / linear_factor / freq_factors[i]."""
    f = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim) / linear_factor
    if freq_factors is not None:
        f = f / np.asarray(freq_factors, dtype=np.float64)
    return f


def rope(x, positions, theta, neox=False, freqs=None):
    """x: (T, n_heads, head_dim) rotated pairwise (adjacent pairs, or halves when `neox`);
    returns a new array.  `freqs`: the per-pair angles (default: theta's)."""
    T, H, D = x.shape
    if freqs is None:
        freqs = inv_freq(D, theta)
    ang = positions[:, None].astype(np.float64) * freqs[None, :]        # (T, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    first = (slice(None), slice(None), slice(0, D // 2)) if neox else (Ellipsis, slice(0, None, 2))
    second = (slice(None), slice(None), slice(D // 2, D)) if neox else (Ellipsis, slice(1, None, 2))
    x0, x1 = x[first], x[second]
    out = np.empty_like(x)
    out[first] = x0 * cos - x1 * sin
    out[second] = x0 * sin + x1 * cos
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
    """0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), written as x / (1 + exp(-2u))
    (the same function; 1 + tanh(u) cancels to 0 in float64 for u < -19)."""
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    return x / (1.0 + np.exp(-2.0 * u))


def causal_attention(q, k, v):
    """q (T, H, D), k/v (T, KV, D): softmax(q k^T / sqrt(D)) v over positions <= t."""
    T, H, D = q.shape
    k = np.repeat(k, H // k.shape[1], axis=1)          # GQA: query head i reads kv head i // group
    v = np.repeat(v, H // v.shape[1], axis=1)
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att = scores / scores.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", att, v).reshape(T, H * D)


def _linear(w, name, x):
    """x @ W.T (+ bias when the weights have one)."""
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if name + ".bias" in w else y


def _qkv(cfg, w, p, h):
    if p + "attn_qkv.weight" in w:
        qkv = _linear(w, p + "attn_qkv", h)
        return np.split(qkv, [cfg.q_dim, cfg.q_dim + cfg.kv_dim], axis=-1)
    return (_linear(w, p + "attn_q", h), _linear(w, p + "attn_k", h), _linear(w, p + "attn_v", h))


def forward(cfg, w, tokens):
    """Logits (T, vocab) after every position of `tokens`, causal attention from position 0.

    cfg: xllm.config.ModelConfig (its family chooses the forward); w: GGUF name -> float64.
    """
    return gpt2_forward(cfg, w, tokens) if cfg.arch == "gpt2" else llama_forward(cfg, w, tokens)


def llama_forward(cfg, w, tokens):
    """llama and qwen2 (qwen2: q/k/v biases, RoPE on halves)."""
    tokens = np.asarray(tokens)
    T = len(tokens)
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = np.arange(T)
    neox = cfg.arch == "qwen2"
    freqs = inv_freq(D, cfg.rope_theta, cfg.rope_factor if cfg.rope_scaling == "linear" else 1.0,
                     w.get("rope_freqs.weight"))
    x = w["token_embd.weight"][tokens].astype(np.float64)
    for l in range(cfg.n_layers):
        p = f"blk.{l}."
        h = rmsnorm(x, w[p + "attn_norm.weight"], cfg.norm_eps)
        q, k, v = _qkv(cfg, w, p, h)
        q = rope(q.reshape(T, H, D), pos, cfg.rope_theta, neox, freqs)
        k = rope(k.reshape(T, KV, D), pos, cfg.rope_theta, neox, freqs)
        x = x + _linear(w, p + "attn_output", causal_attention(q, k, v.reshape(T, KV, D)))
        h = rmsnorm(x, w[p + "ffn_norm.weight"], cfg.norm_eps)
        f = silu(_linear(w, p + "ffn_gate", h)) * _linear(w, p + "ffn_up", h)
        x = x + _linear(w, p + "ffn_down", f)
    x = rmsnorm(x, w["output_norm.weight"], cfg.norm_eps)
    cls = w["token_embd.weight"] if cfg.tied_embeddings else w["output.weight"]
    return x @ cls.T


def gpt2_forward(cfg, w, tokens):
    """GPT-2: learned positions, LayerNorm, fused QKV, GELU FFN, biases everywhere."""
    tokens = np.asarray(tokens)
    T = len(tokens)
    H, D = cfg.n_heads, cfg.head_dim
    x = w["token_embd.weight"][tokens] + w["position_embd.weight"][np.arange(T)]
    for l in range(cfg.n_layers):
        p = f"blk.{l}."
        h = layernorm(x, w[p + "attn_norm.weight"], w[p + "attn_norm.bias"], cfg.norm_eps)
        q, k, v = _qkv(cfg, w, p, h)
        att = causal_attention(q.reshape(T, H, D), k.reshape(T, H, D), v.reshape(T, H, D))
        x = x + _linear(w, p + "attn_output", att)
        h = layernorm(x, w[p + "ffn_norm.weight"], w[p + "ffn_norm.bias"], cfg.norm_eps)
        x = x + _linear(w, p + "ffn_down", gelu_tanh(_linear(w, p + "ffn_up", h)))
    x = layernorm(x, w["output_norm.weight"], w["output_norm.bias"], cfg.norm_eps)
    cls = w["token_embd.weight"] if cfg.tied_embeddings else w["output.weight"]
    return x @ cls.T
