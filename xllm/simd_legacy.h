/* simd_legacy.h: GGUF's other 32-value block types (Q4_1, Q5_0, Q5_1, IQ4_NL) and BF16.
 *
 * Included once from simd.h, after the Q8_0/Q4_0 blocks and the panel constants.
 *
 * Quantized types run in the repacked panel framework of Q8_0/Q4_0 (see simd.h): panels of
 * 8 rows, block by block, and activations quantized once per matmul to xllm_block_q8_act.
 * Each panel block keeps exactly the bytes of the 8 file blocks (compact: a matmul streams
 * no more than the file holds), arranged for 8-row vectors:
 *
 *     d[8]  fp16 scales of the 8 rows
 *     m[8]  fp16 minimums (Q4_1, Q5_1)
 *     h[8]  uint32 fifth bits (Q5_0, Q5_1), reordered: byte i of row r's word holds, in bit c,
 *           the fifth bit of value 4c + i and, in bit 4 + c, that of value 16 + 4c + i
 *     qs[128] nibbles as in Q4_0's panels: row r's bytes 4c..4c+3 at qs[32c + 4r ..]
 *
 * so one 32-byte load is 4 values of 8 rows (low nibbles: values 4c.., high: 16 + 4c..),
 * and chunk c's fifth bits are one shift and one mask of h away.  IQ4_NL's nibble indexes
 * the 16 int8 values kvalues_iq4nl (vpshufb does the lookup).
 *
 * Per (row, token) and block, with isum the exact int32 sum of the integer weights times the
 * activation's int8 values and xsum the activation block's sum:
 *     Q5_0, IQ4_NL:  acc = fma(isum, d_w * d_x, acc)                  (Q5_0: isum of q - 16)
 *     Q4_1, Q5_1:    acc = fma(isum, d_w * d_x, acc); acc = fma(xsum, m_w * d_x, acc)
 * d_w * d_x and m_w * d_x are products of two fp16 values, exact in float, and every level
 * (scalar, AVX2, AVX-512 VNNI) does these operations in this order: the same bits on all.
 *
 * BF16 weights run on the float path: each value widened to F32 by a 16-bit shift (exact),
 * so a BF16 matmul is bit for bit the F32 matmul of the widened weights on every level.
 */
#ifndef XLLM_SIMD_LEGACY_H
#define XLLM_SIMD_LEGACY_H

enum { XLLM_Q4_1 = 3, XLLM_Q5_0 = 6, XLLM_Q5_1 = 7, XLLM_IQ4_NL = 20, XLLM_BF16 = 30 };

static inline int xllm_is_legacy_quant(int type) {
    return type == XLLM_Q4_1 || type == XLLM_Q5_0 || type == XLLM_Q5_1 || type == XLLM_IQ4_NL;
}

static const int8_t xllm_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                              1,    13,   25,  38,  53,  69,  89,  113};

/* ------------------------------------------------------------------ bf16 */

static inline float xllm_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* A 16-bit weight of the float path: F16 or BF16. */
static inline float xllm_half_to_fp32(int type, uint16_t h) {
    return type == XLLM_BF16 ? xllm_bf16_to_fp32(h) : xllm_fp16_to_fp32(h);
}

