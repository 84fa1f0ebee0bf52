"""Measurement logic for the benchmark CLIs: this machine's limits, random models of real
shapes, one-sequence and continuous-batching benchmarks.

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
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .cli_errors import ArgumentParser, UsageError, cli_entry, positive_int
from .kv_types import add_kv_type_option
from .formats import Q4_0, Q8_0, layer_tensor_shapes
from .formats.types import Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, block_layout, is_block_quantized, type_name
# random models of real shapes (re-exported: `python -m xllm.benchmark make-model`, tests, benchmarks/)
from .random_model import (DTYPES, FAMILIES, KQUANT_TYPES, SHAPES, make_random_model, random_kquant_blocks,  # noqa: F401
                           resolve_shape, synthetic_vocab)

# ----------------------------------------------------------------------------- machine limits

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
                       level (AMX from amx_min_tokens tokens at amx, VNNI at avx512, maddubs)
    simd               the kernels' SIMD level (xllm._kernels.simd_level())
    kernel_peak() picks the roof of each matmul by weight type and token count.
    """
    from . import _kernels, _probe
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
                             med["int8_vnni_gops"] if wide and med["int8_vnni_gops"] else med["int8_gops"]),
        "amx_min_tokens": _kernels.AMX_MIN_TOKENS,
        "bandwidth_buffer_bytes": int(bandwidth_bytes),
        "other_processes_cpu_pct": mon.summary().get("other_processes_cpu_pct"),
        "steal_pct": mon.summary().get("steal_pct"),
        "runs": {"read_gbps": read, "read_gbps_4k": read4k, "fma256_gflops": fma, "fma512_gflops": fma512,
                 "int8_gops": int8, "int8_vnni_gops": vnni, "int8_vnni512_gops": vnni512,
                 "int8_kquant_gops": kq512, "amx_int8_gops": amx, "amx_bf16_gflops": amx_bf16},
    }


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
    if ggml_type in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
        if wide and limits.get("int8_vnni512_gops"):   # the 16-row panels run 512-bit vpdpbusd
            return limits["int8_vnni512_gops"], "512-bit VNNI"
        return limits["int8_gops"], "maddubs"
    if (ggml_type in (Q8_0, Q4_0) and level == "amx" and limits.get("amx_int8_gops")
            and tokens >= limits.get("amx_min_tokens", 1)):
        return limits["amx_int8_gops"], "AMX int8"
    if wide and limits.get("int8_vnni_gops"):
        return limits["int8_vnni_gops"], "256-bit VNNI"
    return limits["int8_gops"], "maddubs"


# ----------------------------------------------------------------------------- /proc readers

def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def proc_self_stat() -> dict:
    """utime/stime (seconds), state, threads, vsize and rss (bytes) from /proc/self/stat."""
    try:
        with open("/proc/self/stat") as f:
            text = f.read()
    except OSError:
        return {}
    rest = text[text.rindex(")") + 2:].split()      # fields from 3 (state) on; comm may hold spaces
    hz = _clock_ticks()
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    return {
        "state": rest[0],
        "utime_s": int(rest[11]) / hz,
        "stime_s": int(rest[12]) / hz,
        "num_threads": int(rest[17]),
        "vsize_bytes": int(rest[20]),
        "rss_bytes": int(rest[21]) * page,
    }


def proc_status_bytes(key: str) -> Optional[int]:
    """A kB field of /proc/self/status (VmHWM: peak RSS, VmRSS: RSS now) in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: '5' into /proc/self/clear_refs), so the peak
    seen afterwards belongs to the model run, not to the 1 GB bandwidth probe."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _system_cpu_seconds() -> Optional[tuple]:
    """(busy, steal) CPU-seconds of all processes since boot, from /proc/stat.  Steal is time
    the hypervisor ran something else on this VM's CPUs."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    vals = [int(v) for v in parts[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)     # idle + iowait
    steal = vals[7] if len(vals) > 7 else 0
    hz = _clock_ticks()
    return (sum(vals[:8]) - idle - steal) / hz, steal / hz


class CpuMonitor:
    """Samples /proc/self/stat every `interval` seconds in a thread while a benchmark runs;
    also measures how much CPU *other* processes used meanwhile (they skew the figures)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: List[dict] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.start = proc_self_stat()
        self.sys0 = _system_cpu_seconds()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            s = proc_self_stat()
            if s:
                s["t_s"] = round(time.perf_counter() - self.t0, 3)
                self.samples.append(s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self.t0
        self.end = proc_self_stat()
        self.sys1 = _system_cpu_seconds()
        return False

    def summary(self) -> dict:
        if not self.start or not self.end:
            return {"wall_s": self.wall}
        cpu = (self.end["utime_s"] - self.start["utime_s"]) + (self.end["stime_s"] - self.start["stime_s"])
        out = {
            "wall_s": self.wall,
            "utime_s": self.end["utime_s"] - self.start["utime_s"],
            "stime_s": self.end["stime_s"] - self.start["stime_s"],
            "avg_cpu_pct": 100.0 * cpu / self.wall if self.wall > 0 else float("nan"),
            "vsize_bytes": max([self.end["vsize_bytes"]] + [s["vsize_bytes"] for s in self.samples]),
            "state": self.end["state"],
            "num_threads": self.end["num_threads"],
        }
        if self.sys0 is not None and self.sys1 is not None and self.wall > 0:
            out["other_processes_cpu_pct"] = max(0.0, 100.0 * ((self.sys1[0] - self.sys0[0]) - cpu) / self.wall)
            out["steal_pct"] = 100.0 * (self.sys1[1] - self.sys0[1]) / self.wall
        return out


def _contention_warning(cpu: dict, prog: str, limits: Optional[dict] = None) -> None:
    lim = limits or {}
    other = max([x for x in (cpu.get("other_processes_cpu_pct"), lim.get("other_processes_cpu_pct"))
                 if x is not None], default=None)
    steal = max([x for x in (cpu.get("steal_pct"), lim.get("steal_pct")) if x is not None], default=None)
    if other is not None and other > 20:
        print(f"{prog}: warning: other processes used {other:.0f}% of a core during the run; "
              f"figures are lower than this machine can reach", file=sys.stderr)
    if steal is not None and steal > 10:
        print(f"{prog}: warning: the hypervisor took {steal:.0f}% of a core (steal time) during the run; "
              f"figures are lower than this machine can reach", file=sys.stderr)


# ----------------------------------------------------------------------------- cost model

MATMUL_OPS = ("qkv_proj", "attn_out_proj", "ffn_gate_up", "ffn_down", "classifier")


def _value_bytes(ggml_type: int) -> float:
    values, nbytes = block_layout(ggml_type)
    return nbytes / values


def kv_value_bytes(llm) -> float:
    """Bytes one cached key or value takes in the model's KV cache type (q8_0: 34/32)."""
    cfg = llm.config
    return llm.model.kv.bytes_per_token / (2 * cfg.n_layers * cfg.kv_dim)


