/* simd_kv.h: the KV cache in F32, F16, BF16 or Q8_0, and attention reading each directly.
 *
 * A cache row is one position's keys (or values) of one layer, kv_dim = n_kv_heads * head_dim
 * values stored in the cache's type; a head's part of the row is row_bytes / n_kv_heads bytes
 * (Q8_0 needs head_dim % 32 == 0, so its 32-value blocks never straddle two heads).
 *
 * Writing rounds each value once, the same on every SIMD level (AVX2/F16C or scalar): F16
 * round-to-nearest-even like F16C's _cvtss_sh(x, 0) and numpy's astype(float16); BF16
 * round-to-nearest-even with NaN kept quiet, as ggml's GGML_FP32_TO_BF16; Q8_0 ggml's quantize_row_q8_0_ref (d = max|x| / 127
 * stored as F16, q = round-half-away(x / d)).
 *
 * Attention widens the stored values in registers as it reads them (no widened copy of the
 * cache).  A Q8_0 value is d * q, an F16 number times an 8-bit integer: at most 19
 * significant bits, so the float32 product is exact and the kernel works on exactly the
 * values a float64 reference dequantizes.  F32 keeps simd.h's xllm_attend_block, bit for bit.
 * Each path sums in a fixed order that depends only on head_dim and the block's positions,
 * never on the batch: incremental == recompute and alone == batch hold for every type.
 * These per-head kernels run at the scalar level and for AVX2 head sizes off a multiple of
 * 8; elsewhere simd_attend_group.h serves the query heads of a group together.
 */
#ifndef XLLM_SIMD_KV_H
#define XLLM_SIMD_KV_H

#include "simd.h"

/* Bytes of one cache row of n values (n % 32 == 0 for Q8_0). */
static inline size_t xllm_kv_row_bytes(int type, int n) {
    if (type == XLLM_F32) return (size_t)n * sizeof(float);
    if (type == XLLM_Q8_0) return (size_t)(n / XLLM_QK) * sizeof(xllm_block_q8_0);
    return (size_t)n * sizeof(uint16_t);
}

/* Round to nearest even; NaN stays a (quiet) NaN: ggml's GGML_FP32_TO_BF16. */
static inline uint16_t xllm_fp32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

#if XLLM_X86
/* 8 values at a time, the bits of the scalar roundings: F16C's vcvtps2ph rounds to nearest
 * even exactly like xllm_fp32_to_fp16 except for NaN payloads, so a group holding a NaN takes
 * the scalar path; BF16 is the same integer steps as xllm_fp32_to_bf16, lane by lane.  (A
 * GPT-2-size prefill of 128 tokens spent 17-22% of its time in the scalar F16 loop.) */
XLLM_AVX2_FN static int xllm_kv_store_half_avx2(int type, const float *x, uint16_t *h, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        if (type == XLLM_F16) {
            if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
                for (int j = 0; j < 8; j++) h[i + j] = xllm_fp32_to_fp16(x[i + j]);
                continue;
            }
            _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        } else {
            const __m256i u = _mm256_castps_si256(v);
            const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                                   _mm256_set1_epi32(0x7f800000));
            const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
            const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
            const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
            _mm_storeu_si128((__m128i *)(h + i), _mm256_castsi256_si128(packed));
        }
    }
    return i;
}
#endif

/* Store n floats as one cache row of `type`. */
static void xllm_kv_store_row(int type, const float *x, void *dst, int n) {
    if (type == XLLM_F32) {
        memcpy(dst, x, (size_t)n * sizeof(float));
    } else if (type == XLLM_F16 || type == XLLM_BF16) {
        uint16_t *h = (uint16_t *)dst;
        int i = 0;
#if XLLM_X86
        if (xllm_simd_level >= XLLM_SIMD_AVX2) i = xllm_kv_store_half_avx2(type, x, h, n);
#endif
        for (; i < n; i++) h[i] = type == XLLM_F16 ? xllm_fp32_to_fp16(x[i]) : xllm_fp32_to_bf16(x[i]);
    } else {
        xllm_quantize_row_q8_0(x, (xllm_block_q8_0 *)dst, n);
    }
}