#if XLLM_X86
XLLM_AVX2_FN static inline __m256 xllm_load8_bf16_avx2(const uint16_t *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif

/* ------------------------------------------------------------------ file blocks */

static inline size_t xllm_legacy_block_bytes(int type) {
    switch (type) {
    case XLLM_Q4_1: return 20;      /* d, m, qs[16] */
    case XLLM_Q5_0: return 22;      /* d, qh[4], qs[16] */
    case XLLM_Q5_1: return 24;      /* d, m, qh[4], qs[16] */
    default: return 18;             /* IQ4_NL: d, qs[16] */
    }
}

static inline int xllm_legacy_has_min(int type) { return type == XLLM_Q4_1 || type == XLLM_Q5_1; }
static inline int xllm_legacy_has_high(int type) { return type == XLLM_Q5_0 || type == XLLM_Q5_1; }

/* Byte offsets in one file block. */
static inline void xllm_legacy_fields(int type, int *m_off, int *qh_off, int *qs_off) {
    int off = 2;
    *m_off = xllm_legacy_has_min(type) ? off : -1;
    off += xllm_legacy_has_min(type) ? 2 : 0;
    *qh_off = xllm_legacy_has_high(type) ? off : -1;
    off += xllm_legacy_has_high(type) ? 4 : 0;
    *qs_off = off;
}

/* The integer of value j (0..31) of a file block: the nibble with its fifth bit, or
 * IQ4_NL's table value.  Q5_0 values are offset by 16 here (q - 16). */
static inline int xllm_legacy_value(int type, const uint8_t *blk, int j) {
    int m_off, qh_off, qs_off;
    xllm_legacy_fields(type, &m_off, &qh_off, &qs_off);
    uint8_t byte = blk[qs_off + (j & 15)];
    int q = j < 16 ? (byte & 0x0f) : (byte >> 4);
    if (type == XLLM_IQ4_NL) return xllm_kvalues_iq4nl[q];
    if (qh_off >= 0) {
        uint32_t qh;
        memcpy(&qh, blk + qh_off, 4);
        q |= (int)((qh >> j) & 1u) << 4;
    }
    return type == XLLM_Q5_0 ? q - 16 : q;
}

static inline float xllm_load_fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return xllm_fp16_to_fp32(h);
}

/* Dequantize one row of a legacy type, as gguf.quants and ggml do: d * q (+ m), in float.
 * d * q is exact (an fp16 times a 5-bit integer), so d * q + m rounds once, fused or not. */
static void xllm_legacy_dequantize_row(int type, const void *src, float *dst, int n) {
    if (type == XLLM_BF16) {
        const uint16_t *h = (const uint16_t *)src;
        for (int i = 0; i < n; i++) dst[i] = xllm_bf16_to_fp32(h[i]);
        return;
    }
    const size_t bb = xllm_legacy_block_bytes(type);
    int m_off, qh_off, qs_off;
    xllm_legacy_fields(type, &m_off, &qh_off, &qs_off);
    for (int b = 0; b < n / XLLM_QK; b++) {
        const uint8_t *blk = (const uint8_t *)src + b * bb;
        float d = xllm_load_fp16(blk);
        float *y = dst + b * XLLM_QK;
        if (m_off >= 0) {
            float m = xllm_load_fp16(blk + m_off);
            for (int j = 0; j < XLLM_QK; j++) y[j] = d * (float)xllm_legacy_value(type, blk, j) + m;
        } else {
            for (int j = 0; j < XLLM_QK; j++) y[j] = d * (float)xllm_legacy_value(type, blk, j);
        }
    }
}

/* ------------------------------------------------------------------ panels */

/* Offsets inside one panel block (8 rows, one 32-value block each); see the top. */
static inline int xllm_legacy_panel_m(int type) { return xllm_legacy_has_min(type) ? 16 : -1; }
static inline int xllm_legacy_panel_h(int type) {
    return xllm_legacy_has_high(type) ? (xllm_legacy_has_min(type) ? 32 : 16) : -1;
}
static inline int xllm_legacy_panel_qs(int type) {
    return 16 + (xllm_legacy_has_min(type) ? 16 : 0) + (xllm_legacy_has_high(type) ? 32 : 0);
}

/* The fifth bits of one row reordered for the kernels (see h[8] at the top). */
static inline uint32_t xllm_legacy_reorder_high(uint32_t qh) {
    uint32_t h = 0;
    for (int i = 0; i < 4; i++)
        for (int c = 0; c < 4; c++) {
            h |= ((qh >> (4 * c + i)) & 1u) << (8 * i + c);
            h |= ((qh >> (16 + 4 * c + i)) & 1u) << (8 * i + 4 + c);
        }
    return h;
}

/* Repack rows [0, nr) (nr <= 8) of a legacy-type matrix (row r at src + r*row_bytes, nb
 * blocks) into one panel; missing rows have scale, minimum and values 0. */
