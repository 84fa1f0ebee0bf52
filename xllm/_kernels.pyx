# cython: language_level=3
"""Every hot loop of xllm.

Pointer kernels (`c_*`, `noexcept nogil`) do the work; the `def` functions below each are
thin wrappers that validate shapes and dtypes for tests and tools.  `Decoder.step` runs a
whole decoder step for a batch of tokens (any mix of sequences, prefill chunks and decode
tokens) without the GIL: no Python per layer and no allocation per step.
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport sqrtf, expf, INFINITY
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uintptr_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.mman cimport madvise, MADV_DONTNEED

import math
import mmap
import os
import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef enum:
    MAX_FUSED = 3           # matrices one fused matmul may cover (Q, K, V)
    XPAD = 16               # floats of padding after each row of a float matmul's input
    DECODE_ITEM_GROUPS = 4  # row groups per work item of a one-token quantized matmul (work_rows)

# Operators timed when profiling (Decoder.profile); names in OP_NAMES, same order.
cdef enum:
    OP_EMBED = 0
    OP_NORM
    OP_QKV
    OP_ROPE
    OP_KV_WRITE
    OP_ATTENTION
    OP_ATTN_OUT
    OP_RESIDUAL
    OP_FFN_GATE_UP
    OP_SWIGLU
    OP_FFN_DOWN
    OP_CLASSIFIER
    N_OPS

OP_NAMES = ("embed", "rmsnorm", "qkv_proj", "rope", "kv_write", "attention", "attn_out_proj",
            "residual", "ffn_gate_up", "swiglu", "ffn_down", "classifier")

TYPE_F32, TYPE_F16, TYPE_Q4_0, TYPE_Q8_0 = 0, 1, 2, 8
TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_IQ4_NL, TYPE_BF16 = 3, 6, 7, 20, 30
TYPE_Q2_K, TYPE_Q3_K, TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K = 10, 11, 12, 13, 14
KQUANT_TYPES = (10, 11, 12, 13, 14)
SUPPORTED_TYPES = (0, 1, 2, 8, 3, 6, 7, 20, 30) + KQUANT_TYPES
# (values, bytes) per block of each supported type
BLOCK_LAYOUT = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20), 6: (32, 22),
                7: (32, 24), 20: (32, 18), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
                14: (256, 210)}
# the types repacked into 8-row panels and run with Q8_0 activations
QUANTIZED_TYPES = tuple(t for t in SUPPORTED_TYPES if BLOCK_LAYOUT[t][0] == 32)
# every type repacked at load: those, and the K types (16-row panels, Q8_K activations)
PACKED_TYPES = QUANTIZED_TYPES + KQUANT_TYPES

xllm_set_simd_level(XLLM_SIMD_AMX)   # the best path this CPU has
xllm_gemv_multi_stream()             # decode streams chosen now, before any parallel region reads them

# KV cache types (simd_kv.h): name -> (type id, dtype of the stored arrays); a row of kv_dim
# values is kv_dim elements, or for q8_0 kv_dim / 32 blocks of 34 bytes
KV_TYPES = {"f32": (TYPE_F32, np.float32), "f16": (TYPE_F16, np.float16),
            "bf16": (TYPE_BF16, np.uint16), "q8_0": (TYPE_Q8_0, np.uint8)}


def kv_row_elements(str kv_type, int kv_dim):
    """Elements of the stored array's last axis for one cache row of kv_dim values."""
    if kv_type not in KV_TYPES:
        raise ValueError(f"KV cache type {kv_type!r}, expected one of {', '.join(KV_TYPES)}")
    if kv_type == "q8_0" and kv_dim % XLLM_QK:
        raise ValueError(f"KV cache type q8_0 needs rows of a multiple of {XLLM_QK} values, got {kv_dim}")
    return xllm_kv_row_bytes(KV_TYPES[kv_type][0], kv_dim) // np.dtype(KV_TYPES[kv_type][1]).itemsize


