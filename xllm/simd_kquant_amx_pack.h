/* simd_kquant_amx_pack.h: K-quant panels (simd_kquant_panels.h) unpacked into AMX tile operands,
 * included from simd_kquant_panels.h inside its AVX-512 section (it uses that section's vector
 * macros: XLLM_KP_VALUES, XLLM_KP_SCALE, XLLM_KP_MINPAIR, ...).  The tiles that take them are
 * in simd_amx_kquants.h.
 *
 * A K-quant block's integer sum for one row and token is (simd_kquant_panels.h)
 *     isum = sum_j sc[j] * sum_{i in j} q[i] x[i]      (folded Q3_K/Q6_K: q[i] - off)
 * with a scale per sub-block of 16 or 32 values.  Folding each scale into its values gives one
 * integer weight per value, w[i] = sc[j] * (q[i] - off), |w| < 2^13 for every type (Q6_K:
 * 128 * 32), and isum = sum_i w[i] x[i]: a plain dot product over the whole 256-value block,
 * which a tile multiply does 64 values at a time with no per-sub-block step.  w does not fit
 * int8, so it goes as two int8 digits, w = 128 * hi + lo (hi = w >> 7 in [-64, 63], lo = w & 127
 * in [0, 127]): two tdpbssd per 64 values, isum = 128 * C_hi + C_lo, exact in int32 (|C_hi|
 * <= 256 * 64 * 128).  The min sums (Q2_K, Q4_K, Q5_K) stay on the vectors (vpdpwssd of the
 * packed min pairs with the token's block sums), and the float step is the one of every
 * other path: the same bits. */
#ifndef XLLM_SIMD_KQUANT_AMX_PACK_H
#define XLLM_SIMD_KQUANT_AMX_PACK_H

/* One panel block (16 rows x 256 values) as tdpbssd B operands (the VNNI layout: row R holds
 * values 4R..4R+3 of each of the 16 rows, row n at bytes 4n..4n+3; rows 16k..16k+15 are the B
 * tile of values 64k..64k+63), plus what the vector step needs. */
typedef struct {
    int8_t hi[64][64];           /* w >> 7 */
    int8_t lo[64][64];           /* w & 127 */
    int16_t mins[8][32];         /* XLLM_KP_MINPAIR(i): (mn[2i], mn[2i+1]) of each row (min types) */
    float d[XLLM_KP];            /* the rows' d */
    float nd[XLLM_KP];           /* the rows' -dmin (min types) */
} xllm_akq_block;

_Static_assert(sizeof(xllm_akq_block) == 8192 + 512 + 128, "AMX K-quant block is 2 x 4096 + 512 + 128 bytes");

