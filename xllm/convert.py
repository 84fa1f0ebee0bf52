"""Write a checkpoint as a GGUF file, and the `xllm-convert` tool.

`write_gguf` writes what llama.cpp's own converter writes for a llama, qwen2 or gpt2 model:
general.* and {arch}.* hyperparameters, the tokenizer.ggml.* vocabulary, and the tensors under their GGUF
names.  Tensors are converted and written one at a time (header, key/values and tensor
infos first, then each tensor's data), so a model larger than memory converts in bounded
memory: at most one output tensor plus a few MB of temporaries at a time.  The file appears
atomically: it is written to a temporary file next to OUT, fsync'ed and renamed; on any
error or Ctrl-C the temporary file is removed and OUT is left as it was.

Conversions: any type -> F32 (dequantized), F32/F16 -> F16, anything -> every type
`quant.reference` writes (Q8_0, Q4_0, K-quants, ...: bytes identical to llama-quantize's).
1-D tensors (norms) are always F32.
"""
from __future__ import annotations

import collections
import contextlib
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from quant.presets import PURE_FILE_TYPE
from quant.reference import QUANTIZABLE, dequantize, quantize, scales_overflow

from .cli_errors import ArgumentParser, UsageError, cli_entry
from .config import ARCHITECTURES
from .formats import (F16, F32, Checkpoint, Tensor, layer_tensor_shapes, open_checkpoint,
                      row_bytes)
from .formats.types import block_layout, type_name

# general.file_type (llama.cpp's LlamaFileType) for the type of most 2-D tensors.
LLAMA_FILE_TYPE = PURE_FILE_TYPE
GGML_QUANT_VERSION = 2
_CHUNK_VALUES = 1 << 22          # values converted per pass (16 MB of float32)
_NP_DTYPE = {F32: np.float32, F16: np.float16}


# ----------------------------------------------------------------------------- tensor conversion

def _rows_and_cols(t: Tensor):
    return (t.shape[0], t.shape[1]) if len(t.shape) == 2 else (1, t.shape[0])


