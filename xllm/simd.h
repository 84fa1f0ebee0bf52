/* simd.h: the innermost loops of xllm, with AVX2/FMA versions chosen at run time.
 *
 * Every kernel has a portable scalar version and, on x86-64, an AVX2+FMA+F16C version
 * compiled through a function-level `target` attribute, so the extension builds without
 * -mavx2 and never executes an AVX2 instruction on a CPU without it.  `xllm_simd_level`
 * selects the path (set once from CPUID; tests flip it to exercise both).
 *
 * Matmul micro-kernels work on tiles of (rows x tokens) and keep, for every (row, token)
 * pair, 8 float lanes of partial sums in a caller-provided buffer `acc[t][r][8]`.  A dot
 * product is therefore the same sequence of floating-point operations whatever the tile
 * shape, the k-chunking, the number of tokens in the batch or the thread that computes it:
 * a sequence decoded alone and inside a batch gives bit-identical logits.  `*_finish`
 * reduces the lanes once, at the end.
 */
#ifndef XLLM_SIMD_H
#define XLLM_SIMD_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XLLM_X86 1
#define XLLM_AVX2_FN __attribute__((target("avx2,fma,f16c")))
#else
#define XLLM_X86 0
#endif

/* ------------------------------------------------------------------ dispatch */

/* Levels, each a superset of the one before: AVX512 adds VNNI int8 dot products
 * (vpdpbusd on 256-bit registers) to the quantized kernels; float kernels stay AVX2. */
enum { XLLM_SIMD_SCALAR = 0, XLLM_SIMD_AVX2 = 1, XLLM_SIMD_AVX512 = 2 };
static int xllm_simd_level = XLLM_SIMD_SCALAR;

#if XLLM_X86
#define XLLM_AVX512_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))
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

/* Select a path: the highest level <= `level` this CPU has; returns the level in force. */
static int xllm_set_simd_level(int level) {
    if (level >= XLLM_SIMD_AVX512 && xllm_cpu_has_avx512vnni()) xllm_simd_level = XLLM_SIMD_AVX512;
    else if (level >= XLLM_SIMD_AVX2 && xllm_cpu_has_avx2()) xllm_simd_level = XLLM_SIMD_AVX2;
    else xllm_simd_level = XLLM_SIMD_SCALAR;
    return xllm_simd_level;
}

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
 * and, for Q4_0 weights, neg8sum[j] = -8 * (qs[4j] + .. + qs[4j+3]): Q4_0 stores w + 8 as an
 * unsigned nibble n, and sum((n - 8) * x) = sum(n * x) + neg8sum, lane by lane, exactly. */
typedef struct {
    float d;                    /* scale (an fp16 value) */
    int32_t neg8sum[8];         /* -8 * sum of qs over each group of 4 */
    int8_t qs[XLLM_QK];
} xllm_block_q8_act;

static void xllm_quantize_row_q8_act(const float *x, xllm_block_q8_act *y, int n) {
    xllm_block_q8_0 q;
    for (int b = 0; b < n / XLLM_QK; b++) {
        xllm_quantize_row_q8_0(x + b * XLLM_QK, &q, XLLM_QK);
        y[b].d = xllm_fp16_to_fp32(q.d);
        memcpy(y[b].qs, q.qs, XLLM_QK);
        for (int j = 0; j < 8; j++)
            y[b].neg8sum[j] = -8 * ((int)q.qs[4 * j] + q.qs[4 * j + 1] + q.qs[4 * j + 2] + q.qs[4 * j + 3]);
    }
}

/* Dequantize one row of n values of the given type into floats. */
static void xllm_dequantize_row(int type, const void *src, float *dst, int n) {
    if (type == XLLM_F32) {
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

/* ------------------------------------------------------------------ matmul tiles
 *
 * One call accumulates, for rows r < nr of W (row r at w + r*ldw bytes) and tokens t < nt
 * (token t at x + t*ldx), the products over the k-range [k0, k1) into acc[(t*ldacc + r)*8 ..+8].
 * For F32/F16, k counts values and x is float; [k0, k1) is a multiple of 8 except for a
 * final range reaching n, whose leftover (< 8) is added by `finish`.  For Q8_0/Q4_0, k
 * counts 32-value blocks and x is the activation quantized to Q8_0 (xllm_block_q8_act).
 */

#define XLLM_TILE_ROWS 3     /* rows per micro-tile: 3 rows x 4 tokens = 12 accumulators */
#define XLLM_TILE_TOKENS 4
#ifndef XLLM_ROW_GROUP
#define XLLM_ROW_GROUP 24    /* weight rows per parallel work item (a multiple of XLLM_TILE_ROWS) */
#endif
#ifndef XLLM_K_CHUNK
#define XLLM_K_CHUNK 2048    /* values per k-chunk when several tokens share each weight row (tuned: larger chunks amortize the accumulator round trip) */
#endif
#ifndef XLLM_PREFETCH_BYTES
#define XLLM_PREFETCH_BYTES 4096   /* software prefetch distance for decode's weight stream */
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
                    for (int l = 0; l < 8; l++) a[l] += xllm_fp16_to_fp32(wr[k + l]) * xt[k + l];
            }
        }
    }
}