static void xllm_legacy_pack_panel(int type, const char *src, size_t row_bytes, int nr, int nb, char *dst) {
    const size_t in_block = xllm_legacy_block_bytes(type);
    const size_t out_block = in_block * XLLM_PANEL;
    const int pm = xllm_legacy_panel_m(type), ph = xllm_legacy_panel_h(type), pq = xllm_legacy_panel_qs(type);
    int m_off, qh_off, qs_off;
    xllm_legacy_fields(type, &m_off, &qh_off, &qs_off);
    for (int b = 0; b < nb; b++) {
        uint8_t *ob = (uint8_t *)dst + b * out_block;
        if (nr < XLLM_PANEL) memset(ob, 0, out_block);
        for (int r = 0; r < nr; r++) {
            const uint8_t *ib = (const uint8_t *)(src + r * row_bytes + b * in_block);
            memcpy(ob + 2 * r, ib, 2);
            if (pm >= 0) memcpy(ob + pm + 2 * r, ib + m_off, 2);
            if (ph >= 0) {
                uint32_t qh;
                memcpy(&qh, ib + qh_off, 4);
                qh = xllm_legacy_reorder_high(qh);
                memcpy(ob + ph + 4 * r, &qh, 4);
            }
            for (int c = 0; c < 4; c++) memcpy(ob + pq + 32 * c + 4 * r, ib + qs_off + 4 * c, 4);
        }
    }
}

/* ------------------------------------------------------------------ tiles
 *
 * Same contract as xllm_qtile: np (1..2) panels (panel p at w + p*pstride) x nt (1..4)
 * tokens, blocks [b0, b1), acc[t*ldacc + 8p + r]. */

/* The integer of value j of row r in a panel block (Q5_0: q - 16). */
static inline int xllm_legacy_panel_value(int type, const uint8_t *pb, int r, int j) {
    const int c = (j & 15) >> 2, i = j & 3, high = j >= 16;
    uint8_t byte = pb[xllm_legacy_panel_qs(type) + 32 * c + 4 * r + i];
    int q = high ? byte >> 4 : byte & 0x0f;
    if (type == XLLM_IQ4_NL) return xllm_kvalues_iq4nl[q];
    int ph = xllm_legacy_panel_h(type);
    if (ph >= 0) q |= ((pb[ph + 4 * r + i] >> (high ? 4 + c : c)) & 1) << 4;
    return type == XLLM_Q5_0 ? q - 16 : q;
}

static void xllm_legacy_qtile_scalar(int type, const char *w, size_t pstride, int np,
                                     const xllm_block_q8_act *x, size_t ldx, int nt, int b0, int b1,
                                     float *acc, int ldacc) {
    const size_t pblock = xllm_legacy_block_bytes(type) * XLLM_PANEL;
    const int pm = xllm_legacy_panel_m(type);
    for (int p = 0; p < np; p++)
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < XLLM_PANEL; r++) {
                float a = acc[(size_t)t * ldacc + p * XLLM_PANEL + r];
                for (int b = b0; b < b1; b++) {
                    const xllm_block_q8_act *xb = x + t * ldx + b;
                    const uint8_t *pb = (const uint8_t *)(w + p * pstride) + b * pblock;
                    int32_t isum = 0;
                    for (int j = 0; j < XLLM_QK; j++) isum += xllm_legacy_panel_value(type, pb, r, j) * xb->qs[j];
                    a = fmaf((float)isum, xllm_load_fp16(pb + 2 * r) * xb->d, a);
                    if (pm >= 0) a = fmaf((float)xb->sum, xllm_load_fp16(pb + pm + 2 * r) * xb->d, a);
                }
                acc[(size_t)t * ldacc + p * XLLM_PANEL + r] = a;
            }
}

#if XLLM_X86
static inline int32_t xllm_legacy_load_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }

#define XLLM_LEGACY_PREFETCH(ptr, bytes)                                                               \
    for (int o = 0; o < (int)(bytes); o += 64) _mm_prefetch((const char *)(ptr) + o + 4096, _MM_HINT_T0)

