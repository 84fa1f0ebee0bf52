/* simd_attend_group.h: attention of the G query heads that share one KV head (GQA), reading
 * each cached key and value once for all G of them.
 *
 * One call takes one cache block of n_pos positions into G online softmaxes (m, l: (G,);
 * out: G rows hd apart, unnormalized; q: G rows hd apart), in sub-blocks of SUB positions:
 *
 *   scores   every (head, position) dot product of the sub-block, 16 (AVX-512) or 8 (AVX2)
 *            of them accumulated side by side over head_dim and then reduced together by one
 *            transpose-and-add tree (no horizontal sum per score); a vector's lane
 *            p * Gp + g holds head g's score of position k * P + p (Gp: G rounded up to a
 *            power of two; P = lanes / Gp positions per vector);
 *   softmax  the G running maxima, the exponentials and the G sums on those vectors (lanes of
 *            one head combined by a butterfly over lanes Gp apart);
 *   values   out[g] = out[g] * corr[g] + sum_j p[g][j] * v[j], each stored value widened once
 *            for the G heads, C chunks of out in registers per pass.
 *
 * Per position and head that is 2 * head_dim FMAs and nothing else of note: a cached value
 * is read from memory once per call (simd_kv.h's kernels read it once per head, or per 4).
 * Every sum runs in an order fixed by head_dim, the block's positions and G (a property of
 * the model and the level), never by the batch or the threads: incremental == recompute,
 * alone == batch and 1 == N threads hold bit for bit.  The stored values are exact in float
 * (simd_kv.h), so each level computes the float64 function of the stored values within
 * rounding.  AVX-512 takes any head_dim (masked loads); AVX2 head_dim % 8 == 0; otherwise,
 * and at the scalar level, simd_kv.h's per-head kernels run.
 */
#ifndef XLLM_SIMD_ATTEND_GROUP_H
#define XLLM_SIMD_ATTEND_GROUP_H

#include "simd_kv.h"

#define XLLM_GROUP_MAX 8                 /* query heads one call serves */
#define XLLM_GROUP_SCRATCH 128           /* floats of scratch a call needs: SUB x Gp probabilities */

#if XLLM_X86

/* ------------------------------------------------------------------ AVX-512 */

XLLM_AVX512_FN static inline __m512 xllm_exp_avx512(__m512 x) {      /* xllm_exp_avx2, 16 lanes */
    __m512 nn = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(XLLM_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(nn, _mm512_set1_ps(-XLLM_LN2_HI), x);
    r = _mm512_fmadd_ps(nn, _mm512_set1_ps(-XLLM_LN2_LO), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(xllm_exp_poly[0]);
    for (int k = 1; k < 6; k++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(xllm_exp_poly[k]));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(nn), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

/* 16 values of a stored row from value c on (c % 16 == 0), lanes outside `mask` zero and not
 * read.  Q8_0: head_dim % 32 == 0, so a chunk is half a block and wholly in or out. */
XLLM_AVX512_FN static inline __attribute__((always_inline)) __m512
xllm_kv_load16_avx512(const int type, const char *row, int c, __mmask16 mask) {
    if (type == XLLM_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + c);
    if (type == XLLM_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + c));
    if (type == XLLM_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + c)), 16));
    if (!mask) return _mm512_setzero_ps();
    const xllm_block_q8_0 *b = (const xllm_block_q8_0 *)row + c / XLLM_QK;
    __m128i q8 = _mm_loadu_si128((const __m128i *)(b->qs + c % XLLM_QK));
    return _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(b->d)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8)));
}

/* Lane L of the result: the sum of a[L]'s 16 lanes.  The tree's lane order is a permutation
 * that is its own inverse, so feeding a[perm[i]] as input i puts a[L]'s sum in lane L. */
