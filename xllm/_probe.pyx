# cython: language_level=3
"""Machine-limit probes for the benchmarks (read bandwidth, FMA and int8 throughput).

The kernels are in probe.h (C with OpenMP and AVX2/FMA through `target` attributes, chosen at
run time).  Each function here runs a probe several times on `threads` threads and returns
the per-run figures; xllm.benchmark takes medians and turns them into the roofline limits.

    read_bandwidth(nbytes=1 << 30, threads=2, passes=5) -> [GB/s per pass]
    fma_peak(threads=2, iters=..., repeats=5, simd=None) -> [GFLOP/s per run] (2 per FMA lane;
                                                            widest vectors unless simd says)
    int8_peak(threads=2, iters=..., repeats=5, method=)  -> [GOP/s per run] (2 per int8 multiply-add;
                                                            maddubs, vnni, vnni512, maddubs512, amx)
    amx_bf16_peak(threads=2, iters=..., repeats=5)       -> [GFLOP/s per run] (AMX tdpbf16ps)
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uintptr_t

cnp.import_array()

cdef extern from "probe.h" nogil:
    int xllm_probe_has_avx2()
    int xllm_probe_max_threads()
    double xllm_probe_read(const float *buf, size_t n, int threads, int use_avx2, int streams, double *sum)
    void xllm_probe_fill(float *buf, size_t n, int threads)
    double xllm_probe_fma(long iters, int threads, int lanes, double *checksum)
    double xllm_probe_int8(long iters, int threads, int use_avx2, int method, double *checksum)
    double xllm_probe_amx_bf16(long iters, int threads, double *checksum)
    int xllm_probe_has_vnni()
    int xllm_probe_has_avx512()
    int xllm_probe_has_amx(int bf16)
    int XLLM_PROBE_FMA_CHAINS
    int XLLM_PROBE_INT8_CHAINS
    int XLLM_PROBE_VNNI_CHAINS


def has_avx2():
    """True when the probes run their AVX2/FMA versions on this CPU."""
    return bool(xllm_probe_has_avx2())


def has_vnni():
    """True when the CPU has AVX-512 VNNI on 256-bit registers (vpdpbusd ymm)."""
    return bool(xllm_probe_has_vnni())


def has_avx512():
    """True when the CPU has AVX-512 F/BW/VL (the 512-bit FMA probe runs)."""
    return bool(xllm_probe_has_avx512())


def has_amx(bf16=False):
    """True when the CPU has AMX int8 (bf16=True: AMX bf16) tiles and Linux lets this process
    use them."""
    return bool(xllm_probe_has_amx(1 if bf16 else 0))


def max_threads():
    """OpenMP's default team size (1 when built without OpenMP)."""
    return xllm_probe_max_threads()


cdef int _use_avx2(simd) except -1:
    if simd is None or simd == "avx2":
        return xllm_probe_has_avx2()
    if simd == "scalar":
        return 0
    raise ValueError(f"simd = {simd!r}, expected 'avx2', 'scalar' or None")


cdef int _check(int threads, int repeats) except -1:
    if threads < 1:
        raise ValueError(f"threads = {threads}, expected >= 1")
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}, expected >= 1")
    return 0


cdef extern from "sys/mman.h" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_HUGEPAGE, MADV_NOHUGEPAGE
    void *MAP_FAILED


