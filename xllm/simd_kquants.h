/* simd_kquants.h: the K-quant tensor types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), included from simd.h.
 *
 * Weights stay in the file's row layout (blocks of 256 values; llama.cpp's ggml-common.h
 * structures, byte for byte).  Activations are quantized once per matmul to a Q8_K-like block
 * (ggml's quantize_row_q8_K_ref: 256 int8 values, an fp32 scale, 16 sums of 16 values).
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
 * (folded types: only the first).  The integer sums are exact in any order, so the scalar,
 * AVX2 (maddubs + madd) and AVX-512 VNNI (maddubs + vpdpwssd) paths, any token tile and any
 * thread give the same bits. */
#ifndef XLLM_SIMD_KQUANTS_H
#define XLLM_SIMD_KQUANTS_H

#define XLLM_QK_K 256

enum { XLLM_Q2_K = 10, XLLM_Q3_K = 11, XLLM_Q4_K = 12, XLLM_Q5_K = 13, XLLM_Q6_K = 14 };

/* Activation block: qs first so that a 64-byte aligned buffer keeps every qs load aligned. */
typedef struct {
    int8_t qs[XLLM_QK_K];       /* values = d * qs */
    int16_t bsums[16];          /* bsums[j] = qs[16j] + .. + qs[16j + 15] */
    float d;                    /* scale */
    float pad[7];
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
static void xllm_quantize_row_q8k(const float *x, xllm_block_q8k *y, int n) {
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
        y[b].d = 1 / iscale;
    }
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

/* ------------------------------------------------------------------ tiles
 *
 * One call adds blocks [b0, b1) of one weight row (w) times nt tokens' activation rows
 * (token t's blocks at x + t * ldx) into lanes[8 t .. 8 t + 7]; xllm_kq_lanes_sum then gives
 * the dot product.  Walking the blocks in chunks (prefill: a tile's activations stay in L1)
 * keeps each lane's sequence of operations, so any chunking gives the same bits.
 *
 * Lanes: every path splits a block's integer sums into the 8 int32 lanes of AVX2's
 * madd_epi16 (lane k holds values 4k..4k+3 of each 32-value group, times their scale;
 * its min sum holds bsum[2k] and bsum[2k+1] times their mins) and keeps one float
 * accumulator per lane, fed per block by the fixed sequence of xllm_kq_accumulate; the 8
 * lanes are added once at the end in xllm_hsum_avx2's order.  AVX-512 works on pairs of
 * groups in 512-bit registers and folds the two 256-bit halves (exact int32) before the
 * float step, so its lanes are AVX2's.  No horizontal sum per block. */

#define XLLM_KQ_TOKENS 8       /* most tokens per tile (AVX-512; AVX2 and scalar tiles take 4) */
#ifndef XLLM_KQ_ROW_GROUP
#define XLLM_KQ_ROW_GROUP 16   /* K-quant weight rows per parallel work item */
#endif

/* The fixed float sequence of one (weight block, activation block) pair in one lane. */
static inline __attribute__((always_inline)) float
xllm_kq_accumulate(float acc, int off, float d, float dmin, float dx, int32_t isum, int32_t msum) {
    if (off) return fmaf(d * dx, (float)(isum - off * msum), acc);
    acc = fmaf(d * dx, (float)isum, acc);
    return fmaf(-(dmin * dx), (float)msum, acc);
}

static inline float xllm_kq_lanes_sum(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* Tokens per tile at the level in force. */
static inline int xllm_kq_tile_tokens(void) {
    return xllm_simd_level == XLLM_SIMD_AVX512 ? XLLM_KQ_TOKENS : 4;
}

static void xllm_kq_tile_scalar(int type, const char *w, int b0, int b1, const xllm_block_q8k *x,
                                size_t ldx, int nt, float *lanes) {
    const int bytes = xllm_kq_block_bytes(type), off = xllm_kq_offset(type);
    float (*acc)[8] = (float (*)[8])lanes;
    uint8_t q[XLLM_QK_K];
    int8_t sc[16], mn[16];
    float d, dmin;
    for (int b = b0; b < b1; b++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)b * bytes;
        xllm_kq_block_scales(type, blk, sc, mn, &d, &dmin);
        xllm_kq_block_values(type, blk, q);
        for (int t = 0; t < nt; t++) {
            const xllm_block_q8k *xb = x + t * ldx + b;
            for (int k = 0; k < 8; k++) {
                int32_t isum = 0;
                for (int g = 0; g < 8; g++) {
                    const int i = 32 * g + 4 * k;
                    int32_t s = 0;
                    for (int j = 0; j < 4; j++) s += (int32_t)q[i + j] * xb->qs[i + j];
                    isum += sc[i / 16] * s;
                }
                int32_t msum = mn[2 * k] * xb->bsums[2 * k] + mn[2 * k + 1] * xb->bsums[2 * k + 1];
                acc[t][k] = xllm_kq_accumulate(acc[t][k], off, d, dmin, xb->d, isum, msum);
            }
        }
    }
}

#if XLLM_X86
/* Group g (values 32g..32g+31) of a block as 32 unsigned bytes. */
XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256i
xllm_kq_group_avx2(int type, const uint8_t *blk, int g) {
#define XLLM_LD(p) _mm256_loadu_si256((const __m256i *)(p))
#define XLLM_SRL(v, s) _mm256_srli_epi16((v), (s))
#define XLLM_AND(v, m) _mm256_and_si256((v), _mm256_set1_epi8(m))
    switch (type) {
    case XLLM_Q2_K:
        return XLLM_AND(XLLM_SRL(XLLM_LD(blk + 16 + 32 * (g >> 2)), 2 * (g & 3)), 3);
    case XLLM_Q3_K: {
        __m256i lo = XLLM_AND(XLLM_SRL(XLLM_LD(blk + 32 + 32 * (g >> 2)), 2 * (g & 3)), 3);
        __m256i hi = XLLM_AND(XLLM_SRL(XLLM_LD(blk), g), 1);
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2));
    }
    case XLLM_Q4_K:
        return XLLM_AND(XLLM_SRL(XLLM_LD(blk + 16 + 32 * (g >> 1)), 4 * (g & 1)), 0x0f);
    case XLLM_Q5_K: {
        __m256i lo = XLLM_AND(XLLM_SRL(XLLM_LD(blk + 48 + 32 * (g >> 1)), 4 * (g & 1)), 0x0f);
        __m256i hi = XLLM_AND(XLLM_SRL(XLLM_LD(blk + 16), g), 1);
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    default: { /* Q6_K */
        __m256i lo = XLLM_AND(XLLM_SRL(XLLM_LD(blk + 64 * (g >> 2) + 32 * (g & 1)), 4 * ((g >> 1) & 1)), 0x0f);
        __m256i hi = XLLM_AND(XLLM_SRL(XLLM_LD(blk + 128 + 32 * (g >> 2)), 2 * (g & 3)), 3);
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    }
#undef XLLM_LD
#undef XLLM_SRL
#undef XLLM_AND
}

/* The 16 scales and mins of a block as int8 vectors, and its super-scales. */
XLLM_AVX2_FN static inline __attribute__((always_inline)) void
xllm_kq_scales_avx2(int type, const uint8_t *blk, __m128i *sc, __m128i *mn, float *d, float *dmin) {
    uint16_t h;
    switch (type) {
    case XLLM_Q2_K: {
        __m128i raw = _mm_loadu_si128((const __m128i *)blk);
        *sc = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
        *mn = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
        memcpy(&h, blk + 80, 2); *d = _cvtsh_ss(h);
        memcpy(&h, blk + 82, 2); *dmin = _cvtsh_ss(h);
        break;
    }
    case XLLM_Q3_K: {
        int8_t s[16];
        xllm_kq_scales_q3k(blk + 96, s);
        *sc = *mn = _mm_loadu_si128((const __m128i *)s);
        memcpy(&h, blk + 108, 2); *d = _cvtsh_ss(h);
        *dmin = 0;
        break;
    }
    case XLLM_Q4_K:
    case XLLM_Q5_K: {
        uint8_t sm[16];
        xllm_kq_scale_min_k4(blk + 4, sm);
        __m128i v = _mm_loadu_si128((const __m128i *)sm);
        *sc = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
        *mn = _mm_shuffle_epi8(v, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15));
        memcpy(&h, blk, 2); *d = _cvtsh_ss(h);
        memcpy(&h, blk + 2, 2); *dmin = _cvtsh_ss(h);
        break;
    }
    default:
        *sc = *mn = _mm_loadu_si128((const __m128i *)(blk + 192));
        memcpy(&h, blk + 208, 2); *d = _cvtsh_ss(h);
        *dmin = 0;
        break;
    }
}

