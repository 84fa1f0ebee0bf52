"""Import a Hugging Face llama checkpoint directory as a `Checkpoint`.

A directory holds config.json (LlamaForCausalLM), model.safetensors or shards listed in
model.safetensors.index.json (F32, F16 or BF16 tensors) and tokenizer.model (sentencepiece).
Everything is checked in that order -- config, tokenizer, tensor headers, names, shapes and
dtypes -- before any tensor data is touched, so a directory xllm cannot run is refused by name
at once.  Tensors are renamed the GGUF way; q/k rows are un-permuted (see `permute_qk`) so the
engine's adjacent-pair RoPE gives HF's half-split result.  F32/F16 tensors other than q/k stay
views of the memory-mapped files; BF16 is widened to F32 on load (exact).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import ModelConfig
from .checkpoint import Checkpoint, Tensor, layer_tensor_shapes, validate_tensors
from .types import F16, F32

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SP_FILE = "tokenizer.model"
ARCHITECTURE = "LlamaForCausalLM"

# HF name -> GGUF name; per-layer names are relative to model.layers.N. / blk.N.
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_GGUF_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
# Buffers some exporters save next to the weights; recomputed at run time (llama.cpp skips them too).
_IGNORED_RE = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

# safetensors dtype -> (numpy dtype of the stored bits, ggml type the engine gets)
DTYPES = {"F32": (np.float32, F32), "F16": (np.float16, F16), "BF16": (np.uint16, F32)}


def gguf_name(hf_name: str) -> Optional[str]:
    """GGUF name of an HF tensor name, or None when it is not a llama tensor."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in LAYER_NAMES:
        return f"blk.{int(m.group(1))}.{LAYER_NAMES[m.group(2)]}"
    return None


