/* probe.h: micro-kernels that measure this machine's limits for the benchmarks.
 *
 *   xllm_probe_read      stream-sum a buffer with 256-bit loads, one stream or four per thread (read bandwidth)
 *   xllm_probe_fma       independent chains of fp32 FMAs on 256-bit or 512-bit vectors
 *   xllm_probe_int8      independent chains of maddubs + madd + add (the Q8_0 dot product's
 *                        integer core: 32 int8 multiply-adds per 256-bit maddubs), of VNNI
 *                        vpdpbusd on 256-bit or 512-bit vectors, of 512-bit maddubs + vpdpwssd
 *                        (the K-quant kernels' core), or AMX tdpbssd on full 16x64 tiles
 *   xllm_probe_amx_bf16  AMX tdpbf16ps on full tiles (16 x 32 bf16 pairs x 16)
 *
 * Each runs on `threads` OpenMP threads (each thread its own slice or its own chains) and
 * returns the wall time of the parallel region in seconds; the caller turns it into GB/s or
 * GFLOP/s.  AVX2/FMA versions are compiled through function-level `target` attributes (the
 * build has no -mavx2) and used only when the CPU has them; the scalar fallbacks keep the
 * module importable and the benchmarks honest on other CPUs (they measure what the scalar
 * kernels could reach).
 */
#ifndef XLLM_PROBE_H
#define XLLM_PROBE_H

#include <stdint.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XLLM_PROBE_X86 1
#define XLLM_PROBE_AVX2_FN __attribute__((target("avx2,fma"), noinline))
#else
#define XLLM_PROBE_X86 0
#endif

/* Keep the compiler from hoisting or folding work on a value it cannot see change. */
#if defined(__GNUC__)
#define XLLM_OPAQUE(v) __asm__ volatile("" : "+x"(v))
#define XLLM_OPAQUE_SCALAR(v) __asm__ volatile("" : "+r"(v))
#else
#define XLLM_OPAQUE(v) ((void)0)
#define XLLM_OPAQUE_SCALAR(v) ((void)0)
#endif

static double xllm_probe_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int xllm_probe_has_avx2(void) {
#if XLLM_PROBE_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int xllm_probe_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ------------------------------------------------------------------ read bandwidth */

/* Sum of floats [0, n): scalar, 8 independent partial sums. */
static float xllm_probe_sum_scalar(const float *p, size_t n) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += p[i + j];
    for (; i < n; i++) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

#if XLLM_PROBE_X86
/* Sum with 256-bit loads, 8 accumulators (two cache lines per iteration); p 32-byte aligned. */
XLLM_PROBE_AVX2_FN static float xllm_probe_sum_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(),
           a6 = _mm256_setzero_ps(), a7 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
        a4 = _mm256_add_ps(a4, _mm256_load_ps(p + i + 32));
        a5 = _mm256_add_ps(a5, _mm256_load_ps(p + i + 40));
        a6 = _mm256_add_ps(a6, _mm256_load_ps(p + i + 48));
        a7 = _mm256_add_ps(a7, _mm256_load_ps(p + i + 56));
    }
    a0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    a4 = _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7));
    a0 = _mm256_add_ps(a0, a4);
    float lanes[8];
    _mm256_storeu_ps(lanes, a0);
    float s = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
    for (; i < n; i++) s += p[i];
    return s;
}

/* The same sum over 4 streams side by side (the quarters of [0, n), each prefetched 2 KB
 * ahead), as the 4-panel decode kernels read their weights: on the Intel Xeon one thread
 * read 7 GB/s from one stream and 12-14 GB/s from four.  n a multiple of 256, p 32-byte aligned. */
XLLM_PROBE_AVX2_FN static float xllm_probe_sum4_avx2(const float *p, size_t n) {
    __m256 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    const size_t q = n / 4;
    for (size_t i = 0; i < q; i += 16)
        for (int s = 0; s < 4; s++) {
            const float *r = p + s * q + i;
            _mm_prefetch((const char *)r + 2048, _MM_HINT_T0);
            a[2 * s] = _mm256_add_ps(a[2 * s], _mm256_load_ps(r));
            a[2 * s + 1] = _mm256_add_ps(a[2 * s + 1], _mm256_load_ps(r + 8));
        }
    for (int j = 1; j < 8; j++) a[0] = _mm256_add_ps(a[0], a[j]);
    float lanes[8];
    _mm256_storeu_ps(lanes, a[0]);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}