def read_bandwidth(size_t nbytes=1 << 30, int threads=1, int passes=5, simd=None, hugepages=True):
    """Read bandwidth in GB/s (1e9 bytes/s) of each of `passes` stream-sums over a buffer of
    `nbytes` (make it much larger than the last-level cache), after one warm-up pass.  Each
    pass reads the buffer twice, each thread's slice as one stream and as four prefetched
    streams side by side (the two ways the decode kernels read weights), and keeps the faster.

    The buffer is anonymous memory advised to use transparent huge pages (hugepages=True, the
    best case) or 4 KiB pages (False: like a memory-mapped model file in the page cache)."""
    _check(threads, passes)
    cdef int avx2 = _use_avx2(simd)
    cdef size_t n = (nbytes // 4) // <size_t>(64 * threads) * <size_t>(64 * threads)
    if n < <size_t>(64 * threads):
        raise ValueError(f"nbytes = {nbytes}, expected at least {256 * threads}")
    cdef size_t length = n * 4
    cdef void *mem = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if mem == MAP_FAILED:
        raise MemoryError(f"cannot map {length} bytes for the bandwidth probe")
    madvise(mem, length, MADV_HUGEPAGE if hugepages else MADV_NOHUGEPAGE)   # advice only
    cdef float *buf = <float *>mem
    cdef double secs, total
    cdef int streams
    out = []
    try:
        with nogil:
            xllm_probe_fill(buf, n, threads)
            xllm_probe_read(buf, n, threads, avx2, 1, &total)   # warm-up (page tables, TLB)
        for _ in range(passes):
            best = 0.0
            for streams in (1, 4):
                with nogil:
                    secs = xllm_probe_read(buf, n, threads, avx2, streams, &total)
                if total != <double>n:                          # every float is 1.0: all were read
                    raise RuntimeError(f"read probe summed {total} over {streams} streams, expected {n}")
                best = max(best, n * 4.0 / secs / 1e9)
            out.append(best)
    finally:
        munmap(mem, length)
    return out


def fma_peak(int threads=1, long iters=20_000_000, int repeats=5, simd=None):
    """fp32 FMA throughput in GFLOP/s (2 flops per lane per FMA) of each of `repeats` runs:
    every thread runs `iters` x 12 independent FMA chains on the widest vectors the CPU has
    (simd=None), or on 512-bit ("avx512"), 256-bit ("avx2") vectors or scalar code."""
    _check(threads, repeats)
    if iters < 1:
        raise ValueError(f"iters = {iters}, expected >= 1")
    if simd is None:
        simd = "avx512" if xllm_probe_has_avx512() else "avx2"
    cdef int lanes
    if simd == "avx512":
        if not xllm_probe_has_avx512():
            raise ValueError("simd 'avx512': this CPU has no AVX-512")
        lanes = 16
    else:
        lanes = 8 if _use_avx2(simd) else 0
    cdef double secs, checksum
    cdef double flops = <double>iters * XLLM_PROBE_FMA_CHAINS * (16 if lanes == 16 else 8) * 2 * threads
    with nogil:
        xllm_probe_fma(iters // 10 + 1, threads, lanes, &checksum)   # warm-up (clocks up)
    out = []
    for _ in range(repeats):
        with nogil:
            secs = xllm_probe_fma(iters, threads, lanes, &checksum)
        if checksum != checksum:
            raise RuntimeError("FMA probe produced NaN")
        out.append(flops / secs / 1e9)
    return out


def int8_peak(int threads=1, long iters=20_000_000, int repeats=5, simd=None, method="maddubs"):
    """int8 multiply-add throughput in GOP/s (2 ops per multiply-add) of each of `repeats`
    runs, per `method` (every one but "maddubs" raises ValueError when the CPU lacks it):
      "maddubs"     `iters` x 6 independent chains of maddubs + madd + add, each 32 u8 x s8
                    multiply-adds (the Q8_0 dot product's integer core, AVX2; simd="scalar":
                    the scalar loop)
      "vnni"        `iters` x 10 chains of AVX-512 VNNI vpdpbusd on 256-bit registers (32 each:
                    the avx512 level's Q8_0/Q4_0 kernels)
      "vnni512"     the same on 512-bit registers (64 each)
      "maddubs512"  `iters` x 10 chains of 512-bit maddubs + vpdpwssd (64 each: the avx512
                    K-quant kernels' core)
      "amx"         `iters` / 16 x 4 independent AMX tdpbssd on full 16 x 64 tiles (16 x 16 x 64
                    each)"""
    _check(threads, repeats)
    if iters < 1:
        raise ValueError(f"iters = {iters}, expected >= 1")
    cdef int avx2 = _use_avx2(simd)
    cdef int m
    cdef double per_iter                     # multiply-adds per iteration and thread
    if method == "maddubs":
        m, per_iter = 0, XLLM_PROBE_INT8_CHAINS * 32
    elif method in ("vnni", "vnni512", "maddubs512"):
        if not xllm_probe_has_vnni():
            raise ValueError(f"method {method!r}: this CPU has no AVX-512 VNNI (avx512vnni + avx512vl)")
        m, per_iter = {"vnni": (1, 32), "vnni512": (2, 64), "maddubs512": (3, 64)}[method]
        per_iter *= XLLM_PROBE_VNNI_CHAINS
    elif method == "amx":
        if not xllm_probe_has_amx(0):
            raise ValueError("method 'amx': this CPU (or kernel) gives no AMX int8 tiles")
        m, per_iter = 4, 4 * 16 * 16 * 64
        iters = max(1, iters // 16)
    else:
        raise ValueError(f"method = {method!r}, expected 'maddubs', 'vnni', 'vnni512', 'maddubs512' or 'amx'")
    cdef double secs, checksum
    cdef double ops = <double>iters * per_iter * 2 * threads
    with nogil:
        xllm_probe_int8(iters // 10 + 1, threads, avx2, m, &checksum)
    out = []
    for _ in range(repeats):
        with nogil:
            secs = xllm_probe_int8(iters, threads, avx2, m, &checksum)
        out.append(ops / secs / 1e9)
    return out


def amx_bf16_peak(int threads=1, long iters=20_000_000, int repeats=5):
    """AMX bf16 throughput in GFLOP/s (2 flops per multiply-add) of each of `repeats` runs:
    every thread runs `iters` / 16 x 4 independent tdpbf16ps on full tiles (16 x 16 x 32 each).
    ValueError when the CPU lacks AMX-BF16."""
    _check(threads, repeats)
    if iters < 1:
        raise ValueError(f"iters = {iters}, expected >= 1")
    if not xllm_probe_has_amx(1):
        raise ValueError("this CPU (or kernel) gives no AMX bf16 tiles")
    iters = max(1, iters // 16)
    cdef double secs, checksum
    cdef double flops = <double>iters * 4 * 16 * 16 * 32 * 2 * threads
    with nogil:
        xllm_probe_amx_bf16(iters // 10 + 1, threads, &checksum)
    out = []
    for _ in range(repeats):
        with nogil:
            secs = xllm_probe_amx_bf16(iters, threads, &checksum)
        out.append(flops / secs / 1e9)
    return out