def _source_rows(t: Tensor, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of `t` as float32 [r1 - r0, cols] (1-D tensors are one row)."""
    _, cols = _rows_and_cols(t)
    data = t.data if len(t.shape) == 2 else np.asarray(t.data).reshape(1, -1)
    return dequantize(data[r0:r1], t.ggml_type, (r1 - r0, cols))


def output_shape(t: Tensor, ggml_type: int) -> tuple:
    """numpy shape of `t`'s data once stored as `ggml_type` (bytes per row for block types and BF16)."""
    if ggml_type in (F32, F16):
        return tuple(t.shape)
    rows, cols = _rows_and_cols(t)
    return (rows, row_bytes(ggml_type, cols)) if len(t.shape) == 2 else (row_bytes(ggml_type, cols),)


def convert_tensor(t: Tensor, ggml_type: int) -> np.ndarray:
    """`t`'s data stored as `ggml_type`: the same array when the type is unchanged, else a new
    one built a few rows at a time (float32 / float16 values, or uint8 rows of blocks)."""
    if ggml_type not in QUANTIZABLE:
        raise ValueError(f"tensor {t.name!r}: cannot convert to {type_name(ggml_type)}, expected one "
                         f"of {sorted(type_name(q) for q in QUANTIZABLE)}")
    if t.ggml_type == ggml_type:
        return np.asarray(t.data).reshape(output_shape(t, ggml_type))
    rows, cols = _rows_and_cols(t)
    block = block_layout(ggml_type)[0]
    if cols % block:
        raise ValueError(f"tensor {t.name!r}: row length {cols} is not a multiple of {block}, cannot be "
                         f"{type_name(ggml_type)}")
    out_shape = output_shape(t, ggml_type)
    out = np.empty(out_shape, dtype=_NP_DTYPE.get(ggml_type, np.uint8))
    out2 = out.reshape(rows, -1)
    step = max(1, _CHUNK_VALUES // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        src = _source_rows(t, r0, r1)
        if ggml_type == F32:
            out2[r0:r1] = src
        elif ggml_type == F16:
            with np.errstate(over="ignore"):
                out2[r0:r1] = src.astype(np.float16)
            if np.isinf(out2[r0:r1]).any() and not np.isinf(src).any():
                big = float(np.abs(src).max())
                raise ValueError(f"tensor {t.name!r}: value {big:g} is beyond float16's range "
                                 f"(max 65504), cannot be F16")
        else:
            out2[r0:r1] = q = quantize(src, ggml_type)
            if scales_overflow(q, ggml_type):
                big = float(np.abs(src).max())
                raise ValueError(f"tensor {t.name!r}: value {big:g} is too large for "
                                 f"{type_name(ggml_type)} (its fp16 scale would overflow)")
    return out


# ----------------------------------------------------------------------------- metadata

def _gguf_value_type():
    from gguf import GGUFValueType
    return GGUFValueType


def _scalar_type(key: str, value):
    T = _gguf_value_type()
    if isinstance(value, (bool, np.bool_)):
        return T.BOOL
    if isinstance(value, (int, np.integer)):
        if value < 0:
            return T.INT32 if value >= -2**31 else T.INT64
        return T.UINT32 if value < 2**32 else T.UINT64
    if isinstance(value, (float, np.floating)):
        return T.FLOAT32
    if isinstance(value, (str, bytes, bytearray)):
        return T.STRING
    raise ValueError(f"GGUF key {key!r}: cannot store a value of type {type(value).__name__}")


# Keys whose GGUF type is fixed by llama.cpp (it reads them with a given type).
_FIXED_TYPES = {
    "tokenizer.ggml.scores": ("ARRAY", "FLOAT32"),
    "tokenizer.ggml.token_type": ("ARRAY", "INT32"),
    "tokenizer.ggml.tokens": ("ARRAY", "STRING"),
    "tokenizer.ggml.merges": ("ARRAY", "STRING"),
}


def gguf_value(key: str, value):
    """A GGUFValue for `value` (a GGUFValue, a python/numpy scalar, string or sequence)."""
    from gguf.gguf_writer import GGUFValue
    T = _gguf_value_type()
    if isinstance(value, GGUFValue):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if key in _FIXED_TYPES:
        sub = T[_FIXED_TYPES[key][1]]
        if sub == T.FLOAT32:
            value = [float(v) for v in value]
        elif sub == T.INT32:
            value = [int(v) for v in value]
        return GGUFValue(list(value), T.ARRAY, sub)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"GGUF key {key!r}: empty arrays cannot be stored")
        sub = _scalar_type(key, value[0])
        if sub in (T.INT32, T.INT64, T.UINT32, T.UINT64):
            sub = T.INT32
            value = [int(v) for v in value]
        elif sub == T.FLOAT32:
            value = [float(v) for v in value]
        elif sub == T.BOOL:
            value = [bool(v) for v in value]
        return GGUFValue(value, T.ARRAY, sub)
    vtype = _scalar_type(key, value)
    if vtype == T.BOOL:
        value = bool(value)
    elif vtype in (T.INT32, T.INT64, T.UINT32, T.UINT64):
        value = int(value)
    elif vtype == T.FLOAT32:
        value = float(value)
    return GGUFValue(value, vtype)


_MANAGED_PREFIXES = ("GGUF.", "split.") + tuple(arch + "." for arch in ARCHITECTURES)
_MANAGED_KEYS = {"general.architecture", "general.file_type", "general.quantization_version",
                 "general.alignment"}


def gguf_metadata(path: str, reader=None, tokenizer: bool = True, skip=()) -> dict:
    """Key/values of a GGUF file worth carrying into a rewritten copy: everything except the
    {arch}.* hyperparameters, file type and layout keys that `write_gguf` writes itself, the
    keys in `skip`, and the tokenizer.* keys unless `tokenizer` (the vocabulary comes from
    the same file)."""
    from gguf import GGUFReader
    from gguf.gguf_writer import GGUFValue
    T = _gguf_value_type()
    if reader is None:
        reader = GGUFReader(path, "r")
    out = {}
    for key, f in reader.fields.items():
        if key in _MANAGED_KEYS or key in skip or key.startswith(_MANAGED_PREFIXES):
            continue
        if not tokenizer and key.startswith("tokenizer."):
            continue
        if not f.types or len(f.types) > 2 or (f.types[0] == T.ARRAY and len(f.types) != 2):
            continue                        # nested arrays: not produced for llama models
        try:
            value = f.contents()
        except (UnicodeDecodeError, ValueError):
            continue
        if f.types[0] == T.ARRAY:
            if not value:
                continue
            out[key] = GGUFValue(value, T.ARRAY, f.types[1])
        else:
            out[key] = GGUFValue(value, f.types[0])
    return out


def _u32(v):
    from gguf.gguf_writer import GGUFValue
    return GGUFValue(int(v), _gguf_value_type().UINT32)


def _f32(v):
    from gguf.gguf_writer import GGUFValue
    return GGUFValue(float(v), _gguf_value_type().FLOAT32)


def model_metadata(c, name: str) -> dict:
    """general.name and the `{arch}.*` hyperparameter keys llama.cpp reads for ModelConfig c
    (the keys its convert_hf_to_gguf.py writes for llama, qwen2 and gpt2)."""
    from gguf.gguf_writer import GGUFValue
    u32, f32 = _u32, _f32
    a = c.arch + "."
    kv = {
        "general.name": GGUFValue(name, _gguf_value_type().STRING),
        a + "context_length": u32(c.max_seq_len),
        a + "embedding_length": u32(c.dim),
        a + "block_count": u32(c.n_layers),
        a + "feed_forward_length": u32(c.hidden_dim),
        a + "attention.head_count": u32(c.n_heads),
    }
    if c.arch == "llama":
        kv[a + "vocab_size"] = u32(c.vocab_size)
    if c.norm == "layer":
        kv[a + "attention.layer_norm_epsilon"] = f32(c.norm_eps)
    else:
        kv[a + "attention.layer_norm_rms_epsilon"] = f32(c.norm_eps)
    if c.position == "rope":
        kv[a + "attention.head_count_kv"] = u32(c.n_kv_heads)
        kv[a + "rope.dimension_count"] = u32(c.head_dim)
        kv[a + "rope.freq_base"] = f32(c.rope_theta)
        if c.rope_scaling == "linear":      # llama3's factors are the rope_freqs.weight tensor
            kv[a + "rope.scaling.type"] = GGUFValue("linear", _gguf_value_type().STRING)
            kv[a + "rope.scaling.factor"] = f32(c.rope_factor)
    if c.head_dim != c.dim // c.n_heads:
        kv[a + "attention.key_length"] = u32(c.head_dim)
        kv[a + "attention.value_length"] = u32(c.head_dim)
    return kv


def add_model_metadata(writer, c, name: str) -> None:
    """Write model_metadata(c, name) into a gguf.GGUFWriter (every GGUF xllm makes)."""
    for key, value in model_metadata(c, name).items():
        writer.add_key_value(key, value.value, value.type, value.sub_type)


# ----------------------------------------------------------------------------- writing

@dataclass
class WriteReport:
    """What `write_gguf` wrote."""
    path: str
    n_tensors: int
    types: dict = field(default_factory=dict)     # type name -> number of tensors
    nbytes: int = 0                               # size of the file


def _tensor_order(ckpt: Checkpoint) -> list:
    """GGUF names in layer_tensor_shapes' order (embeddings, blocks, final norm, classifier),
    then any extras."""
    expected = list(layer_tensor_shapes(ckpt.config))
    for n in expected:
        if n not in ckpt.tensors:
            raise ValueError(f"{ckpt.path}: missing tensor {n!r}")
    return expected + [n for n in ckpt.tensors if n not in expected]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _create_temp(out_path: str) -> str:
    """A new empty file next to `out_path` (same file system, so the final rename is atomic),
    created with the permissions a plain open() would give OUT (0666 minus the umask)."""
    directory, base = os.path.split(os.path.abspath(out_path))
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_gguf_writer(out_path: str, arch: str = "llama"):
    """A GGUFWriter (general.architecture = arch) on a temporary file next to `out_path`.
    On a normal exit the file is fsync'ed and renamed over `out_path` (and the directory
    fsync'ed, so the rename lasts);
    on any exception or Ctrl-C the temporary file is removed and `out_path` is untouched."""
    from gguf import GGUFWriter
    tmp = _create_temp(out_path)
    writer = None
    try:
        writer = GGUFWriter(tmp, arch)
        yield writer
        fout = writer.fout[0]
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        if writer is not None:
            writer.close()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(out_path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _file_type(types_2d: list) -> int:
    if not types_2d:
        return LLAMA_FILE_TYPE[F32]
    most = collections.Counter(types_2d).most_common(1)[0][0]
    return LLAMA_FILE_TYPE[most]


def _progress_bar(enabled: Optional[bool], total: int, desc: str):
    if enabled is None:
        enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="tensor", desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def write_gguf(ckpt: Checkpoint, out_path, tensor_type: Optional[Callable] = None, vocab=None,
               progress: Optional[bool] = None, metadata: Optional[dict] = None,
               on_tensor: Optional[Callable] = None, file_type: Optional[int] = None) -> WriteReport:
    """Write `ckpt` to `out_path` as a GGUF file of its architecture, atomically.

    tensor_type(tensor) -> ggml type chooses each 2-D tensor's stored type (default: keep
    it); 1-D tensors are always F32.  vocab (a tokenizer.Vocab, default ckpt.vocab) is
    embedded through its gguf_fields(); it must have the model's vocab_size.  metadata:
    extra key -> value (or GGUFValue) written too (default: ckpt.metadata plus, for a GGUF
    source, its carried-over keys).  progress: a tqdm bar per tensor (None: when stderr is a
    terminal).  on_tensor(tensor, ggml_type, data) is called with each converted tensor.
    file_type: general.file_type to write (a llama-quantize preset's); general.quantization_version
    is then written too, as llama-quantize does (default: the type of most matrices).
    """
    from gguf import GGMLQuantizationType
    out_path = os.fspath(out_path)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if os.path.isdir(out_path):
        raise ValueError(f"{out_path}: is a directory, expected an output file name")
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"{out_path}: directory {out_dir} does not exist")
    if os.path.exists(out_path) and _same_file(out_path, ckpt.path):
        raise ValueError(f"{out_path}: the output would overwrite the input checkpoint; choose another name")

    cfg = ckpt.config
    vocab = vocab if vocab is not None else ckpt.vocab
    if vocab is not None and len(vocab.pieces) != cfg.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocab.pieces)} tokens, but {ckpt.path} expects "
                         f"vocab_size {cfg.vocab_size}")

    # Plan: name, source tensor, stored type, numpy shape, bytes.
    plan = []
    for name in _tensor_order(ckpt):
        t = ckpt.tensors[name]
        if len(t.shape) == 1:
            target = F32
        else:
            target = int(tensor_type(t)) if tensor_type is not None else t.ggml_type
        if target not in QUANTIZABLE:
            raise ValueError(f"tensor {name!r}: unsupported output type {type_name(target)}, expected "
                             f"one of {sorted(type_name(q) for q in QUANTIZABLE)}")
        block = block_layout(target)[0]
        if len(t.shape) == 2 and t.shape[1] % block:
            raise ValueError(f"tensor {name!r}: row length {t.shape[1]} is not a multiple of {block}, "
                             f"cannot be {type_name(target)}")
        shape = output_shape(t, target)
        rows = t.shape[0] if len(t.shape) == 2 else 1
        plan.append((name, t, target, shape, rows * row_bytes(target, t.shape[-1])))

    # Key/values: carried-over first, ours take precedence.
    vocab_fields = vocab.gguf_fields() if vocab is not None else {}
    if metadata is None:
        metadata = dict(ckpt.metadata)
        if ckpt.file_format == "gguf":
            reader = next((r for r in ckpt._keepalive if type(r).__name__ == "GGUFReader"), None)
            carried = gguf_metadata(ckpt.path, reader, tokenizer=vocab is ckpt.vocab, skip=set(vocab_fields))
            metadata = {**carried, **metadata}
    kv = {key: gguf_value(key, value) for key, value in metadata.items()}
    name = metadata.get("general.name")
    name = str(getattr(name, "value", name) or "")
    if not name:
        base = os.path.basename(os.path.normpath(ckpt.path))
        name = os.path.splitext(base)[0] or "llama"
    kv.update(model_metadata(ckpt.config, name))
    types_2d = [target for _, t, target, _, _ in plan if len(t.shape) == 2]
    kv["general.file_type"] = _u32(_file_type(types_2d) if file_type is None else file_type)
    if file_type is not None or any(target not in (F32, F16) for target in types_2d):
        kv["general.quantization_version"] = _u32(GGML_QUANT_VERSION)
    kv.update((key, gguf_value(key, value)) for key, value in vocab_fields.items())
    kv.setdefault("tokenizer.ggml.bos_token_id", _u32(cfg.bos_id))
    kv.setdefault("tokenizer.ggml.eos_token_id", _u32(cfg.eos_id))

    bar = None
    try:
        with atomic_gguf_writer(out_path, cfg.arch) as writer:
            for key, value in kv.items():
                if key == "general.architecture":
                    continue
                writer.add_key_value(key, value.value, value.type, value.sub_type)
            for name_, t, target, shape, nbytes in plan:
                if target in (F32, F16):
                    writer.add_tensor_info(name_, shape, np.dtype(_NP_DTYPE[target]), nbytes)
                else:
                    writer.add_tensor_info(name_, shape, np.dtype(np.uint8), nbytes,
                                           raw_dtype=GGMLQuantizationType(target))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            bar = _progress_bar(progress, len(plan), os.path.basename(out_path))
            for name_, t, target, shape, nbytes in plan:
                if bar is not None:
                    bar.set_postfix_str(f"{name_} -> {type_name(target)}", refresh=False)
                data = np.ascontiguousarray(convert_tensor(t, target))
                if data.nbytes != nbytes:       # a bug, not bad input
                    raise AssertionError(f"tensor {name_!r}: converted to {data.nbytes} bytes, expected {nbytes}")
                writer.write_tensor_data(data)
                if on_tensor is not None:
                    on_tensor(t, target, data)
                del data
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    counts = collections.Counter(type_name(target) for _, _, target, _, _ in plan)
    return WriteReport(out_path, len(plan), dict(counts), os.path.getsize(out_path))