#endif

/* This OpenMP thread's slice of [0, n): equal parts (multiples of 64), the last takes the rest. */
static void xllm_probe_slice(size_t n, size_t *start, size_t *len) {
    int nt = 1, id = 0;
#ifdef _OPENMP
    nt = omp_get_num_threads();
    id = omp_get_thread_num();
#endif
    size_t per = (n / (size_t)nt) & ~(size_t)63;
    *start = per * (size_t)id;
    *len = id == nt - 1 ? n - *start : per;
}

/* One pass over buf[0, n) split evenly across `threads`; returns seconds, *sum the total
 * (so the loads cannot be dropped).  n should be a multiple of 64 * threads. */
static double xllm_probe_read(const float *buf, size_t n, int threads, int use_avx2, int streams, double *sum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
        size_t start, len;
        xllm_probe_slice(n, &start, &len);
#if XLLM_PROBE_X86
        if (use_avx2 && streams == 4 && len % 256 == 0)
            total += xllm_probe_sum4_avx2(buf + start, len);
        else if (use_avx2)
            total += xllm_probe_sum_avx2(buf + start, len);
        else
#endif
            total += xllm_probe_sum_scalar(buf + start, len);
    }
    double t1 = xllm_probe_now();
    *sum = total;
    return t1 - t0;
}

/* Fill buf with ones, each thread its own slice (first touch places the pages). */
static void xllm_probe_fill(float *buf, size_t n, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        size_t start, len;
        xllm_probe_slice(n, &start, &len);
        for (size_t i = 0; i < len; i++) buf[start + i] = 1.0f;
    }
}

/* ------------------------------------------------------------------ fp32 FMA peak */

#define XLLM_PROBE_FMA_CHAINS 12      /* 2 FMA pipes x 4-5 cycles latency: >= 10 chains in flight */

/* Per thread: iters x 12 chains x 8 lanes FMAs.  Returns one thread's checksum. */
static float xllm_probe_fma_scalar(long iters) {
    float a[XLLM_PROBE_FMA_CHAINS];
    const float m = 0.999999f, c = 1e-6f;
    for (int j = 0; j < XLLM_PROBE_FMA_CHAINS; j++) a[j] = (float)j;
    for (long i = 0; i < iters; i++)
        for (int l = 0; l < 8; l++)
            for (int j = 0; j < XLLM_PROBE_FMA_CHAINS; j++) a[j] = a[j] * m + c;
    float s = 0;
    for (int j = 0; j < XLLM_PROBE_FMA_CHAINS; j++) s += a[j];
    return s;
}

#if XLLM_PROBE_X86
XLLM_PROBE_AVX2_FN static float xllm_probe_fma_avx2(long iters) {
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f),
           a3 = _mm256_set1_ps(3.f), a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f),
           a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f), a8 = _mm256_set1_ps(8.f),
           a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, m, c);   a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c);   a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c);   a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c);   a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c);   a9 = _mm256_fmadd_ps(a9, m, c);
        a10 = _mm256_fmadd_ps(a10, m, c); a11 = _mm256_fmadd_ps(a11, m, c);
    }
    a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                       _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    a0 = _mm256_add_ps(a0, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float lanes[8];
    _mm256_storeu_ps(lanes, a0);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}
#endif

#if XLLM_PROBE_X86
#define XLLM_PROBE_AVX512_FN __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"), noinline))

