"""Import a Hugging Face checkpoint directory (llama, qwen2, gpt2) as a `Checkpoint`.

A directory holds config.json (hf_config.py: LlamaForCausalLM, Qwen2ForCausalLM,
GPT2LMHeadModel), model.safetensors or shards listed in
model.safetensors.index.json (F32, F16 or BF16 tensors) and tokenizer.model (sentencepiece).
Everything is checked in that order -- config, tokenizer, tensor headers, names, shapes and
dtypes -- before any tensor data is touched, so a directory xllm cannot run is refused by name
at once.  Tensors are renamed the GGUF way; llama q/k rows are un-permuted (see `permute_qk`) so
the engine's adjacent-pair RoPE gives HF's half-split result (qwen2 rotates halves as stored);
GPT-2's Conv1D weights are transposed.  Other F32/F16 tensors stay views of the memory-mapped
files; BF16 is widened to F32 on load (exact).
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from .checkpoint import Checkpoint, Tensor, layer_tensor_shapes, validate_tensors
from .hf_config import (ARCHITECTURES, CONFIG_FILE, IGNORED, load_json, permuted_heads, read_hf_config,
                        tensor_names, transposed)
from .types import F16, F32

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SP_FILE = "tokenizer.model"

# safetensors dtype -> (numpy dtype of the stored bits, ggml type the engine gets)
DTYPES = {"F32": (np.float32, F32), "F16": (np.float16, F16), "BF16": (np.uint16, F32)}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of an HF q_proj/k_proj (weight or bias) so adjacent-pair RoPE equals
    HF's rotate_half.

    HF rotates dimension i of a head with dimension i + head_dim/2; the engine (llama2.c, GGUF)
    rotates 2i with 2i+1.  Interleaving each head's two halves maps one onto the other
    (llama.cpp's LlamaModel.permute; n_head is the kv head count for k_proj).
    """
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


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
    # the directory's chat template travels with the vocabulary (into GGUF as llama.cpp's
    # converter writes it: tokenizer.chat_template), the same one its chat renders with
    from ..chat import hf_directory_template
    return dataclasses.replace(vocab.padded(vocab_size), chat_template=hf_directory_template(path))


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
        index = load_json(path, INDEX_FILE)
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


def _hf_shapes(cfg: ModelConfig, entries: dict) -> dict:
    """HF name -> (GGUF name, shape as stored) of every tensor the config implies."""
    prefix = "transformer." if cfg.arch == "gpt2" and "transformer.wte.weight" in entries else ""
    shapes = {g: s for g, s in layer_tensor_shapes(cfg).items() if g != "rope_freqs.weight"}
    names = tensor_names(cfg, shapes, prefix)
    return {names[g]: (g, tuple(reversed(s)) if transposed(cfg, g) else tuple(s)) for g, s in shapes.items()}


def _check_entries(path: str, cfg: ModelConfig, expected: dict, entries: dict) -> None:
    """Names, shapes and dtypes against the config, in HF terms, before any data is read."""
    for name, (_, shape) in expected.items():
        e = entries.get(name)
        if e is None:
            raise ValueError(f"{path}: missing tensor {name!r} (expected shape {shape})")
        if e.shape != tuple(shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {e.shape}, expected {shape} from {CONFIG_FILE}")
        if e.dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {e.dtype}, expected one of {sorted(DTYPES)}")
    extra = sorted(n for n in entries if n not in expected and not IGNORED.fullmatch(n))
    if "lm_head.weight" in extra and cfg.tied_embeddings:
        raise ValueError(f"{path}: tensor 'lm_head.weight' is present but {CONFIG_FILE} says "
                         "tie_word_embeddings = true (the classifier should be the embedding)")
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        arch = next(k for k, v in ARCHITECTURES.items() if v == cfg.arch)
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:3]}{more} for a {cfg.n_layers}-layer "
                         f"{arch} of this config (biases it does not declare, or another "
                         "architecture, are not supported)")


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
    """Open a Hugging Face directory (config.json, *.safetensors, tokenizer.model) of a
    supported family (hf_config.ARCHITECTURES)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory (a Hugging Face checkpoint is a directory)")
    hf = read_hf_config(path)
    vocab = read_hf_vocab(path, hf.fields["vocab_size"])
    eos_ids = hf.eos_token_ids or (vocab.eos_id,)
    cfg = ModelConfig(
        **hf.fields,
        bos_id=vocab.bos_id if hf.bos_token_id is None else hf.bos_token_id,
        eos_id=eos_ids[0], eos_ids=eos_ids,
    ).validate(os.path.join(path, CONFIG_FILE))
    # config.json's special ids win over the tokenizer's, as in transformers and llama.cpp
    vocab = dataclasses.replace(vocab, bos_id=cfg.bos_id, eos_id=cfg.eos_id)
    entries = read_tensor_entries(path)
    expected = _hf_shapes(cfg, entries)
    _check_entries(path, cfg, expected, entries)

    maps, tensors = {}, {}
    for hf_name, (name, _) in expected.items():
        ggml_type, data = _load(entries[hf_name], maps)
        if transposed(cfg, name):           # GPT-2's Conv1D: (in, out) -> (out, in)
            data = np.ascontiguousarray(data.T)
        heads = permuted_heads(cfg, name)
        if heads is not None:
            data = permute_qk(data, heads)
        tensors[name] = Tensor(name, ggml_type, tuple(data.shape), data)
    if cfg.rope_freq_factors is not None:   # llama3: the factors GGUF stores as a tensor
        factors = np.asarray(cfg.rope_freq_factors, dtype=np.float32)
        tensors["rope_freqs.weight"] = Tensor("rope_freqs.weight", F32, factors.shape, factors)
    validate_tensors(path, cfg, tensors)
    return Checkpoint(path, cfg, tensors, vocab, "hf", _keepalive=list(maps.values()))