class CostModel:
    """Bytes each operator must move and FLOPs it must do for a step (see module doc)."""

    def __init__(self, ckpt, kv_value_bytes: float = 4.0):
        cfg = self.cfg = ckpt.config
        self.kv_value_bytes = kv_value_bytes          # bytes of one cached key or value (the KV type)
        t = ckpt.tensors

        def nbytes(name):
            return int(t[name].data.nbytes)
        L = cfg.n_layers
        qkv = ("attn_qkv",) if cfg.fused_qkv else ("attn_q", "attn_k", "attn_v")
        up = ("ffn_gate", "ffn_up") if cfg.activation == "swiglu" else ("ffn_up",)     # gpt2: no gate
        self.n_up = len(up)
        self.w = {
            "qkv_proj": sum(nbytes(f"blk.{i}.{x}.weight") for i in range(L) for x in qkv),
            "attn_out_proj": sum(nbytes(f"blk.{i}.attn_output.weight") for i in range(L)),
            "ffn_gate_up": sum(nbytes(f"blk.{i}.{x}.weight") for i in range(L) for x in up),
            "ffn_down": sum(nbytes(f"blk.{i}.ffn_down.weight") for i in range(L)),
            "classifier": nbytes("output.weight" if "output.weight" in t else "token_embd.weight"),
        }
        self.types = {op: t[n].ggml_type for op, n in (
            ("qkv_proj", f"blk.0.{qkv[0]}.weight"), ("attn_out_proj", "blk.0.attn_output.weight"),
            ("ffn_gate_up", f"blk.0.{up[0]}.weight"), ("ffn_down", "blk.0.ffn_down.weight"),
            ("classifier", "output.weight" if "output.weight" in t else "token_embd.weight"))}
        self.embed_row_bytes = _value_bytes(t["token_embd.weight"].ggml_type) * cfg.dim
        self.norm_bytes = 4 * cfg.dim

    def decode_weight_bytes(self) -> float:
        """Weight bytes one decode token streams: every matrix once, one embedding row, norms."""
        return sum(self.w.values()) + self.embed_row_bytes + self.norm_bytes * (2 * self.cfg.n_layers + 1)

    def step(self, chunks) -> Dict[str, tuple]:
        """{op: (bytes, flops)} of one Model.step over `chunks` (seq_id, tokens, start_pos, logits)."""
        c = self.cfg
        L, d, h, q, kv, hd = c.n_layers, c.dim, c.hidden_dim, c.q_dim, c.kv_dim, c.head_dim
        T = sum(len(ch.tokens) for ch in chunks)
        n_out = sum(len(ch.tokens) if ch.logits == "all" else 1 if ch.logits == "last" else 0
                    for ch in chunks)
        # attended positions summed over tokens: token at position p attends p + 1 positions
        att = sum(len(ch.tokens) * ch.start_pos + len(ch.tokens) * (len(ch.tokens) + 1) // 2
                  for ch in chunks)
        f4 = 4
        out = {
            "embed": (T * (self.embed_row_bytes + f4 * d), 0),
            "rmsnorm": (L * 2 * (2 * f4 * T * d + self.norm_bytes) + n_out * 2 * f4 * d + self.norm_bytes,
                        (L * 2 * T + n_out) * 4 * d),
            "qkv_proj": (self.w["qkv_proj"] + L * f4 * T * (d + q + 2 * kv), L * 2 * T * d * (q + 2 * kv)),
            "rope": (L * 2 * f4 * T * (q + kv), L * 3 * T * (q + kv)),
            "kv_write": (L * 2 * (f4 + self.kv_value_bytes) * T * kv, 0),
            "attention": (L * (2 * self.kv_value_bytes * att * kv + 2 * f4 * T * q),
                          L * att * c.n_heads * (4 * hd + 5)),
            "attn_out_proj": (self.w["attn_out_proj"] + L * f4 * T * (q + d), L * 2 * T * q * d),
            "residual": (L * 2 * 3 * f4 * T * d, L * 2 * T * d),
            "ffn_gate_up": (self.w["ffn_gate_up"] + L * f4 * T * (d + self.n_up * h), L * self.n_up * 2 * T * d * h),
            "swiglu": (L * 3 * f4 * T * h, L * 6 * T * h),
            "ffn_down": (self.w["ffn_down"] + L * f4 * T * (h + d), L * 2 * T * h * d),
            "classifier": ((self.w["classifier"] + f4 * n_out * (d + c.vocab_size)) if n_out else 0,
                           2 * n_out * d * c.vocab_size),
        }
        return out


def op_table(op_seconds: Dict[str, float], costs: Dict[str, list], limits: dict, types: Dict[str, int],
             steps: int = 1, tokens: int = 1) -> List[dict]:
    """Rows of the per-operator table: time share, bytes, FLOPs, achieved GB/s and GFLOP/s,
    arithmetic intensity, memory/compute bound by the roofline of `limits`, and the fraction
    of that roofline reached.  Each matmul is held to the peak of the instruction its kernel
    runs for its weight type at `tokens` tokens per step (kernel_peak)."""
    total = sum(op_seconds.values()) or float("nan")
    bw = limits["read_gbps"] * GB
    rows = []
    for op, secs in op_seconds.items():
        nbytes, flops = costs.get(op, (0, 0))
        if secs <= 0 and nbytes == 0 and flops == 0:
            continue
        quant = op in MATMUL_OPS and op in types and is_block_quantized(types[op])
        peak_g, peak_name = kernel_peak(limits, types[op] if op in MATMUL_OPS and op in types else None,
                                        tokens if op != "classifier" else 1)
        peak = peak_g * GB
        intensity = flops / nbytes if nbytes else float("inf")
        roof = min(peak, intensity * bw) if flops else None
        gbps = nbytes / secs / GB if secs > 0 else float("nan")
        gflops = flops / secs / GB if secs > 0 else float("nan")
        if flops:
            bound = "memory" if intensity * bw < peak else "compute"
            frac = (flops / secs) / roof if secs > 0 else float("nan")
        else:
            bound = "memory"
            frac = (nbytes / secs) / bw if secs > 0 else float("nan")
        rows.append({
            "op": op, "seconds": secs / steps, "share": secs / total, "bytes": nbytes / steps,
            "flops": flops / steps, "gbps": gbps, "gflops": gflops, "intensity": intensity,
            "bound": bound, "roof": "int8" if quant else "fp32", "peak": peak_name, "roof_fraction": frac,
        })
    return rows


# ----------------------------------------------------------------------------- step recorder

