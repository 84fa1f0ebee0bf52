/* simd.h: the innermost loops of xllm, with AVX2/FMA versions chosen at run time.
 *
 * Every kernel has a portable scalar version and, on x86-64, an AVX2+FMA+F16C version
 * compiled through a function-level `target` attribute, so the extension builds without
 * -mavx2 and never executes an AVX2 instruction on a CPU without it.  `xllm_simd_level`
 * selects the path (set once from CPUID; tests flip it to exercise both).
 *
 * Matmul micro-kernels work on tiles of (rows x tokens).  F32/F16 tiles keep, for every
 * (row, token) pair, 8 float lanes of partial sums in a caller-provided buffer
 * `acc[t][r][8]` (`*_finish` reduces them once, at the end); Q8_0/Q4_0 tiles keep one float
 * per pair, fed one exact int32 block sum at a time.  A dot product is therefore the same
 * sequence of floating-point operations whatever the tile shape, the k-chunking, the number
 * of tokens in the batch or the thread that computes it: a sequence decoded alone and
 * inside a batch gives bit-identical logits.
 */
#ifndef XLLM_SIMD_H
#define XLLM_SIMD_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>    /* getenv */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XLLM_X86 1
#define XLLM_AVX2_FN __attribute__((target("avx2,fma,f16c")))
#else
#define XLLM_X86 0
#endif

/* ------------------------------------------------------------------ dispatch */

/* Levels, each a superset of the one before: AVX512 adds VNNI int8 dot products
 * (vpdpbusd, 256-bit) to the quantized kernels, AVX-512VL's 32 registers to both and 512-bit
 * float GEMM tiles (simd_avx512.h; the lane layout stays that of AVX2).  AMX is the avx512
 * level plus AMX int8 tiles for multi-token Q8_0/Q4_0 matmuls (simd_amx.h): asking for it
 * sets xllm_simd_level to AVX512 and xllm_amx to 1, so every other kernel runs as at avx512. */
enum { XLLM_SIMD_SCALAR = 0, XLLM_SIMD_AVX2 = 1, XLLM_SIMD_AVX512 = 2, XLLM_SIMD_AMX = 3 };
static int xllm_simd_level = XLLM_SIMD_SCALAR;
static int xllm_amx = 0;

#if XLLM_X86
#define XLLM_AVX512_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
/* acc += u . (the 4 bytes at p, broadcast): vpdpbusd with the broadcast folded into its memory
 * operand ({1to16}).  GCC keeps _mm512_set1_epi32 of a load as a separate vpbroadcastd, one
 * instruction more per vpdpbusd in loops that are nothing but these (a 16-sequence TinyLlama
 * Q8_0 batch: 212 -> 225 tok/s).  Likewise vpdpwssd with a broadcast pair of int16. */
#define XLLM_DPBUSD512_BCAST(acc, u, p) \
    __asm__("vpdpbusd %[m]%{1to16%}, %[w], %[a]" : [a] "+v"(acc) : [w] "v"(u), [m] "m"(*(const int32_t *)(const void *)(p)))

#define XLLM_DPWSSD512_BCAST(acc, u, p) \
    __asm__("vpdpwssd %[m]%{1to16%}, %[w], %[a]" : [a] "+v"(acc) : [w] "v"(u), [m] "m"(*(const int32_t *)(const void *)(p)))

#endif

static int xllm_cpu_has_avx2(void) {
#if XLLM_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static int xllm_cpu_has_avx512vnni(void) {
#if XLLM_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return xllm_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

#if XLLM_X86 && defined(__linux__) && defined(__GNUC__)
#define XLLM_AMX_CODE 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define XLLM_AMX_CODE 0
#endif

/* AMX-TILE and AMX-INT8 (CPUID leaf 7: EDX bits 24, 25) with AVX-512 VNNI, and Linux's
 * permission for this process to use the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XFEATURE_XTILEDATA; without it the first tile instruction faults).  Asked once. */
static int xllm_cpu_has_amx(void) {
#if XLLM_AMX_CODE
    static int known = -1;
    if (known < 0) {
        unsigned a, b, c, d;
        known = 0;
        if (xllm_cpu_has_avx512vnni() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 1) &&
            ((d >> 25) & 1))
            known = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    }
    return known;
#else
    return 0;
#endif
}

/* Select a path: the highest level <= `level` this CPU has; returns the level in force
 * (XLLM_SIMD_AMX when the AMX tiles are on). */
static int xllm_set_simd_level(int level) {
    xllm_amx = level >= XLLM_SIMD_AMX && xllm_cpu_has_amx();
    if (level >= XLLM_SIMD_AVX512 && xllm_cpu_has_avx512vnni()) xllm_simd_level = XLLM_SIMD_AVX512;
    else if (level >= XLLM_SIMD_AVX2 && xllm_cpu_has_avx2()) xllm_simd_level = XLLM_SIMD_AVX2;
    else xllm_simd_level = XLLM_SIMD_SCALAR;
    return xllm_amx ? XLLM_SIMD_AMX : xllm_simd_level;
}

/* The level in force, as xllm_set_simd_level returns it. */
static inline int xllm_simd_level_now(void) { return xllm_amx ? XLLM_SIMD_AMX : xllm_simd_level; }

/* One-token matmuls (decode) stream their weights faster from several prefetched streams
 * per thread on some CPUs and from one on others.  On the Intel Xeon (Sapphire Rapids class)
 * one thread's Q8_0 GEMV read 8.3-9.6 GB/s from one panel stream and 11-13 GB/s from four
 * prefetched ones (two threads 15-17 -> 22-26 GB/s); on Zen 4 one stream was measured faster
 * than two (31-34 vs 24-30 GB/s), so AMD CPUs keep one.  xllm_gemv_streams: 4 (several
 * streams) or 1, chosen once from the CPU's vendor; XLLM_GEMV_PANELS=1 or 4 in the
 * environment overrides it, and the tests set it (the results are the same bits). */
static int xllm_gemv_streams = -1;          /* -1: not chosen yet */

static int xllm_gemv_choose_streams(void) {
    const char *env = getenv("XLLM_GEMV_PANELS");
    if (env && (env[0] == '1' || env[0] == '4') && env[1] == 0) return env[0] - '0';
#if XLLM_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") ? 4 : 1;
#else
    return 1;
#endif
}

static inline int xllm_gemv_multi_stream(void) {
    if (xllm_gemv_streams < 0) xllm_gemv_streams = xllm_gemv_choose_streams();
    return xllm_gemv_streams > 1;
}

/* One-token matmuls at avx2 (Q8_0/Q4_0 panels and the K-quant panels) fetch their one
 * stream this far ahead in software.  On the Zen 1 VM (AVX2 only) the weight loads and the
 * arithmetic did not overlap without it: TinyLlama decode, 5 alternated runs each, Q8_0
 * 11.2-11.9 -> 12.0-13.4 tok/s, Q4_0 16.8-18.2 -> 18.0-19.9; K-quant GEMV, 2 threads from
 * memory, 16384 x 2048: Q4_K 17.6 -> 21 GMAC/s, Q5_K 11.5 -> 15.5, Q6_K 11 -> 12.5 (4 KB
 * and 16 KB ahead were slower than 8 KB). */
#define XLLM_GEMV_PREFETCH_AVX2 8192

/* ------------------------------------------------------------------ fp16 */

