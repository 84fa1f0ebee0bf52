"""ModelConfig: the hyperparameters of a llama-family model, read from the checkpoint."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    dim: int                    # model width: token embedding length
    hidden_dim: int             # FFN inner width (w1/w3 rows, w2 columns)
    n_layers: int               # decoder blocks
    n_heads: int                # query heads
    n_kv_heads: int             # key/value heads (GQA when < n_heads)
    vocab_size: int             # rows of the embedding and the classifier
    max_seq_len: int            # context length: positions the KV cache may hold
    head_dim: int = 0           # per-head width; 0 means dim // n_heads
    norm_eps: float = 1e-5      # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base frequency
    tied_embeddings: bool = False  # classifier reuses the token embedding
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if self.head_dim == 0 and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.n_kv_heads * self.head_dim

    def validate(self, source: str) -> "ModelConfig":
        """Raise ValueError naming `source` and the field when a value cannot be a llama model."""
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
        for field in ("bos_id", "eos_id"):
            value = getattr(self, field)
            if not 0 <= value < self.vocab_size:
                bad(field, value, f"a token id in [0, {self.vocab_size})")
        return self