@dataclass
class StepRecord:
    t0: float
    t1: float
    n_prefill: int            # prompt tokens processed in this step
    n_decode: int             # generated tokens fed back (one per decoding sequence)
    ops: Optional[dict]       # operator seconds of this step (when profiling)
    costs: Dict[str, tuple]
    kv_blocks_used: int


class StepRecorder:
    """Wraps `llm.model.step` to time every step, split its tokens into prompt and generated
    ones, read the profiler per step, and track KV blocks in use."""

    def __init__(self, llm, profile: bool = True):
        self.llm = llm
        self.model = llm.model
        self.cost = CostModel(llm.checkpoint, kv_value_bytes(llm))
        self.records: List[StepRecord] = []
        self.prompt_len: Dict[int, int] = {}       # seq id -> prompt length
        self.profile = profile
        self._orig = None

    def __enter__(self):
        model = self.model
        self._orig = model.step
        dec = model.decoder
        dec.profile(self.profile)
        if self.profile:
            dec.op_times(reset=True)
        kv = model.kv

        def step(chunks):
            t0 = time.perf_counter()
            out = self._orig(chunks)
            t1 = time.perf_counter()
            ops = dec.op_times(reset=True) if self.profile else None
            n_pre = n_dec = 0
            for ch in chunks:
                plen = self.prompt_len.get(ch.seq_id)
                n = len(ch.tokens)
                if plen is None:
                    n_pre += n
                else:
                    pre = max(0, min(n, plen - ch.start_pos))
                    n_pre += pre
                    n_dec += n - pre
            self.records.append(StepRecord(t0, t1, n_pre, n_dec, ops, self.cost.step(chunks),
                                           kv.n_blocks - kv.n_free))
            return out

        model.step = step
        return self

    def __exit__(self, *exc):
        del self.model.step                  # back to the class method
        self.model.decoder.profile(False)
        return False

    def watch(self, requests) -> None:
        for r in requests:
            self.prompt_len[r.id] = len(r.prompt_ids)

    def clear(self) -> None:
        self.records = []

    @staticmethod
    def sum_ops(records) -> tuple:
        secs: Dict[str, float] = {}
        costs: Dict[str, list] = {}
        for r in records:
            for op, s in (r.ops or {}).items():
                secs[op] = secs.get(op, 0.0) + s
            for op, (b, f) in r.costs.items():
                acc = costs.setdefault(op, [0, 0])
                acc[0] += b
                acc[1] += f
        return secs, {k: tuple(v) for k, v in costs.items()}


# ----------------------------------------------------------------------------- one sequence

def _model_info(llm, path) -> dict:
    cfg = llm.config
    counts: Dict[str, int] = {}
    for name, shape in layer_tensor_shapes(cfg).items():
        if len(shape) == 2:
            tn = type_name(llm.checkpoint.tensors[name].ggml_type)
            counts[tn] = counts.get(tn, 0) + 1
    return {
        "path": os.fspath(path),
        "file_bytes": os.path.getsize(path) if os.path.isfile(path) else None,
        "config": {k: getattr(cfg, k) for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                                 "head_dim", "vocab_size", "max_seq_len")},
        "matrix_types": counts,
        "params": int(sum(int(np.prod(s)) for s in layer_tensor_shapes(cfg).values())),
        "weight_bytes": int(llm.model.weight_bytes),
    }


def _memory(llm, kv_peak_blocks: int, peak_rss: Optional[int] = None) -> dict:
    kv = llm.model.kv
    block_bytes = kv.bytes_per_token * kv.block_size
    return {
        "weights_bytes": int(llm.model.weight_bytes),
        "kv_type": kv.kv_type,
        "kv_bytes_per_token": int(kv.bytes_per_token),
        "kv_in_use_peak_bytes": int(kv_peak_blocks * block_bytes),
        "kv_pool_bytes": int(kv.nbytes),
        "kv_block_size": kv.block_size,
        "workspace_bytes": int(llm.model.decoder.workspace_bytes()),
        "peak_rss_bytes": peak_rss if peak_rss is not None else proc_status_bytes("VmHWM"),
        "rss_bytes": proc_status_bytes("VmRSS"),
    }