/* Value i of a stored row (not F32: that path reads floats). */
static inline float xllm_kv_value(int type, const char *row, int i) {
    if (type == XLLM_F16) return xllm_fp16_to_fp32(((const uint16_t *)row)[i]);
    if (type == XLLM_BF16) return xllm_bf16_to_fp32(((const uint16_t *)row)[i]);
    const xllm_block_q8_0 *b = (const xllm_block_q8_0 *)row + i / XLLM_QK;
    return xllm_fp16_to_fp32(b->d) * (float)b->qs[i % XLLM_QK];
}

/* ------------------------------------------------------------------ scalar */

static void xllm_attend_block_kv_scalar(int type, const float *q, const char *kb, const char *vb,
                                        size_t stride, int n_pos, int hd, float scale, float *m,
                                        float *l, float *out, float *scores) {
    float m_new = *m;
    for (int j = 0; j < n_pos; j++) {
        const char *k = kb + j * stride;
        float s = 0.0f;
        for (int i = 0; i < hd; i++) s += q[i] * xllm_kv_value(type, k, i);
        scores[j] = s * scale;
        if (scores[j] > m_new) m_new = scores[j];
    }
    float corr = expf(*m - m_new);
    if (corr != 1.0f) {
        *l *= corr;
        for (int i = 0; i < hd; i++) out[i] *= corr;
    }
    for (int j = 0; j < n_pos; j++) {
        float e = expf(scores[j] - m_new);
        const char *v = vb + j * stride;
        *l += e;
        for (int i = 0; i < hd; i++) out[i] += e * xllm_kv_value(type, v, i);
    }
    *m = m_new;
}

/* ------------------------------------------------------------------ AVX2 */

#if XLLM_X86
/* 8 values of a stored row from value c on (Q8_0: c % 8 == 0, inside one block). */
XLLM_AVX2_FN static inline __m256 xllm_kv_load8_avx2(const int type, const char *row, int c) {
    if (type == XLLM_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
    if (type == XLLM_BF16) return xllm_load8_bf16_avx2((const uint16_t *)row + c);
    const xllm_block_q8_0 *b = (const xllm_block_q8_0 *)row + c / XLLM_QK;
    __m128i q8 = _mm_loadl_epi64((const __m128i *)(b->qs + c % XLLM_QK));
    return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
}

/* q . k over one stored key: 8 lanes over the multiple-of-8 part, then the lanes reduced
 * (xllm_hsum_avx2) and the tail added in order. */
XLLM_AVX2_FN static inline float xllm_kv_dot_avx2(const int type, const float *q, const char *k, int hd) {
    __m256 acc = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= hd; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), xllm_kv_load8_avx2(type, k, c), acc);
    float s = xllm_hsum_avx2(acc);
    for (; c < hd; c++) s += q[c] * xllm_kv_value(type, k, c);
    return s;
}