XLLM_AVX512_FN static inline __attribute__((always_inline)) __m512 xllm_hsum16x16_avx512(const __m512 *a) {
    static const int perm[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
    __m512 w[8], u[4], z[2];
    for (int i = 0; i < 8; i++) {
        __m512 x = a[perm[i]], y = a[perm[i + 8]];
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[i], w[i + 4], 0x88), _mm512_shuffle_f32x4(w[i], w[i + 4], 0xDD));
    for (int i = 0; i < 2; i++)
        z[i] = _mm512_add_ps(_mm512_shuffle_ps(u[i], u[i + 2], 0x44), _mm512_shuffle_ps(u[i], u[i + 2], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
}

/* Every lane: the max (sum) over the lanes holding the same head (lane % Gp), a butterfly:
 * both partners of a step add the same two numbers, so the head's lanes agree bit for bit. */
XLLM_AVX512_FN static inline __attribute__((always_inline)) __m512 xllm_head_max_avx512(__m512 v, const int Gp) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int s = Gp; s < 16; s <<= 1)
        v = _mm512_max_ps(v, _mm512_permutexvar_ps(_mm512_xor_si512(lane, _mm512_set1_epi32(s)), v));
    return v;
}

XLLM_AVX512_FN static inline __attribute__((always_inline)) __m512 xllm_head_sum_avx512(__m512 v, const int Gp) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int s = Gp; s < 16; s <<= 1)
        v = _mm512_add_ps(v, _mm512_permutexvar_ps(_mm512_xor_si512(lane, _mm512_set1_epi32(s)), v));
    return v;
}

