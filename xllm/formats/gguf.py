"""GGUF checkpoints of architecture llama, qwen2 or gpt2: the config from the metadata, tensors
memory-mapped.

The keys and tensor names are the ones llama.cpp's convert_hf_to_gguf.py writes and its
loader reads: `{arch}.embedding_length`, `{arch}.attention.layer_norm_rms_epsilon` (llama,
qwen2) or `.layer_norm_epsilon` (gpt2), `{arch}.rope.scaling.type/factor`, rope_freqs.weight
(Llama 3's per-frequency factors), attn_qkv (fused), position_embd, `*.bias`.  Which optional
tensors a file has (biases, a fused QKV, a classifier) decides the matching config switches.

llama.cpp's llama and qwen2 loaders take each bias on its own as optional and a fused attn_qkv
in any layer (llama-model.cpp's create_tensor_qkv): `attention_layout` brings such a file into
the one layout the decoder has -- every layer fused or every layer separate, each group of
biases (q/k/v, output, FFN) in every layer or in none, a missing member being zero, which
adds nothing.  gpt2 files must have all of theirs, as in llama.cpp.
"""
from __future__ import annotations

import numpy as np

from ..config import ARCHITECTURES, ModelConfig
from .checkpoint import Checkpoint, Tensor, validate_tensors
from .types import F32, VECTOR_TYPES, is_block_quantized, type_name

# The per-family constants of the decoder; everything else comes from keys and tensors.
FAMILIES = {
    "llama": dict(norm="rms", activation="swiglu", position="rope", rope_style="adjacent"),
    "qwen2": dict(norm="rms", activation="swiglu", position="rope", rope_style="neox"),
    "gpt2": dict(norm="layer", activation="gelu_tanh", position="learned", rope_style="adjacent",
                 qkv_bias=True, out_bias=True, ffn_bias=True),
}
ROPE_SCALING_TYPES = ("none", "linear")          # written as keys; llama3 is the rope_freqs tensor
# Keys of features the decoder step does not have: refused when present.
UNSUPPORTED_KEYS = {
    "attention.sliding_window": "sliding-window attention",
    "rope.scaling.attn_factor": "attention scaling of YaRN",
    "expert_count": "mixture of experts",
}


def _field(reader, key, path, required=True, default=None):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise ValueError(f"{path}: missing GGUF key {key!r}")
        return default
    try:
        return f.contents()
    except Exception as exc:  # malformed value parts
        raise ValueError(f"{path}: GGUF key {key!r} cannot be read ({exc})") from None


def _int_field(reader, key, path, required=True, default=None):
    value = _field(reader, key, path, required, default)
    if value is None:
        return None
    if isinstance(value, (list, str, bytes)) or isinstance(value, float) and not float(value).is_integer():
        raise ValueError(f"{path}: GGUF key {key!r} = {value!r}, expected an integer")
    return int(value)


def _float_field(reader, key, path, default):
    value = _field(reader, key, path, False, default)
    if isinstance(value, (list, str, bytes)):
        raise ValueError(f"{path}: GGUF key {key!r} = {value!r}, expected a number")
    return float(value)