/* TYPE is a constant in each instance, so every branch on it folds away.  UNSIGNED_NL: IQ4_NL
 * looks up kvalues + 128 (u8, for vpdpbusd) and subtracts 128 * xsum, else signed kvalues
 * (AVX2's sign trick).  Q5_0's q in 0..31 is corrected by -16 * xsum the same way. */
#define XLLM_LEGACY_BODY(TYPE, NP, NT, DOT_U, DOT_S, UNSIGNED_NL)                                        \
    const size_t pblock = (TYPE == XLLM_Q4_1 ? 20 : TYPE == XLLM_Q5_0 ? 22 : TYPE == XLLM_Q5_1 ? 24 : 18) \
                          * XLLM_PANEL;                                                                \
    const int pm = TYPE == XLLM_Q4_1 || TYPE == XLLM_Q5_1 ? 16 : -1;                                   \
    const int ph = TYPE == XLLM_Q5_1 ? 32 : TYPE == XLLM_Q5_0 ? 16 : -1;                               \
    const int pq = 16 + (pm >= 0 ? 16 : 0) + (ph >= 0 ? 32 : 0);                                       \
    const int bias = TYPE == XLLM_Q5_0 ? 16 : (TYPE == XLLM_IQ4_NL && UNSIGNED_NL) ? 128 : 0;          \
    const __m256i m4 = _mm256_set1_epi8(0x0f), m5 = _mm256_set1_epi8(0x10);                           \
    const __m256i table = UNSIGNED_NL                                                                  \
        ? _mm256_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141, (char)153, (char)166, \
                           (char)181, (char)197, (char)217, (char)241,                                \
                           1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141, (char)153, (char)166, \
                           (char)181, (char)197, (char)217, (char)241)                                \
        : _mm256_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,  \
                           -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113); \
    __m256 facc[NP][NT];                                                                               \
    for (int p = 0; p < NP; p++)                                                                       \
        for (int t = 0; t < NT; t++) facc[p][t] = _mm256_loadu_ps(acc + (size_t)t * ldacc + 8 * p);   \
    for (int b = b0; b < b1; b++) {                                                                    \
        const uint8_t *pb[NP];                                                                         \
        __m256i iacc[NP][NT];                                                                          \
        for (int p = 0; p < NP; p++) {                                                                 \
            pb[p] = (const uint8_t *)(w + p * pstride) + b * pblock;                                   \
            if (NT > 1) XLLM_LEGACY_PREFETCH(pb[p], pblock);                                           \
        }                                                                                              \
        for (int t = 0; t < NT; t++) {                                                                 \
            __m256i c0 = _mm256_set1_epi32(-bias * x[t * ldx + b].sum);                                \
            for (int p = 0; p < NP; p++) iacc[p][t] = c0;                                              \
        }                                                                                              \
        __m256i hv[NP];                                                                                \
        if (ph >= 0)                                                                                   \
            for (int p = 0; p < NP; p++) hv[p] = _mm256_loadu_si256((const __m256i *)(pb[p] + ph));    \
        for (int c = 0; c < 4; c++) {                                                                  \
            __m256i lo[NP], hi[NP];                                                                    \
            for (int p = 0; p < NP; p++) {                                                             \
                __m256i raw = _mm256_loadu_si256((const __m256i *)(pb[p] + pq + 32 * c));              \
                lo[p] = _mm256_and_si256(raw, m4);                                                     \
                hi[p] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);                               \
                if (ph >= 0) {                                                                         \
                    lo[p] = _mm256_or_si256(lo[p], _mm256_and_si256(_mm256_slli_epi32(hv[p], 4 - c), m5)); \
                    hi[p] = _mm256_or_si256(hi[p], _mm256_and_si256(_mm256_srli_epi32(hv[p], c), m5)); \
                }                                                                                      \
                if (TYPE == XLLM_IQ4_NL) {                                                             \
                    lo[p] = _mm256_shuffle_epi8(table, lo[p]);                                         \
                    hi[p] = _mm256_shuffle_epi8(table, hi[p]);                                         \
                }                                                                                      \
            }                                                                                          \
            for (int t = 0; t < NT; t++) {                                                             \
                const int8_t *xq = x[t * ldx + b].qs;                                                  \
                __m256i xlo = _mm256_set1_epi32(xllm_legacy_load_i32(xq + 4 * c));                     \
                __m256i xhi = _mm256_set1_epi32(xllm_legacy_load_i32(xq + 16 + 4 * c));                \
                for (int p = 0; p < NP; p++) {                                                         \
                    if (TYPE == XLLM_IQ4_NL && !UNSIGNED_NL)                                           \
                        iacc[p][t] = DOT_S(DOT_S(iacc[p][t], lo[p], xlo), hi[p], xhi);                 \
                    else                                                                               \
                        iacc[p][t] = DOT_U(DOT_U(iacc[p][t], lo[p], xlo), hi[p], xhi);                 \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        for (int p = 0; p < NP; p++) {                                                                 \
            __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)pb[p]));                      \
            __m256 mw = pm >= 0 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb[p] + pm)))       \
                                : _mm256_setzero_ps();                                                 \
            for (int t = 0; t < NT; t++) {                                                             \
                __m256 dx = _mm256_set1_ps(x[t * ldx + b].d);                                          \
                facc[p][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[p][t]), _mm256_mul_ps(dw, dx), facc[p][t]); \
                if (pm >= 0)                                                                           \
                    facc[p][t] = _mm256_fmadd_ps(_mm256_set1_ps((float)x[t * ldx + b].sum),            \
                                                 _mm256_mul_ps(mw, dx), facc[p][t]);                   \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    for (int p = 0; p < NP; p++)                                                                       \
        for (int t = 0; t < NT; t++) _mm256_storeu_ps(acc + (size_t)t * ldacc + 8 * p, facc[p][t]);

