/* simd_kquants.h: the K-quant tensor types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), included from simd.h.
 *
 * The file's blocks of 256 values (llama.cpp's ggml-common.h structures, byte for byte) are
 * dequantized from the file's rows here (embedding lookups); matmuls read them repacked into
 * 16-row panels (simd_kquant_panels.h).  Activations are quantized once per matmul to a
 * Q8_K-like block (ggml's quantize_row_q8_K_ref: 256 int8 values, an fp32 scale, 16 sums of
 * 16 values; here also the 8 sums of 32).
 *
 * Every K type is read through one canonical form of a 256-block: unsigned values q[i]
 * (Q2_K 0..3, Q3_K 0..7, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63), one int8 scale sc[j] and one
 * int8 min mn[j] per 16 values, and two fp16 super-scales d, dmin:
 *     Q2_K, Q4_K, Q5_K:  w[i] = (d * sc[j]) * q[i] - dmin * mn[j]
 *     Q3_K, Q6_K:        w[i] = (d * sc[j]) * (q[i] - off),    off = 4 / 32
 * (Q4_K/Q5_K's scales and mins per 32 values appear twice.)  A block's dot product with an
 * activation block (scale dx, values x, sums bsum[j]) is then two exact int32 sums,
 *     isum = sum_j sc[j] * sum_{i in j} q[i] x[i]      msum = sum_j mn[j] * bsum[j]
 * (folded types: mn = sc and isum -= off * msum), and a fixed sequence of float operations
 *     acc = fma(d * dx, (float)isum, acc);  acc = fma(-(dmin * dx), (float)msum, acc)
 * (folded types: only the first), one accumulator per (row, token) over the blocks in order.
 * The integer sums are exact in any order, so the scalar, AVX2 and AVX-512 VNNI paths, any
 * token tile and any thread give the same bits. */
#ifndef XLLM_SIMD_KQUANTS_H
#define XLLM_SIMD_KQUANTS_H

#define XLLM_QK_K 256

enum { XLLM_Q2_K = 10, XLLM_Q3_K = 11, XLLM_Q4_K = 12, XLLM_Q5_K = 13, XLLM_Q6_K = 14 };

/* Activation block: qs first so that a 64-byte aligned buffer keeps every qs load aligned. */
typedef struct {
    int8_t qs[XLLM_QK_K];       /* values = d * qs */
    int16_t bsums[16];          /* bsums[j] = qs[16j] + .. + qs[16j + 15] */
    float d;                    /* scale */
    int16_t bsums32[8];         /* bsums32[j] = bsums[2j] + bsums[2j + 1] (the Q4_K/Q5_K min sums) */
    float pad[3];
} xllm_block_q8k;

_Static_assert(sizeof(xllm_block_q8k) == 320, "activation block is 256 + 32 + 32 bytes");

static inline int xllm_is_kquant(int type) { return type >= XLLM_Q2_K && type <= XLLM_Q6_K; }

/* Bytes of one 256-value block of a K type. */
static inline int xllm_kq_block_bytes(int type) {
    switch (type) {
    case XLLM_Q2_K: return 84;
    case XLLM_Q3_K: return 110;
    case XLLM_Q4_K: return 144;
    case XLLM_Q5_K: return 176;
    case XLLM_Q6_K: return 210;
    default: return 0;
    }
}

/* off of the folded types (w = d sc (q - off)); 0 for the types with a separate min. */
static inline int xllm_kq_offset(int type) {
    return type == XLLM_Q3_K ? 4 : type == XLLM_Q6_K ? 32 : 0;
}

