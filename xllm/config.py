"""ModelConfig: the hyperparameters and the architecture of a model, read from the checkpoint.

One description covers every family the decoder step runs; the loaders (formats.gguf,
formats.hf), the converter and the Cython decoder step all read it:

    family   norm            FFN                    positions                      biases
    llama    RMSNorm         SiLU-gated (SwiGLU)    RoPE, adjacent pairs (*)       optional
    qwen2    RMSNorm         SiLU-gated (SwiGLU)    RoPE, halves (NeoX)            q/k/v
    gpt2     LayerNorm+bias  GELU (tanh form)       learned absolute embeddings    every projection

(*) HF llama checkpoints store q/k for the half-split rotation; the import permutes their rows
so the adjacent-pair rotation gives the same result, as llama.cpp's converter does.  RoPE
frequencies are theta^(-2i/head_dim), divided by a linear scaling factor and, for Llama 3's
scaling, by a per-frequency factor (GGUF: rope_freqs.weight).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

ARCHITECTURES = ("llama", "qwen2", "gpt2")      # GGUF general.architecture values
NORMS = ("rms", "layer")                        # RMSNorm (weight) / LayerNorm (weight and bias)
ACTIVATIONS = ("swiglu", "gelu_tanh")           # silu(gate) * up / gelu_tanh(up), no gate
POSITIONS = ("rope", "learned")                 # rotary / learned absolute position embeddings
ROPE_STYLES = ("adjacent", "neox")              # rotate (2i, 2i+1) / (i, i + head_dim/2)
ROPE_SCALINGS = ("none", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    dim: int                    # model width: token embedding length
    hidden_dim: int             # FFN inner width (gate/up rows, down columns)
    n_layers: int               # decoder blocks
    n_heads: int                # query heads
    n_kv_heads: int             # key/value heads (GQA when < n_heads)
    vocab_size: int             # rows of the embedding and the classifier
    max_seq_len: int            # context length: positions the KV cache may hold
    head_dim: int = 0           # per-head width; 0 means dim // n_heads
    norm_eps: float = 1e-5      # RMSNorm / LayerNorm epsilon
    rope_theta: float = 10000.0  # RoPE base frequency
    tied_embeddings: bool = False  # classifier reuses the token embedding
    bos_id: int = 1
    eos_id: int = 2
    # architecture
    arch: str = "llama"         # GGUF general.architecture (ARCHITECTURES)
    norm: str = "rms"           # NORMS; "layer" has a bias
    activation: str = "swiglu"  # ACTIVATIONS
    position: str = "rope"      # POSITIONS
    rope_style: str = "adjacent"  # ROPE_STYLES
    rope_scaling: str = "none"  # ROPE_SCALINGS
    rope_factor: float = 1.0    # linear: positions are divided by it
    rope_freq_factors: Optional[tuple] = None  # llama3: head_dim/2 divisors of the frequencies
    qkv_bias: bool = False      # biases on the q/k/v projections
    out_bias: bool = False      # bias on the attention output projection
    ffn_bias: bool = False      # biases on the FFN projections (gate, up, down)
    fused_qkv: bool = False     # one attn_qkv matrix (rows q, then k, then v) instead of three
    eos_ids: tuple = ()         # every id that ends generation; () means (eos_id,)

    def __post_init__(self):
        if self.head_dim == 0 and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if not self.eos_ids:
            object.__setattr__(self, "eos_ids", (self.eos_id,))
        if self.rope_freq_factors is not None:
            object.__setattr__(self, "rope_freq_factors", tuple(float(f) for f in self.rope_freq_factors))

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.n_kv_heads * self.head_dim

    def validate(self, source: str) -> "ModelConfig":
        """Raise ValueError naming `source` and the field when a value cannot be run."""
        def bad(field, value, expected):
            raise ValueError(f"{source}: {field} = {value!r}, expected {expected}")

        for field in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                      "vocab_size", "max_seq_len", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                bad(field, value, "a positive integer")
            if value > (1 << 24):
                bad(field, value, f"at most {1 << 24}")
        if self.n_heads % self.n_kv_heads != 0:
            bad("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads ({self.n_heads})")
        if self.head_dim % 2 != 0:
            bad("head_dim", self.head_dim, "an even number (RoPE rotates pairs)")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps < 1):
            bad("norm_eps", self.norm_eps, "a number in (0, 1)")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 1):
            bad("rope_theta", self.rope_theta, "a number > 1")
        for field, allowed in (("arch", ARCHITECTURES), ("norm", NORMS), ("activation", ACTIVATIONS),
                               ("position", POSITIONS), ("rope_style", ROPE_STYLES),
                               ("rope_scaling", ROPE_SCALINGS)):
            if getattr(self, field) not in allowed:
                bad(field, getattr(self, field), f"one of {', '.join(allowed)}")
        if not (math.isfinite(self.rope_factor) and self.rope_factor > 0):
            bad("rope_factor", self.rope_factor, "a positive number")
        if self.rope_scaling == "llama3":
            f = self.rope_freq_factors
            if f is None or len(f) != self.head_dim // 2:
                bad("rope_freq_factors", None if f is None else f"{len(f)} values",
                    f"{self.head_dim // 2} per-frequency factors (head_dim / 2) for llama3 scaling")
            if not all(math.isfinite(x) and x > 0 for x in f):
                bad("rope_freq_factors", f, "positive numbers")
        elif self.rope_freq_factors is not None:
            bad("rope_freq_factors", "given", f"none unless rope_scaling is llama3 (it is {self.rope_scaling!r})")
        for field in ("bos_id", "eos_id"):
            value = getattr(self, field)
            if not 0 <= value < self.vocab_size:
                bad(field, value, f"a token id in [0, {self.vocab_size})")
        for value in self.eos_ids:
            if not 0 <= value < self.vocab_size:
                bad("eos_ids", self.eos_ids, f"token ids in [0, {self.vocab_size})")
        return self


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """float64 (head_dim/2,) angle per position of each rotated pair, scaling applied."""
    i = np.arange(cfg.head_dim // 2, dtype=np.float64)
    freqs = cfg.rope_theta ** (-2.0 * i / cfg.head_dim) / cfg.rope_factor
    if cfg.rope_freq_factors is not None:
        freqs = freqs / np.asarray(cfg.rope_freq_factors, dtype=np.float64)
    return freqs


def llama3_freq_factors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_context: int) -> tuple:
    """Llama 3's per-frequency divisors, as llama.cpp's convert_hf_to_gguf.py computes them
    (the same as transformers' _compute_llama3_parameters): high frequencies unchanged, low
    ones divided by `factor`, a smooth blend between the two wavelength thresholds."""
    freqs = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    low_wavelen = original_context / low_freq_factor
    high_wavelen = original_context / high_freq_factor
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(float(factor))
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(out)