static void xllm_tile_quant_scalar(int type, const char *w, size_t ldw, int nr,
                                   const xllm_block_q8_act *x, size_t ldx, int nt, int b0, int b1,
                                   float *acc, int ldacc) {
    for (int t = 0; t < nt; t++) {
        const xllm_block_q8_act *xt = x + t * ldx;
        for (int r = 0; r < nr; r++) {
            float *a = acc + ((size_t)t * ldacc + r) * 8;
            for (int b = b0; b < b1; b++) {
                int lanes[8] = {0};
                float d;
                if (type == XLLM_Q8_0) {
                    const xllm_block_q8_0 *wb = (const xllm_block_q8_0 *)(w + r * ldw) + b;
                    for (int j = 0; j < 32; j++) lanes[j / 4] += (int)wb->qs[j] * (int)xt[b].qs[j];
                    d = xllm_fp16_to_fp32(wb->d) * xt[b].d;
                } else {
                    const xllm_block_q4_0 *wb = (const xllm_block_q4_0 *)(w + r * ldw) + b;
                    for (int j = 0; j < 16; j++) {
                        lanes[j / 4] += ((wb->qs[j] & 0x0f) - 8) * (int)xt[b].qs[j];
                        lanes[(j + 16) / 4] += ((wb->qs[j] >> 4) - 8) * (int)xt[b].qs[j + 16];
                    }
                    d = xllm_fp16_to_fp32(wb->d) * xt[b].d;
                }
                for (int l = 0; l < 8; l++) a[l] += d * (float)lanes[l];
            }
        }
    }
}

#if XLLM_X86
XLLM_AVX2_FN static inline __m256 xllm_load8_avx2(int type, const char *row, int k) {
    if (type == XLLM_F32) return _mm256_loadu_ps((const float *)row + k);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
}

XLLM_AVX2_FN static void xllm_tile_float_avx2(int type, const char *w, size_t ldw, int nr,
                                              const float *x, size_t ldx, int nt, int k0, int k1,
                                              float *acc, int ldacc) {
    int kv = k0 + ((k1 - k0) & ~7);
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
        for (; r + 3 <= nr; r += 3) {
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
    for (int t = 0; t < nt; t++) {            /* edge tiles: one (row, token) pair at a time */
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

/* One weight block times one activation block: 8 int32 lanes of 4 products each, as float.
 * Q8_0: maddubs on |w| and x with w's sign (the ggml sign trick).  Q4_0: maddubs on the
 * unsigned nibbles and x, plus the activation's precomputed -8 * sum(x) per lane. */
XLLM_AVX2_FN static inline __m256 xllm_qdot_avx2(int type, const char *row, int b,
                                                 const xllm_block_q8_act *xb) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i x = _mm256_loadu_si256((const __m256i *)xb->qs);
    if (type == XLLM_Q8_0) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(((const xllm_block_q8_0 *)row)[b].qs));
        __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
    }
    __m128i packed = _mm_loadu_si128((const __m128i *)(((const xllm_block_q4_0 *)row)[b].qs));
    __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                                   _mm256_set1_epi8(0x0f));
    __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, x), ones);
    return _mm256_cvtepi32_ps(_mm256_add_epi32(p32, _mm256_loadu_si256((const __m256i *)xb->neg8sum)));
}

XLLM_AVX2_FN static inline float xllm_load_qd(int type, const char *row, int b) {
    uint16_t d = type == XLLM_Q8_0 ? ((const xllm_block_q8_0 *)row)[b].d
                                   : ((const xllm_block_q4_0 *)row)[b].d;
    return _cvtsh_ss(d);
}