static inline float xllm_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {                                   /* subnormal: normalize */
            int e = -1;
            do { mant <<= 1; e++; } while ((mant & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);  /* inf / nan */
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, like numpy's astype(float16) and _cvtss_sh(x, 0). */
static inline uint16_t xllm_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u)                                    /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    if (abs >= 0x477ff000u)                                    /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) {                                   /* fp16 subnormal or zero */
        if (abs < 0x33000000u) return (uint16_t)sign;          /* < 2^-25: rounds to 0 */
        uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(abs >> 23);                    /* 14 + (113 - exp) */
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((abs >> 13) - ((127 - 15) << 10));
    uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

#include "simd_kquants.h"          /* Q2_K..Q6_K: blocks, Q8_K activations, dequantization, tiles */

/* ------------------------------------------------------------------ quantized blocks */

#define XLLM_QK 32

typedef struct {
    uint16_t d;                 /* fp16 scale */
    int8_t qs[XLLM_QK];         /* values = d * qs */
} xllm_block_q8_0;

typedef struct {
    uint16_t d;                 /* fp16 scale */
    uint8_t qs[XLLM_QK / 2];    /* value j: low nibble of qs[j], value j+16: high nibble; minus 8 */
} xllm_block_q4_0;

_Static_assert(sizeof(xllm_block_q8_0) == 34, "Q8_0 block is 2 + 32 bytes");
_Static_assert(sizeof(xllm_block_q4_0) == 18, "Q4_0 block is 2 + 16 bytes");

/* ggml tensor types */
enum { XLLM_F32 = 0, XLLM_F16 = 1, XLLM_Q4_0 = 2, XLLM_Q8_0 = 8 };

/* Quantize one row of n (multiple of 32) floats to Q8_0, bytes equal to gguf.quants:
 * d = max|x| / 127, q = round-half-away(x / d) (computed as x * (1/d) in float32). */
static void xllm_quantize_row_q8_0(const float *x, xllm_block_q8_0 *y, int n) {
    for (int b = 0; b < n / XLLM_QK; b++) {
        const float *xb = x + b * XLLM_QK;
        float amax = 0.0f;
        for (int j = 0; j < XLLM_QK; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = xllm_fp32_to_fp16(d);
        for (int j = 0; j < XLLM_QK; j++) {
            float v = xb[j] * id;
            y[b].qs[j] = (int8_t)roundf(v);
        }
    }
}

/* Activations as the quantized kernels read them: the Q8_0 block of the activation (same
 * values and fp16-rounded scale as xllm_quantize_row_q8_0), with the scale already widened
 * and the sum of the 32 values, which corrects the unsigned weight encodings below
 * exactly: sum((u - bias) * x) = sum(u * x) - bias * sum(x). */
typedef struct {
    float d;                    /* scale (an fp16 value) */
    int32_t sum;                /* qs[0] + .. + qs[31] */
    int8_t qs[XLLM_QK];
} xllm_block_q8_act;

_Static_assert(sizeof(xllm_block_q8_act) == 40, "activation block is 4 + 4 + 32 bytes");

#if XLLM_X86
/* The same bytes as the scalar loop below (AMX matmuls made the scalar quantizer 20-40% of a
 * multi-token Q8_0 matmul; this one is ~5x faster), 8 values at a time: the max of |x| is order-free, x * id
 * the same float product, and roundf's half-away rounding is t = trunc(v), plus sign(v) when
 * |v - t| >= 0.5 (v - t is exact). */
XLLM_AVX2_FN static void xllm_quantize_row_q8_act_avx2(const float *x, xllm_block_q8_act *y, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    for (int b = 0; b < n / XLLM_QK; b++) {
        const float *xb = x + b * XLLM_QK;
        __m256 v[4];
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
        __m256 m = _mm256_setzero_ps();          /* max_ps(a, m) is `a > m ? a : m`, the scalar step (NaN skipped) */
        for (int i = 0; i < 4; i++) m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = xllm_fp16_to_fp32(xllm_fp32_to_fp16(d));
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            __m256 p = _mm256_mul_ps(v[i], vid);
            __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(p, t)), half, _CMP_GE_OQ);
            t = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(sign, p))));
            q[i] = _mm256_cvttps_epi32(t);
        }
        /* the low byte of each int32, as the scalar (int8_t) cast keeps it (an infinite or NaN
         * product converts to 0x80000000: byte 0); packus of values 0..255 is exact, and works
         * per 128-bit lane, which the permute undoes */
        const __m256i low = _mm256_set1_epi32(0xff);
        __m256i w01 = _mm256_packus_epi32(_mm256_and_si256(q[0], low), _mm256_and_si256(q[1], low));
        __m256i w23 = _mm256_packus_epi32(_mm256_and_si256(q[2], low), _mm256_and_si256(q[3], low));
        __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23),
                                                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, bytes);
        for (int i = 0; i < 4; i++) q[i] = _mm256_srai_epi32(_mm256_slli_epi32(q[i], 24), 24);
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        y[b].sum = _mm_cvtsi128_si32(s4);
    }
}

/* The same bytes again, 16 blocks at a time on AVX-512: each block's max of |x| reduced on
 * its own, then the 16 scales divided, inverted and rounded to fp16 in one vector each (the
 * scalar divisions and fp16 rounding were the AVX2 loop's latency: 25 ns a block, 9.5 here),
 * then per block the AVX2 steps on 16 lanes; the bytes are vpmovdb's low byte of each int32,
 * as the scalar cast. */
XLLM_AVX512_FN static void xllm_quantize_row_q8_act_avx512(const float *x, xllm_block_q8_act *y, int n) {
    const int nb = n / XLLM_QK;
    const __m512 zero = _mm512_setzero_ps(), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    for (int b = 0; b < nb; b += 16) {
        const int cnt = nb - b < 16 ? nb - b : 16;   /* a short last run: lanes >= cnt unused */
        float amax[16] __attribute__((aligned(64))) = {0}, id[16] __attribute__((aligned(64)));
        for (int j = 0; j < cnt; j++) {
            const float *xb = x + (size_t)(b + j) * XLLM_QK;
            /* max_ps(a, m) is `a > m ? a : m` (NaN skipped), from m = 0 as the scalar loop */
            __m512 m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), zero);
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + 16)), m);
            amax[j] = _mm512_reduce_max_ps(m);
        }
        const __m512 d = _mm512_div_ps(_mm512_load_ps(amax), _mm512_set1_ps(127.0f));
        const __mmask16 nz = _mm512_cmp_ps_mask(d, zero, _CMP_NEQ_OQ);
        _mm512_store_ps(id, _mm512_maskz_div_ps(nz, one, d));
        float dh[16] __attribute__((aligned(64)));
        _mm512_store_ps(dh, _mm512_cvtph_ps(_mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
        for (int j = 0; j < cnt; j++) {
            const float *xb = x + (size_t)(b + j) * XLLM_QK;
            const __m512 vid = _mm512_set1_ps(id[j]);
            __m512i q[2];
            for (int i = 0; i < 2; i++) {
                __m512 p = _mm512_mul_ps(_mm512_loadu_ps(xb + 16 * i), vid);
                __m512 t = _mm512_roundscale_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                /* +1 or -1 by p's sign where |p - t| >= 0.5 (such p are neither 0 nor NaN) */
                __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(p, t)), half, _CMP_GE_OQ);
                __mmask16 neg = _mm512_cmp_ps_mask(p, zero, _CMP_LT_OQ);
                t = _mm512_mask_add_ps(t, up & ~neg, t, one);
                t = _mm512_mask_sub_ps(t, up & neg, t, one);
                q[i] = _mm512_cvttps_epi32(t);
            }
            y[b + j].d = dh[j];
            _mm_storeu_si128((__m128i *)y[b + j].qs, _mm512_cvtepi32_epi8(q[0]));
            _mm_storeu_si128((__m128i *)(y[b + j].qs + 16), _mm512_cvtepi32_epi8(q[1]));
            for (int i = 0; i < 2; i++) q[i] = _mm512_srai_epi32(_mm512_slli_epi32(q[i], 24), 24);
            y[b + j].sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
        }
    }
}
#endif

/* Blocks per call that the AVX-512 quantizer runs at full width (callers split rows in such
 * pieces). */
#define XLLM_Q8_ACT_RUN 16

static void xllm_quantize_row_q8_act(const float *x, xllm_block_q8_act *y, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX512) { xllm_quantize_row_q8_act_avx512(x, y, n); return; }
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_quantize_row_q8_act_avx2(x, y, n); return; }
#endif
    xllm_block_q8_0 q;
    for (int b = 0; b < n / XLLM_QK; b++) {
        xllm_quantize_row_q8_0(x + b * XLLM_QK, &q, XLLM_QK);
        y[b].d = xllm_fp16_to_fp32(q.d);
        memcpy(y[b].qs, q.qs, XLLM_QK);
        int32_t sum = 0;
        for (int j = 0; j < XLLM_QK; j++) sum += q.qs[j];
        y[b].sum = sum;
    }
}

/* ------------------------------------------------------------------ repacked quantized weights
 *
 * Matmuls read Q8_0/Q4_0 weights repacked at load time into panels of 8 rows, block by
 * block (the layout of llama.cpp's Q4_0_8x8 idea, adapted): for each 32-value block the 8
 * rows' scales sit together, then the values in groups of 4 consecutive values with the 8
 * rows' groups side by side.  One 32-byte load is then 4 values of 8 rows, and one int8
 * dot instruction with the token's 4 values broadcast adds them into 8 row lanes, so a
 * block ends as one vector of 8 exact int32 row sums: one convert and one FMA with the 8
 * row scales serve 8 rows, where the row-by-row layout needs them per row.
 *
 * Every path computes, per (row, token), over the blocks in order:
 *     acc = fma((float)isum_b, d_w * d_x, acc)        isum_b = sum_j w_j * x_j, exact int32
 * (d_w * d_x, two fp16 values, is exact in float), so the AVX-512, AVX2 and scalar paths,
 * any tile shape, k-chunking, token count or thread give the same bits. */

#define XLLM_PANEL 8         /* rows per panel of the repacked layout */