XLLM_AVX512_FN static inline __attribute__((always_inline)) void
xllm_attend_group_avx512_t(const int type, const int G, const float *q, const char *kb, const char *vb,
                           size_t stride, int n_pos, int hd, float scale, float *m, float *l, float *out,
                           float *probs) {
    enum { SUB = 16 };
    const int Gp = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
    const int shift = Gp == 1 ? 0 : Gp == 2 ? 1 : Gp == 4 ? 2 : 3;
    const int P = 16 / Gp;                              /* positions per score vector */
    const int C = Gp >= 8 ? 2 : 4;                      /* chunks of out per value pass: G * C <= 16 */
    const int nc = (hd + 15) >> 4;
    const __mmask16 last = (hd & 15) ? (__mmask16)((1u << (hd & 15)) - 1) : (__mmask16)0xFFFF;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i head = _mm512_and_si512(lane, _mm512_set1_epi32(Gp - 1));
    const __mmask16 real_head = _mm512_cmplt_epi32_mask(head, _mm512_set1_epi32(G));
    const __m512 lo = _mm512_set1_ps(XLLM_EXP_LO);
    for (int j0 = 0; j0 < n_pos; j0 += SUB) {
        const int n = n_pos - j0 < SUB ? n_pos - j0 : SUB;
        const char *kb0 = kb + (size_t)j0 * stride, *vb0 = vb + (size_t)j0 * stride;
        /* scores: s[k] lane p * Gp + g = head g, position k * P + p */
        __m512 s[8];
        __mmask16 valid[8];
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int k = 0; k < Gp; k++) {
            valid[k] = real_head & _mm512_cmplt_epi32_mask(
                _mm512_add_epi32(_mm512_set1_epi32(k * P), _mm512_srli_epi32(lane, shift)), _mm512_set1_epi32(n));
            if (k * P >= n) {
                s[k] = _mm512_set1_ps(-INFINITY);
                continue;
            }
            __m512 acc[16];
            for (int a = 0; a < 16; a++) acc[a] = _mm512_setzero_ps();
            for (int c = 0; c < nc; c++) {
                const __mmask16 mk = c == nc - 1 ? last : (__mmask16)0xFFFF;
                __m512 qv[XLLM_GROUP_MAX];
                for (int g = 0; g < G; g++) qv[g] = _mm512_maskz_loadu_ps(mk, q + g * hd + 16 * c);
                for (int p = 0; p < P; p++) {
                    if (k * P + p >= n) break;
                    __m512 kv = xllm_kv_load16_avx512(type, kb0 + (size_t)(k * P + p) * stride, 16 * c, mk);
                    for (int g = 0; g < G; g++) acc[p * Gp + g] = _mm512_fmadd_ps(qv[g], kv, acc[p * Gp + g]);
                }
            }
            s[k] = _mm512_mask_blend_ps(valid[k], _mm512_set1_ps(-INFINITY),
                                        _mm512_mul_ps(xllm_hsum16x16_avx512(acc), _mm512_set1_ps(scale)));
            mx = _mm512_max_ps(mx, s[k]);
        }
        /* the online softmax of the G heads, lane-wise */
        const __m512 m_old = _mm512_permutexvar_ps(head, _mm512_maskz_loadu_ps((__mmask16)((1u << G) - 1), m));
        const __m512 m_new = _mm512_max_ps(m_old, xllm_head_max_avx512(mx, Gp));
        const __m512 vcorr = xllm_exp_avx512(_mm512_max_ps(_mm512_sub_ps(m_old, m_new), lo));
        __m512 sum = _mm512_setzero_ps();
        for (int k = 0; k < Gp; k++) {
            __m512 e = _mm512_maskz_mov_ps(valid[k], xllm_exp_avx512(_mm512_max_ps(_mm512_sub_ps(s[k], m_new), lo)));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(probs + 16 * k, e);          /* probs[j * Gp + g] */
        }
        sum = xllm_head_sum_avx512(sum, Gp);
        float corr[16], lsum[16], mnew[16];
        _mm512_storeu_ps(corr, vcorr);
        _mm512_storeu_ps(lsum, sum);
        _mm512_storeu_ps(mnew, m_new);
        for (int g = 0; g < G; g++) {
            l[g] = l[g] * corr[g] + lsum[g];
            m[g] = mnew[g];
        }
        /* values: C chunks of the G outputs in registers per pass */
        for (int c0 = 0; c0 < nc; c0 += C) {
            __mmask16 mc[4];
            for (int u = 0; u < C; u++) {
                const int ci = c0 + u;
                mc[u] = ci < nc - 1 ? (__mmask16)0xFFFF : ci == nc - 1 ? last : (__mmask16)0;
            }
            __m512 o[XLLM_GROUP_MAX][4];
            for (int g = 0; g < G; g++) {
                const __m512 cg = _mm512_set1_ps(corr[g]);
                for (int u = 0; u < C; u++)
                    o[g][u] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mc[u], out + g * hd + 16 * (c0 + u)), cg);
            }
            for (int j = 0; j < n; j++) {
                const char *vr = vb0 + (size_t)j * stride;
                __m512 x[4];
                for (int u = 0; u < C; u++) x[u] = xllm_kv_load16_avx512(type, vr, 16 * (c0 + u), mc[u]);
                for (int g = 0; g < G; g++) {
                    const __m512 e = _mm512_set1_ps(probs[j * Gp + g]);
                    for (int u = 0; u < C; u++) o[g][u] = _mm512_fmadd_ps(e, x[u], o[g][u]);
                }
            }
            for (int g = 0; g < G; g++)
                for (int u = 0; u < C; u++) _mm512_mask_storeu_ps(out + g * hd + 16 * (c0 + u), mc[u], o[g][u]);
        }
    }
}

/* ------------------------------------------------------------------ AVX2 (head_dim % 8 == 0) */

XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256 xllm_kv_load8_any_avx2(const int type,
                                                                                        const char *row, int c) {
    if (type == XLLM_F32) return _mm256_loadu_ps((const float *)row + c);
    return xllm_kv_load8_avx2(type, row, c);
}