def bench_single(path, threads: Optional[int] = None, prompt_tokens: int = 128, gen_tokens: int = 128,
                 repeats: int = 3, tokenizer=None, seed: int = 0, limits: Optional[dict] = None,
                 limits_kwargs: Optional[dict] = None, kv_type: str = "auto") -> dict:
    """Benchmark one sequence: prefill of `prompt_tokens` (random ids after BOS) in one step,
    then `gen_tokens` greedy decode steps, `repeats` times after a warm-up; medians.
    `limits` (from measure_limits) are measured here when not given.  The prefix cache is
    off: every run prefills the same prompt, and that is what is measured.  Decode at a long
    context: a long prompt (e.g. prompt_tokens=2000), with the KV cache's `kv_type`."""
    from .engine import LLM
    from .model import resolve_threads
    from .sampling import SamplingParams
    for name, v in (("prompt_tokens", prompt_tokens), ("gen_tokens", gen_tokens), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} = {v!r}, expected a positive integer")
    threads = resolve_threads(threads)
    t0 = time.perf_counter()
    llm = LLM(path, tokenizer=tokenizer, threads=threads, max_seqs=1,
              max_batch_tokens=max(prompt_tokens, 1), prefix_cache=False, kv_type=kv_type)
    load_s = time.perf_counter() - t0
    cfg = llm.config
    if prompt_tokens + gen_tokens > cfg.max_seq_len:
        raise ValueError(f"--prompt-tokens {prompt_tokens} + --gen-tokens {gen_tokens} = "
                         f"{prompt_tokens + gen_tokens} exceeds the model's context length {cfg.max_seq_len}")
    if limits is None:
        limits = measure_limits(threads, **(limits_kwargs or {}))
    rng = np.random.default_rng(seed)
    low = min(3, cfg.vocab_size - 1)
    ids = [cfg.bos_id] + rng.integers(low, cfg.vocab_size, size=prompt_tokens - 1).tolist()
    def run(n_gen):
        req = llm._request(ids, SamplingParams(max_tokens=n_gen, temperature=0.0, stop_at_eos=False), 0)
        rec.watch([req])
        stamps = []
        start = time.perf_counter()
        for _ in llm.generate_step([req]):
            stamps.append(time.perf_counter())
        return start, stamps, req

    runs = []
    from . import _probe
    bw_bytes = (limits_kwargs or {}).get("bandwidth_bytes", 1 << 30)

    def probe_bandwidth():
        # 3 passes with 4 KiB pages (like the mapped weights), median
        return _median(_probe.read_bandwidth(bw_bytes, threads, 3, hugepages=False))

    bw_probes = []
    peak_rss = 0
    with CpuMonitor() as mon, StepRecorder(llm, profile=True) as rec:
        run(min(2, gen_tokens))                   # warm-up: maps every weight page in
        rec.clear()
        op_pre: Dict[str, float] = {}
        op_dec: Dict[str, float] = {}
        cost_pre = cost_dec = None
        kv_peak = 0
        for _ in range(repeats):
            bw_probes.append(probe_bandwidth())
            rec.clear()
            reset_peak_rss()
            start, stamps, req = run(gen_tokens)
            peak_rss = max(peak_rss, proc_status_bytes("VmHWM") or 0)
            recs = rec.records
            pre = [r for r in recs if r.n_prefill > 0]
            dec = [r for r in recs if r.n_prefill == 0]
            prefill_s = sum(r.t1 - r.t0 for r in pre)
            dec_steps = [r.t1 - r.t0 for r in dec]
            gaps = np.diff(stamps).tolist()
            runs.append({
                "ttft_s": stamps[0] - start,
                "prefill_s": prefill_s,
                "decode_s": stamps[-1] - stamps[0],
                "decode_step_s": sum(dec_steps),
                "token_gaps_s": gaps,
                "tokens": list(req.generated),
            })
            kv_peak = max([kv_peak] + [r.kv_blocks_used for r in recs])
            s_pre, c_pre = StepRecorder.sum_ops(pre)
            s_dec, c_dec = StepRecorder.sum_ops(dec)
            for op, s in s_pre.items():
                op_pre[op] = op_pre.get(op, 0.0) + s / repeats
            for op, s in s_dec.items():
                op_dec[op] = op_dec.get(op, 0.0) + s / repeats
            cost_pre, cost_dec = c_pre, c_dec
            n_dec_steps = len(dec)
            pre_overhead = prefill_s - sum(s_pre.values())
            dec_overhead = sum(dec_steps) - sum(s_dec.values())
            runs[-1]["step_overhead_s"] = {"prefill": pre_overhead, "decode": dec_overhead}
        bw_probes.append(probe_bandwidth())
    cpu = mon.summary()
    # The bandwidth a VM gets can change from one second to the next (it was seen to jump
    # between ~35 and ~65 GB/s here): it is probed before and after every run, and each run's
    # decode is measured against the larger of its two neighbouring probes.
    limits = dict(limits)
    limits["read_gbps_probes"] = bw_probes
    run_bw = [max(bw_probes[i], bw_probes[i + 1]) for i in range(repeats)]
    limits["read_gbps_start"] = limits["read_gbps"]
    limits["read_gbps"] = _median(run_bw)

    cost = CostModel(llm.checkpoint, kv_value_bytes(llm))
    types = cost.types
    quant = any(is_block_quantized(t) for t in types.values())
    prefill_s = _median([r["prefill_s"] for r in runs])
    n_decode = gen_tokens - 1                       # tokens after the first come from decode steps
    decode_s = _median([r["decode_s"] for r in runs])
    dec_tok_s = n_decode / decode_s if n_decode and decode_s > 0 else float("nan")
    pre_flops = sum(f for _, f in cost_pre.values()) if cost_pre else 0
    pre_peak = kernel_peak(limits, types.get("ffn_gate_up", types.get("ffn_down")), prompt_tokens)
    wbytes = cost.decode_weight_bytes()
    run_tok_s = [n_decode / r["decode_s"] if r["decode_s"] > 0 else float("nan") for r in runs]
    run_frac = [wbytes * t / (bw * GB) for t, bw in zip(run_tok_s, run_bw)]
    gaps = [g for r in runs for g in r["token_gaps_s"]]
    result = {
        "model": _model_info(llm, path),
        "machine": {"cpu": cpu_model(), "usable_cores": usable_cores(), "threads": threads,
                    "limits": limits},
        "settings": {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "repeats": repeats,
                     "seed": seed},
        "load_s": load_s,
        "ttft_s": _median([r["ttft_s"] for r in runs]),
        "prefill": {
            "tokens": prompt_tokens,
            "seconds": prefill_s,
            "tok_s": prompt_tokens / prefill_s,
            "flops": pre_flops,
            "gflops": pre_flops / prefill_s / GB,
            # against the instruction the largest matmuls (gate/up) run at this token count
            "peak": pre_peak[1],
            "peak_gops": pre_peak[0],
            "fraction_of_peak": pre_flops / prefill_s / GB / pre_peak[0],
            "fraction_of_fma_peak": None if quant else pre_flops / prefill_s / GB / limits["fma_gflops"],
            "fraction_of_int8_peak": (pre_flops / prefill_s / GB / pre_peak[0]) if quant else None,
            "runs_s": [r["prefill_s"] for r in runs],
        },
        "decode": {
            "tokens": n_decode,
            "tok_s": dec_tok_s,
            "ms_per_token": 1e3 / dec_tok_s if dec_tok_s == dec_tok_s else float("nan"),
            "token_latency_ms": {"p50": 1e3 * _percentile(gaps, 50), "p95": 1e3 * _percentile(gaps, 95)},
            "weight_bytes_per_token": wbytes,
            "gbps": wbytes * dec_tok_s / GB,
            "fraction_of_bandwidth": _median(run_frac),
            "runs_tok_s": run_tok_s,
            "runs_fraction_of_bandwidth": run_frac,
            "runs_bandwidth_gbps": run_bw,
        },
        "ops": {
            "prefill": op_table(op_pre, cost_pre or {}, limits, types, 1, prompt_tokens),
            "decode": op_table(op_dec, cost_dec or {}, limits, types, max(1, n_dec_steps)),
            "overhead_s": {"prefill": _median([r["step_overhead_s"]["prefill"] for r in runs]),
                           "decode_per_step": _median([r["step_overhead_s"]["decode"] for r in runs])
                           / max(1, n_dec_steps),
                           "engine_per_token": (decode_s - _median([r["decode_step_s"] for r in runs]))
                           / max(1, n_decode)},
        },
        "memory": _memory(llm, kv_peak, peak_rss or None),
        "cpu": cpu,
        "deterministic": all(r["tokens"] == runs[0]["tokens"] for r in runs),
    }
    return result


# ----------------------------------------------------------------------------- prompts file

@dataclass
class PromptFile:
    prompts: List[str]
    lines: List[int]               # 1-based line number of each prompt
    blank_lines: int = 0
    replaced_lines: List[int] = field(default_factory=list)   # lines with invalid UTF-8 (replaced)