def hf_name(gguf: str) -> str:
    """HF name of a GGUF llama tensor name (inverse of `gguf_name`)."""
    for k, v in GLOBAL_NAMES.items():
        if v == gguf:
            return k
    m = _GGUF_LAYER_RE.fullmatch(gguf)
    for k, v in LAYER_NAMES.items():
        if m and v == m.group(2):
            return f"model.layers.{m.group(1)}.{k}"
    raise KeyError(gguf)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of an HF q_proj/k_proj so adjacent-pair RoPE equals HF's rotate_half.

    HF rotates dimension i of a head with dimension i + head_dim/2; the engine (llama2.c, GGUF)
    rotates 2i with 2i+1.  Interleaving each head's two halves maps one onto the other
    (llama.cpp's LlamaModel.permute; n_head is the kv head count for k_proj).
    """
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


# ----------------------------------------------------------------------------- config.json

def _load_json(path: str, name: str) -> dict:
    file = os.path.join(path, name)
    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing {name} (a Hugging Face model directory needs it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {name} holds a {type(value).__name__}, expected a JSON object")
    return value


@dataclass
class HFConfig:
    """The fields of config.json a llama forward depends on, checked."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]


def read_hf_config(path: str) -> HFConfig:
    """Parse and check config.json; refuse what the engine does not implement, by name."""
    raw = _load_json(path, CONFIG_FILE)

    def bad(key, expected):
        raise ValueError(f"{path}: {CONFIG_FILE}: {key} = {raw.get(key)!r}, {expected}")

    archs = raw.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or ARCHITECTURE not in archs:
            bad("architectures", f"expected [{ARCHITECTURE!r}] (only llama models are supported)")
    elif raw.get("model_type") != "llama":
        bad("model_type", "expected 'llama' (no 'architectures' given; only llama models are supported)")

    def integer(key, default=None):
        value = raw.get(key, default)
        if value is None and default is None:
            raise ValueError(f"{path}: {CONFIG_FILE}: missing {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            bad(key, "expected a positive integer")
        return value

    def number(key, default):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad(key, "expected a number")
        return float(value)

    def flag(key, default):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            bad(key, "expected true or false")
        return value

    def token_id(key):
        value = raw.get(key)
        if isinstance(value, list) and value:      # newer configs list several EOS ids: the first is the main one
            value = value[0]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            bad(key, "expected a token id")
        return value

    act = raw.get("hidden_act", "silu")
    if act != "silu":
        bad("hidden_act", "expected 'silu' (the SwiGLU FFN is the only one implemented)")
    for key in ("attention_bias", "mlp_bias"):
        if flag(key, False):
            bad(key, "expected false (bias tensors are not supported)")

    rope_theta = number("rope_theta", 10000.0)
    # transformers >= 5 writes rope_parameters {rope_type, rope_theta}; older ones rope_scaling.
    for key in ("rope_scaling", "rope_parameters"):
        scaling = raw.get(key)
        if scaling is None:
            continue
        if not isinstance(scaling, dict):
            bad(key, "expected null or an object")
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            bad(key, f"rope type {kind!r} is not supported (only the default RoPE is)")
        if key == "rope_parameters" and "rope_theta" in scaling:
            theta = scaling["rope_theta"]
            if isinstance(theta, bool) or not isinstance(theta, (int, float)):
                raise ValueError(f"{path}: {CONFIG_FILE}: rope_parameters.rope_theta = {theta!r}, expected a number")
            rope_theta = float(theta)

    hidden = integer("hidden_size")
    heads = integer("num_attention_heads")
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            bad("hidden_size", f"not divisible by num_attention_heads = {heads} and no head_dim given")
        head_dim = hidden // heads
    else:
        head_dim = integer("head_dim")
    kv_heads = raw.get("num_key_value_heads")
    return HFConfig(
        hidden_size=hidden,
        intermediate_size=integer("intermediate_size"),
        num_hidden_layers=integer("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=heads if kv_heads is None else integer("num_key_value_heads"),
        head_dim=head_dim,
        vocab_size=integer("vocab_size"),
        max_position_embeddings=integer("max_position_embeddings", 2048),   # LlamaConfig's default
        rms_norm_eps=number("rms_norm_eps", 1e-6),                           # LlamaConfig's default
        rope_theta=rope_theta,
        tie_word_embeddings=flag("tie_word_embeddings", False),               # LlamaConfig's default
        bos_token_id=token_id("bos_token_id"),
        eos_token_id=token_id("eos_token_id"),
    )


# ----------------------------------------------------------------------------- vocabulary

def read_hf_vocab(path: str, vocab_size: int):
    """tokenizer.model (sentencepiece), else tokenizer.json (byte-level BPE: Llama 3, Qwen2,
    GPT-2 ...), as a `Vocab` of exactly `vocab_size` pieces.

    HF pads the embedding past the tokenizer at times (e.g. to a multiple of 64); the extra ids
    get llama.cpp's filler ('[PAD<id>]', score -10000, type UNUSED).  A tokenizer larger than
    the embedding would produce ids the model has no row for: refused.
    """
    sp_path = os.path.join(path, SP_FILE)
    source = SP_FILE
    if os.path.isfile(sp_path):
        from ..tokenizer import Vocab
        try:
            vocab = Vocab.from_sentencepiece(sp_path)
        except ValueError:
            raise
        except Exception as exc:     # sentencepiece raises RuntimeError/OSError on a corrupt model
            raise ValueError(f"{sp_path}: not a sentencepiece model ({type(exc).__name__}: {exc})") from None
    elif os.path.isfile(os.path.join(path, "tokenizer.json")):
        from ..tokenizer import load_hf_tokenizer
        source = "tokenizer.json"
        vocab = load_hf_tokenizer(path).vocab
    else:
        raise ValueError(f"{path}: missing {SP_FILE} or tokenizer.json (the tokenizer)")
    n = len(vocab.pieces)
    if n > vocab_size:
        raise ValueError(f"{path}: {source} has {n} pieces, more than {CONFIG_FILE} vocab_size = "
                         f"{vocab_size} (the model has no embedding row for ids >= {vocab_size})")
    return vocab.padded(vocab_size)


# ----------------------------------------------------------------------------- safetensors

@dataclass
class _Entry:
    file: str           # the .safetensors file holding the tensor
    dtype: str          # safetensors dtype string
    shape: tuple
    start: int          # absolute byte range in `file`
    end: int


def _shard_map(path: str) -> dict:
    """HF tensor name -> file name, from the index when sharded, else model.safetensors."""
    if os.path.isfile(os.path.join(path, INDEX_FILE)):
        index = _load_json(path, INDEX_FILE)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{path}: {INDEX_FILE}: weight_map = {str(weight_map)[:80]!r}, "
                             "expected an object mapping tensor names to file names")
        for file in sorted(set(weight_map.values())):
            if os.path.basename(file) != file or not os.path.isfile(os.path.join(path, file)):
                raise ValueError(f"{path}: {INDEX_FILE} names the file {file!r}, which is not in the directory")
        return weight_map
    if os.path.isfile(os.path.join(path, SINGLE_FILE)):
        return None
    found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pth")))
    raise ValueError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} "
                     f"(found {found or 'no weight files'}; only safetensors checkpoints are supported)")