XLLM_AVX2_FN static void xllm_tile_quant_avx2(int type, const char *w, size_t ldw, int nr,
                                              const xllm_block_q8_act *x, size_t ldx, int nt,
                                              int b0, int b1, float *acc, int ldacc) {
    const size_t block_bytes = type == XLLM_Q8_0 ? sizeof(xllm_block_q8_0) : sizeof(xllm_block_q4_0);
    if (nr == 3 && nt == 4) {
        __m256 c[3][4];
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 3; r++) c[r][t] = _mm256_loadu_ps(acc + ((size_t)t * ldacc + r) * 8);
        for (int b = b0; b < b1; b++) {
            float wd[3];
            for (int r = 0; r < 3; r++) wd[r] = xllm_load_qd(type, w + r * ldw, b);
            for (int t = 0; t < 4; t++) {
                const xllm_block_q8_act *xb = x + t * ldx + b;
                for (int r = 0; r < 3; r++)
                    c[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * xb->d),
                                              xllm_qdot_avx2(type, w + r * ldw, b, xb), c[r][t]);
            }
        }
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 3; r++) _mm256_storeu_ps(acc + ((size_t)t * ldacc + r) * 8, c[r][t]);
        return;
    }
    /* one token (decode), and edge tiles: each row on its own, rows one after another, so a
     * thread's weights are one sequential stream (prefetched ahead in software) */
    for (int t = 0; t < nt; t++) {
        const xllm_block_q8_act *xt = x + t * ldx;
        for (int r = 0; r < nr; r++) {
            const char *w0 = w + r * ldw;
            float *a = acc + ((size_t)t * ldacc + r) * 8;
            __m256 c0 = _mm256_loadu_ps(a);
            for (int b = b0; b < b1; b++) {
                _mm_prefetch(w0 + (size_t)b * block_bytes + XLLM_PREFETCH_BYTES, _MM_HINT_T0);
                c0 = _mm256_fmadd_ps(_mm256_set1_ps(xllm_load_qd(type, w0, b) * xt[b].d),
                                     xllm_qdot_avx2(type, w0, b, xt + b), c0);
            }
            _mm256_storeu_ps(a, c0);
        }
    }
}
#endif

#if XLLM_X86
/* The same integer lanes as xllm_qdot_avx2, with vpdpbusd (unsigned x signed bytes, four
 * products summed into each int32 lane of the accumulator operand):
 *   Q8_0: x + 128 is unsigned (x ^ 0x80), and the accumulator starts at -128 * sum(w);
 *   Q4_0: the nibbles are unsigned, and the accumulator starts at the activation's neg8sum.
 * Results are bit-identical to the AVX2 path. */
XLLM_AVX512_FN static inline __m256i xllm_q4_nibbles_vnni(const char *row, int b) {
    __m128i packed = _mm_loadu_si128((const __m128i *)(((const xllm_block_q4_0 *)row)[b].qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0f));
}