typedef struct {
    uint16_t d[XLLM_PANEL];             /* fp16 scale of each row */
    uint8_t qs[XLLM_QK * XLLM_PANEL];   /* values 4j..4j+3 of row r at qs[32j + 4r ..], as w + 128 (w ^ 0x80) */
} xllm_block_q8_0x8;

typedef struct {
    uint16_t d[XLLM_PANEL];             /* fp16 scale of each row */
    uint8_t qs[XLLM_QK / 2 * XLLM_PANEL];  /* row r's Q4_0 bytes 4c..4c+3 at qs[32c + 4r ..]: low nibbles
                                             values 4c.., high nibbles values 16+4c.., each w + 8 */
} xllm_block_q4_0x8;

_Static_assert(sizeof(xllm_block_q8_0x8) == 8 * sizeof(xllm_block_q8_0), "Q8_0 panel block is 8 Q8_0 blocks");
_Static_assert(sizeof(xllm_block_q4_0x8) == 8 * sizeof(xllm_block_q4_0), "Q4_0 panel block is 8 Q4_0 blocks");

/* Bytes of one panel (8 rows) of a matrix whose rows are `row_bytes` long. */
static inline size_t xllm_panel_bytes(size_t row_bytes) { return row_bytes * XLLM_PANEL; }

#include "simd_legacy.h"     /* Q4_1, Q5_0, Q5_1, IQ4_NL panels and tiles; BF16 widening */

/* Repack rows [0, nr) (nr <= 8) of a Q8_0/Q4_0 matrix (row r at src + r*row_bytes, nb blocks)
 * into one panel; missing rows are zero (scale 0). */
static void xllm_pack_panel(int type, const char *src, size_t row_bytes, int nr, int nb, char *dst) {
    if (xllm_is_legacy_quant(type)) { xllm_legacy_pack_panel(type, src, row_bytes, nr, nb, dst); return; }
    const int q8 = type == XLLM_Q8_0;
    const size_t in_block = q8 ? sizeof(xllm_block_q8_0) : sizeof(xllm_block_q4_0);
    const size_t out_block = q8 ? sizeof(xllm_block_q8_0x8) : sizeof(xllm_block_q4_0x8);
    const int groups = q8 ? 8 : 4;                       /* 4-byte groups per row and block */
    const uint32_t flip = q8 ? 0x80808080u : 0;          /* Q8_0: w -> w + 128 */
    for (int b = 0; b < nb; b++) {
        uint16_t *d = (uint16_t *)(dst + b * out_block);
        uint8_t *qs = (uint8_t *)(d + XLLM_PANEL);
        if (nr < XLLM_PANEL) {                           /* missing rows: scale 0, values 0 */
            memset(d, 0, XLLM_PANEL * sizeof(uint16_t));
            memset(qs, q8 ? 0x80 : 0x88, out_block - XLLM_PANEL * sizeof(uint16_t));
        }
        for (int r = 0; r < nr; r++) {
            const uint8_t *ib = (const uint8_t *)(src + r * row_bytes + b * in_block);
            memcpy(&d[r], ib, sizeof(uint16_t));
            for (int j = 0; j < groups; j++) {
                uint32_t v;
                memcpy(&v, ib + 2 + 4 * j, 4);
                v ^= flip;
                memcpy(qs + 32 * j + 4 * r, &v, 4);
            }
        }
    }
}

/* Dequantize one row of n values of the given type into floats. */
static void xllm_dequantize_row(int type, const void *src, float *dst, int n) {
    if (xllm_is_kquant(type)) {
        xllm_dequantize_row_kq(type, src, dst, n);
    } else if (type == XLLM_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (type == XLLM_F16) {
        const uint16_t *h = (const uint16_t *)src;
        for (int i = 0; i < n; i++) dst[i] = xllm_fp16_to_fp32(h[i]);
    } else if (type == XLLM_Q8_0) {
        const xllm_block_q8_0 *b = (const xllm_block_q8_0 *)src;
        for (int i = 0; i < n / XLLM_QK; i++) {
            float d = xllm_fp16_to_fp32(b[i].d);
            for (int j = 0; j < XLLM_QK; j++) dst[i * XLLM_QK + j] = d * (float)b[i].qs[j];
        }
    } else if (type == XLLM_Q4_0) {
        const xllm_block_q4_0 *b = (const xllm_block_q4_0 *)src;
        for (int i = 0; i < n / XLLM_QK; i++) {
            float d = xllm_fp16_to_fp32(b[i].d);
            for (int j = 0; j < XLLM_QK / 2; j++) {
                dst[i * XLLM_QK + j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
                dst[i * XLLM_QK + j + XLLM_QK / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
            }
        }
    } else if (type == XLLM_BF16 || xllm_is_legacy_quant(type)) {
        xllm_legacy_dequantize_row(type, src, dst, n);
    }
}

/* ------------------------------------------------------------------ small vector ops */

static float xllm_dot_f32_scalar(const float *a, const float *b, int n) {
    float lanes[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lanes[l] += a[i + l] * b[i + l];
    float s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void xllm_axpy_f32_scalar(float a, const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

#if XLLM_X86
XLLM_AVX2_FN static inline float xllm_hsum_avx2(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);                         /* lanes l + l+4 */
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                /* (0+4)+(2+6), (1+5)+(3+7) */
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

XLLM_AVX2_FN static float xllm_dot_f32_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = xllm_hsum_avx2(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

XLLM_AVX2_FN static void xllm_axpy_f32_avx2(float a, const float *x, float *y, int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}
#endif

/* Dot product of two float vectors (attention scores). */
static inline float xllm_dot_f32(const float *a, const float *b, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) return xllm_dot_f32_avx2(a, b, n);
#endif
    return xllm_dot_f32_scalar(a, b, n);
}

/* y += a * x (attention's weighted sum of values). */
static inline void xllm_axpy_f32(float a, const float *x, float *y, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_axpy_f32_avx2(a, x, y, n); return; }
#endif
    xllm_axpy_f32_scalar(a, x, y, n);
}

/* ------------------------------------------------------------------ SwiGLU
 *
 * gate = silu(gate) * up = gate / (1 + exp(-gate)) * up.  exp is Cephes' expf (range
 * reduction by n = round(x log2 e), degree-6 polynomial, 2^n in the exponent bits; within
 * 2 ulp), written once as a sequence of float operations and FMAs that the AVX2 and scalar
 * paths both follow, so they give the same bits.  -gate is clamped to [-87.3, 88.3] so
 * that 2^n stays a normal float: below, exp(-gate) is lost next to 1 anyway; above, it is
 * taken as +inf, and silu as -0 (its true value is below 1e-36 there). */

#define XLLM_EXP_LO (-87.3f)
#define XLLM_EXP_HI 88.3f
#define XLLM_LOG2E 1.44269504088896341f
#define XLLM_LN2_HI 0.693359375f
#define XLLM_LN2_LO (-2.12194440e-4f)
static const float xllm_exp_poly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                       4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

/* exp(x) for x in [XLLM_EXP_LO, XLLM_EXP_HI] (callers clamp) */
static inline float xllm_exp_scalar(float x) {
    float n = nearbyintf(x * XLLM_LOG2E);
    float r = fmaf(n, -XLLM_LN2_HI, x);
    r = fmaf(n, -XLLM_LN2_LO, r);
    float z = r * r;
    float p = xllm_exp_poly[0];
    for (int i = 1; i < 6; i++) p = fmaf(p, r, xllm_exp_poly[i]);
    float y = fmaf(p, z, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float pow2n;
    memcpy(&pow2n, &bits, 4);
    return y * pow2n;
}

static inline float xllm_silu_mul_scalar(float g, float u) {
    float x = -g;
    int big = x > XLLM_EXP_HI;
    x = x > XLLM_EXP_LO ? x : XLLM_EXP_LO;             /* as _mm256_max_ps(x, lo) */
    x = x < XLLM_EXP_HI ? x : XLLM_EXP_HI;             /* as _mm256_min_ps(x, hi) */
    float ex = big ? INFINITY : xllm_exp_scalar(x);
    return g / (1.0f + ex) * u;
}

#if XLLM_X86
XLLM_AVX2_FN static inline __m256 xllm_exp_avx2(__m256 x) {
    __m256 nn = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(XLLM_LOG2E)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(nn, _mm256_set1_ps(-XLLM_LN2_HI), x);
    r = _mm256_fmadd_ps(nn, _mm256_set1_ps(-XLLM_LN2_LO), r);
    __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(xllm_exp_poly[0]);
    for (int k = 1; k < 6; k++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(xllm_exp_poly[k]));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, z, r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(nn), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

XLLM_AVX2_FN static void xllm_swiglu_avx2(float *gate, const float *up, int n) {
    const __m256 lo = _mm256_set1_ps(XLLM_EXP_LO), hi = _mm256_set1_ps(XLLM_EXP_HI);
    const __m256 one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 neg = _mm256_sub_ps(_mm256_setzero_ps(), g);
        __m256 big = _mm256_cmp_ps(neg, hi, _CMP_GT_OQ);
        __m256 ex = xllm_exp_avx2(_mm256_min_ps(_mm256_max_ps(neg, lo), hi));
        ex = _mm256_blendv_ps(ex, _mm256_set1_ps(INFINITY), big);
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, ex)),
                                                 _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = xllm_silu_mul_scalar(gate[i], up[i]);
}
#endif

/* gate[i] = silu(gate[i]) * up[i] */
static inline void xllm_swiglu(float *gate, const float *up, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_swiglu_avx2(gate, up, n); return; }
#endif
    for (int i = 0; i < n; i++) gate[i] = xllm_silu_mul_scalar(gate[i], up[i]);
}

/* ------------------------------------------------------------------ attention
 *
 * One block of cached positions for one query head, online softmax: scores s_j = q.k_j *
 * scale, the running max *m and sum *l rescaled by exp(m_old - m_new), and
 * out = out * corr + sum_j exp(s_j - m_new) v_j.  Keys/values of position j at kb/vb + j*stride.
 * The AVX2 path (head_dim a multiple of 8) reduces 8 positions' dot products
 * together, exponentiates 8 scores at once and keeps `out` in registers over the block. */

static void xllm_attend_block_scalar(const float *q, const float *kb, const float *vb, size_t stride,
                                     int n_pos, int hd, float scale, float *m, float *l, float *out,
                                     float *scores) {
    float m_new = *m;
    for (int j = 0; j < n_pos; j++) {
        scores[j] = xllm_dot_f32(q, kb + j * stride, hd) * scale;
        if (scores[j] > m_new) m_new = scores[j];
    }
    float corr = expf(*m - m_new);
    if (corr != 1.0f) {
        *l *= corr;
        for (int i = 0; i < hd; i++) out[i] *= corr;
    }
    for (int j = 0; j < n_pos; j++) {
        float e = expf(scores[j] - m_new);
        *l += e;
        xllm_axpy_f32(e, vb + j * stride, out, hd);
    }
    *m = m_new;
}

#if XLLM_X86
XLLM_AVX2_FN static inline float xllm_hmax_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* The online softmax over one block's scores: scores[j] = exp(scores[j] - m_new), and
 * *l = *l * corr + their sum; returns corr = exp(m_old - m_new), the rescale of what the
 * earlier blocks accumulated. */
XLLM_AVX2_FN static inline float xllm_softmax_block_avx2(float *scores, int n_pos, float m_old, float m_new,
                                                        float *l) {
    float corr = expf(m_old - m_new);
    __m256 vsum = _mm256_setzero_ps();
    const __m256 vm = _mm256_set1_ps(m_new);
    int j = 0;
    for (; j + 8 <= n_pos; j += 8) {
        __m256 e = xllm_exp_avx2(_mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vm),
                                               _mm256_set1_ps(XLLM_EXP_LO)));
        vsum = _mm256_add_ps(vsum, e);
        _mm256_storeu_ps(scores + j, e);
    }
    float lsum = xllm_hsum_avx2(vsum);
    for (; j < n_pos; j++) {
        scores[j] = expf(scores[j] - m_new);
        lsum += scores[j];
    }
    *l = *l * corr + lsum;
    return corr;
}

XLLM_AVX2_FN static void xllm_attend_block_avx2(const float *q, const float *kb, const float *vb,
                                                size_t stride, int n_pos, int hd, float scale, float *m,
                                                float *l, float *out, float *scores) {
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(*m);
    int j = 0;
    for (; j + 8 <= n_pos; j += 8) {             /* 8 dot products, reduced together */
        __m256 a[8];
        for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
        for (int c = 0; c < hd; c += 8) {
            __m256 qc = _mm256_loadu_ps(q + c);
            for (int i = 0; i < 8; i++)
                a[i] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kb + (j + i) * stride + c), a[i]);
        }
        __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
        __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
        __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
        __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
        __m256 sc = _mm256_mul_ps(sum, vscale);
        vmax = _mm256_max_ps(vmax, sc);
        _mm256_storeu_ps(scores + j, sc);
    }
    float m_new = xllm_hmax_avx2(vmax);          /* the running max and the scores' */
    for (; j < n_pos; j++) {
        scores[j] = xllm_dot_f32_avx2(q, kb + j * stride, hd) * scale;
        m_new = scores[j] > m_new ? scores[j] : m_new;
    }
    float corr = xllm_softmax_block_avx2(scores, n_pos, *m, m_new, l);
    for (int c0 = 0; c0 < hd; c0 += 64) {        /* out in registers, 64 values at a time */
        int nc = hd - c0 < 64 ? (hd - c0) / 8 : 8;
        __m256 o[8];
        __m256 vc = _mm256_set1_ps(corr);
        for (int c = 0; c < nc; c++) o[c] = _mm256_mul_ps(_mm256_loadu_ps(out + c0 + 8 * c), vc);
        for (j = 0; j < n_pos; j++) {
            __m256 e = _mm256_set1_ps(scores[j]);
            const float *v = vb + j * stride + c0;
            for (int c = 0; c < nc; c++) o[c] = _mm256_fmadd_ps(e, _mm256_loadu_ps(v + 8 * c), o[c]);
        }
        for (int c = 0; c < nc; c++) _mm256_storeu_ps(out + c0 + 8 * c, o[c]);
    }
    *m = m_new;
}
#endif