def read_prompts(path, errors: str = "strict") -> PromptFile:
    """One prompt per line.  Blank (whitespace-only) lines are skipped; a trailing '\\r' is
    dropped; invalid UTF-8 is an error naming the line (errors="strict") or decoded with
    U+FFFD (errors="replace"); a file with no prompt is an error."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors = {errors!r}, expected 'strict' or 'replace'")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a text file with one prompt per line")
    with open(path, "rb") as f:
        data = f.read()
    prompts, lines, replaced = [], [], []
    blank = 0
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()                      # the newline ending the last line starts no new line
    for i, raw in enumerate(raw_lines, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if errors == "strict":
                raise ValueError(f"{path}: line {i}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1}); fix the file or pass --errors replace") from None
            text = raw.decode("utf-8", errors="replace")
            replaced.append(i)
        if not text.strip():
            blank += 1
            continue
        prompts.append(text)
        lines.append(i)
    if not prompts:
        raise ValueError(f"{path}: no prompts (the file is empty or has only blank lines)")
    return PromptFile(prompts, lines, blank, replaced)


# ----------------------------------------------------------------------------- batch

def _run_requests(llm, requests, max_seqs, rec: StepRecorder, bar=None, limits: Optional[dict] = None) -> dict:
    """Run `requests` with continuous batching (at most max_seqs at once), from an empty
    prefix cache (a run finds only what it computed itself); timings."""
    llm.model.kv.clear_prefix_cache()
    rec.clear()
    rec.watch(requests)
    first: Dict[int, float] = {}
    last: Dict[int, float] = {}
    gaps: List[float] = []
    start = time.perf_counter()
    for req, _ in llm.generate_step(requests, max_seqs=max_seqs):
        now = time.perf_counter()
        if req.id in last:
            gaps.append(now - last[req.id])
        else:
            first[req.id] = now - start
        last[req.id] = now
        if bar is not None:
            bar.update(1)
    wall = time.perf_counter() - start
    recs = rec.records
    n_prompt = sum(len(r.prompt_ids) for r in requests)
    n_gen = sum(len(r.generated) for r in requests)
    pre_steps = [r for r in recs if r.n_prefill > 0]
    dec_steps = [r for r in recs if r.n_prefill == 0]
    pre_s = sum(r.t1 - r.t0 for r in pre_steps)
    dec_s = sum(r.t1 - r.t0 for r in dec_steps)
    dec_tokens = sum(r.n_decode for r in dec_steps)
    ttft = list(first.values())
    ops = None
    if limits is not None and rec.profile:
        types = rec.cost.types
        s_pre, c_pre = StepRecorder.sum_ops(pre_steps)
        s_dec, c_dec = StepRecorder.sum_ops(dec_steps)
        per_step = [r.n_prefill + r.n_decode for r in pre_steps]    # tokens per step decide the kernel
        dec_batch = [r.n_decode for r in dec_steps]
        ops = {"prefill_steps": op_table(s_pre, c_pre, limits, types, max(1, len(pre_steps)),
                                         int(statistics.median(per_step)) if per_step else 1),
               "decode_steps": op_table(s_dec, c_dec, limits, types, max(1, len(dec_steps)),
                                        int(statistics.median(dec_batch)) if dec_batch else 1)}
    return {
        "wall_s": wall,
        "requests": len(requests),
        "prompt_tokens": n_prompt,
        "cached_prompt_tokens": sum(r.num_cached_tokens or 0 for r in requests),
        "generated_tokens": n_gen,
        "steps": len(recs),
        "preemptions": llm.last_stats.get("preemptions", 0),
        "total_tok_s": (n_prompt + n_gen) / wall,
        "generation_tok_s": n_gen / wall,
        "prefill_tok_s": sum(r.n_prefill for r in pre_steps) / pre_s if pre_s > 0 else None,
        "decode_tok_s": dec_tokens / dec_s if dec_s > 0 else None,
        "prefill_steps_s": pre_s,
        "decode_steps_s": dec_s,
        "mean_decode_batch": dec_tokens / len(dec_steps) if dec_steps else None,
        "ttft_s": {"p50": _percentile(ttft, 50), "p95": _percentile(ttft, 95), "mean": float(np.mean(ttft))},
        "token_latency_ms": {"p50": 1e3 * _percentile(gaps, 50), "p95": 1e3 * _percentile(gaps, 95)},
        "kv_blocks_peak": max([r.kv_blocks_used for r in recs] or [0]),
        "ops": ops,
    }


def bench_batch(path, prompts_file, batch: int = 16, max_tokens: int = 128, threads: Optional[int] = None,
                tokenizer=None, truncate: bool = False, errors: str = "strict", baseline: bool = True,
                max_batch_tokens: int = 256, ignore_eos: bool = False, progress: Optional[bool] = None,
                limits: Optional[dict] = None, limits_kwargs: Optional[dict] = None,
                prefix_cache: bool = True, kv_type: str = "auto") -> dict:
    """Continuous batching of every prompt in `prompts_file` with at most `batch` sequences
    at once, greedy, `max_tokens` each; then (baseline) the same prompts one at a time.
    Each run starts from an empty prefix cache (prefix_cache=False: none at all)."""
    from .engine import LLM
    from .model import resolve_threads
    from .sampling import SamplingParams
    for name, v in (("batch", batch), ("max_tokens", max_tokens), ("max_batch_tokens", max_batch_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} = {v!r}, expected a positive integer")
    pf = read_prompts(prompts_file, errors)
    threads = resolve_threads(threads)
    t0 = time.perf_counter()
    llm = LLM(path, tokenizer=tokenizer, threads=threads, max_seqs=batch, max_batch_tokens=max_batch_tokens,
              prefix_cache=prefix_cache, kv_type=kv_type)
    load_s = time.perf_counter() - t0
    cfg = llm.config
    room = cfg.max_seq_len - max_tokens
    if room < 1:
        raise ValueError(f"--max-tokens {max_tokens} leaves no room for a prompt in the model's "
                         f"context length {cfg.max_seq_len}")
    encoded, truncated = [], []
    for text, line in zip(pf.prompts, pf.lines):
        ids = llm.tokenizer.encode(text, bos=True)
        if len(ids) > room:
            if not truncate:
                raise ValueError(f"{os.fspath(prompts_file)}: line {line}: prompt of {len(ids)} tokens + "
                                 f"--max-tokens {max_tokens} exceeds the model's context length "
                                 f"{cfg.max_seq_len} (shorten it or pass --truncate)")
            ids = ids[:1] + ids[len(ids) - (room - 1):] if room > 1 else ids[:1]
            truncated.append(line)
        encoded.append(ids)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_at_eos=not ignore_eos)
    if limits is None:
        limits = measure_limits(threads, **(limits_kwargs or {}))

    def make_requests():
        return [llm._request(ids, params, i) for i, ids in enumerate(encoded)]

    total_tokens = len(encoded) * max_tokens
    if progress is None:
        progress = sys.stderr.isatty()
    result = {
        "model": _model_info(llm, path),
        "machine": {"cpu": cpu_model(), "usable_cores": usable_cores(), "threads": threads, "limits": limits},
        "settings": {"batch": batch, "max_tokens": max_tokens, "max_batch_tokens": max_batch_tokens,
                     "truncate": truncate, "errors": errors, "ignore_eos": ignore_eos, "greedy": True,
                     "prefix_cache": prefix_cache},
        "load_s": load_s,
        "prompts": {"file": os.fspath(prompts_file), "count": len(encoded),
                    "blank_lines_skipped": pf.blank_lines, "truncated_lines": truncated,
                    "replaced_lines": pf.replaced_lines,
                    "tokens": {"total": sum(map(len, encoded)), "min": min(map(len, encoded)),
                               "mean": float(np.mean([len(e) for e in encoded])),
                               "max": max(map(len, encoded))}},
    }
    with StepRecorder(llm, profile=True) as rec:
        warm = [llm._request(encoded[0], SamplingParams(max_tokens=1, temperature=0.0), 0)]
        _run_requests(llm, warm, 1, rec)               # warm-up: maps the weights in
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total_tokens, unit="tok", desc=f"batch {batch}", leave=False,
                       file=sys.stderr, dynamic_ncols=True)
        try:
            reset_peak_rss()                            # the bandwidth probe's buffer is not ours
            with CpuMonitor() as mon:
                reqs = make_requests()
                result["batch"] = _run_requests(llm, reqs, batch, rec, bar, limits)
            result["cpu"] = mon.summary()
            result["cpu"]["samples"] = mon.samples
            batch_tokens = [list(r.generated) for r in reqs]
            result["memory"] = _memory(llm, result["batch"]["kv_blocks_peak"])
            if baseline and batch > 1:
                if bar is not None:
                    bar.reset(total=total_tokens)
                    bar.set_description("batch 1")
                with CpuMonitor() as mon1:
                    reqs1 = make_requests()
                    result["baseline"] = _run_requests(llm, reqs1, 1, rec, bar, limits)
                result["baseline"]["cpu"] = mon1.summary()
                b, s = result["batch"], result["baseline"]
                result["speedup"] = {
                    "generation": b["generation_tok_s"] / s["generation_tok_s"],
                    "total": b["total_tok_s"] / s["total_tok_s"],
                    "decode_steps": (b["decode_tok_s"] / s["decode_tok_s"])
                    if b["decode_tok_s"] and s["decode_tok_s"] else None,
                }
                result["outputs_identical"] = batch_tokens == [list(r.generated) for r in reqs1]
            else:
                result["baseline"] = None
                result["speedup"] = None
        finally:
            if bar is not None:
                bar.close()
    return result


# ----------------------------------------------------------------------------- formatting

def _fmt_scaled(x, units) -> str:
    """x in steps of 1000 through `units` (the first unscaled): 1234567 -> '1.23 M'."""
    x = float(x)
    for unit in units:
        if abs(x) < 1000 or unit == units[-1]:
            break
        x /= 1000
    return f"{x:.0f} {unit}".rstrip() if unit == units[0] else f"{x:.2f} {unit}"


def _fmt_bytes(n) -> str:
    return "-" if n is None else _fmt_scaled(n, ("B", "KB", "MB", "GB", "TB"))


def _fmt_num(x, spec=".1f") -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    return format(x, spec)


def _table(headers, rows, left: int = 1) -> str:
    """Plain-text table; the first `left` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < left else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt_count(x) -> str:
    """1234567 -> '1.23 M' (FLOPs)."""
    return _fmt_scaled(x, ("", "k", "M", "G", "T"))