XLLM_AVX2_FN static inline __attribute__((always_inline)) void
xllm_attend_block_kv_avx2_t(const int type, const float *q, const char *kb, const char *vb, size_t stride,
                            int n_pos, int hd, float scale, float *m, float *l, float *out, float *scores) {
    const int hd8 = hd & ~7;
    __m256 vmax = _mm256_set1_ps(*m);
    int j = 0;
    for (; j + 8 <= n_pos; j += 8) {             /* 8 dot products, reduced together */
        __m256 a[8];
        for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
        if (type == XLLM_Q8_0) {                 /* a block's scale broadcast once per key */
            for (int c0 = 0; c0 < hd; c0 += XLLM_QK) {
                __m256 qc[4];
                for (int u = 0; u < 4; u++) qc[u] = _mm256_loadu_ps(q + c0 + 8 * u);
                for (int i = 0; i < 8; i++) {
                    const xllm_block_q8_0 *b = (const xllm_block_q8_0 *)(kb + (j + i) * stride) + c0 / XLLM_QK;
                    __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
                    for (int u = 0; u < 4; u++) {
                        __m128i q8 = _mm_loadl_epi64((const __m128i *)(b->qs + 8 * u));
                        __m256 kv = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
                        a[i] = _mm256_fmadd_ps(qc[u], kv, a[i]);
                    }
                }
            }
        } else {
            for (int c = 0; c < hd8; c += 8) {
                __m256 qc = _mm256_loadu_ps(q + c);
                for (int i = 0; i < 8; i++)
                    a[i] = _mm256_fmadd_ps(qc, xllm_kv_load8_avx2(type, kb + (j + i) * stride, c), a[i]);
            }
        }
        __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
        __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
        __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
        _mm256_storeu_ps(scores + j, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                                   _mm256_permute2f128_ps(u0, u1, 0x31)));
        for (int i = 0; i < 8; i++) {            /* head sizes off a multiple of 8: the tail */
            const char *k = kb + (j + i) * stride;
            for (int c = hd8; c < hd; c++) scores[j + i] += q[c] * xllm_kv_value(type, k, c);
        }
        __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(scale));
        vmax = _mm256_max_ps(vmax, sc);
        _mm256_storeu_ps(scores + j, sc);
    }
    float m_new = xllm_hmax_avx2(vmax);          /* the running max and the scores' */
    for (; j < n_pos; j++) {
        scores[j] = xllm_kv_dot_avx2(type, q, kb + j * stride, hd) * scale;
        m_new = scores[j] > m_new ? scores[j] : m_new;
    }
    float corr = xllm_softmax_block_avx2(scores, n_pos, *m, m_new, l);
    for (int c0 = 0; c0 < hd8; c0 += 64) {       /* out in registers, 64 values at a time */
        int nc = hd8 - c0 < 64 ? (hd8 - c0) / 8 : 8;
        __m256 o[8];
        __m256 vc = _mm256_set1_ps(corr);
        for (int c = 0; c < nc; c++) o[c] = _mm256_mul_ps(_mm256_loadu_ps(out + c0 + 8 * c), vc);
        for (j = 0; j < n_pos; j++) {
            __m256 e = _mm256_set1_ps(scores[j]);
            const char *v = vb + j * stride;
            for (int c = 0; c < nc; c++)
                o[c] = _mm256_fmadd_ps(e, xllm_kv_load8_avx2(type, v, c0 + 8 * c), o[c]);
        }
        for (int c = 0; c < nc; c++) _mm256_storeu_ps(out + c0 + 8 * c, o[c]);
    }
    for (int c = hd8; c < hd; c++) {             /* the tail columns, positions in order */
        float o = out[c] * corr;
        for (j = 0; j < n_pos; j++) o = fmaf(scores[j], xllm_kv_value(type, vb + j * stride, c), o);
        out[c] = o;
    }
    *m = m_new;
}

XLLM_AVX2_FN static void xllm_attend_block_f16_avx2(const float *q, const char *kb, const char *vb, size_t stride,
                                                    int n_pos, int hd, float scale, float *m, float *l,
                                                    float *out, float *scores) {
    xllm_attend_block_kv_avx2_t(XLLM_F16, q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
}

XLLM_AVX2_FN static void xllm_attend_block_bf16_avx2(const float *q, const char *kb, const char *vb, size_t stride,
                                                     int n_pos, int hd, float scale, float *m, float *l,
                                                     float *out, float *scores) {
    xllm_attend_block_kv_avx2_t(XLLM_BF16, q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
}

XLLM_AVX2_FN static void xllm_attend_block_q8_0_avx2(const float *q, const char *kb, const char *vb, size_t stride,
                                                     int n_pos, int hd, float scale, float *m, float *l,
                                                     float *out, float *scores) {
    xllm_attend_block_kv_avx2_t(XLLM_Q8_0, q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
}

#endif

/* One block of n_pos cached positions into the online softmax (simd.h's xllm_attend_block):
 * kb / vb point at the head's part of the block's first key / value row, rows `stride` bytes
 * apart; m, l: running max and sum; out: (hd,) unnormalized output; scores: n_pos floats. */
static inline void xllm_attend_block_kv(int type, const float *q, const char *kb, const char *vb,
                                        size_t stride, int n_pos, int hd, float scale, float *m,
                                        float *l, float *out, float *scores) {
    if (type == XLLM_F32) {
        xllm_attend_block(q, (const float *)kb, (const float *)vb, stride / sizeof(float), n_pos, hd, scale,
                          m, l, out, scores);
        return;
    }
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) {
        if (type == XLLM_F16) xllm_attend_block_f16_avx2(q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
        else if (type == XLLM_BF16) xllm_attend_block_bf16_avx2(q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
        else xllm_attend_block_q8_0_avx2(q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
        return;
    }
#endif
    xllm_attend_block_kv_scalar(type, q, kb, vb, stride, n_pos, hd, scale, m, l, out, scores);
}

#endif