/* Lane L: the sum of a[L]'s 8 lanes (the same construction as xllm_hsum16x16_avx512). */
XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256 xllm_hsum8x8_avx2(const __m256 *a) {
    static const int perm[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    __m256 w[4], z[2];
    for (int i = 0; i < 4; i++) {
        __m256 x = a[perm[i]], y = a[perm[i + 4]];
        w[i] = _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
    }
    for (int i = 0; i < 2; i++)
        z[i] = _mm256_add_ps(_mm256_shuffle_ps(w[i], w[i + 2], 0x44), _mm256_shuffle_ps(w[i], w[i + 2], 0xEE));
    return _mm256_add_ps(_mm256_shuffle_ps(z[0], z[1], 0x88), _mm256_shuffle_ps(z[0], z[1], 0xDD));
}

XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256 xllm_head_max_avx2(__m256 v, const int Gp) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int s = Gp; s < 8; s <<= 1)
        v = _mm256_max_ps(v, _mm256_permutevar8x32_ps(v, _mm256_xor_si256(lane, _mm256_set1_epi32(s))));
    return v;
}

XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256 xllm_head_sum_avx2(__m256 v, const int Gp) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int s = Gp; s < 8; s <<= 1)
        v = _mm256_add_ps(v, _mm256_permutevar8x32_ps(v, _mm256_xor_si256(lane, _mm256_set1_epi32(s))));
    return v;
}

XLLM_AVX2_FN static inline __attribute__((always_inline)) void
xllm_attend_group_avx2_t(const int type, const int G, const float *q, const char *kb, const char *vb,
                         size_t stride, int n_pos, int hd, float scale, float *m, float *l, float *out,
                         float *probs) {
    enum { SUB = 8 };
    const int Gp = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
    const int shift = Gp == 1 ? 0 : Gp == 2 ? 1 : Gp == 4 ? 2 : 3;
    const int P = 8 / Gp;
    const int C = Gp >= 8 ? 1 : Gp >= 4 ? 2 : 4;        /* G * C <= 8 accumulators */
    const int nc = hd >> 3;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i head = _mm256_and_si256(lane, _mm256_set1_epi32(Gp - 1));
    const __m256 real_head = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(G), head));
    const __m256 lo = _mm256_set1_ps(XLLM_EXP_LO), ninf = _mm256_set1_ps(-INFINITY);
    float m_pad[8] = {0}, corr[8], lsum[8], mnew[8];
    for (int j0 = 0; j0 < n_pos; j0 += SUB) {
        const int n = n_pos - j0 < SUB ? n_pos - j0 : SUB;
        const char *kb0 = kb + (size_t)j0 * stride, *vb0 = vb + (size_t)j0 * stride;
        __m256 s[8], valid[8];
        __m256 mx = ninf;
        for (int k = 0; k < Gp; k++) {
            valid[k] = _mm256_and_ps(real_head, _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                _mm256_set1_epi32(n), _mm256_add_epi32(_mm256_set1_epi32(k * P), _mm256_srli_epi32(lane, shift)))));
            if (k * P >= n) {
                s[k] = ninf;
                continue;
            }
            __m256 acc[8];
            for (int a = 0; a < 8; a++) acc[a] = _mm256_setzero_ps();
            for (int c = 0; c < nc; c++)
                for (int p = 0; p < P; p++) {
                    if (k * P + p >= n) break;
                    __m256 kv = xllm_kv_load8_any_avx2(type, kb0 + (size_t)(k * P + p) * stride, 8 * c);
                    for (int g = 0; g < G; g++)
                        acc[p * Gp + g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * hd + 8 * c), kv, acc[p * Gp + g]);
                }
            s[k] = _mm256_blendv_ps(ninf, _mm256_mul_ps(xllm_hsum8x8_avx2(acc), _mm256_set1_ps(scale)), valid[k]);
            mx = _mm256_max_ps(mx, s[k]);
        }
        for (int g = 0; g < G; g++) m_pad[g] = m[g];
        const __m256 m_old = _mm256_permutevar8x32_ps(_mm256_loadu_ps(m_pad), head);
        const __m256 m_new = _mm256_max_ps(m_old, xllm_head_max_avx2(mx, Gp));
        const __m256 vcorr = xllm_exp_avx2(_mm256_max_ps(_mm256_sub_ps(m_old, m_new), lo));
        __m256 sum = _mm256_setzero_ps();
        for (int k = 0; k < Gp; k++) {
            __m256 e = _mm256_and_ps(valid[k], xllm_exp_avx2(_mm256_max_ps(_mm256_sub_ps(s[k], m_new), lo)));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(probs + 8 * k, e);
        }
        sum = xllm_head_sum_avx2(sum, Gp);
        _mm256_storeu_ps(corr, vcorr);
        _mm256_storeu_ps(lsum, sum);
        _mm256_storeu_ps(mnew, m_new);
        for (int g = 0; g < G; g++) {
            l[g] = l[g] * corr[g] + lsum[g];
            m[g] = mnew[g];
        }
        for (int c0 = 0; c0 < nc; c0 += C) {
            const int cc = nc - c0 < C ? nc - c0 : C;
            __m256 o[XLLM_GROUP_MAX][4];
            for (int g = 0; g < G; g++) {
                const __m256 cg = _mm256_set1_ps(corr[g]);
                for (int u = 0; u < C; u++)
                    o[g][u] = u < cc ? _mm256_mul_ps(_mm256_loadu_ps(out + g * hd + 8 * (c0 + u)), cg)
                                     : _mm256_setzero_ps();
            }
            for (int j = 0; j < n; j++) {
                const char *vr = vb0 + (size_t)j * stride;
                __m256 x[4];
                for (int u = 0; u < C; u++)
                    x[u] = u < cc ? xllm_kv_load8_any_avx2(type, vr, 8 * (c0 + u)) : _mm256_setzero_ps();
                for (int g = 0; g < G; g++) {
                    const __m256 e = _mm256_broadcast_ss(probs + j * Gp + g);
                    for (int u = 0; u < C; u++) o[g][u] = _mm256_fmadd_ps(e, x[u], o[g][u]);
                }
            }
            for (int g = 0; g < G; g++)
                for (int u = 0; u < cc; u++) _mm256_storeu_ps(out + g * hd + 8 * (c0 + u), o[g][u]);
        }
    }
}