def _limits_text(lim: dict) -> str:
    ba = (f"; around the runs {min(lim['read_gbps_probes']):.1f}-{max(lim['read_gbps_probes']):.1f}"
          if lim.get("read_gbps_probes") else "")
    peaks = [("fp32 FMA 256-bit", lim.get("fma256_gflops", lim.get("fma_gflops")), "GFLOP/s"),
             ("512-bit", lim.get("fma512_gflops"), "GFLOP/s"),
             ("int8 maddubs", lim.get("int8_gops"), "GOP/s"), ("VNNI 256-bit", lim.get("int8_vnni_gops"), "GOP/s"),
             ("VNNI 512-bit", lim.get("int8_vnni512_gops"), "GOP/s"),
             ("maddubs+vpdpwssd 512-bit", lim.get("int8_kquant_gops"), "GOP/s"),
             ("AMX int8", lim.get("amx_int8_gops"), "GOP/s"), ("AMX bf16", lim.get("amx_bf16_gflops"), "GFLOP/s")]
    return (f"read bandwidth {lim['read_gbps']:.1f} GB/s ({lim['read_gbps_4k']:.1f} with 4 KiB pages{ba}), "
            + ", ".join(f"{name} {v:.0f} {unit}" for name, v, unit in peaks if v)
            + f"  [{lim['threads']} threads, {lim['simd']}]")


def _ops_text(rows) -> str:
    return _table(
        ["op", "ms/step", "share", "bytes", "FLOPs", "GB/s", "GFLOP/s", "flop/B", "bound", "% roof"],
        [[r["op"], _fmt_num(r["seconds"] * 1e3, ".3f"), f"{100 * r['share']:.1f}%", _fmt_bytes(r["bytes"]),
          _fmt_count(r["flops"]), _fmt_num(r["gbps"]), _fmt_num(r["gflops"]),
          _fmt_num(r["intensity"], ".2f"), r["bound"] + (f" ({r['peak']})" if r["bound"] == "compute" else ""),
          _fmt_num(100 * r["roof_fraction"], ".0f") + "%"] for r in rows])


def _memory_text(m: dict) -> str:
    return _table(["memory", "bytes"], [
        ["weights (F32/F16/BF16 mapped, quantized types repacked)", _fmt_bytes(m["weights_bytes"])],
        [f"KV cache per token ({m['kv_type']})", _fmt_bytes(m["kv_bytes_per_token"])],
        ["KV cache in use (peak)", _fmt_bytes(m["kv_in_use_peak_bytes"])],
        ["KV pool (reserved, touched on use)", _fmt_bytes(m["kv_pool_bytes"])],
        ["workspace", _fmt_bytes(m["workspace_bytes"])],
        ["peak RSS", _fmt_bytes(m["peak_rss_bytes"])],
    ])


