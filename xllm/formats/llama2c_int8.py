"""llama2.c version-2 int8 checkpoints ("ak42", written by llama2.c's `export.py --version 2`).

File layout (all little-endian):

    offset 0    uint32 magic 0x616b3432 ("ak42" read as a big-endian word; bytes b"24ka")
           4    int32 version = 2
           8    int32 x 7: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
          36    uint8 shared_classifier (1: the classifier is the token embedding)
          37    int32 group_size GS
          41    zero padding up to byte 256
         256    fp32 norms: rms_att [n_layers, dim], rms_ffn [n_layers, dim], rms_final [dim]
                then each quantized tensor in turn as int8 values [numel] followed by its
                fp32 scales [numel / GS] (value = int8 * scale, one scale per GS consecutive
                values of the flattened tensor): token embedding, wq x n_layers, wk, wv, wo,
                w1, w2, w3 (each x n_layers), and the classifier unless shared.

Mapping onto GGUF types:

- The norms stay F32, views of the memory-mapped file.
- A quantized tensor whose row length is a multiple of 32 becomes Q8_0: GS is a multiple of
  32, so each 32-value Q8_0 block lies inside one llama2.c group and takes that group's scale
  (a group of 64 becomes two blocks sharing the scale); the int8 values are kept as they are.
  **Rounding:** the fp32 scale is rounded to fp16 (nearest even), the only change: every
  value moves by |q| * |s - fp16(s)| <= 127 * s * 2^-11, i.e. relatively at most 2^-11
  (0.05%) of the group's largest value, while the scale is a normal fp16 (s >= 6.1e-5);
  smaller scales lose relative precision (fp16 subnormals, 0 below 3e-8).
- A quantized tensor that cannot be Q8_0 stays exact as F32 (int8 * fp32 scale, computed in
  float32 as llama2.c's runq.c does): rows not a multiple of 32 long (e.g. w2 when hidden_dim
  is 172), or a scale too large for fp16 (> 65504).

Q8_0 and F32 tensors are built in memory (the interleaved block layout differs from the
file's), so loading copies the weights once.  The header, every tensor extent and the file
size are validated before anything is read; a bad file raises ValueError naming the file,
the field and expected versus found.
"""
from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from .checkpoint import QK, Checkpoint, Tensor, validate_tensors
from .llama2c import LLAMA2C_FIELDS, _llama2c_config
from .types import F32, Q8_0

MAGIC = 0x616B3432
VERSION = 2
HEADER_BYTES = 256
HEADER = struct.Struct("<Ii7iBi")       # magic, version, 7 params, shared_classifier, group_size
assert HEADER.size == 41, HEADER.size
FP16_MAX = float(np.finfo(np.float16).max)


def _read_header(path: str, size: int):
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes, too short for the llama2.c version-2 header "
                         f"({HEADER_BYTES} bytes)")
    with open(path, "rb") as f:
        fields = HEADER.unpack(f.read(HEADER.size))
    magic, version, params, shared, group_size = fields[0], fields[1], fields[2:9], fields[9], fields[10]
    if magic != MAGIC:
        raise ValueError(f"{path}: magic {struct.pack('<I', magic)!r}, expected "
                         f"{struct.pack('<I', MAGIC)!r} (llama2.c 'ak42')")
    if version != VERSION:
        raise ValueError(f"{path}: header field version = {version}, expected {VERSION} "
                         f"(llama2.c int8 export; other versions are not supported)")
    if shared not in (0, 1):
        raise ValueError(f"{path}: header field shared_classifier = {shared}, expected 0 or 1")
    if group_size <= 0 or group_size % QK:
        raise ValueError(f"{path}: header field group_size = {group_size}, expected a positive "
                         f"multiple of {QK} (Q8_0 blocks)")
    vocab = params[LLAMA2C_FIELDS.index("vocab_size")]
    if vocab <= 0:
        raise ValueError(f"{path}: header field vocab_size = {vocab}, expected a positive integer")
    return params, bool(shared), group_size