/* One function per (level, type, G): the compiler sees every loop bound but hd and n_pos. */
#define XLLM_GROUP_FN(level, TYPE, tname, G)                                                            \
    static void xllm_attend_group_##tname##_##G##_##level(const float *q, const char *kb, const char *vb, \
                                                          size_t stride, int n_pos, int hd, float scale,  \
                                                          float *m, float *l, float *out, float *probs) { \
        xllm_attend_group_##level##_t(TYPE, G, q, kb, vb, stride, n_pos, hd, scale, m, l, out, probs);     \
    }
#define XLLM_GROUP_FNS(level, ATTR, TYPE, tname)                                                          \
    ATTR XLLM_GROUP_FN(level, TYPE, tname, 1) ATTR XLLM_GROUP_FN(level, TYPE, tname, 2)                  \
    ATTR XLLM_GROUP_FN(level, TYPE, tname, 3) ATTR XLLM_GROUP_FN(level, TYPE, tname, 4)                  \
    ATTR XLLM_GROUP_FN(level, TYPE, tname, 5) ATTR XLLM_GROUP_FN(level, TYPE, tname, 6)                  \
    ATTR XLLM_GROUP_FN(level, TYPE, tname, 7) ATTR XLLM_GROUP_FN(level, TYPE, tname, 8)
XLLM_GROUP_FNS(avx512, XLLM_AVX512_FN, XLLM_F32, f32)
XLLM_GROUP_FNS(avx512, XLLM_AVX512_FN, XLLM_F16, f16)
XLLM_GROUP_FNS(avx512, XLLM_AVX512_FN, XLLM_BF16, bf16)
XLLM_GROUP_FNS(avx512, XLLM_AVX512_FN, XLLM_Q8_0, q8_0)
XLLM_GROUP_FNS(avx2, XLLM_AVX2_FN, XLLM_F32, f32)
XLLM_GROUP_FNS(avx2, XLLM_AVX2_FN, XLLM_F16, f16)
XLLM_GROUP_FNS(avx2, XLLM_AVX2_FN, XLLM_BF16, bf16)
XLLM_GROUP_FNS(avx2, XLLM_AVX2_FN, XLLM_Q8_0, q8_0)