/* u8 weights (at most 31 here: maddubs cannot saturate) times s8 activations */
XLLM_AVX2_FN static inline __m256i xllm_legacy_dot_u_avx2(__m256i acc, __m256i wu, __m256i xv) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), _mm256_set1_epi16(1)));
}

/* s8 weights times s8 activations: |w| and sign(x, w) (the ggml sign trick) */
XLLM_AVX2_FN static inline __m256i xllm_legacy_dot_s_avx2(__m256i acc, __m256i ws, __m256i xv) {
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(xv, ws));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

#define XLLM_LEGACY_DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))

#define XLLM_LEGACY_FN(LEVEL, ATTR, TNAME, TYPE, NP, NT, DOT_U, DOT_S, UNSIGNED_NL)                      \
ATTR static void xllm_legacy_##LEVEL##_##TNAME##_##NP##x##NT(const char *w, size_t pstride,             \
        const xllm_block_q8_act *x, size_t ldx, int b0, int b1, float *acc, int ldacc) {                 \
    XLLM_LEGACY_BODY(TYPE, NP, NT, DOT_U, DOT_S, UNSIGNED_NL)                                            \
}

/* AVX2: one panel x 1..4 tokens */
#define XLLM_LEGACY_AVX2(TNAME, TYPE)                                                                    \
    XLLM_LEGACY_FN(avx2, XLLM_AVX2_FN, TNAME, TYPE, 1, 1, xllm_legacy_dot_u_avx2, xllm_legacy_dot_s_avx2, 0) \
    XLLM_LEGACY_FN(avx2, XLLM_AVX2_FN, TNAME, TYPE, 1, 2, xllm_legacy_dot_u_avx2, xllm_legacy_dot_s_avx2, 0) \
    XLLM_LEGACY_FN(avx2, XLLM_AVX2_FN, TNAME, TYPE, 1, 3, xllm_legacy_dot_u_avx2, xllm_legacy_dot_s_avx2, 0) \
    XLLM_LEGACY_FN(avx2, XLLM_AVX2_FN, TNAME, TYPE, 1, 4, xllm_legacy_dot_u_avx2, xllm_legacy_dot_s_avx2, 0)

