"""Read a GGUF file's header and map its tensors, fast and with every length checked.

gguf.GGUFReader builds numpy views for every string of the file, which takes ~1.5 s for a
32000-token vocabulary and dominates a model's time to first token.  This reader parses
the same header with `struct` on one memory map (a 32000-token vocabulary in ~30 ms) and
returns tensor data as views of a single np.memmap: nothing is copied.  It exposes the
subset of GGUFReader's interface the loaders use (`fields[key].types / .contents()`,
`tensors[i].name / tensor_type / shape / n_bytes / data_offset / data`); the value and
quantization constants come from the gguf package.  Tests check it against GGUFReader.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, List

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_SCALARS = {  # value type -> struct format
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {  # value type -> numpy dtype, for whole numeric arrays
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
MAX_COUNT = 1 << 32          # no sane header has more keys, tensors or array items
MAX_DIMS = 4                 # GGML_MAX_DIMS


@dataclass
class Field:
    name: str
    types: List[int]         # [value type] or [ARRAY, item type]
    value: Any               # str / int / float / bool, or a list of them

    def contents(self):
        return self.value


@dataclass
class TensorInfo:
    name: str
    tensor_type: int         # GGMLQuantizationType value
    shape: tuple             # ggml order: ne0 (row length) first
    n_elements: int
    n_bytes: int
    data_offset: int         # absolute offset in the file
    data: np.ndarray         # numpy order view: F32 float32, F16 float16, others uint8 (rows, row bytes)


class GGUFFile:
    """The header and tensor views of a GGUF file; ValueError naming the file when malformed."""

    def __init__(self, path):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        if size < 24:
            self._fail(f"{size} bytes, too short for a GGUF header (24 bytes): truncated file")
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._map)
        self._size = size
        self._pos = 0
        if self._read_bytes(4) != b"GGUF":
            self._fail("not a GGUF file (bad magic)")
        self.version = self._scalar("<I")
        if self.version not in (2, 3):
            self._fail(f"GGUF version {self.version}, expected 2 or 3")
        n_tensors = self._count("tensor count")
        n_kv = self._count("key/value count")
        self.fields = {}
        for _ in range(n_kv):
            key = self._string("a key name")
            vtype = self._scalar("<I")
            if key in self.fields:
                self._fail(f"GGUF key {key!r} appears twice")
            self.fields[key] = self._value(key, vtype)
        infos = []
        for _ in range(n_tensors):
            name = self._string("a tensor name")
            n_dims = self._scalar("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                self._fail(f"tensor {name!r} has {n_dims} dimensions, expected 1..{MAX_DIMS}")
            dims = tuple(self._scalar("<Q") for _ in range(n_dims))
            if 0 in dims:       # numpy cannot even shape (0, 2**62, ...): refuse it by name
                self._fail(f"tensor {name!r} has a zero dimension in {list(dims)}")
            ttype = self._scalar("<I")
            offset = self._scalar("<Q")
            infos.append((name, dims, ttype, offset))
        alignment = self.fields.get("general.alignment")
        align = int(alignment.value) if alignment is not None else 32
        if align <= 0 or align & (align - 1):
            self._fail(f"general.alignment = {align}, expected a power of two")
        data_start = -(-self._pos // align) * align
        self._array = np.memmap(self.path, dtype=np.uint8, mode="r") if size else None
        self.tensors = []
        names = set()
        for name, dims, ttype, offset in infos:
            if name in names:
                self._fail(f"tensor {name!r} appears twice")
            names.add(name)
            try:
                qtype = GGMLQuantizationType(ttype)
            except ValueError:
                self._fail(f"tensor {name!r} has unknown type {ttype}")
            block, type_size = GGML_QUANT_SIZES[qtype]
            if dims[0] % block:
                self._fail(f"tensor {name!r}: row length {dims[0]} is not a multiple of "
                           f"{block} for {qtype.name}")
            n_el = int(np.prod(dims, dtype=object))
            n_bytes = n_el // block * type_size
            start = data_start + offset
            if start + n_bytes > size:
                self._fail(f"tensor {name!r} ends at byte {start + n_bytes}, past the end of "
                           f"the file ({size} bytes): truncated file")
            raw = self._array[start:start + n_bytes]
            np_shape = tuple(reversed(dims))
            if qtype == GGMLQuantizationType.F32:
                data = raw.view(np.float32).reshape(np_shape)
            elif qtype == GGMLQuantizationType.F16:
                data = raw.view(np.float16).reshape(np_shape)
            else:
                data = raw.reshape(np_shape[:-1] + (dims[0] // block * type_size,))
            self.tensors.append(TensorInfo(name, int(qtype), dims, n_el, n_bytes, start, data))

    # ------------------------------------------------------------------ parsing

    def _fail(self, message):
        raise ValueError(f"{self.path}: {message}")

    def _read_bytes(self, n):
        if n < 0 or self._pos + n > self._size:
            self._fail(f"header runs past the end of the file at byte {self._pos} (wanted {n} more bytes): "
                       f"truncated or corrupt file")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return bytes(out)

    def _scalar(self, fmt):
        n = struct.calcsize(fmt)
        if self._pos + n > self._size:
            self._read_bytes(n)            # raises the truncation error
        (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += n
        return value

    def _count(self, what):
        n = self._scalar("<Q")
        if n > MAX_COUNT:
            self._fail(f"{what} = {n}, implausibly large: corrupt header")
        return n

    def _string(self, what):
        n = self._scalar("<Q")
        raw = self._read_bytes(n) if n <= self._size else self._fail(f"{what} of {n} bytes: corrupt header")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"{what} at byte {self._pos - n} is not valid UTF-8")

    def _strings(self, key, n):
        """An array of n strings: the loop of `_string` with its lookups hoisted (a Llama 3
        vocabulary holds ~410k strings)."""
        buf, pos, size = self._buf, self._pos, self._size
        unpack = struct.Struct("<Q").unpack_from
        out = []
        append = out.append
        try:
            for i in range(n):
                if pos + 8 > size:
                    break
                (length,) = unpack(buf, pos)
                end = pos + 8 + length
                if end > size:
                    break
                append(str(buf[pos + 8:end], "utf-8"))
                pos = end
        except UnicodeDecodeError:
            self._pos = pos + 8
            self._fail(f"item {i} of {key!r} at byte {pos + 8} is not valid UTF-8")
        self._pos = pos
        if len(out) < n:
            self._string(f"item {len(out)} of {key!r}")     # raises the truncation error
        return out

    def _value(self, key, vtype):
        try:
            vt = GGUFValueType(vtype)
        except ValueError:
            self._fail(f"GGUF key {key!r} has unknown value type {vtype}")
        if vt == GGUFValueType.STRING:
            return Field(key, [int(vt)], self._string(f"the value of {key!r}"))
        if vt != GGUFValueType.ARRAY:
            return Field(key, [int(vt)], self._scalar(_SCALARS[vt]))
        itype = self._scalar("<I")
        try:
            it = GGUFValueType(itype)
        except ValueError:
            self._fail(f"GGUF key {key!r} is an array of unknown type {itype}")
        n = self._count(f"the length of {key!r}")
        if it == GGUFValueType.STRING:
            values = self._strings(key, n)
        elif it == GGUFValueType.ARRAY:
            self._fail(f"GGUF key {key!r} is an array of arrays (not used by llama models)")
        else:
            dtype = np.dtype(_NUMPY[it])
            raw = self._read_bytes(n * dtype.itemsize)
            arr = np.frombuffer(raw, dtype=dtype)
            values = arr.astype(bool).tolist() if it == GGUFValueType.BOOL else arr.tolist()
        return Field(key, [int(GGUFValueType.ARRAY), int(it)], values)