typedef void (*xllm_attend_group_fn)(const float *, const char *, const char *, size_t, int, int, float,
                                     float *, float *, float *, float *);
#define XLLM_GROUP_ROW(level, tname)                                                                    \
    {xllm_attend_group_##tname##_1_##level, xllm_attend_group_##tname##_2_##level,                       \
     xllm_attend_group_##tname##_3_##level, xllm_attend_group_##tname##_4_##level,                       \
     xllm_attend_group_##tname##_5_##level, xllm_attend_group_##tname##_6_##level,                       \
     xllm_attend_group_##tname##_7_##level, xllm_attend_group_##tname##_8_##level}
/* [level: 0 AVX2, 1 AVX-512][type: F32, F16, BF16, Q8_0][G - 1] */
static const xllm_attend_group_fn xllm_attend_group_fns[2][4][8] = {
    {XLLM_GROUP_ROW(avx2, f32), XLLM_GROUP_ROW(avx2, f16), XLLM_GROUP_ROW(avx2, bf16), XLLM_GROUP_ROW(avx2, q8_0)},
    {XLLM_GROUP_ROW(avx512, f32), XLLM_GROUP_ROW(avx512, f16), XLLM_GROUP_ROW(avx512, bf16),
     XLLM_GROUP_ROW(avx512, q8_0)},
};

static inline int xllm_kv_type_index(int type) {
    return type == XLLM_F32 ? 0 : type == XLLM_F16 ? 1 : type == XLLM_BF16 ? 2 : 3;
}
#endif

/* Query heads one call serves for a model whose `group` query heads share each KV head: the
 * largest divisor of group up to XLLM_GROUP_MAX where a group kernel runs (AVX-512: any
 * head_dim; AVX2: head_dim % 8 == 0), else 1 with the per-head kernels.  A property of the
 * model and the level, never of the batch. */
static inline int xllm_attend_group_heads(int type, int group, int hd) {
    (void)type;
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX512 || (xllm_simd_level >= XLLM_SIMD_AVX2 && hd % 8 == 0)) {
        for (int g = XLLM_GROUP_MAX; g > 1; g--)
            if (group % g == 0) return g;
        return 1;
    }
#endif
    (void)group; (void)hd;
    return 0;                                         /* no group kernel: per-head calls */
}

/* Ask for a block's rows of one head (n rows `stride` apart, `bytes` each) ahead of use: a
 * head's part of a row is a few cache lines among the other heads', a stride the hardware
 * prefetchers follow slowly, and decode attention reads it from memory (TinyLlama shape,
 * 2,000 positions, F16, 2 threads: 12.5 -> 10.0 ms per token). */
static inline void xllm_prefetch_rows(const char *p, size_t stride, int n, size_t bytes) {
    for (int j = 0; j < n; j++, p += stride)
        for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
}

/* One cache block into the online softmaxes of the G query heads sharing a KV head: q, out:
 * G rows hd apart; m, l: (G,); probs: XLLM_GROUP_SCRATCH floats.  G from
 * xllm_attend_group_heads (>= 1 only where it says so). */
static inline void xllm_attend_block_group(int type, int G, const float *q, const char *kb, const char *vb,
                                           size_t stride, int n_pos, int hd, float scale, float *m, float *l,
                                           float *out, float *probs) {
#if XLLM_X86
    xllm_attend_group_fns[xllm_simd_level >= XLLM_SIMD_AVX512][xllm_kv_type_index(type)][G - 1](
        q, kb, vb, stride, n_pos, hd, scale, m, l, out, probs);
#else
    (void)type; (void)G; (void)q; (void)kb; (void)vb; (void)stride; (void)n_pos; (void)hd; (void)scale;
    (void)m; (void)l; (void)out; (void)probs;
#endif
}

#endif