static inline void xllm_attend_block(const float *q, const float *kb, const float *vb, size_t stride,
                                     int n_pos, int hd, float scale, float *m, float *l, float *out,
                                     float *scores) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2 && hd % 8 == 0) {
        xllm_attend_block_avx2(q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
        return;
    }
#endif
    xllm_attend_block_scalar(q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
}

/* ------------------------------------------------------------------ float matmul tiles
 *
 * One call accumulates, for rows r < nr of W (row r at w + r*ldw bytes) and tokens t < nt
 * (token t at x + t*ldx), the products over the k-range [k0, k1) into acc[(t*ldacc + r)*8 ..+8].
 * k counts values and x is float; [k0, k1) is a multiple of 8 except for a final range
 * reaching n, whose leftover (< 8) is added by `finish`.
 */

#define XLLM_TILE_ROWS 6     /* rows per micro-tile: 6 rows x 4 tokens = 24 accumulators (AVX-512VL's
                                32 registers; AVX2's 16 take it as two 3 x 4 tiles) */
#define XLLM_TILE_TOKENS 4
#ifndef XLLM_ROW_GROUP
#define XLLM_ROW_GROUP 48    /* weight rows per parallel work item (a multiple of XLLM_TILE_ROWS and of 16:
                                a group's outputs of one token are whole cache lines, so two threads
                                never write the same line of y; 24 -> 48: GPT-2's 2304 x 768 at
                                T = 128, 2 threads, 2.64 -> 2.51 ms) */
#endif
#ifndef XLLM_K_CHUNK
#define XLLM_K_CHUNK 2048    /* values per k-chunk when several tokens share each weight row (tuned: larger chunks amortize the accumulator round trip) */
#endif

/* scalar F32/F16: emulates the 8-lane accumulation */
static void xllm_tile_float_scalar(int type, const char *w, size_t ldw, int nr, const float *x,
                                   size_t ldx, int nt, int k0, int k1, float *acc, int ldacc) {
    int kv = k0 + ((k1 - k0) & ~7);
    for (int t = 0; t < nt; t++) {
        const float *xt = x + t * ldx;
        for (int r = 0; r < nr; r++) {
            float *a = acc + ((size_t)t * ldacc + r) * 8;
            if (type == XLLM_F32) {
                const float *wr = (const float *)(w + r * ldw);
                for (int k = k0; k < kv; k += 8)
                    for (int l = 0; l < 8; l++) a[l] += wr[k + l] * xt[k + l];
            } else {
                const uint16_t *wr = (const uint16_t *)(w + r * ldw);
                for (int k = k0; k < kv; k += 8)
                    for (int l = 0; l < 8; l++) a[l] += xllm_half_to_fp32(type, wr[k + l]) * xt[k + l];
            }
        }
    }
}

#if XLLM_X86
XLLM_AVX2_FN static inline __m256 xllm_load8_avx2(int type, const char *row, int k) {
    if (type == XLLM_F32) return _mm256_loadu_ps((const float *)row + k);
    if (type == XLLM_BF16) return xllm_load8_bf16_avx2((const uint16_t *)row + k);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
}

/* 3 rows x NT (<= 4, a constant after inlining) tokens: the edge tiles of a batch whose
 * token count is not a multiple of 4 keep several independent FMA chains. */