def _rope_settings(reader, a, path, tensors, head_dim) -> dict:
    """rope_theta and the scaling: {arch}.rope.scaling.type/factor (or the older
    {arch}.rope.scale_linear) and the rope_freqs.weight tensor of Llama 3."""
    rope_dims = _int_field(reader, a + "rope.dimension_count", path, False, head_dim)
    if rope_dims != head_dim:
        raise ValueError(f"{path}: {a}rope.dimension_count = {rope_dims}, expected the head size "
                         f"{head_dim} (partial rotary embeddings are not supported)")
    kind = _field(reader, a + "rope.scaling.type", path, False, None)
    if kind is not None and kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"{path}: {a}rope.scaling.type = {kind!r}, expected one of "
                         f"{', '.join(ROPE_SCALING_TYPES)} (or Llama 3's rope_freqs.weight); not supported")
    factor = _float_field(reader, a + "rope.scaling.factor", path,
                          _float_field(reader, a + "rope.scale_linear", path, 1.0))
    if factor == 0.0:                       # llama.cpp reads 0 as "no scaling"
        factor = 1.0
    out = dict(rope_theta=_float_field(reader, a + "rope.freq_base", path, 10000.0))
    if factor != 1.0:                       # llama.cpp applies the factor whatever the type says
        out.update(rope_scaling="linear", rope_factor=factor)
    freqs = tensors.get("rope_freqs.weight")
    if freqs is not None:
        if freqs.shape != (head_dim // 2,):
            raise ValueError(f"{path}: tensor 'rope_freqs.weight' has shape {freqs.shape}, "
                             f"expected ({head_dim // 2},) (head_dim / 2)")
        if factor != 1.0:
            raise ValueError(f"{path}: both rope_freqs.weight and {a}rope.scaling.factor = {factor} "
                             "(one RoPE scaling at a time is supported)")
        values = np.asarray(freqs.to_float32(), dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"{path}: tensor 'rope_freqs.weight' holds values that are not positive numbers")
        out.update(rope_scaling="llama3", rope_freq_factors=tuple(values))
    return out


def _layer_ids(tensors) -> list:
    """The N of every blk.N.* tensor, sorted (loops follow the file, not a header's layer count)."""
    ids = set()
    for name in tensors:
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
            ids.add(int(parts[1]))
    return sorted(ids)


def _vector(tensors, name, n, path) -> np.ndarray:
    """The float32 values of the 1-D tensor `name` of length n; zeros where the file has none."""
    t = tensors.get(name)
    if t is None:
        return np.zeros(n, dtype=np.float32)
    if tuple(t.shape) != (n,):
        raise ValueError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected ({n},)")
    if t.ggml_type not in VECTOR_TYPES:
        raise ValueError(f"{path}: 1-D tensor {name!r} is {type_name(t.ggml_type)}, expected F32 or F16")
    return np.asarray(t.to_float32(), dtype=np.float32)


def _f32_vector(name, values) -> Tensor:
    return Tensor(name, F32, (len(values),), np.ascontiguousarray(values, dtype=np.float32))


def attention_layout(tensors: dict, q_dim: int, kv_dim: int, path: str) -> dict:
    """Bring a llama/qwen2 file's optional tensors into one layout (in place) and return the
    switches fused_qkv, qkv_bias, out_bias, ffn_bias.

    - A fused blk.N.attn_qkv.weight with separate attn_q/k/v biases (which llama.cpp also
      reads) gets one attn_qkv.bias of the three (zeros for a missing one).
    - Fused layers next to separate ones (convert_hf_to_gguf.py --fuse-qkv fuses only the
      layers whose q/k/v biases are all there or all absent): the fused ones become attn_q/k/v
      row views of their matrix and bias (no copy).
    - A bias group some layer has is given to every layer: each missing member is zeros."""
    layers = _layer_ids(tensors)
    rows = q_dim + 2 * kv_dim
    parts = (("attn_q", 0, q_dim), ("attn_k", q_dim, q_dim + kv_dim), ("attn_v", q_dim + kv_dim, rows))
    fused = [i for i in layers if f"blk.{i}.attn_qkv.weight" in tensors]
    for i in fused:
        p = f"blk.{i}."
        w = tensors[p + "attn_qkv.weight"]
        if len(w.shape) != 2 or w.shape[0] != rows:
            raise ValueError(f"{path}: tensor {p + 'attn_qkv.weight'!r} has shape {tuple(w.shape)}, expected "
                             f"({rows}, n_embd): q, k and v rows ({q_dim} + {kv_dim} + {kv_dim})")
        separate = [p + m + ".bias" for m, _, _ in parts]
        if any(n in tensors for n in separate):
            if p + "attn_qkv.bias" in tensors:
                raise ValueError(f"{path}: layer {i} has both {p}attn_qkv.bias and separate q/k/v "
                                 f"biases, expected one or the other")
            values = [_vector(tensors, n, r1 - r0, path) for n, (_, r0, r1) in zip(separate, parts)]
            for n in separate:
                tensors.pop(n, None)
            tensors[p + "attn_qkv.bias"] = _f32_vector(p + "attn_qkv.bias", np.concatenate(values))
    if fused and len(fused) < len(layers):
        for i in fused:
            p = f"blk.{i}."
            bias = _vector(tensors, p + "attn_qkv.bias", rows, path) if p + "attn_qkv.bias" in tensors else None
            w = tensors.pop(p + "attn_qkv.weight")
            tensors.pop(p + "attn_qkv.bias", None)
            for m, r0, r1 in parts:
                tensors[p + m + ".weight"] = Tensor(p + m + ".weight", w.ggml_type, (r1 - r0, w.shape[1]),
                                                    w.data[r0:r1])
                if bias is not None:
                    tensors[p + m + ".bias"] = _f32_vector(p + m + ".bias", bias[r0:r1])
        fused = []
    groups = {"qkv_bias": ("attn_qkv",) if fused else ("attn_q", "attn_k", "attn_v"),
              "out_bias": ("attn_output",), "ffn_bias": ("ffn_gate", "ffn_up", "ffn_down")}
    switches = {"fused_qkv": bool(fused)}
    for switch, matrices in groups.items():
        names = [(f"blk.{i}.{m}.bias", f"blk.{i}.{m}.weight") for i in layers for m in matrices]
        switches[switch] = any(b in tensors for b, _ in names)
        if switches[switch]:
            for bias, weight in names:
                w = tensors.get(weight)
                if bias not in tensors and w is not None and len(w.shape) == 2:
                    tensors[bias] = _f32_vector(bias, np.zeros(w.shape[0], dtype=np.float32))
    return switches


def _eos_ids(reader, path, default):
    """The ids that end generation: eos, and the end-of-turn / end-of-message ids llama.cpp
    also stops at (Llama 3's <|eot_id|>, <|eom_id|>)."""
    eos = _int_field(reader, "tokenizer.ggml.eos_token_id", path, False, default)
    ids = [eos]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = _int_field(reader, key, path, False, None)
        if value is not None and value not in ids:
            ids.append(value)
    return eos, tuple(ids)


def open_gguf(path: str) -> Checkpoint:
    from .gguf_reader import GGUFFile
    reader = GGUFFile(path)
    arch = _field(reader, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: general.architecture = {arch!r}, expected one of "
                         f"{', '.join(ARCHITECTURES)} (not supported)")
    a = arch + "."
    for key, what in UNSUPPORTED_KEYS.items():
        if a + key in reader.fields:
            raise ValueError(f"{path}: GGUF key {a + key!r} is set: {what} is not supported")
    tensors = {}
    for rt in reader.tensors:      # offsets and sizes already checked against the file
        shape = tuple(int(d) for d in reversed(rt.shape))
        data = rt.data
        if is_block_quantized(rt.tensor_type) and data.ndim == 1:
            data = data.reshape(1, -1)
        tensors[rt.name] = Tensor(rt.name, rt.tensor_type, shape, data)
    family = dict(FAMILIES[arch])
    n_heads = _int_field(reader, a + "attention.head_count", path)
    dim = _int_field(reader, a + "embedding_length", path)
    head_dim = _int_field(reader, a + "attention.key_length", path, False,
                          dim // n_heads if n_heads else 0)
    if family["position"] == "rope":
        family.update(_rope_settings(reader, a, path, tensors, head_dim))
        eps_key = a + "attention.layer_norm_rms_epsilon"
    else:
        eps_key = a + "attention.layer_norm_epsilon"
    if "qkv_bias" in family:            # gpt2: every bias required, attn_qkv fused
        family["fused_qkv"] = "blk.0.attn_qkv.weight" in tensors
    else:                               # llama / qwen2: optional tensors, as llama.cpp reads them
        n_kv_heads = _int_field(reader, a + "attention.head_count_kv", path, False, n_heads)
        if n_heads > 0 and n_kv_heads > 0 and head_dim > 0:
            family.update(attention_layout(tensors, n_heads * head_dim, n_kv_heads * head_dim, path))
    vocab_size = _int_field(reader, a + "vocab_size", path, False, None)
    embd = tensors.get("token_embd.weight")
    if vocab_size is None:
        if embd is None:
            raise ValueError(f"{path}: missing tensor 'token_embd.weight'")
        vocab_size = embd.shape[0]
    vocab = None
    if "tokenizer.ggml.tokens" in reader.fields:
        from ..tokenizer import Vocab
        vocab = Vocab.from_gguf(reader, path)
    eos_id, eos_ids = _eos_ids(reader, path, 2)
    cfg = ModelConfig(
        dim=dim,
        hidden_dim=_int_field(reader, a + "feed_forward_length", path),
        n_layers=_int_field(reader, a + "block_count", path),
        n_heads=n_heads,
        n_kv_heads=_int_field(reader, a + "attention.head_count_kv", path, False, n_heads),
        vocab_size=vocab_size,
        max_seq_len=_int_field(reader, a + "context_length", path),
        head_dim=head_dim,
        norm_eps=_float_field(reader, eps_key, path, 1e-5),
        tied_embeddings="output.weight" not in tensors,
        bos_id=_int_field(reader, "tokenizer.ggml.bos_token_id", path, False, 1),
        eos_id=eos_id,
        eos_ids=eos_ids,
        arch=arch,
        **family,
    ).validate(path)
    validate_tensors(path, cfg, tensors)
    if vocab is not None and len(vocab.pieces) != cfg.vocab_size:
        raise ValueError(f"{path}: the embedded vocabulary has {len(vocab.pieces)} tokens, "
                         f"expected vocab_size {cfg.vocab_size}")
    return Checkpoint(path, cfg, tensors, vocab, "gguf", _keepalive=[reader])