/* The 16 int8 scales as int16, in both 128-bit lanes: lo = scales 0..7, hi = scales 8..15. */
XLLM_AVX2_FN static inline __attribute__((always_inline)) void
xllm_kq_scales16_avx2(__m128i sc8, __m256i *lo, __m256i *hi) {
    __m256i s16 = _mm256_cvtepi8_epi16(sc8);
    *lo = _mm256_permute4x64_epi64(s16, 0x44);
    *hi = _mm256_permute4x64_epi64(s16, 0xee);
}

/* Group g's int16 scale vector (low 8 lanes: scale 2g, high 8: scale 2g+1) from lo/hi. */
static const int8_t xllm_kq_scale_pick[4][32] __attribute__((aligned(32))) = {
#define XLLM_KQ_PICK(a, b) {a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, \
                            b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1}
    XLLM_KQ_PICK(0, 2), XLLM_KQ_PICK(4, 6), XLLM_KQ_PICK(8, 10), XLLM_KQ_PICK(12, 14)
#undef XLLM_KQ_PICK
};

XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256i
xllm_kq_group_scale_avx2(__m256i lo, __m256i hi, int g) {
    return _mm256_shuffle_epi8(g < 4 ? lo : hi, _mm256_load_si256((const __m256i *)xllm_kq_scale_pick[g & 3]));
}