XLLM_AVX2_FN static inline __attribute__((always_inline)) void
xllm_tile3_avx2(int type, const char *w, size_t ldw, const float *x, size_t ldx, const int NT,
                int k0, int kv, float *acc, int ldacc) {
    __m256 c[3][4];
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < 3; r++) c[r][t] = _mm256_loadu_ps(acc + ((size_t)t * ldacc + r) * 8);
    for (int k = k0; k < kv; k += 8) {
        __m256 a0 = xllm_load8_avx2(type, w, k);
        __m256 a1 = xllm_load8_avx2(type, w + ldw, k);
        __m256 a2 = xllm_load8_avx2(type, w + 2 * ldw, k);
        for (int t = 0; t < NT; t++) {
            __m256 b = _mm256_loadu_ps(x + t * ldx + k);
            c[0][t] = _mm256_fmadd_ps(a0, b, c[0][t]);
            c[1][t] = _mm256_fmadd_ps(a1, b, c[1][t]);
            c[2][t] = _mm256_fmadd_ps(a2, b, c[2][t]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < 3; r++) _mm256_storeu_ps(acc + ((size_t)t * ldacc + r) * 8, c[r][t]);
}

XLLM_AVX2_FN static void xllm_tile_float_avx2(int type, const char *w, size_t ldw, int nr,
                                              const float *x, size_t ldx, int nt, int k0, int k1,
                                              float *acc, int ldacc) {
    int kv = k0 + ((k1 - k0) & ~7);
    if (nr == 6 && nt == 4) {
        xllm_tile_float_avx2(type, w, ldw, 3, x, ldx, 4, k0, k1, acc, ldacc);
        xllm_tile_float_avx2(type, w + 3 * ldw, ldw, 3, x, ldx, 4, k0, k1, acc + 3 * 8, ldacc);
        return;
    }
    if (nr == 3 && nt == 4) {
        __m256 c[3][4];
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 3; r++) c[r][t] = _mm256_loadu_ps(acc + ((size_t)t * ldacc + r) * 8);
        const char *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw;
        const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
        for (int k = k0; k < kv; k += 8) {
            __m256 a0 = xllm_load8_avx2(type, w0, k);
            __m256 a1 = xllm_load8_avx2(type, w1, k);
            __m256 a2 = xllm_load8_avx2(type, w2, k);
            __m256 b;
            b = _mm256_loadu_ps(x0 + k);
            c[0][0] = _mm256_fmadd_ps(a0, b, c[0][0]); c[1][0] = _mm256_fmadd_ps(a1, b, c[1][0]); c[2][0] = _mm256_fmadd_ps(a2, b, c[2][0]);
            b = _mm256_loadu_ps(x1 + k);
            c[0][1] = _mm256_fmadd_ps(a0, b, c[0][1]); c[1][1] = _mm256_fmadd_ps(a1, b, c[1][1]); c[2][1] = _mm256_fmadd_ps(a2, b, c[2][1]);
            b = _mm256_loadu_ps(x2 + k);
            c[0][2] = _mm256_fmadd_ps(a0, b, c[0][2]); c[1][2] = _mm256_fmadd_ps(a1, b, c[1][2]); c[2][2] = _mm256_fmadd_ps(a2, b, c[2][2]);
            b = _mm256_loadu_ps(x3 + k);
            c[0][3] = _mm256_fmadd_ps(a0, b, c[0][3]); c[1][3] = _mm256_fmadd_ps(a1, b, c[1][3]); c[2][3] = _mm256_fmadd_ps(a2, b, c[2][3]);
        }
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 3; r++) _mm256_storeu_ps(acc + ((size_t)t * ldacc + r) * 8, c[r][t]);
        return;
    }
    if (nt == 1) {   /* one token (decode): rows stream, several independent FMA chains */
        const float *x0 = x;
        int r = 0;
        /* F32 on a CPU that streams faster from one stream (xllm_gemv_multi_stream): one row
         * at a time, the same FMAs per row in the same order.  Zen 4, C harness, 2 threads
         * from memory, medians of 5: 32000 x 768 24.9 -> 33.8 GB/s, 16384 x 2048 29.5 -> 34.9.
         * F16/BF16 (half the bytes per FMA) keep three chains. */
        const int threes = type != XLLM_F32 || xllm_gemv_multi_stream();
        for (; threes && r + 3 <= nr; r += 3) {
            const char *w0 = w + r * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw;
            float *a = acc + (size_t)r * 8;
            __m256 c0 = _mm256_loadu_ps(a), c1 = _mm256_loadu_ps(a + 8), c2 = _mm256_loadu_ps(a + 16);
            for (int k = k0; k < kv; k += 8) {
                __m256 b = _mm256_loadu_ps(x0 + k);
                c0 = _mm256_fmadd_ps(xllm_load8_avx2(type, w0, k), b, c0);
                c1 = _mm256_fmadd_ps(xllm_load8_avx2(type, w1, k), b, c1);
                c2 = _mm256_fmadd_ps(xllm_load8_avx2(type, w2, k), b, c2);
            }
            _mm256_storeu_ps(a, c0); _mm256_storeu_ps(a + 8, c1); _mm256_storeu_ps(a + 16, c2);
        }
        for (; r < nr; r++) {
            const char *w0 = w + r * ldw;
            float *a = acc + (size_t)r * 8;
            __m256 c0 = _mm256_loadu_ps(a);
            for (int k = k0; k < kv; k += 8)
                c0 = _mm256_fmadd_ps(xllm_load8_avx2(type, w0, k), _mm256_loadu_ps(x0 + k), c0);
            _mm256_storeu_ps(a, c0);
        }
        return;
    }
    if (nt == 2 || nt == 3) {                 /* edge tiles of 2-3 tokens: rows in threes */
        int r = 0;
        for (; r + 3 <= nr; r += 3) {
            if (nt == 2) xllm_tile3_avx2(type, w + r * ldw, ldw, x, ldx, 2, k0, kv, acc + r * 8, ldacc);
            else xllm_tile3_avx2(type, w + r * ldw, ldw, x, ldx, 3, k0, kv, acc + r * 8, ldacc);
        }
        w += r * ldw;
        acc += r * 8;
        nr -= r;
    }
    for (int t = 0; t < nt; t++) {            /* what remains: one (row, token) pair at a time */
        const float *xt = x + t * ldx;
        for (int r = 0; r < nr; r++) {
            const char *wr = w + r * ldw;
            float *a = acc + ((size_t)t * ldacc + r) * 8;
            __m256 c0 = _mm256_loadu_ps(a);
            for (int k = k0; k < kv; k += 8)
                c0 = _mm256_fmadd_ps(xllm_load8_avx2(type, wr, k), _mm256_loadu_ps(xt + k), c0);
            _mm256_storeu_ps(a, c0);
        }
    }
}

#endif

#if XLLM_X86
/* 6 rows x 4 tokens on AVX-512VL's 32 ymm registers: 10 loads feed 24 FMAs (3 x 4 on AVX2:
 * 7 loads per 12).  Same per-(row, token) lane sums as the AVX2 tile, so the same bits. */
XLLM_AVX512_FN static void xllm_tile_float_avx512(int type, const char *w, size_t ldw, int nr,
                                                  const float *x, size_t ldx, int nt, int k0, int k1,
                                                  float *acc, int ldacc) {
    if (nr != 6 || nt != 4) {
        xllm_tile_float_avx2(type, w, ldw, nr, x, ldx, nt, k0, k1, acc, ldacc);
        return;
    }
    int kv = k0 + ((k1 - k0) & ~7);
    __m256 c[6][4];
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 6; r++) c[r][t] = _mm256_loadu_ps(acc + ((size_t)t * ldacc + r) * 8);
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    for (int k = k0; k < kv; k += 8) {
        __m256 a[6];
        for (int r = 0; r < 6; r++) a[r] = xllm_load8_avx2(type, w + r * ldw, k);
        __m256 b;
        b = _mm256_loadu_ps(x0 + k);
        for (int r = 0; r < 6; r++) c[r][0] = _mm256_fmadd_ps(a[r], b, c[r][0]);
        b = _mm256_loadu_ps(x1 + k);
        for (int r = 0; r < 6; r++) c[r][1] = _mm256_fmadd_ps(a[r], b, c[r][1]);
        b = _mm256_loadu_ps(x2 + k);
        for (int r = 0; r < 6; r++) c[r][2] = _mm256_fmadd_ps(a[r], b, c[r][2]);
        b = _mm256_loadu_ps(x3 + k);
        for (int r = 0; r < 6; r++) c[r][3] = _mm256_fmadd_ps(a[r], b, c[r][3]);
    }
    for (int t = 0; t < 4; t++)
        for (int r = 0; r < 6; r++) _mm256_storeu_ps(acc + ((size_t)t * ldacc + r) * 8, c[r][t]);
}
#endif

#include "simd_avx512.h"     /* 512-bit float GEMM tiles on token pairs (same lanes, same bits) */