/* AVX-512 VNNI on 256-bit registers: 1..2 panels x 1..4 tokens */
#define XLLM_LEGACY_VNNI(TNAME, TYPE)                                                                    \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 1, 1, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 1, 2, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 1, 3, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 1, 4, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 2, 1, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 2, 2, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 2, 3, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)   \
    XLLM_LEGACY_FN(vnni, XLLM_AVX512_FN, TNAME, TYPE, 2, 4, XLLM_LEGACY_DPBUSD, XLLM_LEGACY_DPBUSD, 1)

XLLM_LEGACY_AVX2(q4_1, XLLM_Q4_1)
XLLM_LEGACY_AVX2(q5_0, XLLM_Q5_0)
XLLM_LEGACY_AVX2(q5_1, XLLM_Q5_1)
XLLM_LEGACY_AVX2(iq4_nl, XLLM_IQ4_NL)
XLLM_LEGACY_VNNI(q4_1, XLLM_Q4_1)
XLLM_LEGACY_VNNI(q5_0, XLLM_Q5_0)
XLLM_LEGACY_VNNI(q5_1, XLLM_Q5_1)
XLLM_LEGACY_VNNI(iq4_nl, XLLM_IQ4_NL)

typedef void (*xllm_legacy_tile_fn)(const char *, size_t, const xllm_block_q8_act *, size_t, int, int,
                                    float *, int);

#define XLLM_LEGACY_TABLE_AVX2(TNAME)                                                                    \
    {xllm_legacy_avx2_##TNAME##_1x1, xllm_legacy_avx2_##TNAME##_1x2, xllm_legacy_avx2_##TNAME##_1x3,     \
     xllm_legacy_avx2_##TNAME##_1x4}
#define XLLM_LEGACY_TABLE_VNNI(TNAME)                                                                    \
    {{xllm_legacy_vnni_##TNAME##_1x1, xllm_legacy_vnni_##TNAME##_1x2, xllm_legacy_vnni_##TNAME##_1x3,    \
      xllm_legacy_vnni_##TNAME##_1x4},                                                                   \
     {xllm_legacy_vnni_##TNAME##_2x1, xllm_legacy_vnni_##TNAME##_2x2, xllm_legacy_vnni_##TNAME##_2x3,    \
      xllm_legacy_vnni_##TNAME##_2x4}}
#endif

static inline int xllm_legacy_index(int type) {
    return type == XLLM_Q4_1 ? 0 : type == XLLM_Q5_0 ? 1 : type == XLLM_Q5_1 ? 2 : 3;
}

/* Accumulate one tile of a legacy quantized type: np (1..2) panels x nt (1..4) tokens. */
static inline void xllm_legacy_qtile(int type, const char *w, size_t pstride, int np,
                                     const xllm_block_q8_act *x, size_t ldx, int nt, int b0, int b1,
                                     float *acc, int ldacc) {
#if XLLM_X86
    if (xllm_simd_level == XLLM_SIMD_AVX512) {
        static const xllm_legacy_tile_fn vnni[4][2][4] = {
            XLLM_LEGACY_TABLE_VNNI(q4_1), XLLM_LEGACY_TABLE_VNNI(q5_0),
            XLLM_LEGACY_TABLE_VNNI(q5_1), XLLM_LEGACY_TABLE_VNNI(iq4_nl)};
        vnni[xllm_legacy_index(type)][np - 1][nt - 1](w, pstride, x, ldx, b0, b1, acc, ldacc);
        return;
    }
    if (xllm_simd_level == XLLM_SIMD_AVX2) {
        static const xllm_legacy_tile_fn avx2[4][4] = {
            XLLM_LEGACY_TABLE_AVX2(q4_1), XLLM_LEGACY_TABLE_AVX2(q5_0),
            XLLM_LEGACY_TABLE_AVX2(q5_1), XLLM_LEGACY_TABLE_AVX2(iq4_nl)};
        for (int p = 0; p < np; p++)
            avx2[xllm_legacy_index(type)][nt - 1](w + p * pstride, pstride, x, ldx, b0, b1, acc + 8 * p, ldacc);
        return;
    }
#endif
    xllm_legacy_qtile_scalar(type, w, pstride, np, x, ldx, nt, b0, b1, acc, ldacc);
}

#endif /* XLLM_SIMD_LEGACY_H */