/* The 8 lanes added in xllm_kq_lanes_sum's order (simd.h's xllm_hsum_avx2 order). */
XLLM_AVX2_FN static inline __attribute__((always_inline)) float xllm_kq_hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));   /* l + l+4 */
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));              /* (0+4)+(2+6), (1+5)+(3+7) */
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The float step of one block for one token on the 8 lanes: isum, msum exact int32 lanes.
 * dv, ndv: d and -dmin broadcast once per weight block; dx is broadcast from memory (a load,
 * not a shuffle).  (-dmin) * dx is -(dmin * dx) exactly, so the lanes follow
 * xllm_kq_accumulate bit for bit. */
XLLM_AVX2_FN static inline __attribute__((always_inline)) __m256
xllm_kq_accumulate_avx2(__m256 acc, int off, __m256 dv, __m256 ndv, const float *dx, __m256i isum, __m256i msum) {
    const __m256 dxv = _mm256_broadcast_ss(dx);
    if (off) {
        isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(msum, off == 32 ? 5 : 2));
        return _mm256_fmadd_ps(_mm256_mul_ps(dv, dxv), _mm256_cvtepi32_ps(isum), acc);
    }
    acc = _mm256_fmadd_ps(_mm256_mul_ps(dv, dxv), _mm256_cvtepi32_ps(isum), acc);
    return _mm256_fmadd_ps(_mm256_mul_ps(ndv, dxv), _mm256_cvtepi32_ps(msum), acc);
}

/* p16 = maddubs(q, x) pairs (<= 2 * 63 * 127: no saturation), times the group's int16 scales. */
#define XLLM_KQ_TILE_BODY_AVX2(TYPE, NT)                                                               \
    const int bytes = xllm_kq_block_bytes(TYPE), off = xllm_kq_offset(TYPE);                           \
    __m256 facc[NT];                                                                                   \
    for (int t = 0; t < NT; t++) facc[t] = _mm256_loadu_ps(lanes + 8 * t);                             \
    for (int b = b0; b < b1; b++) {                                                                    \
        const uint8_t *blk = (const uint8_t *)w + (size_t)b * bytes;                                   \
        __m128i sc8, mn8;                                                                              \
        __m256i slo, shi;                                                                              \
        float d, dmin;                                                                                 \
        xllm_kq_scales_avx2(TYPE, blk, &sc8, &mn8, &d, &dmin);                                        \
        xllm_kq_scales16_avx2(sc8, &slo, &shi);                                                        \
        __m256i iacc[NT];                                                                              \
        for (int t = 0; t < NT; t++) iacc[t] = _mm256_setzero_si256();                                 \
        _Pragma("GCC unroll 8")                                                                        \
        for (int g = 0; g < 8; g++) {                                                                  \
            __m256i q = xllm_kq_group_avx2(TYPE, blk, g);                                             \
            __m256i s16 = xllm_kq_group_scale_avx2(slo, shi, g);                                      \
            for (int t = 0; t < NT; t++) {                                                             \
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x[t * ldx + b].qs + 32 * g));        \
                iacc[t] = _mm256_add_epi32(iacc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), s16)); \
            }                                                                                          \
        }                                                                                              \
        __m256i m16 = _mm256_cvtepi8_epi16(mn8);                                                       \
        const __m256 dv = _mm256_set1_ps(d), ndv = _mm256_set1_ps(-dmin);                              \
        for (int t = 0; t < NT; t++) {                                                                 \
            const xllm_block_q8k *xb = x + t * ldx + b;                                                \
            __m256i mv = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)xb->bsums), m16);       \
            facc[t] = xllm_kq_accumulate_avx2(facc[t], off, dv, ndv, &xb->d, iacc[t], mv);            \
        }                                                                                              \
    }                                                                                                  \
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(lanes + 8 * t, facc[t]);