/* Accumulate one tile of F32/F16 weights (x is float). */
static inline void xllm_tile(int type, const char *w, size_t ldw, int nr, const void *x, size_t ldx,
                             int nt, int k0, int k1, float *acc, int ldacc) {
#if XLLM_X86
    if (xllm_simd_level == XLLM_SIMD_AVX512) {
        xllm_tile_float_avx512(type, w, ldw, nr, (const float *)x, ldx, nt, k0, k1, acc, ldacc);
        return;
    }
    if (xllm_simd_level >= XLLM_SIMD_AVX2) {
        xllm_tile_float_avx2(type, w, ldw, nr, (const float *)x, ldx, nt, k0, k1, acc, ldacc);
        return;
    }
#endif
    xllm_tile_float_scalar(type, w, ldw, nr, (const float *)x, ldx, nt, k0, k1, acc, ldacc);
}

/* ------------------------------------------------------------------ quantized tiles
 *
 * One call accumulates, for np (1 or 2) panels of repacked weights (panel p at
 * w + p*pstride) and nt (1..4) tokens (token t's activation blocks at x + t*ldx), the blocks
 * [b0, b1) into acc[t*ldacc + 8p + r]: one float per (row, token), see the layout above. */

#define XLLM_QTILE_PANELS 2
#define XLLM_QTILE_TOKENS 4
#ifndef XLLM_QK_CHUNK
#define XLLM_QK_CHUNK 16     /* blocks per k-chunk when several tokens share each panel: a 2-panel
                                chunk (8.7 KB of Q8_0) stays in L1 for all token tiles (tuned, 4-128) */
#endif
#ifndef XLLM_QROW_GROUP
#define XLLM_QROW_GROUP 32   /* quantized weight rows per parallel work item (4 panels) */
#endif

static void xllm_qtile_scalar(int type, const char *w, size_t pstride, int np,
                              const xllm_block_q8_act *x, size_t ldx, int nt, int b0, int b1,
                              float *acc, int ldacc) {
    for (int p = 0; p < np; p++)
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < XLLM_PANEL; r++) {
                float a = acc[(size_t)t * ldacc + p * XLLM_PANEL + r];
                for (int b = b0; b < b1; b++) {
                    const xllm_block_q8_act *xb = x + t * ldx + b;
                    int32_t isum = 0;
                    uint16_t d;
                    if (type == XLLM_Q8_0) {
                        const xllm_block_q8_0x8 *wb = (const xllm_block_q8_0x8 *)(w + p * pstride) + b;
                        for (int j = 0; j < XLLM_QK; j++)
                            isum += ((int)wb->qs[32 * (j / 4) + 4 * r + j % 4] - 128) * xb->qs[j];
                        d = wb->d[r];
                    } else {
                        const xllm_block_q4_0x8 *wb = (const xllm_block_q4_0x8 *)(w + p * pstride) + b;
                        for (int j = 0; j < XLLM_QK / 2; j++) {
                            uint8_t byte = wb->qs[32 * (j / 4) + 4 * r + j % 4];
                            isum += ((byte & 0x0f) - 8) * xb->qs[j] + ((byte >> 4) - 8) * xb->qs[j + 16];
                        }
                        d = wb->d[r];
                    }
                    a = fmaf((float)isum, xllm_fp16_to_fp32(d) * xb->d, a);
                }
                acc[(size_t)t * ldacc + p * XLLM_PANEL + r] = a;
            }
}

#if XLLM_X86
static inline int32_t xllm_load_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }

/* The int8 dot step, u8 weights (8 rows x 4 values) times 4 broadcast s8 activation values
 * into 8 int32 row lanes.  VNNI: one vpdpbusd.  AVX2: Q4_0's nibbles go through maddubs
 * directly (15 * 127 * 2 cannot saturate); Q8_0's w + 128 would, so the AVX2 path turns the
 * weights back to signed and uses |w| and sign(x, w) (the ggml sign trick). */
/* Several tokens: prefetch each panel's stream 4 KB ahead (the next k-chunk, while the
 * current one is reused from L1): 16 tokens 320-345 -> 390-415 GOP/s.  One token, one panel:
 * none at avx512, the hardware prefetcher streams a single panel faster alone (Zen 4, one
 * thread 25-28 -> 28-30 GB/s); at avx2, XLLM_GEMV_PREFETCH_AVX2 ahead (Zen 1).  One token,
 * four panels (the Intel decode path, see xllm_gemv_panels): 2 KB ahead in each stream. */
#define XLLM_PREFETCH_DISTANCE 4096
#define XLLM_GEMV_PREFETCH_DISTANCE 2048
#define XLLM_PREFETCH_BLOCK(blk, dist)                                                                 \
    for (int o = 0; o < (int)sizeof(*(blk)); o += 64)                                                  \
        _mm_prefetch((const char *)(blk) + o + (dist), _MM_HINT_T0)

#define XLLM_QTILE_BODY(NP, NT, DOT_Q8, DOT_Q4, Q8_BIAS, Q4_I16, AVX2_GEMV_PF)                                                 \
    const int pf = (NT) > 1 ? XLLM_PREFETCH_DISTANCE : (NP) > 2 ? XLLM_GEMV_PREFETCH_DISTANCE           \
                 : (AVX2_GEMV_PF) ? XLLM_GEMV_PREFETCH_AVX2 : 0;                                        \
    __m256 facc[NP][NT];                                                                               \
    for (int p = 0; p < NP; p++)                                                                       \
        for (int t = 0; t < NT; t++) facc[p][t] = _mm256_loadu_ps(acc + (size_t)t * ldacc + 8 * p);   \
    for (int b = b0; b < b1; b++) {                                                                    \
        __m256i iacc[NP][NT];                                                                          \
        for (int t = 0; t < NT; t++) {                                                                 \
            const xllm_block_q8_act *xb = x + t * ldx + b;                                             \
            __m256i c = _mm256_set1_epi32(-(type == XLLM_Q8_0 ? (Q8_BIAS) : 8) * xb->sum);             \
            for (int p = 0; p < NP; p++) iacc[p][t] = c;                                               \
        }                                                                                              \
        if (type == XLLM_Q8_0) {                                                                       \
            const xllm_block_q8_0x8 *wb[NP];                                                           \
            for (int p = 0; p < NP; p++) {                                                             \
                wb[p] = (const xllm_block_q8_0x8 *)(w + p * pstride) + b;                               \
                if (pf) XLLM_PREFETCH_BLOCK(wb[p], pf);                                            \
            }                                                                                          \
            for (int j = 0; j < 8; j++) {                                                              \
                __m256i wv[NP];                                                                        \
                for (int p = 0; p < NP; p++) wv[p] = _mm256_loadu_si256((const __m256i *)(wb[p]->qs + 32 * j)); \
                for (int t = 0; t < NT; t++) {                                                         \
                    __m256i xv = _mm256_set1_epi32(xllm_load_i32(x[t * ldx + b].qs + 4 * j));          \
                    for (int p = 0; p < NP; p++) iacc[p][t] = DOT_Q8(iacc[p][t], wv[p], xv);           \
                }                                                                                      \
            }                                                                                          \
        } else {                                                                                       \
            const __m256i m4 = _mm256_set1_epi8(0x0f);                                                 \
            const xllm_block_q4_0x8 *wb[NP];                                                           \
            for (int p = 0; p < NP; p++) {                                                             \
                wb[p] = (const xllm_block_q4_0x8 *)(w + p * pstride) + b;                               \
                if (pf) XLLM_PREFETCH_BLOCK(wb[p], pf);                                            \
            }                                                                                          \
            __m256i p16[NP][NT];   /* Q4_I16: the block's maddubs pairs summed in int16 */        \
            for (int c = 0; c < 4; c++) {                                                              \
                __m256i lo[NP], hi[NP];                                                                \
                for (int p = 0; p < NP; p++) {                                                         \
                    __m256i raw = _mm256_loadu_si256((const __m256i *)(wb[p]->qs + 32 * c));           \
                    lo[p] = _mm256_and_si256(raw, m4);                                                 \
                    hi[p] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);                           \
                }                                                                                      \
                for (int t = 0; t < NT; t++) {                                                         \
                    const int8_t *xq = x[t * ldx + b].qs;                                              \
                    __m256i xlo = _mm256_set1_epi32(xllm_load_i32(xq + 4 * c));                        \
                    __m256i xhi = _mm256_set1_epi32(xllm_load_i32(xq + 16 + 4 * c));                   \
                    for (int p = 0; p < NP; p++) {                                                     \
                        if (Q4_I16) {                                                                  \
                            const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[p], xlo),      \
                                                                 _mm256_maddubs_epi16(hi[p], xhi));     \
                            p16[p][t] = c ? _mm256_add_epi16(p16[p][t], s16) : s16;                    \
                        } else {                                                                       \
                            iacc[p][t] = DOT_Q4(DOT_Q4(iacc[p][t], lo[p], xlo), hi[p], xhi);          \
                        }                                                                              \
                    }                                                                                  \
                }                                                                                      \
            }                                                                                          \
            if (Q4_I16)                                                                                \
                for (int p = 0; p < NP; p++)                                                           \
                    for (int t = 0; t < NT; t++)                                                       \
                        iacc[p][t] = _mm256_add_epi32(iacc[p][t], _mm256_madd_epi16(p16[p][t], _mm256_set1_epi16(1))); \
        }                                                                                              \
        for (int p = 0; p < NP; p++) {                                                                 \
            const uint16_t *dp = type == XLLM_Q8_0 ? ((const xllm_block_q8_0x8 *)(w + p * pstride))[b].d \
                                                   : ((const xllm_block_q4_0x8 *)(w + p * pstride))[b].d; \
            __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dp));                         \
            for (int t = 0; t < NT; t++)                                                               \
                facc[p][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[p][t]),                           \
                                             _mm256_mul_ps(dw, _mm256_set1_ps(x[t * ldx + b].d)), facc[p][t]); \
        }                                                                                              \
    }                                                                                                  \
    for (int p = 0; p < NP; p++)                                                                       \
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(acc + (size_t)t * ldacc + 8 * p, facc[p][t]);