/* Blocks [b0, b1) of the panel at w into out[0 .. b1-b0). */
#define XLLM_AKQ_PACK_BODY(TYPE)                                                                        \
    const xllm_kp_region *rg = xllm_kp_regions[(TYPE) - XLLM_Q2_K];                                     \
    const size_t pblock = (size_t)XLLM_KP * xllm_kq_block_bytes(TYPE);                                  \
    const int off = xllm_kq_offset(TYPE);                                                               \
    /* The values go to int16 in place within each 128-bit lane (unpacklo/hi with zero: rows            \
     * 4L, 4L+1 / 4L+2, 4L+3 of lane L) and back with packs (in-lane: the inverse order), one           \
     * shuffle each way where cvtepu8 / vpmovwb take three.  sc16[h]: int16 k of lane L is              \
     * the low int16 of the int32 scale of row 4L + 2h + (k % 8) / 4. */                                \
    __m512i rep[2];                                                                                     \
    for (int h = 0; h < 2; h++) {                                                                       \
        int16_t idx[32];                                                                                \
        for (int k = 0; k < 32; k++) idx[k] = (int16_t)(2 * (4 * (k / 8) + 2 * h + (k % 8) / 4));       \
        rep[h] = _mm512_loadu_si512((const void *)idx);                                                 \
    }                                                                                                   \
    const __m512i m7 = _mm512_set1_epi16(127), offv = _mm512_set1_epi16((short)off), zero = _mm512_setzero_si512(); \
    for (int b = b0; b < b1; b++, out++) {                                                              \
        const uint8_t *pb = (const uint8_t *)w + (size_t)b * pblock;                                    \
        const uint8_t *sp = pb + rg[1].poff;                                                            \
        __m512i s[4];                                                                                   \
        if ((TYPE) != XLLM_Q2_K && (TYPE) != XLLM_Q6_K) XLLM_KP_DECODE_SCALES(TYPE, s);                 \
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) {                                           \
            __m512i sc16[2];                                                                            \
            _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {                                       \
                if (c == 0 || (c == 4 && !XLLM_KP_PER32(TYPE))) {                                       \
                    const __m512i sv = XLLM_KP_SCALE(TYPE, s, XLLM_KP_PER32(TYPE) ? g : 2 * g + c / 4); \
                    sc16[0] = _mm512_permutexvar_epi16(rep[0], sv);                                     \
                    sc16[1] = _mm512_permutexvar_epi16(rep[1], sv);                                     \
                }                                                                                       \
                const __m512i q = XLLM_KP_VALUES(TYPE, 0, g, c);                                        \
                __m512i v0 = _mm512_unpacklo_epi8(q, zero), v1 = _mm512_unpackhi_epi8(q, zero);         \
                if (off) { v0 = _mm512_sub_epi16(v0, offv); v1 = _mm512_sub_epi16(v1, offv); }          \
                v0 = _mm512_mullo_epi16(v0, sc16[0]);                                                   \
                v1 = _mm512_mullo_epi16(v1, sc16[1]);                                                   \
                _mm512_store_si512((void *)out->hi[8 * g + c],                                          \
                                   _mm512_packs_epi16(_mm512_srai_epi16(v0, 7), _mm512_srai_epi16(v1, 7))); \
                _mm512_store_si512((void *)out->lo[8 * g + c],                                          \
                                   _mm512_packs_epi16(_mm512_and_si512(v0, m7), _mm512_and_si512(v1, m7))); \
            }                                                                                           \
        }                                                                                               \
        if (!off)                                                                                       \
            _Pragma("GCC unroll 8") for (int i = 0; i < (XLLM_KP_PER32(TYPE) ? 4 : 8); i++)             \
                _mm512_store_si512((void *)out->mins[i], XLLM_KP_MINPAIR(TYPE, s, i));                  \
        _mm512_store_ps(out->d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + rg[2].poff)))); \
        if (!off)                                                                                       \
            _mm512_store_ps(out->nd, _mm512_castsi512_ps(_mm512_xor_si512(_mm512_set1_epi32((int)0x80000000u), \
                _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + rg[3].poff))))))); \
    }

#define XLLM_AKQ_PACK_FN(NAME, TYPE)                                                                   \
XLLM_AVX512_FN static void xllm_akq_pack_##NAME(const char *w, int b0, int b1, xllm_akq_block *out) {  \
    XLLM_AKQ_PACK_BODY(TYPE)                                                                            \
}
XLLM_AKQ_PACK_FN(q2k, XLLM_Q2_K)
XLLM_AKQ_PACK_FN(q3k, XLLM_Q3_K)
XLLM_AKQ_PACK_FN(q4k, XLLM_Q4_K)
XLLM_AKQ_PACK_FN(q5k, XLLM_Q5_K)
XLLM_AKQ_PACK_FN(q6k, XLLM_Q6_K)

/* Blocks [b0, b1) of the K-quant panel at w (type Q2_K..Q6_K) as AMX operands. */
static void xllm_akq_pack(int type, const char *w, int b0, int b1, xllm_akq_block *out) {
    typedef void (*pack_fn)(const char *, int, int, xllm_akq_block *);
    static const pack_fn fns[5] = {xllm_akq_pack_q2k, xllm_akq_pack_q3k, xllm_akq_pack_q4k,
                                   xllm_akq_pack_q5k, xllm_akq_pack_q6k};
    fns[type - XLLM_Q2_K](w, b0, b1, out);
}

#endif /* XLLM_SIMD_KQUANT_AMX_PACK_H */