/* AVX-512: groups 2p and 2p+1 in one 512-bit register; vpdpwssd adds the scaled pairs. */
static const int16_t xllm_kq_pair_pick[4][32] __attribute__((aligned(64))) = {
#define XLLM_KQ_PAIR(a) {a, a, a, a, a, a, a, a, a + 1, a + 1, a + 1, a + 1, a + 1, a + 1, a + 1, a + 1, \
                         a + 2, a + 2, a + 2, a + 2, a + 2, a + 2, a + 2, a + 2, a + 3, a + 3, a + 3, a + 3, a + 3, a + 3, a + 3, a + 3}
    XLLM_KQ_PAIR(0), XLLM_KQ_PAIR(4), XLLM_KQ_PAIR(8), XLLM_KQ_PAIR(12)
#undef XLLM_KQ_PAIR
};

#define XLLM_KQ_TILE_BODY_VNNI(TYPE, NT)                                                               \
    const int bytes = xllm_kq_block_bytes(TYPE), off = xllm_kq_offset(TYPE);                           \
    __m256 facc[NT];                                                                                   \
    for (int t = 0; t < NT; t++) facc[t] = _mm256_loadu_ps(lanes + 8 * t);                             \
    for (int b = b0; b < b1; b++) {                                                                    \
        const uint8_t *blk = (const uint8_t *)w + (size_t)b * bytes;                                   \
        __m128i sc8, mn8;                                                                              \
        float d, dmin;                                                                                 \
        xllm_kq_scales_avx2(TYPE, blk, &sc8, &mn8, &d, &dmin);                                        \
        const __m512i s16all = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc8));                      \
        __m512i iacc[NT];                                                                              \
        for (int t = 0; t < NT; t++) iacc[t] = _mm512_setzero_si512();                                 \
        _Pragma("GCC unroll 4")                                                                        \
        for (int p = 0; p < 4; p++) {                                                                  \
            __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(xllm_kq_group_avx2(TYPE, blk, 2 * p)), \
                                           xllm_kq_group_avx2(TYPE, blk, 2 * p + 1), 1);              \
            __m512i s16 = _mm512_permutexvar_epi16(_mm512_load_si512(xllm_kq_pair_pick[p]), s16all);  \
            for (int t = 0; t < NT; t++) {                                                             \
                __m512i xv = _mm512_loadu_si512((const void *)(x[t * ldx + b].qs + 64 * p));          \
                iacc[t] = _mm512_dpwssd_epi32(iacc[t], _mm512_maddubs_epi16(q, xv), s16);             \
            }                                                                                          \
        }                                                                                              \
        __m256i m16 = _mm256_cvtepi8_epi16(mn8);                                                       \
        const __m256 dv = _mm256_set1_ps(d), ndv = _mm256_set1_ps(-dmin);                              \
        for (int t = 0; t < NT; t++) {                                                                 \
            const xllm_block_q8k *xb = x + t * ldx + b;                                                \
            __m256i mv = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)xb->bsums), m16);       \
            __m256i is = _mm256_add_epi32(_mm512_castsi512_si256(iacc[t]), _mm512_extracti64x4_epi64(iacc[t], 1)); \
            facc[t] = xllm_kq_accumulate_avx2(facc[t], off, dv, ndv, &xb->d, is, mv);                 \
        }                                                                                              \
    }                                                                                                  \
    for (int t = 0; t < NT; t++) _mm256_storeu_ps(lanes + 8 * t, facc[t]);

#define XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, NT, BODY)                                               \
ATTR static void xllm_kq_tile_##LEVEL##_##NAME##_##NT(const char *w, int b0, int b1,                    \
                                                      const xllm_block_q8k *x, size_t ldx, float *lanes) { \
    BODY(TYPE, NT)                                                                                       \
}

#define XLLM_KQ_TILE_FNS4(LEVEL, ATTR, NAME, TYPE, BODY)                                                 \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 1, BODY)                                                    \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 2, BODY)                                                    \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 3, BODY)                                                    \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 4, BODY)
#define XLLM_KQ_TILE_FNS8(LEVEL, ATTR, NAME, TYPE, BODY)                                                 \
    XLLM_KQ_TILE_FNS4(LEVEL, ATTR, NAME, TYPE, BODY)                                                     \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 5, BODY)                                                    \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 6, BODY)                                                    \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 7, BODY)                                                    \
    XLLM_KQ_TILE_FN(LEVEL, ATTR, NAME, TYPE, 8, BODY)