/* ggml's nearest_int: round half to even through the 1.5 * 2^23 trick. */
static inline int xllm_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* quantize_row_q8_K_ref of ggml, for n (multiple of 256) values; a zero block gets zero sums. */
static void xllm_quantize_row_q8k_scalar(const float *x, xllm_block_q8k *y, int n) {
    for (int b = 0; b < n / XLLM_QK_K; b++, x += XLLM_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < XLLM_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        memset(y[b].pad, 0, sizeof(y[b].pad));
        if (!amax) {
            y[b].d = 0;
            memset(y[b].qs, 0, sizeof(y[b].qs));
            memset(y[b].bsums, 0, sizeof(y[b].bsums));
            memset(y[b].bsums32, 0, sizeof(y[b].bsums32));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < XLLM_QK_K; j++) {
            int v = xllm_nearest_int(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += y[b].qs[16 * j + i];
            y[b].bsums[j] = (int16_t)sum;
        }
        for (int j = 0; j < 8; j++) y[b].bsums32[j] = (int16_t)(y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        y[b].d = 1 / iscale;
    }
}

#if XLLM_X86
/* The same blocks on AVX-512 (prefill quantizes every K-quant matmul's input: 128 tokens of a
 * TinyLlama layer are ~5,900 blocks): the largest |x| by a vector max, the first value that
 * has it (the scalar loop keeps the first of equal magnitudes, so the sign of a tie is the
 * earlier value's), x * iscale rounded to nearest even by vcvtps2dq (xllm_nearest_int's
 * rounding for |v| < 2^22), 16-value sums by reduction.  A block with an infinite or NaN value
 * goes through the scalar loop, whose integer conversion of NaN the vector one does not share. */
XLLM_AVX512_FN static void xllm_quantize_row_q8k_avx512(const float *x, xllm_block_q8k *y, int n) {
    const __m512 inf = _mm512_set1_ps(INFINITY);
    for (int b = 0; b < n / XLLM_QK_K; b++, x += XLLM_QK_K) {
        __m512 v[16], m = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int i = 0; i < 16; i++) {
            v[i] = _mm512_loadu_ps(x + 16 * i);
            const __m512 a = _mm512_abs_ps(v[i]);
            bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);       /* inf or NaN */
            m = _mm512_max_ps(a, m);
        }
        const float amax = _mm512_reduce_max_ps(m);
        if (bad || !amax) {
            xllm_quantize_row_q8k_scalar(x, y + b, XLLM_QK_K);
            continue;
        }
        float max = amax;
        for (int i = 0; i < 16; i++) {
            const __mmask16 e = _mm512_cmp_ps_mask(_mm512_abs_ps(v[i]), _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (e) { max = x[16 * i + __builtin_ctz((unsigned)e)]; break; }
        }
        const float iscale = -127.f / max;
        const __m512 is = _mm512_set1_ps(iscale);
        for (int i = 0; i < 16; i++) {
            const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(is, v[i])), _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * i), _mm512_cvtepi32_epi8(q));
            y[b].bsums[i] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        for (int j = 0; j < 8; j++) y[b].bsums32[j] = (int16_t)(y[b].bsums[2 * j] + y[b].bsums[2 * j + 1]);
        memset(y[b].pad, 0, sizeof(y[b].pad));
        y[b].d = 1 / iscale;
    }
}
#endif

/* Float rows (n a multiple of 256) -> Q8_K blocks, at the level in force (the same bytes). */
static void xllm_quantize_row_q8k(const float *x, xllm_block_q8k *y, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX512) { xllm_quantize_row_q8k_avx512(x, y, n); return; }
#endif
    xllm_quantize_row_q8k_scalar(x, y, n);
}

/* ------------------------------------------------------------------ scales and mins */

/* Q4_K/Q5_K: the 12 packed bytes -> bytes 0..7 the 6-bit scales, 8..15 the 6-bit mins
 * (llama.cpp's utmp rearrangement, equal to get_scale_min_k4 for j = 0..7). */
static inline void xllm_kq_scale_min_k4(const uint8_t *packed, uint8_t out[16]) {
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    uint32_t u[4];
    memcpy(u, packed, 12);
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t uaux = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = uaux;
    u[0] &= kmask1;
    memcpy(out, u, 16);
}

/* Q3_K: the 12 packed bytes -> the 16 6-bit scales minus 32 (dequantize_row_q3_K's aux). */
static inline void xllm_kq_scales_q3k(const uint8_t *packed, int8_t out[16]) {
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    memcpy(aux, packed, 12);
    uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    memcpy(out, aux, 16);
    for (int j = 0; j < 16; j++) out[j] = (int8_t)(out[j] - 32);
}

