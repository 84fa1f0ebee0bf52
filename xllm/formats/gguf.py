"""GGUF checkpoints of architecture llama: hyperparameters from the metadata, tensors memory-mapped."""
from __future__ import annotations



from ..config import ModelConfig
from .checkpoint import Checkpoint, Tensor, validate_tensors
from .types import is_block_quantized

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


def open_gguf(path: str) -> Checkpoint:
    from .gguf_reader import GGUFFile
    reader = GGUFFile(path)
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture = {arch!r}, expected 'llama'")
    a = "llama."
    n_heads = _int_field(reader, a + "attention.head_count", path)
    dim = _int_field(reader, a + "embedding_length", path)
    head_dim = _int_field(reader, a + "attention.key_length", path, False,
                          dim // n_heads if n_heads else 0)
    rope_dims = _int_field(reader, a + "rope.dimension_count", path, False, head_dim)
    if rope_dims != head_dim:
        raise ValueError(f"{path}: {a}rope.dimension_count = {rope_dims}, expected the head size "
                         f"{head_dim} (partial rotary embeddings are not supported)")
    scaling = _field(reader, a + "rope.scaling.type", path, False, "none")
    if scaling not in ("none", None):
        raise ValueError(f"{path}: {a}rope.scaling.type = {scaling!r}, expected 'none' (not supported)")
    tensors = {}
    for rt in reader.tensors:      # offsets and sizes already checked against the file
        shape = tuple(int(d) for d in reversed(rt.shape))
        data = rt.data
        if is_block_quantized(rt.tensor_type) and data.ndim == 1:
            data = data.reshape(1, -1)
        tensors[rt.name] = Tensor(rt.name, rt.tensor_type, shape, data)
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
    cfg = ModelConfig(
        dim=dim,
        hidden_dim=_int_field(reader, a + "feed_forward_length", path),
        n_layers=_int_field(reader, a + "block_count", path),
        n_heads=n_heads,
        n_kv_heads=_int_field(reader, a + "attention.head_count_kv", path, False, n_heads),
        vocab_size=vocab_size,
        max_seq_len=_int_field(reader, a + "context_length", path),
        head_dim=head_dim,
        norm_eps=float(_field(reader, a + "attention.layer_norm_rms_epsilon", path, False, 1e-5)),
        rope_theta=float(_field(reader, a + "rope.freq_base", path, False, 10000.0)),
        tied_embeddings="output.weight" not in tensors,
        bos_id=_int_field(reader, "tokenizer.ggml.bos_token_id", path, False, 1),
        eos_id=_int_field(reader, "tokenizer.ggml.eos_token_id", path, False, 2),
    ).validate(path)
    validate_tensors(path, cfg, tensors)
    if vocab is not None and len(vocab.pieces) != cfg.vocab_size:
        raise ValueError(f"{path}: the embedded vocabulary has {len(vocab.pieces)} tokens, "
                         f"expected vocab_size {cfg.vocab_size}")
    return Checkpoint(path, cfg, tensors, vocab, "gguf", _keepalive=[reader])
