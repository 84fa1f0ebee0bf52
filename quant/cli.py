"""xllm-quant: store a checkpoint's 2-D weight matrices as Q8_0 (-b 8) or Q4_0 (-b 4) in GGUF.

    xllm-quant --weight model.gguf -o model-q8.gguf -b 8 [--token tokenizer.model]

IN is anything `open_checkpoint` reads (GGUF F32/F16/Q8_0, llama2.c .bin, ak42 int8, HF
directory).  1-D tensors (norms) stay F32; the vocabulary and the GGUF metadata are carried
over.  Refused with exit 2 and one line: an unknown -b, a missing or unreadable IN, a tensor
already Q4_0 asked to become Q8_0 (requantizing cannot restore the lost precision), and a
matrix whose rows are not a multiple of 32 values (unless --fallback names a type to keep
such tensors in).  Ends with a summary: tensor types, size before -> after, and the max and
mean absolute quantization error over the tensors quantized in this run.
"""
from __future__ import annotations

import os

import numpy as np

from xllm.cli_errors import ArgumentParser, UsageError, cli_entry
from xllm.convert import _human, _source_rows, parse_args, resolve_vocab, write_gguf
from xllm.formats import F16, F32, Q4_0, Q8_0, QK, TYPE_NAMES, open_checkpoint

from .reference import dequantize

BITS = {8: Q8_0, 4: Q4_0}
BITS_PER_VALUE = {F32: 32.0, F16: 16.0, Q8_0: 8.5, Q4_0: 4.5}
FALLBACK = {"f32": F32, "f16": F16}
_CHUNK_VALUES = 1 << 22


def plan_types(ckpt, target: int, fallback=None) -> dict:
    """GGUF name -> stored type for quantizing `ckpt` to `target`; ValueError for a tensor
    that cannot be: one that would get wider (Q4_0 -> Q8_0) or rows not a multiple of 32."""
    plan = {}
    for name, t in ckpt.tensors.items():
        if len(t.shape) != 2:
            plan[name] = F32
            continue
        if BITS_PER_VALUE.get(t.ggml_type, 0) < BITS_PER_VALUE[target]:
            raise UsageError(f"{ckpt.path}: tensor {name!r} is already {TYPE_NAMES[t.ggml_type]}; "
                             f"{TYPE_NAMES[target]} would not restore its precision (quantize the "
                             f"F32/F16 original instead)")
        if t.ggml_type == target:
            plan[name] = target
        elif t.shape[1] % QK:
            if fallback is None:
                raise UsageError(f"{ckpt.path}: tensor {name!r} has rows of {t.shape[1]} values, not a "
                                 f"multiple of {QK}: cannot be {TYPE_NAMES[target]} (pass --fallback "
                                 f"f32 or f16 to keep such tensors unquantized)")
            plan[name] = fallback if BITS_PER_VALUE[fallback] <= BITS_PER_VALUE.get(t.ggml_type, 32) \
                else t.ggml_type
        else:
            plan[name] = target
    return plan


class ErrorStats:
    """Max and mean |w - dequantize(quantize(w))| over the tensors quantized in this run;
    an `on_tensor` callback for write_gguf."""

    def __init__(self):
        self.max = 0.0
        self.total = 0.0
        self.count = 0
        self.tensors = 0

    def __call__(self, t, ggml_type: int, data: np.ndarray) -> None:
        if ggml_type not in (Q8_0, Q4_0) or t.ggml_type == ggml_type:
            return
        rows, cols = t.shape
        step = max(1, _CHUNK_VALUES // cols)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            err = np.abs(_source_rows(t, r0, r1) - dequantize(data[r0:r1], ggml_type, (r1 - r0, cols)))
            self.max = max(self.max, float(err.max()))
            self.total += float(err.sum(dtype=np.float64))
            self.count += err.size
        self.tensors += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


def _size_on_disk(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                   if os.path.isfile(os.path.join(path, f)))
    return os.path.getsize(path)


@cli_entry("xllm-quant")
def main(argv=None) -> int:
    p = ArgumentParser(prog="xllm-quant",
                       description="Quantize a checkpoint's 2-D weights to Q8_0 (-b 8) or Q4_0 (-b 4) in a GGUF file.")
    p.add_argument("--weight", required=True, help="input checkpoint (GGUF, llama2.c .bin, HF directory)")
    p.add_argument("-o", "--output", required=True, help="output .gguf file (written atomically)")
    p.add_argument("-b", "--bits", type=int, choices=sorted(BITS, reverse=True), required=True,
                   help="8: Q8_0 (int8 groups of 32, fp16 scale); 4: Q4_0")
    p.add_argument("--token", help="tokenizer to embed (.model or llama2.c tokenizer.bin); "
                                   "default: the input's own vocabulary")
    p.add_argument("--fallback", choices=sorted(FALLBACK),
                   help="keep matrices whose rows are not a multiple of 32 in this type "
                        "(default: refuse them)")
    args = parse_args(p, argv)
    if isinstance(args, int):
        return args

    ckpt = open_checkpoint(args.weight)
    target = BITS[args.bits]
    plan = plan_types(ckpt, target, FALLBACK.get(args.fallback))
    vocab = resolve_vocab(ckpt, args.token, args.weight)
    stats = ErrorStats()
    report = write_gguf(ckpt, args.output, tensor_type=lambda t: plan[t.name], vocab=vocab,
                        on_tensor=stats)
    before = _size_on_disk(args.weight)
    types = ", ".join(f"{n} {k}" for k, n in sorted(report.types.items()))
    if stats.tensors:
        err = (f"quantization error over {stats.tensors} tensors: max {stats.max:.3g}, "
               f"mean {stats.mean:.3g}")
    else:
        err = "no tensor needed quantizing"
    print(f"xllm-quant: wrote {args.output}: {report.n_tensors} tensors ({types}); "
          f"{_human(before)} -> {_human(report.nbytes)} ({before / max(1, report.nbytes):.2f}x smaller); {err}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
