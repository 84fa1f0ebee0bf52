/* probe.h: micro-kernels that measure this machine's limits for the benchmarks.
 *
 *   xllm_probe_read      stream-sum a buffer with 256-bit loads (read bandwidth)
 *   xllm_probe_fma       independent chains of _mm256_fmadd_ps (fp32 FMA peak)
 *   xllm_probe_int8      independent chains of maddubs + madd + add (the Q8_0 dot product's
 *                        integer core: 32 int8 multiply-adds per 256-bit maddubs)
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
static double xllm_probe_read(const float *buf, size_t n, int threads, int use_avx2, double *sum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
        size_t start, len;
        xllm_probe_slice(n, &start, &len);
#if XLLM_PROBE_X86
        if (use_avx2)
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

/* Every thread runs `iters` iterations of 12 independent 8-lane FMA chains
 * (12 * 8 * 2 = 192 flops per iteration per thread).  Returns seconds. */
static double xllm_probe_fma(long iters, int threads, int use_avx2, double *checksum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
#if XLLM_PROBE_X86
        if (use_avx2)
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

/* Every thread: iters x chains x 32 int8 multiply-adds (2 ops each).  method 0: maddubs +
 * madd + add (AVX2), 1: vpdpbusd (AVX-512 VNNI, 256-bit; caller checks has_vnni).  Returns
 * seconds. */
static double xllm_probe_int8(long iters, int threads, int use_avx2, int method, double *checksum) {
    double total = 0.0;
    double t0 = xllm_probe_now();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
#if XLLM_PROBE_X86 && defined(__GNUC__)
        if (method == 1)
            total += (double)xllm_probe_vnni_avx512(iters);
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