def _read_header(file: str) -> dict:
    """name -> _Entry for one safetensors file.

    safe_open validates the header (offsets, sizes, dtypes against the file length); the byte
    offsets are then taken from the same header, because safetensors' numpy API copies every
    tensor into a new buffer and has no bfloat16, while a view of a memory-mapped file is free.
    """
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(file, framework="numpy") as f:
            checked = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except (SafetensorError, OSError, ValueError, struct.error) as exc:
        raise ValueError(f"{file}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    base = 8 + n
    entries = {}
    for name, (dtype, shape) in checked.items():
        info = header.get(name) or {}
        if (info.get("dtype"), tuple(info.get("shape", ()))) != (dtype, shape):
            raise ValueError(f"{file}: header entry {name!r} = {info!r} disagrees with safetensors' "
                             f"reading {dtype} {shape}")
        start, end = info["data_offsets"]
        entries[name] = _Entry(file, dtype, shape, base + start, base + end)
    return entries


def read_tensor_entries(path: str) -> dict:
    """HF tensor name -> _Entry over all files of the checkpoint (headers only, no data)."""
    weight_map = _shard_map(path)
    files = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE_FILE]
    entries = {}
    for file in files:
        header = _read_header(os.path.join(path, file))
        if weight_map is None:
            entries.update(header)
            continue
        for name, f in weight_map.items():
            if f != file:
                continue
            if name not in header:
                raise ValueError(f"{path}: {INDEX_FILE} puts tensor {name!r} in {file}, which does not hold it")
            entries[name] = header[name]
    return entries


def _check_entries(path: str, cfg: ModelConfig, entries: dict) -> None:
    """Names, shapes and dtypes against the config, in HF terms, before any data is read."""
    expected = {hf_name(g): shape for g, shape in layer_tensor_shapes(cfg).items()}
    for name, shape in expected.items():
        e = entries.get(name)
        if e is None:
            raise ValueError(f"{path}: missing tensor {name!r} (expected shape {shape})")
        if e.shape != tuple(shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {e.shape}, expected {shape} from {CONFIG_FILE}")
        if e.dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {e.dtype}, expected one of {sorted(DTYPES)}")
    extra = sorted(n for n in entries if n not in expected and not _IGNORED_RE.fullmatch(n))
    if "lm_head.weight" in extra and cfg.tied_embeddings:
        raise ValueError(f"{path}: tensor 'lm_head.weight' is present but {CONFIG_FILE} says "
                         "tie_word_embeddings = true (the classifier should be the embedding)")
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:3]}{more} for a {cfg.n_layers}-layer "
                         f"{ARCHITECTURE} (biases or another architecture are not supported)")


def _load(entry: _Entry, maps: dict) -> tuple:
    """(ggml type, array) for one tensor: a view of the mapped file, or F32 widened from BF16."""
    mm = maps.get(entry.file)
    if mm is None:
        mm = maps[entry.file] = np.memmap(entry.file, dtype=np.uint8, mode="r")
    stored, ggml_type = DTYPES[entry.dtype]
    data = np.asarray(mm[entry.start:entry.end]).view(stored).reshape(entry.shape)
    if entry.dtype == "BF16":
        # bfloat16 is the top half of a float32: widening is a shift, exact.
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return ggml_type, data


# ----------------------------------------------------------------------------- the checkpoint

def open_hf_checkpoint(path) -> Checkpoint:
    """Open a Hugging Face llama directory (config.json, *.safetensors, tokenizer.model)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory (a Hugging Face checkpoint is a directory)")
    hf = read_hf_config(path)
    vocab = read_hf_vocab(path, hf.vocab_size)
    cfg = ModelConfig(
        dim=hf.hidden_size,
        hidden_dim=hf.intermediate_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=hf.num_key_value_heads,
        vocab_size=hf.vocab_size,
        max_seq_len=hf.max_position_embeddings,
        head_dim=hf.head_dim,
        norm_eps=hf.rms_norm_eps,
        rope_theta=hf.rope_theta,
        tied_embeddings=hf.tie_word_embeddings,
        bos_id=vocab.bos_id if hf.bos_token_id is None else hf.bos_token_id,
        eos_id=vocab.eos_id if hf.eos_token_id is None else hf.eos_token_id,
    ).validate(os.path.join(path, CONFIG_FILE))
    # config.json's special ids win over the tokenizer's, as in transformers and llama.cpp
    vocab = dataclasses.replace(vocab, bos_id=cfg.bos_id, eos_id=cfg.eos_id)
    entries = read_tensor_entries(path)
    _check_entries(path, cfg, entries)

    maps, tensors = {}, {}
    for name in layer_tensor_shapes(cfg):
        ggml_type, data = _load(entries[hf_name(name)], maps)
        if name.endswith("attn_q.weight"):
            data = permute_qk(data, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            data = permute_qk(data, cfg.n_kv_heads)
        tensors[name] = Tensor(name, ggml_type, tuple(data.shape), data)
    validate_tensors(path, cfg, tensors)
    return Checkpoint(path, cfg, tensors, vocab, "hf", _keepalive=list(maps.values()))