#define XLLM_KQ_ALL_TYPES(FNS, LEVEL, ATTR, BODY)                                                        \
    FNS(LEVEL, ATTR, q2k, XLLM_Q2_K, BODY)                                                               \
    FNS(LEVEL, ATTR, q3k, XLLM_Q3_K, BODY)                                                               \
    FNS(LEVEL, ATTR, q4k, XLLM_Q4_K, BODY)                                                               \
    FNS(LEVEL, ATTR, q5k, XLLM_Q5_K, BODY)                                                               \
    FNS(LEVEL, ATTR, q6k, XLLM_Q6_K, BODY)

XLLM_KQ_ALL_TYPES(XLLM_KQ_TILE_FNS4, avx2, XLLM_AVX2_FN, XLLM_KQ_TILE_BODY_AVX2)
XLLM_KQ_ALL_TYPES(XLLM_KQ_TILE_FNS8, vnni, XLLM_AVX512_FN, XLLM_KQ_TILE_BODY_VNNI)

typedef void (*xllm_kq_tile_fn)(const char *, int, int, const xllm_block_q8k *, size_t, float *);

#define XLLM_KQ_ROW4(LEVEL, NAME) xllm_kq_tile_##LEVEL##_##NAME##_1, xllm_kq_tile_##LEVEL##_##NAME##_2, \
    xllm_kq_tile_##LEVEL##_##NAME##_3, xllm_kq_tile_##LEVEL##_##NAME##_4
#define XLLM_KQ_ROW8(LEVEL, NAME) XLLM_KQ_ROW4(LEVEL, NAME), xllm_kq_tile_##LEVEL##_##NAME##_5, \
    xllm_kq_tile_##LEVEL##_##NAME##_6, xllm_kq_tile_##LEVEL##_##NAME##_7, xllm_kq_tile_##LEVEL##_##NAME##_8
#define XLLM_KQ_TABLE(ROW, LEVEL) {{ROW(LEVEL, q2k)}, {ROW(LEVEL, q3k)}, {ROW(LEVEL, q4k)}, \
    {ROW(LEVEL, q5k)}, {ROW(LEVEL, q6k)}}
#endif

/* One K-quant tile: weight row w, blocks [b0, b1), nt (1..xllm_kq_tile_tokens()) tokens, into lanes. */
static inline void xllm_kq_tile(int type, const char *w, int b0, int b1, const xllm_block_q8k *x, size_t ldx,
                                int nt, float *lanes) {
#if XLLM_X86
    if (xllm_simd_level == XLLM_SIMD_AVX512) {
        static const xllm_kq_tile_fn vnni[5][8] = XLLM_KQ_TABLE(XLLM_KQ_ROW8, vnni);
        vnni[type - XLLM_Q2_K][nt - 1](w, b0, b1, x, ldx, lanes);
        return;
    }
    if (xllm_simd_level == XLLM_SIMD_AVX2) {
        static const xllm_kq_tile_fn avx2[5][4] = XLLM_KQ_TABLE(XLLM_KQ_ROW4, avx2);
        avx2[type - XLLM_Q2_K][nt - 1](w, b0, b1, x, ldx, lanes);
        return;
    }
#endif
    xllm_kq_tile_scalar(type, w, b0, b1, x, ldx, nt, lanes);
}

#ifndef XLLM_KQ_CHUNK
#define XLLM_KQ_CHUNK 8        /* blocks per k-chunk when several tokens share each row: an 8-token
                                  tile's chunk of activations is 20 KB, in L1 while the rows pass */
#endif

/* y[t * ldy + r] for rows [0, nr) of a K-quant matrix (row r at w + r * row_bytes, nb blocks)
 * and nt tokens, walking the blocks in chunks; lanes: nr * nt * 8 floats of scratch. */
static void xllm_kq_rows(int type, const char *w, size_t row_bytes, int nr, int nb,
                         const xllm_block_q8k *x, size_t ldx, int nt, float *lanes, float *y, size_t ldy) {
    const int kc = nt == 1 ? nb : XLLM_KQ_CHUNK;
    memset(lanes, 0, (size_t)nr * nt * 8 * sizeof(float));
    for (int b0 = 0; b0 < nb; b0 += kc) {
        const int b1 = b0 + kc < nb ? b0 + kc : nb;
        for (int r = 0; r < nr; r++)
            xllm_kq_tile(type, w + (size_t)r * row_bytes, b0, b1, x, ldx, nt, lanes + (size_t)r * nt * 8);
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) y[(size_t)t * ldy + r] = xllm_kq_lanes_sum(lanes + ((size_t)r * nt + t) * 8);
}

#endif /* XLLM_SIMD_KQUANTS_H */