def format_single(r: dict) -> str:
    m, p, d = r["model"], r["prefill"], r["decode"]
    lim = r["machine"]["limits"]
    c = m["config"]
    out = [
        f"model    {m['path']}: dim {c['dim']}, hidden {c['hidden_dim']}, {c['n_layers']} layers, "
        f"{c['n_heads']}/{c['n_kv_heads']} heads, vocab {c['vocab_size']}; "
        f"{', '.join(f'{n} {k}' for k, n in m['matrix_types'].items())} matrices; "
        f"{_fmt_bytes(m['weight_bytes'])} of weights",
        f"machine  {r['machine']['cpu']}, {r['machine']['usable_cores']} usable cores",
        f"limits   {_limits_text(lim)}",
        "",
        _table(["", ""], [
            ["load", f"{r['load_s'] * 1e3:.0f} ms"],
            [f"prefill ({p['tokens']} tokens)", f"{p['tok_s']:.1f} tok/s  ({p['gflops']:.1f} GFLOP/s = "
             f"{100 * p['fraction_of_peak']:.0f}% of the {p['peak']} peak"
             + ")"],
            ["time to first token", f"{r['ttft_s'] * 1e3:.1f} ms"],
            [f"decode ({d['tokens']} tokens)", f"{d['tok_s']:.2f} tok/s  ({d['ms_per_token']:.1f} ms/token, "
             f"p50 {d['token_latency_ms']['p50']:.1f} / p95 {d['token_latency_ms']['p95']:.1f} ms)"],
            ["decode weight streaming", f"{_fmt_bytes(d['weight_bytes_per_token'])}/token x tok/s = "
             f"{d['gbps']:.1f} GB/s = {100 * d['fraction_of_bandwidth']:.0f}% of measured bandwidth"],
        ], left=2),
        "",
        f"prefill operators (one step of {p['tokens']} tokens)",
        _ops_text(r["ops"]["prefill"]),
        "",
        "decode operators (per step of 1 token)",
        _ops_text(r["ops"]["decode"]),
        f"outside the operators: prefill {r['ops']['overhead_s']['prefill'] * 1e3:.2f} ms, decode "
        f"{r['ops']['overhead_s']['decode_per_step'] * 1e3:.3f} ms/step in Model.step + "
        f"{r['ops']['overhead_s']['engine_per_token'] * 1e3:.3f} ms/token in the engine (sampling, scheduling)",
        "",
        _memory_text(r["memory"]),
        "",
        f"cpu      {r['cpu'].get('avg_cpu_pct', float('nan')):.0f}% average"
        + (f"; other processes {r['cpu']['other_processes_cpu_pct']:.0f}%, steal {r['cpu']['steal_pct']:.0f}%"
           if "other_processes_cpu_pct" in r["cpu"] else ""),
    ]
    return "\n".join(out)


def format_batch(r: dict) -> str:
    b, s, pr = r["batch"], r.get("baseline"), r["prompts"]
    st = r["settings"]

    def row(name, x):
        return [name, f"{x['wall_s']:.2f} s", f"{x['total_tok_s']:.1f}", _fmt_num(x["prefill_tok_s"]),
                _fmt_num(x["decode_tok_s"]), f"{x['generation_tok_s']:.1f}",
                f"{x['ttft_s']['p50'] * 1e3:.0f} / {x['ttft_s']['p95'] * 1e3:.0f}",
                f"{x['token_latency_ms']['p50']:.1f} / {x['token_latency_ms']['p95']:.1f}"]
    rows = [row(f"batch {st['batch']}", b)]
    if s:
        rows.append(row("batch 1", s))
    out = [
        f"model    {r['model']['path']}  ({', '.join(f'{n} {k}' for k, n in r['model']['matrix_types'].items())})",
        f"machine  {r['machine']['cpu']}, {r['machine']['threads']} threads",
        f"prompts  {pr['count']} from {pr['file']} ({pr['tokens']['total']} tokens, "
        f"{pr['tokens']['min']}-{pr['tokens']['max']} each), {st['max_tokens']} new tokens each, greedy"
        + (f"; {pr['blank_lines_skipped']} blank lines skipped" if pr["blank_lines_skipped"] else "")
        + (f"; truncated lines {pr['truncated_lines']}" if pr["truncated_lines"] else "")
        + (f"; invalid UTF-8 replaced on lines {pr['replaced_lines']}" if pr["replaced_lines"] else ""),
        "",
        _table(["run", "wall", "total tok/s", "prefill tok/s", "decode tok/s", "gen tok/s",
                "TTFT p50/p95 ms", "token ms p50/p95"], rows),
    ]
    if r.get("speedup"):
        sp = r["speedup"]
        out.append(f"speed-up over one at a time: {sp['generation']:.2f}x generated tokens/s, "
                   f"{_fmt_num(sp['decode_steps'], '.2f')}x in decode steps; outputs identical: "
                   f"{r['outputs_identical']}")
    out += [f"steps {b['steps']}, mean decode batch {_fmt_num(b['mean_decode_batch'])}, "
            f"preemptions {b['preemptions']}, prompt tokens from the prefix cache "
            + (f"{b['cached_prompt_tokens']} of {b['prompt_tokens']}" if st.get("prefix_cache", True) else "off")]
    lim = r["machine"].get("limits")
    if lim:
        out.append(f"limits   {_limits_text(lim)}")
    if b.get("ops") and b["ops"]["decode_steps"]:
        out += ["", f"batch {st['batch']}: operators per decode-only step "
                    f"(mean {_fmt_num(b['mean_decode_batch'])} tokens)", _ops_text(b["ops"]["decode_steps"])]
    out += ["", _memory_text(r["memory"]), ""]
    c = r["cpu"]
    out.append(f"cpu      utime {c['utime_s']:.1f} s, stime {c['stime_s']:.1f} s, average {c['avg_cpu_pct']:.0f}%, "
               f"vsize {_fmt_bytes(c['vsize_bytes'])}, state {c['state']}, {c['num_threads']} threads"
               + (f"; other processes {c['other_processes_cpu_pct']:.0f}%, steal {c['steal_pct']:.0f}%"
                  if "other_processes_cpu_pct" in c else ""))
    return "\n".join(out)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def _dump_json(obj) -> str:
    def clean(x):
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=2, default=_json_default)


# ----------------------------------------------------------------------------- CLIs