XLLM_AVX2_FN static inline __m256i xllm_dot_q8_avx2(__m256i acc, __m256i wu, __m256i xv) {
    __m256i ws = _mm256_xor_si256(wu, _mm256_set1_epi8((char)0x80));
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(xv, ws));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

XLLM_AVX2_FN static inline __m256i xllm_dot_q4_avx2(__m256i acc, __m256i wu, __m256i xv) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), _mm256_set1_epi16(1)));
}

#define XLLM_QTILE_FN(LEVEL, ATTR, NP, NT, DOT_Q8, DOT_Q4, Q8_BIAS, Q4_I16)                              \
ATTR static void xllm_qtile_##LEVEL##_##NP##x##NT(int type, const char *w, size_t pstride,               \
        const xllm_block_q8_act *x, size_t ldx, int b0, int b1, float *acc, int ldacc) {                 \
    XLLM_QTILE_BODY(NP, NT, DOT_Q8, DOT_Q4, Q8_BIAS, Q4_I16, Q4_I16)                                     \
}

/* AVX2: one panel at a time (16 registers); the weights stay signed for the sign trick, so no
 * bias.  Q4_0 sums a block's 8 maddubs outputs in int16 (each <= 2 * 15 * 128 = 3840, so 8 stay
 * below 2^15, exact) and pays one madd per block instead of eight: the multiply pipe bounds
 * AVX2 (Zen 1 VM, one thread, 5632 x 2048 from memory: 26.5 -> 31.2 GOP/s). */
XLLM_QTILE_FN(avx2, XLLM_AVX2_FN, 1, 1, xllm_dot_q8_avx2, xllm_dot_q4_avx2, 0, 1)
XLLM_QTILE_FN(avx2, XLLM_AVX2_FN, 1, 2, xllm_dot_q8_avx2, xllm_dot_q4_avx2, 0, 1)
XLLM_QTILE_FN(avx2, XLLM_AVX2_FN, 1, 3, xllm_dot_q8_avx2, xllm_dot_q4_avx2, 0, 1)
XLLM_QTILE_FN(avx2, XLLM_AVX2_FN, 1, 4, xllm_dot_q8_avx2, xllm_dot_q4_avx2, 0, 1)

/* AVX-512 VNNI on 256-bit registers (32 of them): one panel x up to 4 tokens (the odd panel at a
 * row group's end), four panels x one token (decode) */
#define XLLM_DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
XLLM_QTILE_FN(vnni, XLLM_AVX512_FN, 1, 1, XLLM_DPBUSD, XLLM_DPBUSD, 128, 0)
XLLM_QTILE_FN(vnni, XLLM_AVX512_FN, 1, 2, XLLM_DPBUSD, XLLM_DPBUSD, 128, 0)
XLLM_QTILE_FN(vnni, XLLM_AVX512_FN, 1, 3, XLLM_DPBUSD, XLLM_DPBUSD, 128, 0)
XLLM_QTILE_FN(vnni, XLLM_AVX512_FN, 1, 4, XLLM_DPBUSD, XLLM_DPBUSD, 128, 0)
XLLM_QTILE_FN(vnni, XLLM_AVX512_FN, 4, 1, XLLM_DPBUSD, XLLM_DPBUSD, 128, 0)   /* one token, four streams */

/* Two panels x NT (<= 8) tokens on 512-bit registers: a register holds one 4-value group of
 * both panels' 16 rows (panel 0 in the low half), so each vpdpbusd serves 16 rows and the float
 * step runs once per token for both panels: per block 8 * NT + 8 vector operations where two
 * 256-bit panels need 16 * NT, and 8 tokens share each weight load.  Lane r of a register is
 * row r of the same int32 sums and the same fma(isum, d_w * d_x, acc) as the other levels: the
 * same bits.  Measured against the 256-bit two-panel tile of 4 tokens (C harness, 5632 x 2048
 * Q8_0 from memory, 2 threads, Intel Xeon): 16 tokens 246 -> 357 GOP/s, 32 tokens 285 -> 391. */
#define XLLM_QTILE512_BODY(NT)                                                                         \
    const int pf = (NT) > 1 ? XLLM_PREFETCH_DISTANCE : 0;                                              \
    const char *w1 = w + pstride;                                                                      \
    __m512 facc[NT];                                                                                   \
    for (int t = 0; t < NT; t++) facc[t] = _mm512_loadu_ps(acc + (size_t)t * ldacc);                   \
    for (int b = b0; b < b1; b++) {                                                                    \
        __m512i iacc[NT];                                                                              \
        for (int t = 0; t < NT; t++)                                                                   \
            iacc[t] = _mm512_set1_epi32(-(type == XLLM_Q8_0 ? 128 : 8) * x[t * ldx + b].sum);          \
        const uint16_t *d0, *d1;                                                                       \
        if (type == XLLM_Q8_0) {                                                                       \
            const xllm_block_q8_0x8 *p0 = (const xllm_block_q8_0x8 *)w + b, *p1 = (const xllm_block_q8_0x8 *)w1 + b; \
            if (pf) { XLLM_PREFETCH_BLOCK(p0, pf); XLLM_PREFETCH_BLOCK(p1, pf); }                      \
            for (int j = 0; j < 8; j++) {                                                              \
                const __m512i wv = _mm512_inserti64x4(                                                 \
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0->qs + 32 * j))),    \
                    _mm256_loadu_si256((const __m256i *)(p1->qs + 32 * j)), 1);                        \
                for (int t = 0; t < NT; t++)                                                           \
                    XLLM_DPBUSD512_BCAST(iacc[t], wv, x[t * ldx + b].qs + 4 * j);                      \
            }                                                                                          \
            d0 = p0->d; d1 = p1->d;                                                                    \
        } else {                                                                                       \
            const __m512i m4 = _mm512_set1_epi8(0x0f);                                                 \
            const xllm_block_q4_0x8 *p0 = (const xllm_block_q4_0x8 *)w + b, *p1 = (const xllm_block_q4_0x8 *)w1 + b; \
            if (pf) { XLLM_PREFETCH_BLOCK(p0, pf); XLLM_PREFETCH_BLOCK(p1, pf); }                      \
            for (int c = 0; c < 4; c++) {                                                              \
                const __m512i raw = _mm512_inserti64x4(                                                \
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0->qs + 32 * c))),    \
                    _mm256_loadu_si256((const __m256i *)(p1->qs + 32 * c)), 1);                        \
                const __m512i lo = _mm512_and_si512(raw, m4);                                          \
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);                    \
                for (int t = 0; t < NT; t++) {                                                         \
                    const int8_t *xq = x[t * ldx + b].qs;                                              \
                    XLLM_DPBUSD512_BCAST(iacc[t], lo, xq + 4 * c);                                     \
                    XLLM_DPBUSD512_BCAST(iacc[t], hi, xq + 16 + 4 * c);                                \
                }                                                                                      \
            }                                                                                          \
            d0 = p0->d; d1 = p1->d;                                                                    \
        }                                                                                              \
        const __m512 dw = _mm512_cvtph_ps(_mm256_inserti128_si256(                                     \
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)d0)), _mm_loadu_si128((const __m128i *)d1), 1)); \
        for (int t = 0; t < NT; t++)                                                                   \
            facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[t]), _mm512_mul_ps(dw, _mm512_set1_ps(x[t * ldx + b].d)), \
                                      facc[t]);                                                        \
    }                                                                                                  \
    for (int t = 0; t < NT; t++) _mm512_storeu_ps(acc + (size_t)t * ldacc, facc[t]);