/* The same 12 chains on 512-bit registers (16 lanes): what the avx512 float GEMM tiles use. */
XLLM_PROBE_AVX512_FN static float xllm_probe_fma_avx512(long iters) {
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    __m512 a0 = _mm512_set1_ps(0.f), a1 = _mm512_set1_ps(1.f), a2 = _mm512_set1_ps(2.f),
           a3 = _mm512_set1_ps(3.f), a4 = _mm512_set1_ps(4.f), a5 = _mm512_set1_ps(5.f),
           a6 = _mm512_set1_ps(6.f), a7 = _mm512_set1_ps(7.f), a8 = _mm512_set1_ps(8.f),
           a9 = _mm512_set1_ps(9.f), a10 = _mm512_set1_ps(10.f), a11 = _mm512_set1_ps(11.f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm512_fmadd_ps(a0, m, c);   a1 = _mm512_fmadd_ps(a1, m, c);
        a2 = _mm512_fmadd_ps(a2, m, c);   a3 = _mm512_fmadd_ps(a3, m, c);
        a4 = _mm512_fmadd_ps(a4, m, c);   a5 = _mm512_fmadd_ps(a5, m, c);
        a6 = _mm512_fmadd_ps(a6, m, c);   a7 = _mm512_fmadd_ps(a7, m, c);
        a8 = _mm512_fmadd_ps(a8, m, c);   a9 = _mm512_fmadd_ps(a9, m, c);
        a10 = _mm512_fmadd_ps(a10, m, c); a11 = _mm512_fmadd_ps(a11, m, c);
    }
    a0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                       _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    a0 = _mm512_add_ps(a0, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(a0);
}
#endif

static int xllm_probe_has_avx512(void) {
#if XLLM_PROBE_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return xllm_probe_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* Every thread runs `iters` iterations of 12 independent FMA chains of `lanes` lanes (8:
 * AVX2, 16: AVX-512, callers check the CPU; anything else: the scalar loop of 8 lanes), so
 * 12 * lanes * 2 flops per iteration per thread.  Returns seconds. */
static double xllm_probe_fma(long iters, int threads, int lanes, double *checksum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
#if XLLM_PROBE_X86
        if (lanes == 16)
            total += xllm_probe_fma_avx512(iters);
        else if (lanes == 8)
            total += xllm_probe_fma_avx2(iters);
        else
#endif
            total += xllm_probe_fma_scalar(iters);
    }
    double t1 = xllm_probe_now();
    *checksum = total;
    return t1 - t0;
}

/* ------------------------------------------------------------------ int8 multiply-add */

#define XLLM_PROBE_INT8_CHAINS 6

static int32_t xllm_probe_int8_scalar(long iters) {
    uint8_t a[32];
    int8_t b[32];
    int32_t acc[XLLM_PROBE_INT8_CHAINS] = {0};
    for (int j = 0; j < 32; j++) { a[j] = (uint8_t)(j * 7 + 1); b[j] = (int8_t)(j - 16); }
    for (long i = 0; i < iters; i++) {
        for (int c = 0; c < XLLM_PROBE_INT8_CHAINS; c++) {
            int32_t s = 0;
            for (int j = 0; j < 32; j++) s += (int32_t)a[j] * (int32_t)b[j];
            acc[c] += s;
        }
        XLLM_OPAQUE_SCALAR(acc[0]);
    }
    int32_t s = 0;
    for (int c = 0; c < XLLM_PROBE_INT8_CHAINS; c++) s += acc[c];
    return s;
}

#if XLLM_PROBE_X86 && defined(__GNUC__)
/* Per iteration and chain: vpmaddubsw (32 u8 x s8 products, pairwise-added to 16 int16),
 * vpmaddwd with ones (pairs to 8 int32), vpaddd into the chain's accumulator: 32
 * multiply-adds, the integer core of the Q8_0 dot product.  Written as one asm block so the
 * compiler can neither hoist the (loop-invariant) products nor spill the accumulators; 6
 * chains cover the multiply latency (2 pipes x 3 cycles). */
#define XLLM_PROBE_I8_STEP(t, c)                              \
    "vpmaddubsw %[b], %[x], %[" #t "]\n\t"                    \
    "vpmaddwd %[ones], %[" #t "], %[" #t "]\n\t"              \
    "vpaddd %[" #t "], %[" #c "], %[" #c "]\n\t"

XLLM_PROBE_AVX2_FN static int32_t xllm_probe_int8_avx2(long iters) {
    __m256i ones = _mm256_set1_epi16(1);
    __m256i b = _mm256_set1_epi8(3);
    __m256i x = _mm256_set1_epi8(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    __m256i t0, t1, t2, t3, t4, t5;
    for (long i = 0; i < iters; i++) {
        __asm__ volatile(
            XLLM_PROBE_I8_STEP(t0, c0) XLLM_PROBE_I8_STEP(t1, c1) XLLM_PROBE_I8_STEP(t2, c2)
            XLLM_PROBE_I8_STEP(t3, c3) XLLM_PROBE_I8_STEP(t4, c4) XLLM_PROBE_I8_STEP(t5, c5)
            : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3), [c4] "+x"(c4),
              [c5] "+x"(c5), [t0] "=&x"(t0), [t1] "=&x"(t1), [t2] "=&x"(t2), [t3] "=&x"(t3),
              [t4] "=&x"(t4), [t5] "=&x"(t5)
            : [x] "x"(x), [b] "x"(b), [ones] "x"(ones));
    }
    c0 = _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3));
    c0 = _mm256_add_epi32(c0, _mm256_add_epi32(c4, c5));
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, c0);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}

