"""This machine's limits, measured on the spot: read bandwidth, fp32 FMA and int8 peaks,
and the peak a kernel of a given type can reach (kernel_peak).
"""
from __future__ import annotations

import os
import statistics
from typing import Optional

import numpy as np

from ..formats import Q4_0, Q8_0
from ..formats.types import Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, is_block_quantized
from .procmon import CpuMonitor

# the weight types with AMX tiles (from xllm._kernels.AMX_MIN_TOKENS tokens at the amx level)
_AMX_TYPES = {"Q8_0": Q8_0, "Q4_0": Q4_0, "Q2_K": Q2_K, "Q3_K": Q3_K, "Q4_K": Q4_K, "Q5_K": Q5_K, "Q6_K": Q6_K}


GB = 1e9


def _median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def _percentile(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure_limits(threads: int, bandwidth_bytes: int = 1 << 30, passes: int = 5,
                   compute_iters: int = 20_000_000, repeats: int = 5) -> dict:
    """This machine's limits on `threads` threads, medians of several runs (None: the CPU
    lacks the instruction):

    read_gbps          stream-sum of a `bandwidth_bytes` buffer with 256-bit loads (GB = 1e9 B),
                       transparent huge pages: the best case, used for every fraction
    read_gbps_4k       the same over 4 KiB pages (what a memory-mapped model file gets)
    fma256_gflops      fp32 FMA throughput on 256-bit vectors, 2 flops per lane (scalar code at
                       the scalar level)
    fma512_gflops      the same on 512-bit vectors
    fma_gflops         the FMA peak of the float GEMM tiles at the SIMD level in force (512-bit
                       at avx512/amx, else 256-bit): the roof of F32/F16/BF16 prefill
    int8_gops          int8 multiply-add throughput, 2 ops per multiply-add (maddubs + madd)
    int8_vnni_gops     AVX-512 VNNI vpdpbusd on 256-bit vectors (the avx512 Q8_0/Q4_0 tiles)
    int8_vnni512_gops  vpdpbusd on 512-bit vectors
    int8_kquant_gops   512-bit maddubs + vpdpwssd (the avx512 K-quant tiles)
    amx_int8_gops      AMX tdpbssd on full tiles;  amx_bf16_gflops: tdpbf16ps
    int8_kernel_gops   the peak of the instruction multi-token Q8_0/Q4_0 matmuls run at this
                       level (AMX at amx, 512-bit VNNI at avx512, maddubs at avx2; below
                       amx_min_tokens[type] tokens the amx level runs the 512-bit VNNI tiles,
                       for Q8_0/Q4_0 and the K-quants)
    simd               the kernels' SIMD level (xllm._kernels.simd_level())
    kernel_peak() picks the roof of each matmul by weight type and token count.
    """
    from .. import _kernels, _probe
    if threads < 1:
        raise ValueError(f"threads = {threads}, expected >= 1")
    level = _kernels.simd_level()
    wide = level in ("avx512", "amx")
    narrow = "scalar" if level == "scalar" else None
    with CpuMonitor(interval=3600) as mon:
        read = _probe.read_bandwidth(bandwidth_bytes, threads, passes, hugepages=True)
        read4k = _probe.read_bandwidth(bandwidth_bytes, threads, passes, hugepages=False)
        fma = _probe.fma_peak(threads, compute_iters, repeats, simd=narrow or ("avx2" if _probe.has_avx2() else "scalar"))
        fma512 = _probe.fma_peak(threads, compute_iters, repeats, simd="avx512") if _probe.has_avx512() else None
        int8 = _probe.int8_peak(threads, compute_iters, repeats, simd=narrow)
        vnni = vnni512 = kq512 = amx = amx_bf16 = None
        if _probe.has_vnni():
            vnni = _probe.int8_peak(threads, compute_iters, repeats, method="vnni")
            vnni512 = _probe.int8_peak(threads, compute_iters, repeats, method="vnni512")
            kq512 = _probe.int8_peak(threads, compute_iters, repeats, method="maddubs512")
        if _probe.has_amx():
            amx = _probe.int8_peak(threads, compute_iters, repeats, method="amx")
        if _probe.has_amx(bf16=True):
            amx_bf16 = _probe.amx_bf16_peak(threads, compute_iters, repeats)
    med = {k: (_median(v) if v else None) for k, v in
           {"fma256_gflops": fma, "fma512_gflops": fma512, "int8_gops": int8, "int8_vnni_gops": vnni,
            "int8_vnni512_gops": vnni512, "int8_kquant_gops": kq512, "amx_int8_gops": amx,
            "amx_bf16_gflops": amx_bf16}.items()}
    return {
        "threads": threads,
        "simd": level,
        "read_gbps": max(_median(read), _median(read4k)),
        "read_gbps_4k": _median(read4k),
        **med,
        "fma_gflops": med["fma512_gflops"] if wide and med["fma512_gflops"] else med["fma256_gflops"],
        "int8_kernel_gops": (med["amx_int8_gops"] if level == "amx" and med["amx_int8_gops"] else
                             med["int8_vnni512_gops"] if wide and med["int8_vnni512_gops"] else
                             med["int8_vnni_gops"] if wide and med["int8_vnni_gops"] else med["int8_gops"]),
        "amx_min_tokens": {name: _kernels.AMX_MIN_TOKENS[t] for name, t in _AMX_TYPES.items()},
        "bandwidth_buffer_bytes": int(bandwidth_bytes),
        "other_processes_cpu_pct": mon.summary().get("other_processes_cpu_pct"),
        "steal_pct": mon.summary().get("steal_pct"),
        "runs": {"read_gbps": read, "read_gbps_4k": read4k, "fma256_gflops": fma, "fma512_gflops": fma512,
                 "int8_gops": int8, "int8_vnni_gops": vnni, "int8_vnni512_gops": vnni512,
                 "int8_kquant_gops": kq512, "amx_int8_gops": amx, "amx_bf16_gflops": amx_bf16},
    }


def attention_peak(limits: dict):
    """(peak in GFLOP/s, name) of the attention kernels at the level of `limits`: the group
    kernels run 512-bit FMAs at avx512 and amx (simd_attend_group.h), 256-bit at avx2."""
    level = limits["simd"]
    if level in ("avx512", "amx") and limits.get("fma512_gflops"):
        return limits["fma512_gflops"], "512-bit FMA"
    return limits["fma256_gflops"], "scalar FMA" if level == "scalar" else "256-bit FMA"


def kernel_peak(limits: dict, ggml_type: Optional[int], tokens: int = 1):
    """(peak in G op/s, name) of the instruction a matmul of `ggml_type` weights over `tokens`
    tokens runs at the SIMD level of `limits` (None: a non-matmul operator, 256-bit FMA), so
    that no fraction of it can honestly exceed 1."""
    level = limits["simd"]
    wide = level in ("avx512", "amx")
    if ggml_type is None or not is_block_quantized(ggml_type):
        if ggml_type is not None and tokens > 1 and wide and limits.get("fma512_gflops"):
            return limits["fma512_gflops"], "512-bit FMA"
        return limits["fma256_gflops"], "scalar FMA" if level == "scalar" else "256-bit FMA"
    name = next((n for n, t in _AMX_TYPES.items() if t == ggml_type), None)
    if name and level == "amx" and limits.get("amx_int8_gops") and tokens >= limits.get("amx_min_tokens", {}).get(name, 1 << 30):
        return limits["amx_int8_gops"], "AMX int8"
    if ggml_type in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
        if wide and limits.get("int8_vnni512_gops"):   # the 16-row panels run 512-bit vpdpbusd
            return limits["int8_vnni512_gops"], "512-bit VNNI"
        return limits["int8_gops"], "maddubs"
    if ggml_type in (Q8_0, Q4_0):
        if wide and tokens > 1 and limits.get("int8_vnni512_gops"):   # the two-panel 512-bit tiles
            return limits["int8_vnni512_gops"], "512-bit VNNI"
    if wide and limits.get("int8_vnni_gops"):
        return limits["int8_vnni_gops"], "256-bit VNNI"
    return limits["int8_gops"], "maddubs"
