"""llama2.c legacy fp32 checkpoints (run.c): a 7-int32 header, then the tensors, memory-mapped."""
from __future__ import annotations

import os
import struct

import numpy as np

from ..config import ModelConfig
from .checkpoint import Checkpoint, Tensor, validate_tensors
from .types import F32

LLAMA2C_HEADER = struct.Struct("<7i")   # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
LLAMA2C_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def _llama2c_config(path, values, norm_eps=1e-5) -> ModelConfig:
    header = dict(zip(LLAMA2C_FIELDS, values))
    for k, v in header.items():
        if k != "vocab_size" and v <= 0:
            raise ValueError(f"{path}: header field {k} = {v}, expected a positive integer")
    if header["vocab_size"] == 0:
        raise ValueError(f"{path}: header field vocab_size = 0, expected a non-zero integer")
    if header["dim"] % header["n_heads"]:
        raise ValueError(f"{path}: header field dim = {header['dim']} is not divisible by "
                         f"n_heads = {header['n_heads']}")
    return ModelConfig(
        dim=header["dim"], hidden_dim=header["hidden_dim"], n_layers=header["n_layers"],
        n_heads=header["n_heads"], n_kv_heads=header["n_kv_heads"],
        vocab_size=abs(header["vocab_size"]), max_seq_len=header["seq_len"],
        norm_eps=norm_eps, rope_theta=10000.0, tied_embeddings=header["vocab_size"] > 0,
    ).validate(path)


def open_llama2c(path: str) -> Checkpoint:
    """llama2.c legacy fp32 checkpoint: 7-int32 header, then the tensors back to back."""
    size = os.path.getsize(path)
    if size < LLAMA2C_HEADER.size:
        raise ValueError(f"{path}: {size} bytes, too short for the llama2.c header ({LLAMA2C_HEADER.size} bytes)")
    with open(path, "rb") as f:
        values = LLAMA2C_HEADER.unpack(f.read(LLAMA2C_HEADER.size))
    cfg = _llama2c_config(path, values)
    L, d, h, kv, q = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.kv_dim, cfg.q_dim
    # (name in the file, per-layer GGUF name or None for whole-model, shape per layer)
    layout = [
        ("token_embedding_table", "token_embd.weight", None, (cfg.vocab_size, d)),
        ("rms_att_weight", "attn_norm.weight", L, (d,)),
        ("wq", "attn_q.weight", L, (q, d)),
        ("wk", "attn_k.weight", L, (kv, d)),
        ("wv", "attn_v.weight", L, (kv, d)),
        ("wo", "attn_output.weight", L, (d, q)),
        ("rms_ffn_weight", "ffn_norm.weight", L, (d,)),
        ("w1", "ffn_gate.weight", L, (h, d)),
        ("w2", "ffn_down.weight", L, (d, h)),
        ("w3", "ffn_up.weight", L, (h, d)),
        ("rms_final_weight", "output_norm.weight", None, (d,)),
        ("freq_cis", None, None, (cfg.max_seq_len * cfg.head_dim,)),   # two unused legacy RoPE tables
    ]
    if not cfg.tied_embeddings:
        layout.append(("wcls", "output.weight", None, (cfg.vocab_size, d)))
    n_floats = sum(int(np.prod(shape)) * (layers or 1) for _, _, layers, shape in layout)
    expected = LLAMA2C_HEADER.size + 4 * n_floats
    if size != expected:
        raise ValueError(f"{path}: file is {size} bytes, expected {expected} for the header "
                         f"{dict(zip(LLAMA2C_FIELDS, values))} ({'truncated' if size < expected else 'trailing data'})")
    flat = np.memmap(path, dtype=np.float32, mode="r", offset=LLAMA2C_HEADER.size, shape=(n_floats,))
    tensors = {}
    pos = 0
    for _, name, layers, shape in layout:
        n = int(np.prod(shape))
        if layers is None:
            if name is not None:
                tensors[name] = Tensor(name, F32, shape, flat[pos:pos + n].reshape(shape))
            pos += n
        else:
            for i in range(layers):
                full = f"blk.{i}.{name}"
                tensors[full] = Tensor(full, F32, shape, flat[pos:pos + n].reshape(shape))
                pos += n
    validate_tensors(path, cfg, tensors)
    return Checkpoint(path, cfg, tensors, None, "llama2c", _keepalive=[flat])