/* The same 32 multiply-adds per instruction with AVX-512 VNNI's vpdpbusd on 256-bit
 * registers (u8 x s8 products summed in fours straight into int32): what a VNNI Q8_0 kernel
 * could reach.  Only called when the CPU has avx512vnni + avx512vl. */
#define XLLM_PROBE_VNNI_STEP(c) "vpdpbusd %[b], %[x], %[" #c "]\n\t"

__attribute__((target("avx2,avx512f,avx512vl,avx512vnni"), noinline))
static int32_t xllm_probe_vnni_avx512(long iters) {
    __m256i b = _mm256_set1_epi8(3);
    __m256i x = _mm256_set1_epi8(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
            c6 = c0, c7 = c0, c8 = c0, c9 = c0;
    for (long i = 0; i < iters; i++) {
        __asm__ volatile(
            XLLM_PROBE_VNNI_STEP(c0) XLLM_PROBE_VNNI_STEP(c1) XLLM_PROBE_VNNI_STEP(c2)
            XLLM_PROBE_VNNI_STEP(c3) XLLM_PROBE_VNNI_STEP(c4) XLLM_PROBE_VNNI_STEP(c5)
            XLLM_PROBE_VNNI_STEP(c6) XLLM_PROBE_VNNI_STEP(c7) XLLM_PROBE_VNNI_STEP(c8)
            XLLM_PROBE_VNNI_STEP(c9)
            : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4),
              [c5] "+v"(c5), [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9)
            : [x] "v"(x), [b] "v"(b));
    }
    c0 = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                          _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)));
    c0 = _mm256_add_epi32(c0, _mm256_add_epi32(c8, c9));
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, c0);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}
/* vpdpbusd on 512-bit registers: 64 multiply-adds per instruction. */
#define XLLM_PROBE_ZMM_CHAINS(STEP)                                                                  \
    __m512i b = _mm512_set1_epi8(3);                                                                 \
    __m512i x = _mm512_set1_epi8(1);                                                                 \
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,               \
            c6 = c0, c7 = c0, c8 = c0, c9 = c0;                                                      \
    for (long i = 0; i < iters; i++) {                                                               \
        __asm__ volatile(                                                                            \
            STEP(c0) STEP(c1) STEP(c2) STEP(c3) STEP(c4) STEP(c5) STEP(c6) STEP(c7) STEP(c8) STEP(c9) \
            : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4),           \
              [c5] "+v"(c5), [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9)            \
            : [x] "v"(x), [b] "v"(b) : "xmm31");                                                     \
    }                                                                                                \
    c0 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),      \
                          _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));     \
    c0 = _mm512_add_epi32(c0, _mm512_add_epi32(c8, c9));                                             \
    return _mm512_reduce_add_epi32(c0);

XLLM_PROBE_AVX512_FN static int32_t xllm_probe_vnni512(long iters) {
    XLLM_PROBE_ZMM_CHAINS(XLLM_PROBE_VNNI_STEP)
}

/* The K-quant kernels' avx512 core: vpmaddubsw (64 u8 x s8 products, pairs to int16) then
 * vpdpwssd (int16 pairs times the scales into int32): 64 multiply-adds per pair of
 * instructions.  The temporary is per chain, so the chains stay independent. */
#define XLLM_PROBE_KQ_STEP(c) "vpmaddubsw %[b], %[x], %%zmm31\n\tvpdpwssd %[x], %%zmm31, %[" #c "]\n\t"

XLLM_PROBE_AVX512_FN static int32_t xllm_probe_maddubs512_body(long iters) {
    XLLM_PROBE_ZMM_CHAINS(XLLM_PROBE_KQ_STEP)
}
#define XLLM_PROBE_VNNI_CHAINS 10
#else
#define XLLM_PROBE_VNNI_CHAINS 10
#endif