def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def _check_weight(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")


@cli_entry("xllm-benchmark")
def main(argv=None) -> int:
    p = ArgumentParser(prog="xllm-benchmark",
                       description="One-sequence speed of a model: prefill, decode, per-operator roofline, "
                                   "against this machine's measured limits.")
    p.add_argument("--weight", required=True, help="model: GGUF, llama2.c .bin or HF directory")
    p.add_argument("--token", help="tokenizer (when the model file has no vocabulary)")
    p.add_argument("--threads", type=positive_int, help="threads (default: usable cores)")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="prompt length (default 128)")
    p.add_argument("--gen-tokens", type=positive_int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--repeats", type=positive_int, default=3, help="measured runs; medians (default 3)")
    p.add_argument("--bandwidth-mb", type=positive_int, default=1024,
                   help="buffer of the bandwidth probe in MB (default 1024; keep it >> L3)")
    p.add_argument("--probe-iters", type=positive_int, default=20_000_000,
                   help="iterations of the FMA / int8 probes per thread (default 20000000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids")
    add_kv_type_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = _parse(p, argv)
    if isinstance(args, int):
        return args
    _check_weight(args.weight)
    r = bench_single(args.weight, threads=args.threads, prompt_tokens=args.prompt_tokens,
                     gen_tokens=args.gen_tokens, repeats=args.repeats, tokenizer=args.token,
                     seed=args.seed, limits_kwargs={"bandwidth_bytes": args.bandwidth_mb << 20,
                                    "compute_iters": args.probe_iters}, kv_type=args.kv_type)
    print(_dump_json(r) if args.json else format_single(r))
    _contention_warning(r["cpu"], "xllm-benchmark", r["machine"]["limits"])
    return 0


@cli_entry("xllm-benchmark-batch")
def batch_main(argv=None) -> int:
    p = ArgumentParser(prog="xllm-benchmark-batch",
                       description="Continuous-batching throughput and latency over a file of prompts "
                                   "(one per line), compared with running them one at a time.")
    p.add_argument("--weight", required=True, help="model: GGUF, llama2.c .bin or HF directory")
    p.add_argument("--file", required=True, help="prompts, one per line (UTF-8; blank lines skipped)")
    p.add_argument("--token", help="tokenizer (when the model file has no vocabulary)")
    p.add_argument("--batch", type=positive_int, default=16, help="sequences at once (max_seqs, default 16)")
    p.add_argument("--max-tokens", type=positive_int, default=128, help="new tokens per prompt (default 128)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=256,
                   help="token budget of one step (default 256)")
    p.add_argument("--threads", type=positive_int, help="threads (default: usable cores)")
    p.add_argument("--truncate", action="store_true",
                   help="cut prompts that do not fit the context (keeps BOS and the end) instead of failing")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8 in the file: fail naming the line (strict, default) or use U+FFFD")
    p.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time run")
    p.add_argument("--bandwidth-mb", type=positive_int, default=1024,
                   help="buffer of the bandwidth probe in MB (default 1024)")
    p.add_argument("--probe-iters", type=positive_int, default=20_000_000,
                   help="iterations of the FMA / int8 probes per thread (default 20000000)")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="compute every prompt in full (default: prompts sharing full blocks with one "
                        "computed earlier in the same run read them from the cache)")
    add_kv_type_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = _parse(p, argv)
    if isinstance(args, int):
        return args
    _check_weight(args.weight)
    if not os.path.exists(args.file):
        raise FileNotFoundError(f"{args.file}: no such file")
    r = bench_batch(args.weight, args.file, batch=args.batch, max_tokens=args.max_tokens, threads=args.threads,
                    tokenizer=args.token, truncate=args.truncate, errors=args.errors,
                    baseline=not args.no_baseline, max_batch_tokens=args.max_batch_tokens,
                    ignore_eos=args.ignore_eos, prefix_cache=args.prefix_cache, kv_type=args.kv_type,
                    limits_kwargs={"bandwidth_bytes": args.bandwidth_mb << 20, "compute_iters": args.probe_iters})
    if args.json:
        print(_dump_json(r))
    else:
        print(format_batch(r))
    _contention_warning(r["cpu"], "xllm-benchmark-batch", r["machine"]["limits"])
    return 0


@cli_entry("xllm-benchmark make-model")
def make_model_main(argv=None) -> int:
    p = ArgumentParser(prog="python -m xllm.benchmark make-model",
                       description="Write a random-weight GGUF model of a real shape (llama, qwen2, gpt2).")
    p.add_argument("--shape", default="tinyllama-1.1b",
                   help=f"one of {', '.join(SHAPES)}, or 'custom' with --dim etc. (default tinyllama-1.1b)")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32", help="type of every matrix (default f32)")
    p.add_argument("--layers", type=positive_int, help="number of layers (default: the shape's)")
    for flag, key in (("--dim", "dim"), ("--hidden-dim", "hidden_dim"), ("--heads", "n_heads"),
                      ("--kv-heads", "n_kv_heads"), ("--vocab", "vocab_size"), ("--ctx", "max_seq_len")):
        p.add_argument(flag, dest=key, type=positive_int, help=f"override {key}")
    p.add_argument("--family", choices=list(FAMILIES), help="with --shape custom: the architecture "
                                                             "(default llama)")
    p.add_argument("--tied", action="store_true", help="with --shape custom: tied classifier")
    p.add_argument("--token", help="vocabulary to embed (sentencepiece .model, llama2.c tokenizer.bin, GGUF); "
                                   "default: a synthetic vocabulary of the shape's kind and size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output .gguf file")
    args = _parse(p, argv)
    if isinstance(args, int):
        return args
    overrides = {k: getattr(args, k) for k in ("dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size",
                                               "max_seq_len")}
    if args.shape == "custom":
        shape = {k: v for k, v in overrides.items() if v is not None}
        shape.update(family=args.family or "llama", tied_embeddings=args.tied)
        overrides = {}
    else:
        shape = args.shape
        if shape not in SHAPES:
            raise UsageError(f"--shape {shape!r}: expected one of {', '.join(SHAPES)} or custom")
        if args.family is not None or args.tied:
            raise UsageError(f"--family and --tied go with --shape custom; {shape} is a "
                             f"{SHAPES[shape].get('family', 'llama')} shape")
    vocab = args.token
    if vocab is not None and not os.path.exists(vocab):
        raise FileNotFoundError(f"{vocab}: no such file")
    hp = resolve_shape(shape, args.layers, **overrides)
    if any(v is not None for v in overrides.values()):
        shape = hp                            # a named shape with overrides is a custom one
    t0 = time.perf_counter()
    make_random_model(args.output, shape, args.dtype, n_layers=args.layers, seed=args.seed, vocab=vocab)
    print(f"wrote {args.output}: {args.shape} shape, {hp['n_layers']} layers, {args.dtype}, "
          f"{_fmt_bytes(os.path.getsize(args.output))} in {time.perf_counter() - t0:.1f} s")
    return 0


def _module_main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "make-model":
        return make_model_main(argv[1:])
    if argv and argv[0] == "batch":
        return batch_main(argv[1:])
    if argv and argv[0] == "limits":
        threads = int(argv[1]) if len(argv) > 1 else usable_cores()
        print(_dump_json(measure_limits(threads)))
        return 0
    return main(argv)


if __name__ == "__main__":
    sys.exit(_module_main())