/* The per-16 scales and mins and the super-scales of one block (the canonical form above). */
static inline void xllm_kq_block_scales(int type, const uint8_t *blk, int8_t sc[16], int8_t mn[16],
                                        float *d, float *dmin) {
    uint16_t h;
    uint8_t sm[16];
    switch (type) {
    case XLLM_Q2_K:                             /* scales[16], qs[64], d, dmin */
        for (int j = 0; j < 16; j++) { sc[j] = (int8_t)(blk[j] & 0x0f); mn[j] = (int8_t)(blk[j] >> 4); }
        memcpy(&h, blk + 80, 2); *d = xllm_fp16_to_fp32(h);
        memcpy(&h, blk + 82, 2); *dmin = xllm_fp16_to_fp32(h);
        break;
    case XLLM_Q3_K:                             /* hmask[32], qs[64], scales[12], d */
        xllm_kq_scales_q3k(blk + 96, sc);
        memcpy(mn, sc, 16);
        memcpy(&h, blk + 108, 2); *d = xllm_fp16_to_fp32(h);
        *dmin = 0;
        break;
    case XLLM_Q4_K:                             /* d, dmin, scales[12], qs[128] */
    case XLLM_Q5_K:                             /* d, dmin, scales[12], qh[32], qs[128] */
        xllm_kq_scale_min_k4(blk + 4, sm);
        for (int j = 0; j < 16; j++) { sc[j] = (int8_t)sm[j / 2]; mn[j] = (int8_t)sm[8 + j / 2]; }
        memcpy(&h, blk, 2); *d = xllm_fp16_to_fp32(h);
        memcpy(&h, blk + 2, 2); *dmin = xllm_fp16_to_fp32(h);
        break;
    default:                                    /* Q6_K: ql[128], qh[64], scales[16], d */
        memcpy(sc, blk + 192, 16);
        memcpy(mn, sc, 16);
        memcpy(&h, blk + 208, 2); *d = xllm_fp16_to_fp32(h);
        *dmin = 0;
        break;
    }
}

/* The 256 unsigned values of one block, in order (group g = values 32g..32g+31). */
static inline void xllm_kq_block_values(int type, const uint8_t *blk, uint8_t q[XLLM_QK_K]) {
    for (int g = 0; g < 8; g++) {
        for (int l = 0; l < 32; l++) {
            int v;
            switch (type) {
            case XLLM_Q2_K:
                v = (blk[16 + 32 * (g >> 2) + l] >> (2 * (g & 3))) & 3;
                break;
            case XLLM_Q3_K:
                v = ((blk[32 + 32 * (g >> 2) + l] >> (2 * (g & 3))) & 3) | (((blk[l] >> g) & 1) << 2);
                break;
            case XLLM_Q4_K:
                v = (blk[16 + 32 * (g >> 1) + l] >> (4 * (g & 1))) & 0x0f;
                break;
            case XLLM_Q5_K:
                v = ((blk[48 + 32 * (g >> 1) + l] >> (4 * (g & 1))) & 0x0f) | (((blk[16 + l] >> g) & 1) << 4);
                break;
            default: /* Q6_K */
                v = ((blk[64 * (g >> 2) + 32 * (g & 1) + l] >> (4 * ((g >> 1) & 1))) & 0x0f) |
                    (((blk[128 + 32 * (g >> 2) + l] >> (2 * (g & 3))) & 3) << 4);
                break;
            }
            q[32 * g + l] = (uint8_t)v;
        }
    }
}

/* Dequantize one row of a K type, the same float operations as gguf.quants and ggml's
 * dequantize_row_q*_K (no contraction into FMAs: the products are rounded first). */
__attribute__((optimize("fp-contract=off")))
static void xllm_dequantize_row_kq(int type, const void *src, float *dst, int n) {
    const uint8_t *blk = (const uint8_t *)src;
    const int bytes = xllm_kq_block_bytes(type), off = xllm_kq_offset(type);
    uint8_t q[XLLM_QK_K];
    int8_t sc[16], mn[16];
    float d, dmin;
    for (int b = 0; b < n / XLLM_QK_K; b++, blk += bytes, dst += XLLM_QK_K) {
        xllm_kq_block_scales(type, blk, sc, mn, &d, &dmin);
        xllm_kq_block_values(type, blk, q);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)sc[j];
            if (off) {
                for (int i = 0; i < 16; i++) dst[16 * j + i] = dl * (float)(q[16 * j + i] - off);
            } else {
                const float ml = dmin * (float)mn[j];
                for (int i = 0; i < 16; i++) {
                    const float p = dl * (float)q[16 * j + i];      /* its own statement: clang */
                    dst[16 * j + i] = p - ml;                       /* contracts only within one */
                }
            }
        }
    }
}

/* The fixed float sequence of one (weight block, activation block) pair of one row and token. */
static inline __attribute__((always_inline)) float
xllm_kq_accumulate(float acc, int off, float d, float dmin, float dx, int32_t isum, int32_t msum) {
    if (off) return fmaf(d * dx, (float)(isum - off * msum), acc);
    acc = fmaf(d * dx, (float)isum, acc);
    return fmaf(-(dmin * dx), (float)msum, acc);
}

#include "simd_kquant_panels.h"    /* the matmul tiles: 16-row panels, scalar / AVX2 / AVX-512 */

#endif /* XLLM_SIMD_KQUANTS_H */