#define XLLM_QTILE512_FN(NT)                                                                           \
XLLM_AVX512_FN static void xllm_qtile_vnni512_2x##NT(int type, const char *w, size_t pstride,          \
        const xllm_block_q8_act *x, size_t ldx, int b0, int b1, float *acc, int ldacc) {                 \
    XLLM_QTILE512_BODY(NT)                                                                             \
}
XLLM_QTILE512_FN(1)
XLLM_QTILE512_FN(2)
XLLM_QTILE512_FN(3)
XLLM_QTILE512_FN(4)
XLLM_QTILE512_FN(5)
XLLM_QTILE512_FN(6)
XLLM_QTILE512_FN(7)
XLLM_QTILE512_FN(8)
#endif

#define XLLM_QTILE_TOKENS_512 8

/* Tokens per quantized tile of `type` at the level in force: the 512-bit two-panel tiles take
 * 8 (Q8_0/Q4_0 at avx512), every other tile XLLM_QTILE_TOKENS. */
static inline int xllm_qtile_tokens(int type) {
    return xllm_simd_level == XLLM_SIMD_AVX512 && (type == XLLM_Q8_0 || type == XLLM_Q4_0)
        ? XLLM_QTILE_TOKENS_512 : XLLM_QTILE_TOKENS;
}

typedef void (*xllm_qtile_fn)(int, const char *, size_t, const xllm_block_q8_act *, size_t, int, int, float *, int);

/* Panels one decode tile (one token) covers: XLLM_GEMV_PANELS for Q8_0/Q4_0 at the avx512
 * level where the CPU streams faster that way (xllm_gemv_multi_stream), else 1. */
#define XLLM_GEMV_PANELS 4
static inline int xllm_gemv_panels(int type) {
    return xllm_simd_level == XLLM_SIMD_AVX512 && (type == XLLM_Q8_0 || type == XLLM_Q4_0) && xllm_gemv_multi_stream()
        ? XLLM_GEMV_PANELS : 1;
}

/* Accumulate one quantized tile: np (1..XLLM_QTILE_PANELS) panels x nt (1..xllm_qtile_tokens)
 * tokens, or np = XLLM_GEMV_PANELS panels x 1 token where xllm_gemv_panels says so. */
static inline void xllm_qtile(int type, const char *w, size_t pstride, int np, const xllm_block_q8_act *x,
                              size_t ldx, int nt, int b0, int b1, float *acc, int ldacc) {
    if (xllm_is_legacy_quant(type)) { xllm_legacy_qtile(type, w, pstride, np, x, ldx, nt, b0, b1, acc, ldacc); return; }
#if XLLM_X86
    if (xllm_simd_level == XLLM_SIMD_AVX512) {
        static const xllm_qtile_fn one_panel[4] = {xllm_qtile_vnni_1x1, xllm_qtile_vnni_1x2,
                                                   xllm_qtile_vnni_1x3, xllm_qtile_vnni_1x4};
        static const xllm_qtile_fn two_panels[8] = {
            xllm_qtile_vnni512_2x1, xllm_qtile_vnni512_2x2, xllm_qtile_vnni512_2x3, xllm_qtile_vnni512_2x4,
            xllm_qtile_vnni512_2x5, xllm_qtile_vnni512_2x6, xllm_qtile_vnni512_2x7, xllm_qtile_vnni512_2x8};
        if (np == XLLM_GEMV_PANELS && nt == 1)
            xllm_qtile_vnni_4x1(type, w, pstride, x, ldx, b0, b1, acc, ldacc);
        else if (np == 2)
            two_panels[nt - 1](type, w, pstride, x, ldx, b0, b1, acc, ldacc);
        else                                  /* one panel: 4 tokens at a time */
            for (int t0 = 0; t0 < nt; t0 += XLLM_QTILE_TOKENS) {
                const int n = nt - t0 < XLLM_QTILE_TOKENS ? nt - t0 : XLLM_QTILE_TOKENS;
                one_panel[n - 1](type, w, pstride, x + (size_t)t0 * ldx, ldx, b0, b1, acc + (size_t)t0 * ldacc, ldacc);
            }
        return;
    }
    if (xllm_simd_level == XLLM_SIMD_AVX2) {
        static const xllm_qtile_fn avx2[4] = {xllm_qtile_avx2_1x1, xllm_qtile_avx2_1x2,
                                              xllm_qtile_avx2_1x3, xllm_qtile_avx2_1x4};
        for (int p = 0; p < np; p++)
            avx2[nt - 1](type, w + p * pstride, pstride, x, ldx, b0, b1, acc + 8 * p, ldacc);
        return;
    }
#endif
    xllm_qtile_scalar(type, w, pstride, np, x, ldx, nt, b0, b1, acc, ldacc);
}

#include "simd_amx.h"        /* AMX int8 tiles for multi-token Q8_0/Q4_0 matmuls */
#include "simd_amx_kquants.h" /* AMX int8 tiles for multi-token K-quant matmuls */

/* y[t*ldy + r] += the tail k in [n & ~7, n) of row r's dot product with token t, in k order. */
static inline float xllm_tile_tail(int type, const char *w, size_t ldw, int r, const float *xt, int n, float s) {
    for (int k = n & ~7; k < n; k++) {
        float wk = type == XLLM_F32 ? ((const float *)(w + r * ldw))[k]
                                    : xllm_half_to_fp32(type, ((const uint16_t *)(w + r * ldw))[k]);
        s += wk * xt[k];
    }
    return s;
}

#if XLLM_X86
/* Rows [0, nr & ~7) of xllm_tile_finish, 8 rows at a time: the 8 lane vectors are added in
 * the order of xllm_hsum_avx2 ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), only vertically across
 * rows (the shuffles move values, never round), so each sum has the same bits as the scalar
 * reduction.  Returns the rows done. */
XLLM_AVX2_FN static int xllm_tile_finish_avx2(int nr, int nt, const float *acc, int ldacc, float *y, size_t ldy) {
    const int nr8 = nr & ~7;
    for (int t = 0; t < nt; t++) {
        for (int r = 0; r < nr8; r += 8) {
            const float *l = acc + ((size_t)t * ldacc + r) * 8;
            __m256 a[4];                     /* rows (i, i+4): l0+l4, l1+l5, l2+l6, l3+l7 */
            for (int i = 0; i < 4; i++) {
                __m256 v = _mm256_loadu_ps(l + 8 * i), u = _mm256_loadu_ps(l + 8 * (i + 4));
                a[i] = _mm256_add_ps(_mm256_permute2f128_ps(v, u, 0x20), _mm256_permute2f128_ps(v, u, 0x31));
            }
            /* rows (0, 1 | 4, 5) and (2, 3 | 6, 7): (l0+l4)+(l2+l6), (l1+l5)+(l3+l7) */
            __m256 b01 = _mm256_add_ps(_mm256_shuffle_ps(a[0], a[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(a[0], a[1], _MM_SHUFFLE(3, 2, 3, 2)));
            __m256 b23 = _mm256_add_ps(_mm256_shuffle_ps(a[2], a[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(a[2], a[3], _MM_SHUFFLE(3, 2, 3, 2)));
            __m256 s = _mm256_add_ps(_mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(3, 1, 3, 1)));
            _mm256_storeu_ps(y + t * ldy + r, s);   /* rows r .. r+7 in order */
        }
    }
    return nr8;
}
#endif

/* F32/F16 tiles: reduce the 8 lanes of each (row, token) pair and add the tail k in
 * [n & ~7, n): y[t*ldy + r] = sum.  The lane order matches xllm_hsum_avx2. */
static void xllm_tile_finish(int type, const char *w, size_t ldw, int nr, const float *x, size_t ldx,
                             int nt, int n, const float *acc, int ldacc, float *y, size_t ldy) {
    int kv = n & ~7, r0 = 0;
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) {
        r0 = xllm_tile_finish_avx2(nr, nt, acc, ldacc, y, ldy);
        if (kv < n)
            for (int t = 0; t < nt; t++)
                for (int r = 0; r < r0; r++)
                    y[t * ldy + r] = xllm_tile_tail(type, w, ldw, r, x + t * ldx, n, y[t * ldy + r]);
    }
#endif
    for (int t = 0; t < nt; t++) {
        for (int r = r0; r < nr; r++) {
            const float *l = acc + ((size_t)t * ldacc + r) * 8;
            float s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
            y[t * ldy + r] = kv < n ? xllm_tile_tail(type, w, ldw, r, x + t * ldx, n, s) : s;
        }
    }
}

#include "simd_ops.h"   /* LayerNorm, GELU, bias add (the non-llama families) */

#endif /* XLLM_SIMD_H */