static int xllm_probe_has_vnni(void) {
#if XLLM_PROBE_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ AMX tiles */

#if XLLM_PROBE_X86 && defined(__linux__) && defined(__GNUC__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define XLLM_PROBE_AMX 1
#else
#define XLLM_PROBE_AMX 0
#endif

/* AMX-TILE plus AMX-INT8 (bf16: AMX-BF16) in CPUID leaf 7, and Linux's permission for the
 * tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). */
static int xllm_probe_has_amx(int bf16) {
#if XLLM_PROBE_AMX
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> (bf16 ? 22 : 25)) & 1))
        return 0;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    (void)bf16;
    return 0;
#endif
}

#if XLLM_PROBE_AMX
typedef struct __attribute__((aligned(64))) {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} xllm_probe_tilecfg;

/* Four independent full-tile products per iteration (C tmm0-3 += A tmm4/5 . B tmm6/7: 16 x 64
 * bytes times 16 x 64 bytes), so the tile unit never waits on a result.  bf16: tdpbf16ps,
 * 16 x 16 x 32 bf16 multiply-adds per instruction; else tdpbssd, 16 x 16 x 64 int8. */
static double xllm_probe_amx_body(long iters, int bf16) {
    static const uint8_t ones[16 * 64] __attribute__((aligned(64))) = {0};
    int32_t out[16 * 16] __attribute__((aligned(64)));
    xllm_probe_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");   /* the whole 64 bytes (GCC 12, see simd_amx.h) */
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm4\n\ttileloadd (%0,%1,1), %%tmm5\n\t"
                     "tileloadd (%0,%1,1), %%tmm6\n\ttileloadd (%0,%1,1), %%tmm7\n\t"
                     "tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3"
                     : : "r"(ones), "r"(64L) : "memory");
    if (bf16)
        for (long i = 0; i < iters; i++)
            __asm__ volatile("tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\ttdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
                             "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\ttdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::);
    else
        for (long i = 0; i < iters; i++)
            __asm__ volatile("tdpbssd %%tmm6, %%tmm4, %%tmm0\n\ttdpbssd %%tmm7, %%tmm4, %%tmm1\n\t"
                             "tdpbssd %%tmm6, %%tmm5, %%tmm2\n\ttdpbssd %%tmm7, %%tmm5, %%tmm3" ::);
    __asm__ volatile("tilestored %%tmm0, (%0,%1,1)\n\ttilerelease" : : "r"(out), "r"(64L) : "memory");
    return (double)out[0];
}
#endif

/* AMX bf16 peak: every thread runs iters x 4 tdpbf16ps (16 x 16 x 32 FMAs each); caller
 * checks xllm_probe_has_amx(1).  Returns seconds. */
static double xllm_probe_amx_bf16(long iters, int threads, double *checksum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
#if XLLM_PROBE_AMX
        total += xllm_probe_amx_body(iters, 1);
#endif
    }
    double t1 = xllm_probe_now();
    *checksum = total;
    return t1 - t0;
}

/* Every thread: iters iterations of method 0: 6 chains of maddubs + madd + add (AVX2, 32
 * multiply-adds each), 1: 10 chains of 256-bit vpdpbusd (32), 2: 10 chains of 512-bit
 * vpdpbusd (64), 3: 10 chains of 512-bit maddubs + vpdpwssd (64), 4: 4 AMX tdpbssd
 * (16 x 16 x 64 each).  Callers check the CPU.  Returns seconds. */
static double xllm_probe_int8(long iters, int threads, int use_avx2, int method, double *checksum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
#if XLLM_PROBE_AMX
        if (method == 4)
            total += xllm_probe_amx_body(iters, 0);
        else
#endif
#if XLLM_PROBE_X86 && defined(__GNUC__)
        if (method == 1)
            total += (double)xllm_probe_vnni_avx512(iters);
        else if (method == 2)
            total += (double)xllm_probe_vnni512(iters);
        else if (method == 3)
            total += (double)xllm_probe_maddubs512_body(iters);
        else if (use_avx2)
            total += (double)xllm_probe_int8_avx2(iters);
        else
#endif
            total += (double)xllm_probe_int8_scalar(iters);
    }
    double t1 = xllm_probe_now();
    *checksum = total;
    return t1 - t0;
}

#endif /* XLLM_PROBE_H */
