"""xllm-quant: quantize a checkpoint's weight matrices to GGUF with llama-quantize's presets.

    xllm-quant --weight model.gguf -o model-Q4_K_M.gguf --type Q4_K_M [--pure]
    xllm-quant --weight model.gguf -o model-q8.gguf -b 8          (= --type Q8_0 --pure)

--type takes llama-quantize's preset names (case-insensitive; Q3_K/Q4_K/Q5_K are its aliases
of the _M presets) and chooses each tensor's type as llama-quantize does for llama models
(quant.presets); --pure gives every matrix the preset's base type.  The bytes are
llama-quantize's (quant.reference).  IN is anything `open_checkpoint` reads (GGUF, llama2.c
.bin, ak42 int8, HF directory).  1-D tensors (norms) stay F32; the vocabulary and the GGUF
metadata are carried over.  Refused with exit 2 and one line: an unknown preset or -b, a
missing or unreadable IN, a tensor that would get wider than it is (requantizing cannot
restore the lost precision), and with --pure or -b a matrix whose rows do not divide the
type's block (-b: unless --fallback names a type to keep such tensors in).  Ends with a
summary: tensor types, size before -> after, and the max and mean absolute quantization
error over the tensors quantized in this run.
"""
from __future__ import annotations

import os

import numpy as np

from xllm.cli_errors import ArgumentParser, UsageError, cli_entry
from xllm.convert import _human, _source_rows, parse_args, resolve_vocab, write_gguf
from xllm.formats import F16, F32, Q4_0, Q8_0, QK, open_checkpoint
from xllm.formats.types import block_layout, type_name

from .presets import ModelShape, find_preset, plan_preset, preset_names
from .reference import dequantize

BITS = {8: Q8_0, 4: Q4_0}
FALLBACK = {"f32": F32, "f16": F16}


def bits_per_value(ggml_type: int) -> float:
    values, nbytes = block_layout(ggml_type)
    return 8.0 * nbytes / values
_CHUNK_VALUES = 1 << 22


def plan_types(ckpt, target: int, fallback=None) -> dict:
    """GGUF name -> stored type for quantizing `ckpt` to `target`; ValueError for a tensor
    that cannot be: one that would get wider (Q4_0 -> Q8_0) or rows not a multiple of 32."""
    plan = {}
    for name, t in ckpt.tensors.items():
        if len(t.shape) != 2:
            plan[name] = F32
            continue
        if bits_per_value(t.ggml_type) < bits_per_value(target):
            raise UsageError(f"{ckpt.path}: tensor {name!r} is already {type_name(t.ggml_type)}; "
                             f"{type_name(target)} would not restore its precision (quantize the "
                             f"F32/F16 original instead)")
        if t.ggml_type == target:
            plan[name] = target
        elif t.shape[1] % QK:
            if fallback is None:
                raise UsageError(f"{ckpt.path}: tensor {name!r} has rows of {t.shape[1]} values, not a "
                                 f"multiple of {QK}: cannot be {type_name(target)} (pass --fallback "
                                 f"f32 or f16 to keep such tensors unquantized)")
            plan[name] = fallback if bits_per_value(fallback) <= bits_per_value(t.ggml_type) \
                else t.ggml_type
        else:
            plan[name] = target
    return plan


def plan_preset_types(ckpt, preset_name: str, pure: bool) -> tuple:
    """(preset, GGUF name -> stored type) for quantizing `ckpt` with a llama-quantize preset;
    UsageError for an unknown preset, a --pure matrix whose rows do not divide the block, or
    a tensor that would get wider (e.g. Q4_0 -> Q6_K)."""
    try:
        preset = find_preset(preset_name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = ckpt.config
    try:
        chosen = plan_preset({n: t.shape for n, t in ckpt.tensors.items()}, preset,
                             ModelShape(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads), pure=pure)
    except ValueError as exc:                   # a --pure matrix whose rows do not divide the block
        raise UsageError(f"{ckpt.path}: {exc}") from None
    plan = {}
    for name, t in ckpt.tensors.items():
        target = chosen[name]
        if len(t.shape) != 2 or target is None:
            plan[name] = F32 if len(t.shape) != 2 else t.ggml_type
            continue
        if target != t.ggml_type and bits_per_value(t.ggml_type) < bits_per_value(target):
            raise UsageError(f"{ckpt.path}: tensor {name!r} is already {type_name(t.ggml_type)}; "
                             f"{type_name(target)} would not restore its precision (quantize the "
                             f"F32/F16 original instead)")
        plan[name] = target
    return preset, plan


class ErrorStats:
    """Max and mean |w - dequantize(quantize(w))| over the tensors quantized in this run;
    an `on_tensor` callback for write_gguf."""

    def __init__(self):
        self.max = 0.0
        self.total = 0.0
        self.count = 0
        self.tensors = 0

    def __call__(self, t, ggml_type: int, data: np.ndarray) -> None:
        if ggml_type == F32 or t.ggml_type == ggml_type:
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
                       description="Quantize a checkpoint's weights to GGUF with llama-quantize's presets "
                                   "(--type Q4_K_M ...), or to Q8_0 (-b 8) / Q4_0 (-b 4).")
    p.add_argument("--weight", required=True, help="input checkpoint (GGUF, llama2.c .bin, HF directory)")
    p.add_argument("-o", "--output", required=True, help="output .gguf file (written atomically)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--type", metavar="PRESET",
                      help=f"llama-quantize preset, case-insensitive: {', '.join(preset_names())}")
    kind.add_argument("-b", "--bits", type=int, choices=sorted(BITS, reverse=True),
                      help="8: every matrix Q8_0 (int8 groups of 32, fp16 scale); 4: every matrix Q4_0")
    p.add_argument("--pure", action="store_true",
                   help="with --type: every matrix the preset's base type (no mix, no fallback)")
    p.add_argument("--token", help="tokenizer to embed (.model or llama2.c tokenizer.bin); "
                                   "default: the input's own vocabulary")
    p.add_argument("--fallback", choices=sorted(FALLBACK),
                   help="with -b: keep matrices whose rows are not a multiple of 32 in this type "
                        "(default: refuse them)")
    args = parse_args(p, argv)
    if isinstance(args, int):
        return args
    if args.type is not None:
        if args.fallback is not None:
            raise UsageError("--fallback applies to -b only: with --type, rows that do not divide a "
                             "type's block fall back as llama-quantize's do (or are refused with --pure)")
        try:
            find_preset(args.type)              # before reading IN: a typo fails at once
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    ckpt = open_checkpoint(args.weight)
    if args.type is not None:
        preset, plan = plan_preset_types(ckpt, args.type, args.pure)
        file_type = preset.file_type
    else:
        plan = plan_types(ckpt, BITS[args.bits], FALLBACK.get(args.fallback))
        file_type = None
    vocab = resolve_vocab(ckpt, args.token, args.weight)
    stats = ErrorStats()
    report = write_gguf(ckpt, args.output, tensor_type=lambda t: plan[t.name], vocab=vocab,
                        on_tensor=stats, file_type=file_type)
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