# ----------------------------------------------------------------------------- vocabularies

def resolve_vocab(ckpt: Checkpoint, token, source: str):
    """The vocabulary to embed: from the tokenizer file `token` if given, else the checkpoint's;
    a UsageError when there is none or its size is not the model's vocab_size."""
    vocab = load_vocab(token) if token is not None else ckpt.vocab
    if vocab is None:
        raise UsageError(f"{source} has no vocabulary: pass --token TOKENIZER "
                         f"(llama2.c tokenizer.bin, sentencepiece .model or HF tokenizer.json)")
    if len(vocab.pieces) != ckpt.config.vocab_size:
        raise UsageError(f"{token or source}: the tokenizer has {len(vocab.pieces)} tokens, but "
                         f"{source} has vocab_size {ckpt.config.vocab_size}")
    return vocab


def load_vocab(path):
    """The tokenizer.Vocab of a sentencepiece .model, a llama2.c tokenizer.bin, an HF
    tokenizer.json or a GGUF file (the whole file is read: compare its size with the model's
    afterwards)."""
    from .tokenizer import Tokenizer
    return Tokenizer.from_file(path).vocab


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# ----------------------------------------------------------------------------- xllm-convert

def parse_args(parser, argv):
    """parser.parse_args, but a usage error or --help returns its exit code instead of raising
    SystemExit, so `main([...])` returns 2 like every other bad input."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def _dtype_chooser(dtype: Optional[str]):
    if dtype is None:
        return None                         # keep each tensor's type
    target = {"f32": F32, "f16": F16}[dtype]
    return lambda t: target


@cli_entry("xllm-convert")
def main(argv=None) -> int:
    p = ArgumentParser(prog="xllm-convert",
                       description="Write a checkpoint (llama2.c .bin, GGUF, HF directory) as a GGUF file "
                                   "(llama, qwen2 or gpt2).")
    p.add_argument("src", help="checkpoint: llama2.c .bin (legacy fp32 or ak42 int8), GGUF, or HF directory")
    p.add_argument("-o", "--output", required=True, help="output .gguf file (written atomically)")
    p.add_argument("--token", help="tokenizer to embed: llama2.c tokenizer.bin, sentencepiece .model "
                                   "or HF tokenizer.json "
                                   "(required when SRC has no vocabulary, e.g. a llama2.c .bin)")
    p.add_argument("--dtype", choices=["f32", "f16"],
                   help="type of the 2-D weights (default: keep the source's); norms are always f32")
    args = parse_args(p, argv)
    if isinstance(args, int):
        return args

    if os.path.exists(args.output) and _same_file(args.output, args.src):
        raise UsageError(f"{args.output}: the output is the input checkpoint; choose another name")
    ckpt = open_checkpoint(args.src)
    vocab = resolve_vocab(ckpt, args.token, args.src)
    report = write_gguf(ckpt, args.output, tensor_type=_dtype_chooser(args.dtype), vocab=vocab,
                        progress=None)
    types = ", ".join(f"{n} {k}" for k, n in sorted(report.types.items()))
    print(f"xllm-convert: wrote {args.output}: {report.n_tensors} tensors ({types}), "
          f"{len(vocab.pieces)}-token vocabulary, {_human(report.nbytes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