def _q8_0_from_groups(q: np.ndarray, s: np.ndarray, group_size: int, shape: tuple) -> np.ndarray:
    """int8 values + one fp32 scale per group -> Q8_0 bytes [rows, cols/32*34]."""
    from quant.reference import BLOCK_Q8_0
    rows, cols = shape
    n_blocks = q.size // QK
    blocks = np.empty(n_blocks, dtype=BLOCK_Q8_0)
    blocks["qs"] = q.reshape(n_blocks, QK)
    blocks["d"] = np.repeat(s.astype(np.float16), group_size // QK)
    return blocks.view(np.uint8).reshape(rows, cols // QK * BLOCK_Q8_0.itemsize)


def open_llama2c_int8(path) -> Checkpoint:
    """Load a llama2.c version-2 int8 checkpoint as Q8_0 (and F32) tensors; see the module doc."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    params, shared, gs = _read_header(path, size)
    cfg = _llama2c_config(path, params)
    cfg = dataclasses.replace(cfg, tied_embeddings=shared).validate(path)
    L, d, h, kv, qd = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.kv_dim, cfg.q_dim

    norms = [("attn_norm.weight", L, (d,)), ("ffn_norm.weight", L, (d,)),
             ("output_norm.weight", None, (d,))]
    quantized = [("token_embd.weight", None, (cfg.vocab_size, d)),
                 ("attn_q.weight", L, (qd, d)), ("attn_k.weight", L, (kv, d)),
                 ("attn_v.weight", L, (kv, d)), ("attn_output.weight", L, (d, qd)),
                 ("ffn_gate.weight", L, (h, d)), ("ffn_down.weight", L, (d, h)),
                 ("ffn_up.weight", L, (h, d))]
    if not shared:
        quantized.append(("output.weight", None, (cfg.vocab_size, d)))

    def names(name, layers):
        return [name] if layers is None else [f"blk.{i}.{name}" for i in range(layers)]

    # Check the exact file size from the header alone (arithmetic, so a header claiming
    # millions of layers fails at once), then plan every extent.
    n_norm = sum((layers or 1) * shape[0] for _, layers, shape in norms)
    expected = HEADER_BYTES + 4 * n_norm
    for name, layers, shape in quantized:
        numel = shape[0] * shape[1]
        if numel % gs:
            raise ValueError(f"{path}: tensor {name!r} has {numel} values, not a multiple of the "
                             f"header's group_size {gs}")
        expected += (layers or 1) * (numel + 4 * (numel // gs))
    if size != expected:
        raise ValueError(f"{path}: file is {size} bytes, expected {expected} for the header "
                         f"{dict(zip(LLAMA2C_FIELDS, params), shared_classifier=int(shared), group_size=gs)} "
                         f"({'truncated' if size < expected else 'trailing data'})")
    plan, offset = [], HEADER_BYTES + 4 * n_norm
    for name, layers, shape in quantized:
        numel = shape[0] * shape[1]
        for full in names(name, layers):
            plan.append((full, shape, offset, offset + numel))
            offset += numel + 4 * (numel // gs)

    raw = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    flat = raw[HEADER_BYTES:HEADER_BYTES + 4 * n_norm].view("<f4")
    pos = 0
    for name, layers, shape in norms:
        for full in names(name, layers):
            tensors[full] = Tensor(full, F32, shape, flat[pos:pos + shape[0]])
            pos += shape[0]
    for full, shape, q0, s0 in plan:
        numel = shape[0] * shape[1]
        q = raw[q0:s0].view(np.int8)
        s = np.frombuffer(raw, dtype="<f4", count=numel // gs, offset=s0)
        if not np.isfinite(s).all():
            i = int(np.argmin(np.isfinite(s)))
            raise ValueError(f"{path}: tensor {full!r} has scale {s[i]} in group {i}, expected a finite number")
        if shape[1] % QK == 0 and float(np.abs(s).max(initial=0.0)) <= FP16_MAX:
            tensors[full] = Tensor(full, Q8_0, shape, _q8_0_from_groups(q, s, gs, shape))
        else:
            values = q.reshape(-1, gs).astype(np.float32) * s[:, None]
            tensors[full] = Tensor(full, F32, shape, values.reshape(shape))
    validate_tensors(path, cfg, tensors)
    return Checkpoint(path, cfg, tensors, None, "llama2c", _keepalive=[raw])