cdef _bind_kv_pool(KVPool *kv, str kv_type, k_pool, v_pool, tuple lead, int block_size, int kv_dim,
                   int n_kv_heads):
    """Point `kv` at the caller's arrays: contiguous (*lead, n_blocks, n_kv_heads, block_size,
    head row elements) of the type's dtype (lead: (n_layers,) for a Decoder, () for one layer).
    A block holds each KV head's positions together, so one head's keys (or values) of a
    block are one contiguous run the attention kernels stream, not a few cache lines in
    every position's row."""
    if kv_dim % n_kv_heads:
        raise ValueError(f"kv_dim {kv_dim} is not a multiple of n_kv_heads {n_kv_heads}")
    if kv_type == "q8_0" and (kv_dim // n_kv_heads) % XLLM_QK:
        raise ValueError(f"KV cache type q8_0 needs head_dim a multiple of {XLLM_QK}, got {kv_dim // n_kv_heads}")
    width = kv_row_elements(kv_type, kv_dim // n_kv_heads)
    type_id, dtype = KV_TYPES[kv_type]
    for pool in (k_pool, v_pool):
        if (pool.dtype != dtype or not pool.flags.c_contiguous or pool.ndim != len(lead) + 4
                or pool.shape[:len(lead)] != lead or pool.shape[len(lead) + 1:] != (n_kv_heads, block_size, width)
                or pool.shape[len(lead)] < 1 or pool.shape != k_pool.shape):
            raise ValueError(f"KV pool ({kv_type}): expected two contiguous {np.dtype(dtype).name} arrays "
                             f"{lead + ('n_blocks', n_kv_heads, block_size, width)}, found {pool.dtype} {pool.shape}")
    kv.k = <char *><uintptr_t>k_pool.__array_interface__["data"][0]
    kv.v = <char *><uintptr_t>v_pool.__array_interface__["data"][0]
    kv.type = type_id
    kv.row_bytes = xllm_kv_row_bytes(type_id, kv_dim)
    kv.head_bytes = xllm_kv_row_bytes(type_id, kv_dim // n_kv_heads)
    kv.n_blocks = k_pool.shape[len(lead)]
    kv.block_size = block_size


cdef inline size_t kv_head_run(const KVPool *kv, int layer, int block, int kv_head) noexcept nogil:
    """Byte offset of kv_head's block_size stored rows (head_bytes apart) in `block` of `layer`."""
    return ((<size_t>layer * kv.n_blocks + block) * kv.block_size * kv.row_bytes
            + <size_t>kv_head * kv.block_size * kv.head_bytes)


def kv_store_rows(str kv_type, x):
    """Rows of float32 values as the cache stores them (the rounding write_kv does):
    (..., n) float -> (..., kv_row_elements(kv_type, n)) of the type's dtype."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim < 1:
        raise ValueError("kv_store_rows: expected rows (..., n)")
    cdef int n = a.shape[a.ndim - 1]
    width = kv_row_elements(kv_type, n)
    type_id, dtype = KV_TYPES[kv_type]
    out = np.zeros(a.shape[:a.ndim - 1] + (width,), dtype=dtype)
    rows = a.reshape(-1, n)
    cdef int t = type_id
    cdef uintptr_t src = rows.__array_interface__["data"][0]
    cdef uintptr_t dst = out.__array_interface__["data"][0]
    cdef size_t rb = xllm_kv_row_bytes(t, n)
    cdef Py_ssize_t r
    for r in range(rows.shape[0]):
        xllm_kv_store_row(t, <const float *>(src + <size_t>r * n * sizeof(float)), <void *>(dst + r * rb), n)
    return out

SIMD_LEVELS = {"scalar": XLLM_SIMD_SCALAR, "avx2": XLLM_SIMD_AVX2, "avx512": XLLM_SIMD_AVX512,
               "amx": XLLM_SIMD_AMX}
# Q8_0 (8) / Q4_0 (2) / Q2_K..Q6_K (10..14) matmuls of this many tokens or more run on AMX
# tiles (at the amx level)
AMX_MIN_TOKENS = {t: xllm_amx_min_tokens(t) for t in (XLLM_Q8_0, XLLM_Q4_0, XLLM_Q2_K, XLLM_Q3_K, XLLM_Q4_K,
                                                      XLLM_Q5_K, XLLM_Q6_K)}


# ---------------------------------------------------------------------------- SIMD switch

def has_avx2():
    """True when this CPU runs the AVX2/FMA/F16C kernels."""
    return bool(xllm_cpu_has_avx2())


def has_avx512():
    """True when this CPU runs the AVX-512 VNNI int8 kernels (AVX512F/VL/BW/VNNI)."""
    return bool(xllm_cpu_has_avx512vnni())


def has_amx():
    """True when this CPU runs the AMX int8 tiles (AMX-TILE, AMX-INT8, AVX-512 VNNI, and the
    kernel let this process use the tile state)."""
    return bool(xllm_cpu_has_amx())


def simd_level():
    """'amx', 'avx512', 'avx2' or 'scalar': the path the kernels take now ('amx' is the
    avx512 level with AMX tiles for multi-token Q8_0/Q4_0 matmuls)."""
    return {v: k for k, v in SIMD_LEVELS.items()}[xllm_simd_level_now()]


def gemv_panels():
    """Panels (8 rows each) a one-token Q8_0/Q4_0 matmul streams side by side at the avx512
    level (K-quants: their row group's two panels block by block when this is 4): 4 on Intel
    CPUs, 1 elsewhere, or XLLM_GEMV_PANELS from the environment."""
    return xllm_gemv_streams


def set_gemv_panels(int n):
    """Choose 1 or 4 panels per one-token tile (tests run both; the results are the same bits)."""
    if n not in (1, 4):
        raise ValueError(f"GEMV panels {n}: expected 1 or 4")
    global xllm_gemv_streams
    xllm_gemv_streams = n
    return n


def set_simd_level(str level):
    """Select 'amx', 'avx512', 'avx2' or 'scalar' (tests run each); the CPU's best level at
    or below the one asked for is used.  Returns the level in force."""
    if level not in SIMD_LEVELS:
        raise ValueError(f"SIMD level {level!r}: expected one of {sorted(SIMD_LEVELS)}")
    xllm_set_simd_level(SIMD_LEVELS[level])
    return simd_level()


cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void tick(Workspace *ws, int op, double *t) noexcept nogil:
    """Charge the time since *t to `op` (when profiling) and restart the clock."""
    cdef double t1
    if ws.op_seconds != NULL:
        t1 = now()
        ws.op_seconds[op] += t1 - t[0]
        t[0] = t1


# ---------------------------------------------------------------------------- team sizes

# A parallel region costs a fork and a join: ~1-3 us on an idle machine, but up to a scheduler
# time slice when a thread of the team waits for a core another process holds.  So each
# operator takes one thread per `work_per_thread_ns` of its estimated one-thread time (at
# least one, at most n_threads), and a step whose work is small runs on one thread without
# a single barrier.  The estimate only sizes teams: every thread count computes each output
# with the same operations (1 thread == N threads, bit for bit).
cdef double STREAM_BYTES_PER_NS = 15.0      # one thread streaming weights or K/V from memory
cdef double MACS_PER_NS = 30.0              # one thread's multiply-adds in matmul tiles
DEFAULT_WORK_PER_THREAD_NS = 8000.0         # 8 us of work per thread: a fork + join is <= 1/4 of it
WORK_PER_THREAD_ENV = "XLLM_WORK_PER_THREAD_NS"


def work_per_thread_ns():
    """The team-sizing unit of new decoders: $XLLM_WORK_PER_THREAD_NS (0: every operator on
    all threads), else DEFAULT_WORK_PER_THREAD_NS."""
    text = os.environ.get(WORK_PER_THREAD_ENV)
    if text is None or text.strip() == "":
        return DEFAULT_WORK_PER_THREAD_NS
    try:
        ns = float(text)
    except ValueError:
        ns = float("nan")
    if not (math.isfinite(ns) and ns >= 0):
        raise ValueError(f"{WORK_PER_THREAD_ENV} = {text!r}: expected a number of nanoseconds >= 0")
    return ns


cdef inline int team_size(const Workspace *ws, double work_ns) noexcept nogil:
    """Threads for an operator of `work_ns` estimated one-thread nanoseconds."""
    cdef double n
    if ws.n_threads <= 1:
        return 1
    if ws.work_per_thread_ns <= 0:          # split everything (tests of 1 == N threads)
        return ws.n_threads
    n = work_ns / ws.work_per_thread_ns
    if n >= ws.n_threads:
        return ws.n_threads
    return 1 if n < 2 else <int>n


cdef inline int fork(Workspace *ws, int n) noexcept nogil:
    """Count a parallel region of n threads (Decoder.parallel_regions); returns team(n)."""
    if n > 1:
        ws.parallel_regions += 1
    return team(n)


cdef inline int team(int n) noexcept nogil:
    """n, once the workers of this thread's team of n block asynchronous signals (omp_team.h:
    a Ctrl-C must reach the main thread). Every parallel region takes its size from here."""
    if n > 1:
        xllm_team_block_signals(n)
    return n


# ---------------------------------------------------------------------------- matmul

cdef inline bint is_quantized(int type) noexcept nogil:
    """Repacked types that pair with Q8_0 activations."""
    return type == XLLM_Q8_0 or type == XLLM_Q4_0 or xllm_is_legacy_quant(type)


cdef void matmul_rows(const Matrix *w, int r0, int nr, const float *x, size_t ldx, const float *xp,
                      size_t ldp, int T, float *y, float *acc) noexcept nogil:
    """y[t, r0:r0+nr] for all T tokens of F32/F16 weights: tiles of 6 rows x 4 tokens over k-chunks.

    One token streams each row once (a single k-chunk); several tokens walk k in chunks so
    the rows and token slices in use stay in cache.  With xp (the input in token pairs, pair
    rows ldp floats apart) the 512-bit tiles of simd_avx512.h run instead: 6 rows x 8 tokens.
    """
    cdef int n_k = w.cols
    cdef int kc = n_k if T == 1 else XLLM_K_CHUNK
    cdef int k0, k1, t0, nt, rr, nrr
    cdef const char *wrow = w.data + <size_t>r0 * w.row_bytes
    k0 = 0
    if xp == NULL:
        memset(acc, 0, <size_t>T * XLLM_ROW_GROUP * 8 * sizeof(float))
    elif T & 1:                             # the pairs' tiles start from zero themselves
        memset(acc + <size_t>(T - 1) * XLLM_ROW_GROUP * 8, 0, XLLM_ROW_GROUP * 8 * sizeof(float))
    if xp != NULL:                          # the 512-bit tiles walk all of k themselves
        xllm_float_rows_avx512(w.type, wrow, w.row_bytes, nr, xp, ldp, x, ldx, T, n_k, acc, XLLM_ROW_GROUP)
        k0 = n_k
    while k0 < n_k:
        k1 = min(k0 + kc, n_k)
        t0 = 0
        while t0 < T:
            nt = min(XLLM_TILE_TOKENS, T - t0)
            if nt == 1:
                xllm_tile(w.type, wrow, w.row_bytes, nr, x + t0 * ldx, ldx, 1,
                          k0, k1, acc + <size_t>t0 * XLLM_ROW_GROUP * 8, XLLM_ROW_GROUP)
            else:
                rr = 0
                while rr < nr:
                    nrr = min(XLLM_TILE_ROWS, nr - rr)
                    xllm_tile(w.type, wrow + rr * w.row_bytes, w.row_bytes, nrr,
                              x + t0 * ldx, ldx, nt, k0, k1,
                              acc + (<size_t>t0 * XLLM_ROW_GROUP + rr) * 8, XLLM_ROW_GROUP)
                    rr += XLLM_TILE_ROWS
            t0 += XLLM_TILE_TOKENS
        k0 = k1
    xllm_tile_finish(w.type, wrow, w.row_bytes, nr, x, ldx, T, n_k, acc, XLLM_ROW_GROUP,
                     y + r0, w.rows)


cdef void matmul_panels(const Matrix *w, int r0, int nr, const xllm_block_q8_act *xq, int T,
                        float *y, float *acc) noexcept nogil:
    """y[t, r0:r0+nr] for all T tokens of repacked Q8_0/Q4_0 weights (r0 a multiple of 8).

    Tiles of 2 panels (16 rows) x 8 tokens at avx512 (4 below: xllm_qtile_tokens), acc
    holding one float per (token, row); or AMX tiles from xllm_amx_min_tokens tokens, which
    write y themselves.  One token streams its panels once, one at a time or four side by
    side (xllm_gemv_panels: the CPU decides which streams faster); several tokens walk the
    blocks in chunks that stay in cache.
    """
    cdef int nb = w.cols // XLLM_QK
    cdef int kc = nb if T == 1 else XLLM_QK_CHUNK
    cdef int n_panels = (nr + XLLM_PANEL - 1) // XLLM_PANEL
    cdef int ld = n_panels * XLLM_PANEL
    cdef size_t pstride = xllm_panel_bytes(w.row_bytes)
    cdef const char *panels = w.data + <size_t>(r0 // XLLM_PANEL) * pstride
    cdef int k0, k1, t0, nt, p, npp, t, r
    cdef int gemv_panels = xllm_gemv_panels(w.type)
    cdef int tile_tokens = xllm_qtile_tokens(w.type)
    if xllm_amx_applies(w.type, T):         # AMX int8 tiles, straight into y: the same bits (simd_amx.h)
        xllm_amx_panels(w.type, panels, pstride, n_panels, xq, nb, T, y + r0, w.rows, nr)
        return
    memset(acc, 0, <size_t>T * ld * sizeof(float))
    k0 = 0
    while k0 < nb:
        k1 = min(k0 + kc, nb)
        p = 0
        while p < n_panels:
            if T > 1:
                npp = min(XLLM_QTILE_PANELS, n_panels - p)
            else:                           # the 4-panel tile, or one panel at the matrix's end
                npp = gemv_panels if n_panels - p >= gemv_panels else 1
            t0 = 0
            while t0 < T:
                nt = min(tile_tokens, T - t0)
                xllm_qtile(w.type, panels + p * pstride, pstride, npp, xq + <size_t>t0 * nb, nb, nt,
                           k0, k1, acc + <size_t>t0 * ld + p * XLLM_PANEL, ld)
                t0 += tile_tokens
            p += npp
        k0 = k1
    for t in range(T):
        memcpy(y + <size_t>t * w.rows + r0, acc + <size_t>t * ld, nr * sizeof(float))


cdef void matmul_kq(const Matrix *w, int r0, int nr, const xllm_block_q8k *xk, int T,
                    float *y, float *acc) noexcept nogil:
    """y[t, r0:r0+nr] for all T tokens of repacked K-quant weights (r0 a multiple of 16).

    Tiles of one 16-row panel x 8 tokens (4 below AVX-512) over k-chunks (simd_kquant_panels.h:
    xllm_kq_rows); acc holds one float per (token, row).  From xllm_amx_min_tokens tokens at
    the amx level, AMX tiles that write y themselves.
    """
    cdef int nb = w.cols // XLLM_QK_K
    cdef size_t pstride = <size_t>XLLM_KP * w.row_bytes
    if xllm_amx_applies(w.type, T):         # AMX int8 tiles, straight into y: the same bits (simd_amx_kquants.h)
        xllm_amx_kq_rows(w.type, w.data + <size_t>(r0 // XLLM_KP) * pstride, pstride, nr, nb, xk, T,
                         y + r0, w.rows)
        return
    xllm_kq_rows(w.type, w.data + <size_t>(r0 // XLLM_KP) * pstride, pstride, nr, nb,
                 xk, nb, T, acc, y + r0, w.rows)


cdef void c_matmul(const Matrix *w, const float *x, int T, float *y, Workspace *ws) noexcept nogil:
    """y[t, o] = sum_i W[o, i] * x[t, i]  for T tokens; x (T, cols), y (T, rows)."""
    cdef const Matrix *ms[1]
    cdef float *ys[1]
    ms[0] = w
    ys[0] = y
    c_matmul_multi(ms, ys, 1, x, T, ws)


cdef inline int row_group(int type) noexcept nogil:
    if xllm_is_kquant(type):
        return XLLM_KQ_ROW_GROUP
    return XLLM_QROW_GROUP if is_quantized(type) else XLLM_ROW_GROUP


cdef inline int work_rows(int type, int T) noexcept nogil:
    """Rows per parallel work item of a matmul of T tokens (a multiple of the row group).

    One token, quantized weights: DECODE_ITEM_GROUPS row groups (128 rows), so that each
    thread streams runs of ~100-150 KB instead of 32-row runs interleaved with the other
    thread's, while the items stay small enough to rebalance around a delayed thread (Zen 4,
    C harness, Q4_K 65536 x 2048 decode, 2 threads, medians of 6 runs: 32-row items 21 GB/s,
    128-row items 27, one contiguous half per thread 28).
    """
    if T == 1 and (xllm_is_kquant(type) or is_quantized(type)):
        return DECODE_ITEM_GROUPS * row_group(type)
    return row_group(type)


cdef inline void prepare_input(int i, const float *x, int T, int cols, size_t ldx, int n_q8, int nb, int nbk,
                               bint quantized, float *xp, size_t ldp, Workspace *ws) noexcept nogil:
    """Item i of a matmul's input preparation: a run of up to XLLM_Q8_ACT_RUN Q8_0 blocks of
    one token (i < n_q8), else a Q8_K block, or, for float weights, token pair i (512-bit
    tiles, xp != NULL) or padded row i."""
    cdef int runs = (nb + XLLM_Q8_ACT_RUN - 1) // XLLM_Q8_ACT_RUN
    cdef int b0
    if i < n_q8:
        b0 = (i % runs) * XLLM_Q8_ACT_RUN
        xllm_quantize_row_q8_act(x + <size_t>(i // runs) * cols + b0 * XLLM_QK,
                                 <xllm_block_q8_act *>ws.xq + <size_t>(i // runs) * nb + b0,
                                 min(XLLM_Q8_ACT_RUN, nb - b0) * XLLM_QK)
    elif quantized:
        xllm_quantize_row_q8k(x + <size_t>((i - n_q8) // nbk) * cols + ((i - n_q8) % nbk) * XLLM_QK_K,
                              <xllm_block_q8k *>ws.xk + (i - n_q8), XLLM_QK_K)
    elif xp != NULL:
        xllm_pair_tokens(x + <size_t>(2 * i) * cols, x + <size_t>(2 * i + 1) * cols, cols, xp + i * ldp)
    else:
        memcpy(ws.xpad + <size_t>i * ldx, x + <size_t>i * cols, cols * sizeof(float))


cdef void c_matmul_multi(const Matrix **w, float **y, int n, const float *x, int T,
                         Workspace *ws) noexcept nogil:
    """y[m] = x . W[m]^T for up to MAX_FUSED matrices sharing the input x (T, cols).

    One parallel region over the row groups of all the matrices (Q, K and V; or gate and
    up), so small matrices do not each pay a fork/join and threads stay balanced.
    Quantized weights: x is quantized once to each activation format the matrices need
    (Q8_0 blocks for Q8_0/Q4_0, Q8_K blocks for the K-quants: a Q4_K_M group may mix
    both), then int8 dot products per block.  Work is split by groups of output rows, so
    every thread count computes each output with the same operations.
    """
    cdef int i, g, m, nb, nbk, total, gs, r0, n_prep, n_q8, nth
    cdef bint serial_prep
    cdef double work_ns = 0
    cdef int cols = w[0].cols
    cdef int first[MAX_FUSED + 1]          # first[m]: index of matrix m's first row group
    cdef bint any_quantized = False, any_float = False, any_kquant = False
    cdef float *acc = NULL
    cdef const float *xf = x
    cdef size_t ldx = cols
    cdef float *xp = NULL                  # the input in token pairs for the 512-bit float tiles
    cdef size_t ldp = 0
    cdef const xllm_block_q8_act *xq = <const xllm_block_q8_act *>ws.xq
    first[0] = 0
    for m in range(n):
        gs = work_rows(w[m].type, T)
        first[m + 1] = first[m] + (w[m].rows + gs - 1) // gs
        any_quantized = any_quantized or is_quantized(w[m].type)
        any_kquant = any_kquant or xllm_is_kquant(w[m].type)
        any_float = any_float or not (is_quantized(w[m].type) or xllm_is_kquant(w[m].type))
        work_ns += (<double>w[m].rows * w[m].row_bytes / STREAM_BYTES_PER_NS
                    + <double>w[m].rows * w[m].cols * T / MACS_PER_NS)
    total = first[n]
    nb = cols // XLLM_QK
    nbk = cols // XLLM_QK_K
    n_prep = 0                             # input preparation items: quantized blocks or padded rows
    n_q8 = T * ((nb + XLLM_Q8_ACT_RUN - 1) // XLLM_Q8_ACT_RUN) if any_quantized else 0
    if any_quantized or any_kquant:
        n_prep = n_q8 + (T * nbk if any_kquant else 0)
    elif any_float and T > 1 and xllm_simd_level == XLLM_SIMD_AVX512:
        # 512-bit tiles: a copy in token pairs (padded off 4 KiB multiples too); the odd last
        # token and the n % 8 tail read x itself
        ldp = xllm_pair_stride(cols)
        xp = ws.xpad
        n_prep = T // 2
    elif any_float and T > 1:
        # rows of x a multiple of 4 KiB apart share L1 sets with each other and with a tile's
        # weight rows; a padded copy (one cache line more per row) keeps them apart (2048 x
        # 2048 F32 at T = 128: 120-160 -> 180 GFLOP/s)
        ldx = cols + XPAD
        xf = ws.xpad
        n_prep = T
    nth = team_size(ws, work_ns)
    # a small input is prepared before the region (one barrier fewer); a large one by all
    # threads in the region (a barrier, not a second fork)
    serial_prep = nth == 1 or team_size(ws, <double>T * cols * 8.0 / STREAM_BYTES_PER_NS) == 1
    if serial_prep:
        for i in range(n_prep):
            prepare_input(i, x, T, cols, ldx, n_q8, nb, nbk, any_quantized or any_kquant, xp, ldp, ws)
    with parallel(num_threads=fork(ws, nth)):
        if not serial_prep:
            for i in prange(n_prep, schedule='static'):
                prepare_input(i, x, T, cols, ldx, n_q8, nb, nbk, any_quantized or any_kquant, xp, ldp, ws)
        acc = ws.acc + threadid() * ws.acc_per_thread
        # row groups handed out one at a time: a thread the hypervisor (or a busy neighbour)
        # delays leaves the rest to the others instead of holding everyone at the barrier;
        # each output row is computed whole by one thread, so any hand-out gives the same bits
        for g in prange(total, schedule='dynamic', chunksize=1):
            m = 0
            while g >= first[m + 1]:
                m = m + 1
            gs = work_rows(w[m].type, T)
            r0 = (g - first[m]) * gs
            if xllm_is_kquant(w[m].type):
                matmul_kq(w[m], r0, min(gs, w[m].rows - r0), <const xllm_block_q8k *>ws.xk, T, y[m], acc)
            elif is_quantized(w[m].type):
                matmul_panels(w[m], r0, min(gs, w[m].rows - r0), xq, T, y[m], acc)
            else:
                matmul_rows(w[m], r0, min(gs, w[m].rows - r0), xf, ldx, xp, ldp, T, y[m], acc)


# ---------------------------------------------------------------------------- elementwise

cdef void c_rmsnorm(float *out, const float *x, const float *weight, int T, int dim,
                    float eps) noexcept nogil:
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight."""
    cdef int t
    for t in range(T):
        rmsnorm_row(out + <size_t>t * dim, x + <size_t>t * dim, weight, dim, eps)


cdef inline void rmsnorm_row(float *out, const float *x, const float *weight, int dim,
                             float eps) noexcept nogil:
    xllm_rmsnorm(out, x, weight, dim, eps)      # simd_ops.h: squares summed in 8 lanes


cdef void rmsnorm_tokens(float *out, const float *x, const float *weight, int T, int dim,
                         float eps, int n_threads) noexcept nogil:
    """c_rmsnorm with the tokens split across threads (prefill and batches)."""
    cdef int t
    if n_threads == 1:
        for t in range(T):
            rmsnorm_row(out + <size_t>t * dim, x + <size_t>t * dim, weight, dim, eps)
        return
    for t in prange(T, schedule='static', num_threads=team(n_threads)):
        rmsnorm_row(out + <size_t>t * dim, x + <size_t>t * dim, weight, dim, eps)


cdef void c_rope(float *vec, const int32_t *pos, int T, int n_heads, int head_dim,
                 const float *table, bint neox) noexcept nogil:
    """Rotate the pairs of every head by pos * freq_i (the table's cos/sin, freq_i scaled as
    the config says): adjacent pairs (x[2i], x[2i+1]), or with `neox` the halves
    (x[i], x[i + head_dim/2]) as qwen2 (llama.cpp's NEOX) and HF rotate_half do
    (simd_ops.h: xllm_rope, the same bits on every level)."""
    cdef int t, h
    cdef int half = head_dim // 2
    for t in range(T):
        for h in range(n_heads):
            xllm_rope(vec + (<size_t>t * n_heads + h) * head_dim, table + <size_t>pos[t] * half * 2, half, neox)


cdef void c_layernorm(float *out, const float *x, const float *weight, const float *bias, int T, int dim,
                      float eps) noexcept nogil:
    """out[t] = (x[t] - mean) / sqrt(var + eps) * weight + bias (simd_ops.h: xllm_layernorm)."""
    cdef int t
    for t in range(T):
        xllm_layernorm(out + <size_t>t * dim, x + <size_t>t * dim, weight, bias, dim, eps)


cdef void norm_tokens(const Dims *d, float *out, const float *x, const float *weight, const float *bias,
                      int T, int n_threads) noexcept nogil:
    """The family's norm (RMSNorm, or LayerNorm with bias) of T rows, rows split across threads."""
    cdef int t
    if not d.layer_norm:
        rmsnorm_tokens(out, x, weight, T, d.dim, d.norm_eps, n_threads)
        return
    if n_threads == 1:
        for t in range(T):
            xllm_layernorm(out + <size_t>t * d.dim, x + <size_t>t * d.dim, weight, bias, d.dim, d.norm_eps)
        return
    for t in prange(T, schedule='static', num_threads=team(n_threads)):
        xllm_layernorm(out + <size_t>t * d.dim, x + <size_t>t * d.dim, weight, bias, d.dim, d.norm_eps)


cdef void c_gelu_tanh(float *x, int n) noexcept nogil:
    """x = gelu(x), GPT-2's tanh form (simd_ops.h: xllm_gelu_tanh)."""
    xllm_gelu_tanh(x, n)


cdef void gelu_tokens(float *x, int T, int width, int n_threads) noexcept nogil:
    """c_gelu_tanh over T rows of `width`, rows split across threads."""
    cdef int t
    if n_threads == 1:
        for t in range(T):
            xllm_gelu_tanh(x + <size_t>t * width, width)
        return
    for t in prange(T, schedule='static', num_threads=team(n_threads)):
        xllm_gelu_tanh(x + <size_t>t * width, width)


cdef void c_add_bias(float *x, const float *bias, int T, int width) noexcept nogil:
    """x[t, :] += bias for each of T rows (a no-op for a NULL bias)."""
    cdef int t
    if bias == NULL:
        return
    for t in range(T):
        xllm_add_f32(x + <size_t>t * width, bias, width)


cdef void add_positions(const Matrix *pos_embed, const int32_t *pos, int T, int dim, float *x,
                        float *row) noexcept nogil:
    """x[t] += position_embd[pos[t]] (learned absolute positions; `row` is dim floats of scratch)."""
    cdef int t
    for t in range(T):
        xllm_dequantize_row(pos_embed.type, pos_embed.data + <size_t>pos[t] * pos_embed.row_bytes, row, dim)
        xllm_add_f32(x + <size_t>t * dim, row, dim)


cdef void c_swiglu(float *gate, const float *up, int n) noexcept nogil:
    """gate = silu(gate) * up (simd.h: xllm_swiglu)."""
    xllm_swiglu(gate, up, n)


cdef void swiglu_tokens(float *gate, const float *up, int T, int width, int n_threads) noexcept nogil:
    """c_swiglu over T rows of `width`, rows split across threads (exp is the cost)."""
    cdef int t
    if n_threads == 1:
        for t in range(T):
            c_swiglu(gate + <size_t>t * width, up + <size_t>t * width, width)
        return
    for t in prange(T, schedule='static', num_threads=team(n_threads)):
        c_swiglu(gate + <size_t>t * width, up + <size_t>t * width, width)


cdef void c_add_inplace(float *x, const float *y, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        x[i] = x[i] + y[i]


cdef void c_softmax(float *x, int n) noexcept nogil:
    cdef int i
    cdef float m = -INFINITY
    cdef float s = 0.0
    for i in range(n):
        if x[i] > m:
            m = x[i]
    for i in range(n):
        x[i] = expf(x[i] - m)
        s = s + x[i]
    for i in range(n):
        x[i] = x[i] / s


# ---------------------------------------------------------------------------- attention

cdef void attend_one(const Dims *d, const KVPool *kv, int layer, const int32_t *table, int p,
                     const float *q, int kv_head, float *out, float *scratch) noexcept nogil:
    """out = softmax(q . K[0..p] / sqrt(head_dim)) . V[0..p] over the paged cache.

    Online softmax, one block at a time: a running max and sum rescale the accumulator,
    so memory stays bounded by the block size at any context length.  The block kernel
    reads the cache's type (F32/F16/BF16/Q8_0) directly (simd_kv.h).
    """
    cdef int hd = d.head_dim
    cdef float scale = 1.0 / sqrtf(hd)
    cdef float m = -INFINITY
    cdef float l = 0.0
    cdef int bi, n_pos, i
    cdef size_t base
    memset(out, 0, hd * sizeof(float))
    for bi in range(p // kv.block_size + 1):
        n_pos = min(kv.block_size, p + 1 - bi * kv.block_size)
        base = kv_head_run(kv, layer, table[bi], kv_head)
        xllm_attend_block_kv(kv.type, q, kv.k + base, kv.v + base, kv.head_bytes, n_pos, hd, scale,
                             &m, &l, out, scratch)
    for i in range(hd):
        out[i] = out[i] / l


cdef void attend_group(const Dims *d, const KVPool *kv, int layer, const int32_t *table, int p,
                       const float *q, int kv_head, float *out, float *scratch, int G) noexcept nogil:
    """attend_one for the G query heads sharing `kv_head` (q and out: G rows head_dim apart),
    reading each stored key and value once for the G (simd_attend_group.h)."""
    cdef int hd = d.head_dim
    cdef float scale = 1.0 / sqrtf(hd)
    cdef float m[8]
    cdef float l[8]
    cdef int bi, n_pos, i, g
    cdef size_t base, nxt
    for g in range(G):
        m[g] = -INFINITY
        l[g] = 0.0
    memset(out, 0, G * hd * sizeof(float))
    cdef int last = p // kv.block_size
    for bi in range(last + 1):
        n_pos = min(kv.block_size, p + 1 - bi * kv.block_size)
        base = kv_head_run(kv, layer, table[bi], kv_head)
        if bi < last:                     # the next block's rows of this head, while this one runs
            nxt = kv_head_run(kv, layer, table[bi + 1], kv_head)
            xllm_prefetch_rows(kv.k + nxt, kv.head_bytes, min(kv.block_size, p + 1 - (bi + 1) * kv.block_size),
                               kv.head_bytes)
            xllm_prefetch_rows(kv.v + nxt, kv.head_bytes, min(kv.block_size, p + 1 - (bi + 1) * kv.block_size),
                               kv.head_bytes)
        xllm_attend_block_group(kv.type, G, q, kv.k + base, kv.v + base, kv.head_bytes, n_pos, hd, scale,
                                m, l, out, scratch)
    for g in range(G):
        for i in range(hd):
            out[g * hd + i] = out[g * hd + i] / l[g]


cdef void c_attention(const Dims *d, const KVPool *kv, int layer, const Batch *b,
                      Workspace *ws) noexcept nogil:
    """Causal attention of every batch token over its own sequence; writes ws.xb (T, q_dim).

    Parallel over (kv head, token, query head of the group), in that order: the items a
    thread takes in a row read one KV head's keys and values, so they stay in its L2 over a
    whole prefill chunk (512-token TinyLlama prefill: 698 -> 475 ms against token-major
    order), and the query heads sharing a KV head (GQA) run back to back.
    """
    cdef int item, t, h, kvh, rem
    cdef int group = d.n_heads // d.n_kv_heads
    cdef int G = xllm_attend_group_heads(kv.type, group, d.head_dim)   # 0: no group kernel here
    cdef int heads = G if G > 0 else 1                         # query heads per item
    cdef int calls = group // heads
    cdef int per_kv = b.n_tokens * calls
    cdef float *scratch = NULL
    cdef double kv_bytes = 0
    for t in range(b.n_tokens):
        kv_bytes += (b.pos[t] + 1.0) * d.n_heads * kv.head_bytes * 2     # K and V in the cache's type
    with parallel(num_threads=fork(ws, team_size(ws, kv_bytes / STREAM_BYTES_PER_NS))):
        scratch = ws.att + threadid() * ws.att_per_thread
        for item in prange(d.n_kv_heads * per_kv, schedule='static'):
            kvh = item // per_kv
            rem = item % per_kv
            t = rem // calls
            h = kvh * group + (rem % calls) * heads
            if G > 0:
                attend_group(d, kv, layer, b.blocks + <size_t>b.seq[t] * b.max_blocks, b.pos[t],
                             ws.q + <size_t>t * d.q_dim + h * d.head_dim, kvh,
                             ws.xb + <size_t>t * d.q_dim + h * d.head_dim, scratch, G)
            else:
                attend_one(d, kv, layer, b.blocks + <size_t>b.seq[t] * b.max_blocks, b.pos[t],
                           ws.q + <size_t>t * d.q_dim + h * d.head_dim, kvh,
                           ws.xb + <size_t>t * d.q_dim + h * d.head_dim, scratch)


cdef void write_kv(const Dims *d, const KVPool *kv, int layer, const Batch *b,
                   const float *k, const float *v) noexcept nogil:
    """Store each token's key and value, rounded to the cache's type, at its position's slot
    of each KV head's run (kv_head_run)."""
    cdef int t, p, block, h
    cdef size_t slot
    for t in range(b.n_tokens):
        p = b.pos[t]
        block = b.blocks[<size_t>b.seq[t] * b.max_blocks + p // kv.block_size]
        for h in range(d.n_kv_heads):
            slot = kv_head_run(kv, layer, block, h) + <size_t>(p % kv.block_size) * kv.head_bytes
            xllm_kv_store_row(kv.type, k + <size_t>t * d.kv_dim + h * d.head_dim, kv.k + slot, d.head_dim)
            xllm_kv_store_row(kv.type, v + <size_t>t * d.kv_dim + h * d.head_dim, kv.v + slot, d.head_dim)


# ---------------------------------------------------------------------------- decoder step

cdef void c_decoder_step(const Dims *d, const Layer *layers, const Matrix *embed,
                         const Matrix *pos_embed, const float *final_norm, const float *final_norm_b,
                         const Matrix *classifier, const KVPool *kv, const Batch *b, Workspace *ws,
                         float *logits) noexcept nogil:
    """One forward pass of all batch tokens through every layer; logits for b.out_rows.

    One body for every family; the Dims switches choose the norm (RMSNorm / LayerNorm),
    the positions (RoPE adjacent / halves, or learned embeddings added to the input) and
    the FFN (SwiGLU / GELU); a NULL bias pointer skips that bias.  The time of the bias adds
    is charged to their projection, GELU's to the "swiglu" operator.
    """
    cdef int T = b.n_tokens
    cdef int l, t
    cdef const Layer *L
    cdef const Matrix *qkv[3]
    cdef float *qkv_out[3]
    cdef const Matrix *gate_up[2]
    cdef float *gate_up_out[2]
    cdef double clock = now()
    # elementwise operators' work: bytes in and out (the activation's exp or tanh about as
    # much again)
    cdef double norm_ns = <double>T * d.dim * 2 * sizeof(float) / STREAM_BYTES_PER_NS
    cdef double act_ns = <double>T * d.hidden_dim * 6 * sizeof(float) / STREAM_BYTES_PER_NS

    # token embedding (+ learned position embedding)
    for t in range(T):
        xllm_dequantize_row(embed.type, embed.data + <size_t>b.tokens[t] * embed.row_bytes,
                            ws.x + <size_t>t * d.dim, d.dim)
    if not d.rope:
        add_positions(pos_embed, b.pos, T, d.dim, ws.x, ws.xout)
    tick(ws, OP_EMBED, &clock)

    for l in range(d.n_layers):
        L = &layers[l]
        # attention: x += Wo . attn(rope(Wq xn + bq), rope(Wk xn + bk), Wv xn + bv) + bo,  xn = norm(x)
        norm_tokens(d, ws.xb, ws.x, L.attn_norm, L.attn_norm_b, T, fork(ws, team_size(ws, norm_ns)))
        tick(ws, OP_NORM, &clock)
        qkv[0] = &L.wq
        qkv[1] = &L.wk
        qkv[2] = &L.wv
        qkv_out[0] = ws.q
        qkv_out[1] = ws.k
        qkv_out[2] = ws.v
        c_matmul_multi(qkv, qkv_out, 3, ws.xb, T, ws)
        c_add_bias(ws.q, L.bq, T, d.q_dim)
        c_add_bias(ws.k, L.bk, T, d.kv_dim)
        c_add_bias(ws.v, L.bv, T, d.kv_dim)
        tick(ws, OP_QKV, &clock)
        if d.rope:
            c_rope(ws.q, b.pos, T, d.n_heads, d.head_dim, ws.rope, d.rope_neox)
            c_rope(ws.k, b.pos, T, d.n_kv_heads, d.head_dim, ws.rope, d.rope_neox)
            tick(ws, OP_ROPE, &clock)
        write_kv(d, kv, l, b, ws.k, ws.v)
        tick(ws, OP_KV_WRITE, &clock)
        c_attention(d, kv, l, b, ws)
        tick(ws, OP_ATTENTION, &clock)
        c_matmul(&L.wo, ws.xb, T, ws.xout, ws)
        if ws.allreduce != NULL:          # row-parallel: each rank holds a partial sum
            ws.allreduce(ws.xout, T * d.dim, ws.allreduce_ctx)
        c_add_bias(ws.xout, L.bo, T, d.dim)
        tick(ws, OP_ATTN_OUT, &clock)
        c_add_inplace(ws.x, ws.xout, T * d.dim)
        tick(ws, OP_RESIDUAL, &clock)

        # feed-forward: x += W2 . (silu(W1 xn) * W3 xn)  or  W2 . gelu(W3 xn + b3) + b2,  xn = norm(x)
        norm_tokens(d, ws.xb, ws.x, L.ffn_norm, L.ffn_norm_b, T, fork(ws, team_size(ws, norm_ns)))
        tick(ws, OP_NORM, &clock)
        if d.gelu:
            c_matmul(&L.w_up, ws.xb, T, ws.hb, ws)
            c_add_bias(ws.hb, L.b_up, T, d.hidden_dim)
            tick(ws, OP_FFN_GATE_UP, &clock)
            gelu_tokens(ws.hb, T, d.hidden_dim, fork(ws, team_size(ws, act_ns)))
        else:
            gate_up[0] = &L.w_gate
            gate_up[1] = &L.w_up
            gate_up_out[0] = ws.hb
            gate_up_out[1] = ws.hb2
            c_matmul_multi(gate_up, gate_up_out, 2, ws.xb, T, ws)
            c_add_bias(ws.hb, L.b_gate, T, d.hidden_dim)
            c_add_bias(ws.hb2, L.b_up, T, d.hidden_dim)
            tick(ws, OP_FFN_GATE_UP, &clock)
            swiglu_tokens(ws.hb, ws.hb2, T, d.hidden_dim, fork(ws, team_size(ws, act_ns)))
        tick(ws, OP_SWIGLU, &clock)
        c_matmul(&L.w_down, ws.hb, T, ws.xout, ws)
        if ws.allreduce != NULL:
            ws.allreduce(ws.xout, T * d.dim, ws.allreduce_ctx)
        c_add_bias(ws.xout, L.b_down, T, d.dim)
        tick(ws, OP_FFN_DOWN, &clock)
        c_add_inplace(ws.x, ws.xout, T * d.dim)
        tick(ws, OP_RESIDUAL, &clock)

    # final norm and classifier, only for the rows that need logits
    if b.n_out > 0:
        for t in range(b.n_out):
            if d.layer_norm:
                xllm_layernorm(ws.xb + <size_t>t * d.dim, ws.x + <size_t>b.out_rows[t] * d.dim,
                               final_norm, final_norm_b, d.dim, d.norm_eps)
            else:
                c_rmsnorm(ws.xb + <size_t>t * d.dim, ws.x + <size_t>b.out_rows[t] * d.dim,
                          final_norm, 1, d.dim, d.norm_eps)
        c_matmul(classifier, ws.xb, b.n_out, logits, ws)
        tick(ws, OP_CLASSIFIER, &clock)


# ---------------------------------------------------------------------------- workspace

cdef class _Buffers:
    """Owns the malloc'd workspace of a Decoder (freed with it)."""
    cdef Workspace ws
    cdef list _blocks

    def __cinit__(self):
        memset(&self.ws, 0, sizeof(Workspace))
        self._blocks = []

    cdef void *alloc(self, size_t nbytes) except NULL:
        # zeroed, 64-byte aligned through numpy (kept alive in _blocks)
        arr = np.zeros(nbytes + 64, dtype=np.uint8)
        self._blocks.append(arr)
        cdef uintptr_t p = <uintptr_t>cnp.PyArray_DATA(arr)
        return <void *>((p + 63) & ~(<uintptr_t>63))


def pack_quantized(data, int ggml_type, int rows, int cols, int threads=1):
    """The panel layout matmuls read of a quantized matrix given as its rows' bytes: 8-row
    panels of the 32-value types (simd.h: xllm_pack_panel), 16-row panels of the K types
    (simd_kquant_panels.h); returns uint8 (ceil(rows/P) * P * row_bytes,), 64-byte aligned."""
    if ggml_type not in PACKED_TYPES:
        raise ValueError(f"pack_quantized: type {ggml_type} is not a quantized type {PACKED_TYPES}")
    data = _tensor_matrix(data, ggml_type, rows, cols)
    cdef bint kquant = xllm_is_kquant(ggml_type)
    cdef int rows_per_panel = XLLM_KP if kquant else XLLM_PANEL
    cdef size_t row_bytes = data.nbytes // rows
    cdef int n_panels = (rows + rows_per_panel - 1) // rows_per_panel
    cdef size_t pstride = <size_t>rows_per_panel * row_bytes
    raw = np.empty(n_panels * pstride + 64, dtype=np.uint8)
    cdef uintptr_t base = <uintptr_t>cnp.PyArray_DATA(raw)
    cdef size_t offset = (64 - base % 64) % 64
    out = raw[offset:offset + n_panels * pstride]
    cdef char *dst = <char *>(base + offset)
    cdef const char *src = <const char *><uintptr_t>data.__array_interface__["data"][0]
    cdef int p, nb = cols // (XLLM_QK_K if kquant else XLLM_QK)
    with nogil:
        for p in prange(n_panels, schedule='static', num_threads=team(max(threads, 1))):
            if kquant:
                xllm_kp_pack_panel(ggml_type, src + <size_t>p * pstride, row_bytes,
                                   min(XLLM_KP, rows - p * XLLM_KP), nb, dst + <size_t>p * pstride)
            else:
                xllm_pack_panel(ggml_type, src + <size_t>p * pstride, row_bytes,
                                min(XLLM_PANEL, rows - p * XLLM_PANEL), nb, dst + <size_t>p * pstride)
    return out


def _release_file_pages(arr):
    """Drop a read-only file mapping's pages under `arr` from this process (they stay in the
    page cache and fault back in if read): after repacking, the file's copy of a quantized
    matrix would otherwise count twice in RSS.  Anything not a file mapping is left alone."""
    base = arr
    while base is not None and not isinstance(base, (np.memmap, mmap.mmap)):
        base = getattr(base, "base", None)
    if base is None or (isinstance(base, np.memmap) and base.mode != "r"):
        return
    cdef uintptr_t page = mmap.PAGESIZE
    cdef uintptr_t start = <uintptr_t>arr.__array_interface__["data"][0]
    cdef uintptr_t end = start + <uintptr_t>arr.nbytes
    start = (start + page - 1) // page * page          # whole pages inside the array only
    end = end // page * page
    if end > start:
        madvise(<void *>start, end - start, MADV_DONTNEED)


cdef Matrix make_matrix(object tensor, str name, list keep, bint operand=True, int threads=1) except *:
    """A Matrix over a formats.Tensor's memory: a view of the file's rows, or, for a quantized
    matmul operand (operand=True), its repacked panels (a copy kept alive in `keep`)."""
    cdef Matrix m
    data = tensor.data
    if tensor.ggml_type not in SUPPORTED_TYPES:
        raise ValueError(f"tensor {name!r}: unsupported type {tensor.ggml_type}")
    if len(tensor.shape) != 2:
        raise ValueError(f"tensor {name!r}: expected 2 dimensions, found shape {tensor.shape}")
    if not data.flags.c_contiguous:
        raise ValueError(f"tensor {name!r}: data is not contiguous")
    m.type = tensor.ggml_type
    m.rows = tensor.shape[0]
    m.cols = tensor.shape[1]
    m.row_bytes = data.nbytes // m.rows
    if operand and (is_quantized(m.type) or xllm_is_kquant(m.type)):
        packed = pack_quantized(data.view(np.uint8).reshape(-1), m.type, m.rows, m.cols, threads)
        _release_file_pages(data)
        data = packed
        keep.append(data)
    m.data = <const char *><uintptr_t>data.__array_interface__["data"][0]
    return m


cdef class Decoder:
    """A model's weights bound to a workspace: `step` runs one batched forward pass.

    `config` is a ModelConfig (its architecture switches become Dims'); `weights` maps GGUF
    matrix names to formats.Tensor (attn_q/k/v, also for a fused QKV: Model splits it);
    `norms` maps the names of norm weights and biases to float32 arrays.
    The KV pool arrays are owned by the caller (kv_cache.KVCache) and must outlive this;
    `kv_type` names their type (KV_TYPES).
    """
    cdef Dims dims
    cdef Layer *layers
    cdef Matrix embed
    cdef Matrix pos_embed          # learned position embeddings (rows = 0 with RoPE)
    cdef Matrix classifier
    cdef const float *final_norm
    cdef const float *final_norm_b
    cdef KVPool kv
    cdef _Buffers buffers
    cdef object _keep
    cdef object _allreduce_owner
    cdef double op_seconds[N_OPS]
    cdef readonly int max_tokens
    cdef readonly int threads
    cdef readonly int max_threads

    def __cinit__(self):
        self.layers = NULL
        memset(&self.pos_embed, 0, sizeof(Matrix))

    def __dealloc__(self):
        free(self.layers)

    def __init__(self, config, dict weights, dict norms, k_pool, v_pool, int block_size,
                 int max_tokens, int threads, rope_table, str kv_type="f32"):
        cdef int l
        cdef Layer *L
        cdef Workspace *ws
        if max_tokens < 1:
            raise ValueError(f"max_tokens = {max_tokens}, expected >= 1")
        if threads < 1:
            raise ValueError(f"threads = {threads}, expected >= 1")
        self.dims.dim = config.dim
        self.dims.hidden_dim = config.hidden_dim
        self.dims.n_layers = config.n_layers
        self.dims.n_heads = config.n_heads
        self.dims.n_kv_heads = config.n_kv_heads
        self.dims.head_dim = config.head_dim
        self.dims.q_dim = config.q_dim
        self.dims.kv_dim = config.kv_dim
        self.dims.vocab_size = config.vocab_size
        self.dims.max_seq_len = config.max_seq_len
        self.dims.norm_eps = config.norm_eps
        keep = [weights, norms, k_pool, v_pool, rope_table]

        def vec_ptr(name, int n, bint present=True):
            """Pointer to a float32 (n,) vector of `norms` (norm weights and biases); 0 (NULL)
            when the architecture has no such tensor."""
            if not present:
                return 0
            arr = norms.get(name)
            if arr is None or arr.dtype != np.float32 or arr.shape != (n,) or not arr.flags.c_contiguous:
                raise ValueError(f"vector {name!r}: expected contiguous float32 ({n},)")
            return <uintptr_t>arr.__array_interface__["data"][0]

        cdef bint layer_norm = config.norm == "layer"
        cdef bint gelu = config.activation == "gelu_tanh"
        self.dims.layer_norm = layer_norm
        self.dims.gelu = gelu
        self.dims.rope = config.position == "rope"
        self.dims.rope_neox = config.rope_style == "neox"
        # quantized matmul operands are repacked once, here (make_matrix); a fused attn_qkv
        # arrives as three row views (Model) and is packed as three matrices
        self.layers = <Layer *>calloc(config.n_layers, sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        d, q, kv, h = config.dim, config.q_dim, config.kv_dim, config.hidden_dim
        for l in range(config.n_layers):
            p = f"blk.{l}."
            L = &self.layers[l]
            L.attn_norm = <const float *><uintptr_t>vec_ptr(p + "attn_norm.weight", d)
            L.attn_norm_b = <const float *><uintptr_t>vec_ptr(p + "attn_norm.bias", d, layer_norm)
            L.ffn_norm = <const float *><uintptr_t>vec_ptr(p + "ffn_norm.weight", d)
            L.ffn_norm_b = <const float *><uintptr_t>vec_ptr(p + "ffn_norm.bias", d, layer_norm)
            L.wq = make_matrix(weights[p + "attn_q.weight"], p + "attn_q.weight", keep, True, threads)
            L.wk = make_matrix(weights[p + "attn_k.weight"], p + "attn_k.weight", keep, True, threads)
            L.wv = make_matrix(weights[p + "attn_v.weight"], p + "attn_v.weight", keep, True, threads)
            L.bq = <const float *><uintptr_t>vec_ptr(p + "attn_q.bias", q, config.qkv_bias)
            L.bk = <const float *><uintptr_t>vec_ptr(p + "attn_k.bias", kv, config.qkv_bias)
            L.bv = <const float *><uintptr_t>vec_ptr(p + "attn_v.bias", kv, config.qkv_bias)
            L.wo = make_matrix(weights[p + "attn_output.weight"], p + "attn_output.weight", keep, True, threads)
            L.bo = <const float *><uintptr_t>vec_ptr(p + "attn_output.bias", d, config.out_bias)
            if not gelu:
                L.w_gate = make_matrix(weights[p + "ffn_gate.weight"], p + "ffn_gate.weight", keep, True, threads)
                L.b_gate = <const float *><uintptr_t>vec_ptr(p + "ffn_gate.bias", h, config.ffn_bias)
            L.w_up = make_matrix(weights[p + "ffn_up.weight"], p + "ffn_up.weight", keep, True, threads)
            L.b_up = <const float *><uintptr_t>vec_ptr(p + "ffn_up.bias", h, config.ffn_bias)
            L.w_down = make_matrix(weights[p + "ffn_down.weight"], p + "ffn_down.weight", keep, True, threads)
            L.b_down = <const float *><uintptr_t>vec_ptr(p + "ffn_down.bias", d, config.ffn_bias)
        self.embed = make_matrix(weights["token_embd.weight"], "token_embd.weight", keep, False)
        if not self.dims.rope:
            self.pos_embed = make_matrix(weights["position_embd.weight"], "position_embd.weight", keep, False)
        cls_name = "output.weight" if "output.weight" in weights else "token_embd.weight"
        self.classifier = make_matrix(weights[cls_name], cls_name, keep, True, threads)
        self.final_norm = <const float *><uintptr_t>vec_ptr("output_norm.weight", d)
        self.final_norm_b = <const float *><uintptr_t>vec_ptr("output_norm.bias", d, layer_norm)

        # KV pool (n_layers, n_blocks, block_size, row) in kv_type, owned by the caller
        _bind_kv_pool(&self.kv, kv_type, k_pool, v_pool, (config.n_layers,), block_size, config.kv_dim,
                      config.n_kv_heads)
        half = config.head_dim // 2
        if rope_table.dtype != np.float32 or rope_table.shape != (config.max_seq_len, half, 2):
            raise ValueError("rope table: expected float32 (max_seq_len, head_dim/2, 2)")
        self._keep = keep

        # workspace: every activation buffer, sized once for max_tokens tokens
        self.max_tokens = max_tokens
        self.threads = threads
        self.max_threads = threads
        self.buffers = _Buffers()
        ws = &self.buffers.ws
        T = max_tokens
        max_cols = max(config.dim, config.q_dim, config.hidden_dim)
        F = sizeof(float)
        ws.max_tokens = T
        ws.n_threads = threads
        ws.x = <float *>self.buffers.alloc(T * config.dim * F)
        ws.xb = <float *>self.buffers.alloc(T * max(config.dim, config.q_dim) * F)
        ws.q = <float *>self.buffers.alloc(T * config.q_dim * F)
        ws.k = <float *>self.buffers.alloc(T * config.kv_dim * F)
        ws.v = <float *>self.buffers.alloc(T * config.kv_dim * F)
        ws.hb = <float *>self.buffers.alloc(T * config.hidden_dim * F)
        ws.hb2 = <float *>self.buffers.alloc(T * config.hidden_dim * F)
        ws.xout = <float *>self.buffers.alloc(T * config.dim * F)
        ws.xq = <char *>self.buffers.alloc(T * (max_cols // XLLM_QK + 1) * sizeof(xllm_block_q8_act))
        ws.xk = <char *>self.buffers.alloc(T * (max_cols // XLLM_QK_K + 1) * sizeof(xllm_block_q8k))
        ws.xpad = <float *>self.buffers.alloc(T * (max_cols + XPAD) * F)
        ws.acc_per_thread = max(<size_t>T * XLLM_ROW_GROUP * 8, <size_t>T * XLLM_KQ_ROW_GROUP) + 16
        ws.acc = <float *>self.buffers.alloc(threads * ws.acc_per_thread * F)
        ws.att_per_thread = config.head_dim + max(4 * block_size, XLLM_GROUP_SCRATCH) + 16
        ws.att = <float *>self.buffers.alloc(threads * ws.att_per_thread * F)
        ws.rope = <const float *><uintptr_t>rope_table.__array_interface__["data"][0]
        ws.op_seconds = NULL
        ws.work_per_thread_ns = work_per_thread_ns()
        memset(self.op_seconds, 0, sizeof(self.op_seconds))

    def set_allreduce(self, uintptr_t fn, uintptr_t ctx, keepalive=None):
        """Install a tensor-parallel allreduce (an xllm_allreduce_fn and its context, as
        addresses; 0 removes it); `keepalive` owns the context and lives as long as this."""
        self.buffers.ws.allreduce = <xllm_allreduce_fn>fn
        self.buffers.ws.allreduce_ctx = <void *>ctx if fn else NULL
        self._allreduce_owner = keepalive if fn else None

    @property
    def logits_width(self):
        """Columns of step's logits: the classifier's rows (this rank's vocabulary slice)."""
        return self.classifier.rows

    def workspace_bytes(self):
        """Bytes of activation workspace allocated once for this decoder."""
        return sum(a.nbytes for a in self.buffers._blocks)

    def set_threads(self, int threads):
        """Use `threads` OpenMP threads (at most the count this decoder was sized for)."""
        if not 1 <= threads <= self.max_threads:
            raise ValueError(f"threads = {threads}, expected 1..{self.max_threads}")
        self.threads = threads
        self.buffers.ws.n_threads = threads

    def set_work_per_thread(self, double ns):
        """Give an operator one thread per `ns` nanoseconds of its estimated one-thread work
        (default: work_per_thread_ns()); 0 runs every operator on all threads (the tests
        run so, that small models exercise the split of 1 thread == N threads)."""
        if not (math.isfinite(ns) and ns >= 0):
            raise ValueError(f"work per thread = {ns} ns, expected >= 0")
        self.buffers.ws.work_per_thread_ns = ns

    @property
    def parallel_regions(self):
        """Parallel regions run with more than one thread since this decoder was made (each
        costs a fork and a join; a step of a small model runs none)."""
        return self.buffers.ws.parallel_regions

    def profile(self, bint enabled):
        """Time every operator of each step (see op_times); off by default."""
        self.buffers.ws.op_seconds = self.op_seconds if enabled else NULL

    def op_times(self, bint reset=False):
        """{operator name: seconds} accumulated while profiling."""
        out = {OP_NAMES[i]: self.op_seconds[i] for i in range(N_OPS)}
        if reset:
            memset(self.op_seconds, 0, sizeof(self.op_seconds))
        return out

    def step(self, const int32_t[::1] tokens, const int32_t[::1] pos, const int32_t[::1] seq,
             const int32_t[:, ::1] blocks, const int32_t[::1] out_rows, float[:, ::1] logits):
        """Run all layers for a batch; logits[i] = next-token logits of token out_rows[i].

        tokens/pos/seq: (T,) int32 grouped by sequence; blocks: (n_seqs, max_blocks) block
        table of each sequence; every index is checked here, before the kernels run.
        """
        cdef Batch b
        cdef int T = tokens.shape[0]
        cdef int t, i, s, p, blk
        if T < 1 or T > self.max_tokens:
            raise ValueError(f"batch of {T} tokens, expected 1..{self.max_tokens}")
        if pos.shape[0] != T or seq.shape[0] != T:
            raise ValueError("tokens, pos and seq must have the same length")
        n_seqs = blocks.shape[0]
        for t in range(T):
            if not 0 <= tokens[t] < self.dims.vocab_size:
                raise ValueError(f"token id {tokens[t]} out of range [0, {self.dims.vocab_size})")
            s = seq[t]
            p = pos[t]
            if not 0 <= s < n_seqs:
                raise ValueError(f"sequence index {s} out of range [0, {n_seqs})")
            if not 0 <= p < self.dims.max_seq_len:
                raise ValueError(f"position {p} out of range [0, {self.dims.max_seq_len}) (context length)")
            if p // self.kv.block_size >= blocks.shape[1]:
                raise ValueError(f"position {p} has no block in the block table")
            for i in range(p // self.kv.block_size + 1):
                blk = blocks[s, i]
                if not 0 <= blk < self.kv.n_blocks:
                    raise ValueError(f"block id {blk} out of range [0, {self.kv.n_blocks})")
        if out_rows.shape[0] != logits.shape[0] or (logits.shape[0] and logits.shape[1] != self.classifier.rows):
            raise ValueError(f"logits must be ({out_rows.shape[0]}, {self.classifier.rows})")
        for i in range(out_rows.shape[0]):
            if not 0 <= out_rows[i] < T:
                raise ValueError(f"output row {out_rows[i]} out of range [0, {T})")
        b.n_tokens = T
        b.tokens = &tokens[0]
        b.pos = &pos[0]
        b.seq = &seq[0]
        b.blocks = &blocks[0, 0]
        b.max_blocks = blocks.shape[1]
        b.n_out = out_rows.shape[0]
        b.out_rows = &out_rows[0] if b.n_out else NULL
        with nogil:
            c_decoder_step(&self.dims, self.layers, &self.embed, &self.pos_embed, self.final_norm,
                           self.final_norm_b, &self.classifier, &self.kv, &b, &self.buffers.ws,
                           &logits[0, 0] if b.n_out else NULL)


# ---------------------------------------------------------------------------- wrappers for tests and tools

def _tensor_matrix(data, int ggml_type, int rows, int cols):
    if ggml_type not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported tensor type {ggml_type}")
    block, block_bytes = BLOCK_LAYOUT[ggml_type]
    if cols % block:
        raise ValueError(f"row length {cols} is not a multiple of {block}")
    dtype = {0: np.float32, 1: np.float16}.get(ggml_type, np.uint8)
    data = np.ascontiguousarray(data)
    if data.dtype != dtype:
        raise ValueError(f"weights for type {ggml_type}: expected dtype {np.dtype(dtype)}, found {data.dtype}")
    bytes_per_row = cols // block * block_bytes
    if data.nbytes != rows * bytes_per_row:
        raise ValueError(f"weights hold {data.nbytes} bytes, expected {rows * bytes_per_row}")
    return data


class PackedWeights:
    """A quantized matrix in the panel layout its matmuls read (see `pack`)."""

    def __init__(self, data, int ggml_type, int rows, int cols):
        self.data, self.ggml_type, self.rows, self.cols = data, ggml_type, rows, cols


def pack(w, int ggml_type, int threads=1):
    """Repack a quantized matrix given as its rows' bytes (rows, row_bytes) once, so that
    repeated `matmul` calls (benchmarks) do not pay for it."""
    if w.ndim != 2:
        raise ValueError(f"weights: expected (rows, row_bytes), found shape {w.shape}")
    if ggml_type not in PACKED_TYPES:
        raise ValueError(f"pack: type {ggml_type} is not a quantized type {PACKED_TYPES}")
    cols = w.shape[1] // BLOCK_LAYOUT[ggml_type][1] * BLOCK_LAYOUT[ggml_type][0]
    return PackedWeights(pack_quantized(w, ggml_type, w.shape[0], cols, threads), ggml_type, w.shape[0], cols)


def matmul(w, int ggml_type, x, int threads=1):
    """y = x @ W.T with W (rows, cols) stored as `ggml_type` (bytes for quantized types).

    x: float32 (T, cols); returns float32 (T, rows).  The same kernel as the decoder step.
    Quantized W is either its rows' bytes, repacked on every call, or `pack`'s result.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x: expected 2 dimensions, found {x.ndim}")
    cdef int T = x.shape[0]
    cdef int cols = x.shape[1]
    if T < 1 or (w.rows if isinstance(w, PackedWeights) else len(w)) < 1 or cols < 1:
        raise ValueError("empty matmul")
    if threads < 1:
        raise ValueError(f"threads = {threads}, expected >= 1")
    if isinstance(w, PackedWeights):
        if w.ggml_type != ggml_type or w.cols != cols:
            raise ValueError(f"packed weights are type {w.ggml_type} with {w.cols} columns, "
                             f"asked for type {ggml_type} with {cols}")
        rows, data = w.rows, w.data
        row_bytes = cols // BLOCK_LAYOUT[ggml_type][0] * BLOCK_LAYOUT[ggml_type][1]
    else:
        rows = w.shape[0]
        data = _tensor_matrix(w, ggml_type, rows, cols)
        row_bytes = data.nbytes // rows
        if ggml_type in PACKED_TYPES:
            data = pack_quantized(data, ggml_type, rows, cols, threads)
    cdef Matrix m
    m.data = <const char *><uintptr_t>data.__array_interface__["data"][0]
    m.type = ggml_type
    m.rows = rows
    m.cols = cols
    m.row_bytes = row_bytes
    buffers = _Buffers()
    cdef Workspace *ws = &buffers.ws
    ws.n_threads = threads
    ws.acc_per_thread = max(<size_t>T * XLLM_ROW_GROUP * 8, <size_t>T * XLLM_KQ_ROW_GROUP)
    ws.acc = <float *>buffers.alloc(threads * ws.acc_per_thread * sizeof(float))
    ws.xq = <char *>buffers.alloc(T * (cols // XLLM_QK + 1) * sizeof(xllm_block_q8_act))
    ws.xk = <char *>buffers.alloc(T * (cols // XLLM_QK_K + 1) * sizeof(xllm_block_q8k))
    ws.xpad = <float *>buffers.alloc(T * (cols + XPAD) * sizeof(float))
    y = np.empty((T, rows), dtype=np.float32)
    cdef float[:, ::1] yv = y
    cdef const float[:, ::1] xv = x
    with nogil:
        c_matmul(&m, &xv[0, 0], T, &yv[0, 0], ws)
    return y


def quantize_q8_0(x):
    """Q8_0 bytes of float32 rows (row length a multiple of 32): the activation quantizer."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % XLLM_QK:
        raise ValueError(f"expected (rows, multiple of 32) float32, found shape {x.shape}")
    rows, cols = x.shape
    out = np.empty((rows, cols // 32 * 34), dtype=np.uint8)
    cdef const float[:, ::1] xv = x
    cdef uint8_t[:, ::1] ov = out
    cdef int r
    for r in range(rows):
        if cols:
            xllm_quantize_row_q8_0(&xv[r, 0], <xllm_block_q8_0 *>&ov[r, 0], cols)
    return out


def quantize_act(x):
    """The Q8_0 activation blocks of float32 rows (row length a multiple of 32), as the
    quantized matmuls make them at the level in force: (d float32 (rows, cols/32), sum int32
    (rows, cols/32), qs int8 (rows, cols))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % XLLM_QK:
        raise ValueError(f"expected (rows, multiple of 32) float32, found shape {x.shape}")
    rows, cols = x.shape
    nb = cols // XLLM_QK
    blocks = np.empty((rows, nb * sizeof(xllm_block_q8_act)), dtype=np.uint8)
    cdef const float[:, ::1] xv = x
    cdef uint8_t[:, ::1] bv = blocks
    cdef int r
    for r in range(rows):
        if cols:
            xllm_quantize_row_q8_act(&xv[r, 0], <xllm_block_q8_act *>&bv[r, 0], cols)
    b = blocks.reshape(rows, nb, sizeof(xllm_block_q8_act))
    d = np.ascontiguousarray(b[:, :, 0:4]).view(np.float32).reshape(rows, nb)
    sums = np.ascontiguousarray(b[:, :, 4:8]).view(np.int32).reshape(rows, nb)
    qs = np.ascontiguousarray(b[:, :, 8:]).view(np.int8).reshape(rows, cols)
    return d, sums, qs


def quantize_q8k(x):
    """The K-quant activation blocks of float32 rows (row length a multiple of 256):
    (qs int8 (rows, cols), bsums int16 (rows, cols/16), d float32 (rows, cols/256))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % XLLM_QK_K:
        raise ValueError(f"expected (rows, multiple of 256) float32, found shape {x.shape}")
    rows, cols = x.shape
    nbk = cols // XLLM_QK_K
    blocks = np.empty((rows, nbk * sizeof(xllm_block_q8k)), dtype=np.uint8)
    cdef const float[:, ::1] xv = x
    cdef uint8_t[:, ::1] bv = blocks
    cdef int r
    for r in range(rows):
        if cols:
            xllm_quantize_row_q8k(&xv[r, 0], <xllm_block_q8k *>&bv[r, 0], cols)
    b = blocks.reshape(rows, nbk, sizeof(xllm_block_q8k))
    qs = np.ascontiguousarray(b[:, :, :256]).view(np.int8).reshape(rows, cols)
    bsums = np.ascontiguousarray(b[:, :, 256:288]).view(np.int16).reshape(rows, nbk * 16)
    d = np.ascontiguousarray(b[:, :, 288:292]).view(np.float32).reshape(rows, nbk)
    return qs, bsums, d


def dequantize(data, int ggml_type, int rows, int cols):
    """Float32 (rows, cols) from tensor bytes of any supported type (the embedding lookup path)."""
    data = _tensor_matrix(data, ggml_type, rows, cols)
    out = np.empty((rows, cols), dtype=np.float32)
    cdef size_t rb = data.nbytes // rows
    cdef const char *src = <const char *><uintptr_t>data.__array_interface__["data"][0]
    cdef float[:, ::1] ov = out
    cdef int r
    for r in range(rows):
        xllm_dequantize_row(ggml_type, src + r * rb, &ov[r, 0], cols)
    return out


def fp16_to_fp32(h):
    """Software fp16 -> fp32 conversion (the scalar path's), elementwise over uint16 bits."""
    h = np.ascontiguousarray(h, dtype=np.uint16).ravel()
    out = np.empty(h.shape[0], dtype=np.float32)
    cdef const uint16_t[::1] hv = h
    cdef float[::1] ov = out
    cdef Py_ssize_t i
    for i in range(h.shape[0]):
        ov[i] = xllm_fp16_to_fp32(hv[i])
    return out


def fp32_to_fp16(f):
    """Software fp32 -> fp16 bits (round to nearest even), elementwise."""
    f = np.ascontiguousarray(f, dtype=np.float32).ravel()
    out = np.empty(f.shape[0], dtype=np.uint16)
    cdef const float[::1] fv = f
    cdef uint16_t[::1] ov = out
    cdef Py_ssize_t i
    for i in range(f.shape[0]):
        ov[i] = xllm_fp32_to_fp16(fv[i])
    return out


def rmsnorm(x, weight, float eps):
    """Float32 (T, dim) rows normalized by their RMS and scaled by weight (dim,)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    if x.ndim != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"x (T, dim) and weight (dim,) expected, found {x.shape} and {weight.shape}")
    out = np.empty_like(x)
    cdef const float[:, ::1] xv = x
    cdef const float[::1] wv = weight
    cdef float[:, ::1] ov = out
    if x.size:
        c_rmsnorm(&ov[0, 0], &xv[0, 0], &wv[0], x.shape[0], x.shape[1], eps)
    return out


def rope_table(int max_seq_len, int head_dim, double theta, inv_freq=None):
    """cos/sin of pos * freq_i in float64, stored float32: (max_seq_len, head_dim/2, 2).

    freq_i = theta^(-2i/head_dim), or `inv_freq` (head_dim/2 values: config.rope_inv_freq,
    with linear / llama3 scaling applied) when given."""
    if head_dim % 2 or head_dim < 2:
        raise ValueError(f"head_dim = {head_dim}, expected an even number")
    if inv_freq is None:
        i = np.arange(head_dim // 2, dtype=np.float64)
        freqs = theta ** (-2.0 * i / head_dim)
    else:
        freqs = np.asarray(inv_freq, dtype=np.float64)
        if freqs.shape != (head_dim // 2,) or not np.all(np.isfinite(freqs)):
            raise ValueError(f"inv_freq: expected {head_dim // 2} finite values, found shape {freqs.shape}")
    angles = np.arange(max_seq_len, dtype=np.float64)[:, None] * freqs[None, :]
    return np.ascontiguousarray(np.stack([np.cos(angles), np.sin(angles)], axis=-1), dtype=np.float32)


def rope(x, positions, int n_heads, int head_dim, double theta, bint neox=False, inv_freq=None):
    """Rotate every head of x (T, n_heads*head_dim) in place and return it: adjacent pairs,
    or the two halves with `neox`; frequencies as in rope_table."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    positions = np.ascontiguousarray(positions, dtype=np.int32)
    if x.ndim != 2 or x.shape[1] != n_heads * head_dim or positions.shape != (x.shape[0],):
        raise ValueError("x (T, n_heads*head_dim) and positions (T,) expected")
    if positions.size and positions.min() < 0:
        raise ValueError("negative position")
    table = rope_table(int(positions.max()) + 1 if positions.size else 1, head_dim, theta, inv_freq)
    cdef float[:, ::1] xv = x
    cdef const int32_t[::1] pv = positions
    cdef const float[:, :, ::1] tv = table
    if x.size:
        c_rope(&xv[0, 0], &pv[0], x.shape[0], n_heads, head_dim, &tv[0, 0, 0], neox)
    return x


def layernorm(x, weight, bias, float eps):
    """Float32 (T, dim) rows normalized to mean 0 and variance 1, scaled by weight, plus bias."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if x.ndim != 2 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"x (T, dim), weight (dim,) and bias (dim,) expected, found {x.shape}, "
                         f"{weight.shape} and {bias.shape}")
    out = np.empty_like(x)
    cdef const float[:, ::1] xv = x
    cdef const float[::1] wv = weight
    cdef const float[::1] bv = bias
    cdef float[:, ::1] ov = out
    if x.size:
        c_layernorm(&ov[0, 0], &xv[0, 0], &wv[0], &bv[0], x.shape[0], x.shape[1], eps)
    return out


def gelu_tanh(x):
    """GPT-2's GELU (tanh form), elementwise (new array)."""
    a = np.array(x, dtype=np.float32)
    cdef float[::1] av = a.reshape(-1)
    if a.size:
        c_gelu_tanh(&av[0], a.size)
    return a


def add_bias(x, bias):
    """x (T, width) + bias (width,) for every row, through the decoder's bias kernel (new array)."""
    a = np.array(x, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if a.ndim != 2 or bias.shape != (a.shape[1],):
        raise ValueError(f"x (T, width) and bias (width,) expected, found {a.shape} and {bias.shape}")
    cdef float[:, ::1] av = a
    cdef const float[::1] bv = bias
    if a.size:
        c_add_bias(&av[0, 0], &bv[0], a.shape[0], a.shape[1])
    return a


def softmax(x):
    """Softmax of a float32 vector (a new array)."""
    x = np.array(x, dtype=np.float32).ravel()
    cdef float[::1] xv = x
    if x.size:
        c_softmax(&xv[0], x.shape[0])
    return x


def swiglu(gate, up):
    """silu(gate) * up, elementwise (new array)."""
    g = np.array(gate, dtype=np.float32)
    u = np.ascontiguousarray(up, dtype=np.float32)
    if g.shape != u.shape:
        raise ValueError(f"gate {g.shape} and up {u.shape} differ")
    cdef float[::1] gv = g.reshape(-1)
    cdef const float[::1] uv = u.reshape(-1)
    if g.size:
        c_swiglu(&gv[0], &uv[0], g.size)
    return g


def add(x, y):
    """x + y elementwise through the residual kernel (new array)."""
    a = np.array(x, dtype=np.float32)
    bb = np.ascontiguousarray(y, dtype=np.float32)
    if a.shape != bb.shape:
        raise ValueError(f"shapes {a.shape} and {bb.shape} differ")
    cdef float[::1] av = a.reshape(-1)
    cdef const float[::1] bv = bb.reshape(-1)
    if a.size:
        c_add_inplace(&av[0], &bv[0], a.size)
    return a


def attention(q, k_pool, v_pool, block_table, positions, int n_kv_heads, int threads=1, str kv_type="f32"):
    """Causal attention of T query rows of one sequence over its paged cache (layer 0).

    q: (T, n_heads*head_dim); k_pool/v_pool: (n_blocks, n_kv_heads, block_size, head row) as
    the cache stores them in `kv_type` (f32: the float32 values; others: kv_store_rows of
    them), each block's positions per KV head; block_table: (max_blocks,) int32; positions:
    (T,) int32.  Returns (T, n_heads*head_dim).
    """
    if kv_type not in KV_TYPES:
        raise ValueError(f"KV cache type {kv_type!r}, expected one of {', '.join(KV_TYPES)}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    k_pool = np.ascontiguousarray(k_pool, dtype=KV_TYPES[kv_type][1])
    v_pool = np.ascontiguousarray(v_pool, dtype=KV_TYPES[kv_type][1])
    block_table = np.ascontiguousarray(block_table, dtype=np.int32).reshape(1, -1)
    positions = np.ascontiguousarray(positions, dtype=np.int32)
    if q.ndim != 2 or q.shape[0] != positions.shape[0] or positions.ndim != 1:
        raise ValueError("q (T, n_heads*head_dim) and positions (T,) expected")
    if k_pool.ndim != 4 or k_pool.shape != v_pool.shape:
        raise ValueError("k_pool and v_pool: (n_blocks, n_kv_heads, block_size, head row) of one shape expected")
    if n_kv_heads < 1 or k_pool.shape[1] != n_kv_heads:
        raise ValueError(f"n_kv_heads = {n_kv_heads}, expected the pools' {k_pool.shape[1]}")
    n_blocks, block_size = k_pool.shape[0], k_pool.shape[2]
    width = k_pool.shape[3]
    if kv_type == "q8_0" and width % sizeof(xllm_block_q8_0):
        raise ValueError(f"KV cache type q8_0 needs head_dim a multiple of {XLLM_QK}: a head row of {width} "
                         f"bytes is not whole {sizeof(xllm_block_q8_0)}-byte blocks")
    head_dim = width // sizeof(xllm_block_q8_0) * XLLM_QK if kv_type == "q8_0" else width
    if head_dim < 1 or kv_row_elements(kv_type, head_dim) != width:
        raise ValueError(f"a head row of {width} {kv_type} elements holds no whole head")
    kv_dim = head_dim * n_kv_heads
    T = q.shape[0]
    if q.shape[1] % head_dim:
        raise ValueError(f"q width {q.shape[1]} is not a multiple of head_dim {head_dim}")
    n_heads = q.shape[1] // head_dim
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    for p in positions:
        if p < 0 or p // block_size >= block_table.shape[1]:
            raise ValueError(f"position {p} has no block")
        if np.any(block_table[0, :p // block_size + 1] < 0) or np.any(block_table[0, :p // block_size + 1] >= n_blocks):
            raise ValueError("block table refers to a block outside the pool")
    cdef Dims d
    cdef KVPool kv
    cdef Batch b
    d.head_dim = head_dim
    d.n_heads = n_heads
    d.n_kv_heads = n_kv_heads
    d.q_dim = q.shape[1]
    d.kv_dim = kv_dim
    _bind_kv_pool(&kv, kv_type, k_pool, v_pool, (), block_size, kv_dim, n_kv_heads)
    seq = np.zeros(T, dtype=np.int32)
    out = np.zeros_like(q)
    buffers = _Buffers()
    cdef Workspace *ws = &buffers.ws
    ws.n_threads = threads
    ws.att_per_thread = head_dim + max(4 * block_size, XLLM_GROUP_SCRATCH) + 16
    ws.att = <float *>buffers.alloc(threads * ws.att_per_thread * sizeof(float))
    ws.q = <float *><uintptr_t>q.__array_interface__["data"][0]
    ws.xb = <float *><uintptr_t>out.__array_interface__["data"][0]
    b.n_tokens = T
    b.pos = <const int32_t *><uintptr_t>positions.__array_interface__["data"][0]
    b.seq = <const int32_t *><uintptr_t>seq.__array_interface__["data"][0]
    b.blocks = <const int32_t *><uintptr_t>block_table.__array_interface__["data"][0]
    b.max_blocks = block_table.shape[1]
    if T:
        with nogil:
            c_attention(&d, &kv, 0, &b, ws)
    return out