XLLM_AVX512_FN static void xllm_tile_quant_vnni(int type, const char *w, size_t ldw, int nr,
                                                const xllm_block_q8_act *x, size_t ldx, int nt,
                                                int b0, int b1, float *acc, int ldacc) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    const __m256i zero = _mm256_setzero_si256();
    const size_t block_bytes = type == XLLM_Q8_0 ? sizeof(xllm_block_q8_0) : sizeof(xllm_block_q4_0);
    if (nr == 3 && nt == 4) {
        __m256 c[3][4];
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 3; r++) c[r][t] = _mm256_loadu_ps(acc + ((size_t)t * ldacc + r) * 8);
        for (int b = b0; b < b1; b++) {
            __m256i wv[3], start[3];
            __m256 bw[3];
            for (int r = 0; r < 3; r++) {
                const char *row = w + r * ldw;
                bw[r] = _mm256_set1_ps(xllm_load_qd(type, row, b));
                if (type == XLLM_Q8_0) {
                    wv[r] = _mm256_loadu_si256((const __m256i *)(((const xllm_block_q8_0 *)row)[b].qs));
                    start[r] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, wv[r]));
                } else {
                    wv[r] = xllm_q4_nibbles_vnni(row, b);
                }
            }
            for (int t = 0; t < 4; t++) {
                const xllm_block_q8_act *xb = x + t * ldx + b;
                __m256 bx = _mm256_set1_ps(xb->d);
                __m256i xq = _mm256_loadu_si256((const __m256i *)xb->qs);
                if (type == XLLM_Q8_0) {
                    __m256i xu = _mm256_xor_si256(xq, bias);
                    for (int r = 0; r < 3; r++)
                        c[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(bw[r], bx),
                                                  _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start[r], xu, wv[r])), c[r][t]);
                } else {
                    __m256i ns = _mm256_loadu_si256((const __m256i *)xb->neg8sum);
                    for (int r = 0; r < 3; r++)
                        c[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(bw[r], bx),
                                                  _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(ns, wv[r], xq)), c[r][t]);
                }
            }
        }
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 3; r++) _mm256_storeu_ps(acc + ((size_t)t * ldacc + r) * 8, c[r][t]);
        return;
    }
    for (int t = 0; t < nt; t++) {      /* decode and edge tiles: rows one after another */
        const xllm_block_q8_act *xt = x + t * ldx;
        for (int r = 0; r < nr; r++) {
            const char *w0 = w + r * ldw;
            float *a = acc + ((size_t)t * ldacc + r) * 8;
            __m256 c0 = _mm256_loadu_ps(a);
            for (int b = b0; b < b1; b++) {
                _mm_prefetch(w0 + (size_t)b * block_bytes + XLLM_PREFETCH_BYTES, _MM_HINT_T0);
                __m256i xq = _mm256_loadu_si256((const __m256i *)xt[b].qs);
                __m256i p;
                if (type == XLLM_Q8_0) {
                    __m256i wq = _mm256_loadu_si256((const __m256i *)(((const xllm_block_q8_0 *)w0)[b].qs));
                    __m256i start = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, wq));
                    p = _mm256_dpbusd_epi32(start, _mm256_xor_si256(xq, bias), wq);
                } else {
                    p = _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)xt[b].neg8sum),
                                            xllm_q4_nibbles_vnni(w0, b), xq);
                }
                c0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(xllm_load_qd(type, w0, b)),
                                                   _mm256_set1_ps(xt[b].d)),
                                     _mm256_cvtepi32_ps(p), c0);
            }
            _mm256_storeu_ps(a, c0);
        }
    }
}
#endif

/* Accumulate one tile; `x` is float (F32/F16 weights) or xllm_block_q8_act (Q8_0/Q4_0 weights). */
static inline void xllm_tile(int type, const char *w, size_t ldw, int nr, const void *x, size_t ldx,
                             int nt, int k0, int k1, float *acc, int ldacc) {
    if (type == XLLM_F32 || type == XLLM_F16) {
#if XLLM_X86
        if (xllm_simd_level >= XLLM_SIMD_AVX2) {
            xllm_tile_float_avx2(type, w, ldw, nr, (const float *)x, ldx, nt, k0, k1, acc, ldacc);
            return;
        }
#endif
        xllm_tile_float_scalar(type, w, ldw, nr, (const float *)x, ldx, nt, k0, k1, acc, ldacc);
    } else {
#if XLLM_X86
        if (xllm_simd_level == XLLM_SIMD_AVX512) {
            xllm_tile_quant_vnni(type, w, ldw, nr, (const xllm_block_q8_act *)x, ldx, nt, k0, k1, acc, ldacc);
            return;
        }
        if (xllm_simd_level == XLLM_SIMD_AVX2) {
            xllm_tile_quant_avx2(type, w, ldw, nr, (const xllm_block_q8_act *)x, ldx, nt, k0, k1, acc, ldacc);
            return;
        }
#endif
        xllm_tile_quant_scalar(type, w, ldw, nr, (const xllm_block_q8_act *)x, ldx, nt, k0, k1, acc, ldacc);
    }
}

/* Reduce the 8 lanes of each (row, token) pair and add the float tail k in [kv, n) (F32/F16
 * only; quantized rows have none): y[t*ldy + r] = sum. The lane order matches xllm_hsum_avx2. */
static void xllm_tile_finish(int type, const char *w, size_t ldw, int nr, const float *x, size_t ldx,
                             int nt, int n, const float *acc, int ldacc, float *y, size_t ldy) {
    int kv = (type == XLLM_F32 || type == XLLM_F16) ? (n & ~7) : n;
    for (int t = 0; t < nt; t++) {
        for (int r = 0; r < nr; r++) {
            const float *l = acc + ((size_t)t * ldacc + r) * 8;
            float s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
            if (kv < n) {
                const float *xt = x + t * ldx;
                for (int k = kv; k < n; k++) {
                    float wk = type == XLLM_F32 ? ((const float *)(w + r * ldw))[k]
                                                : xllm_fp16_to_fp32(((const uint16_t *)(w + r * ldw))[k]);
                    s += wk * xt[k];
                }
            }
            y[t * ldy + r] = s;
        }
    }
}

#endif /* XLLM_SIMD_H */
