"""The benchmark CLIs and their measurement logic: this machine's limits, random models of
real shapes, one-sequence and continuous-batching benchmarks.

    xllm-benchmark --weight M [--threads N] [--prompt-tokens 128] [--gen-tokens 128] [--json]
    xllm-benchmark-batch --weight M --file prompts.txt [--batch 16] [--max-tokens 128] [--json]
    python -m xllm.benchmark make-model --shape tinyllama-1.1b --dtype q8_0 -o model.gguf

Limits are measured on the spot by the probes in `xllm._probe` (read bandwidth of a buffer
much larger than the last-level cache, fp32 FMA and int8 multiply-add throughput), and every
figure is given as a fraction of them: decode streams every weight once per token, so its
floor is (weight bytes per token) / bandwidth; prefill is FLOP-bound, so its ceiling is the
FMA (or, for quantized weights, the int8) peak.  Medians over repeats throughout.

The per-operator table comes from the decoder's profiler (`Decoder.profile`): every step's
operator times, with the bytes each operator must move and the FLOPs it must do (a model of
the compulsory traffic: each weight once per step, activations read and written once, K/V of
every attended position once per query token and kv head), so each row shows achieved GB/s
and GFLOP/s and how close it runs to its roofline min(peak, intensity x bandwidth).

limits.py: the machine's limits and kernel_peak; procmon.py: /proc readers, the CPU monitor;
costs.py: the per-operator cost model and roofline table; recorder.py: per-step records;
single.py: xllm-benchmark's run; batch.py: xllm-benchmark-batch's run and the prompts file;
report.py: text and JSON output; cli.py: the command lines.
"""
from ..random_model import (DTYPES, FAMILIES, KQUANT_TYPES, SHAPES, make_random_model,
                            random_kquant_blocks, resolve_shape, synthetic_vocab)
from .batch import PromptFile, bench_batch, read_prompts
from .cli import _module_main, batch_main, main, make_model_main
from .costs import MATMUL_OPS, CostModel, op_table
from .limits import cpu_model, kernel_peak, measure_limits, usable_cores
from .procmon import CpuMonitor
from .recorder import StepRecord, StepRecorder
from .report import format_batch, format_single
from .single import bench_single

__all__ = ["DTYPES", "FAMILIES", "KQUANT_TYPES", "SHAPES", "make_random_model", "random_kquant_blocks",
           "resolve_shape", "synthetic_vocab", "PromptFile", "bench_batch", "read_prompts", "_module_main",
           "batch_main", "main", "make_model_main", "MATMUL_OPS", "CostModel", "op_table", "cpu_model",
           "kernel_peak", "measure_limits", "usable_cores", "CpuMonitor", "StepRecord", "StepRecorder",
           "format_batch", "format_single", "bench_single"]
