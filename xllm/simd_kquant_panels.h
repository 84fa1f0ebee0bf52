/* simd_kquant_panels.h: K-quant matmuls (Q2_K..Q6_K) on panels of 16 rows, included from
 * simd_kquants.h.
 *
 * Layout.  At load, each K-quant matrix is repacked into panels of XLLM_KP = 16 rows, block
 * by block: panel block b holds exactly the bytes of the 16 rows' file blocks b (16 x 84 ..
 * 16 x 210 bytes: a matmul streams no more than the file holds), each field of the file block
 * ("region") interleaved across the 16 rows in units of 4 or 2 bytes:
 *
 *     byte o of region k of row r  ->  poff_k + 16 * unit_k * u + unit_k * r + o % unit_k,
 *     u = o / unit_k, except in the values region: u = xllm_kp_slot[type][o / unit_k]
 *
 * The value bytes (qs, qh, hmask) use 4-byte units, so one 64-byte load is the same 4 file
 * bytes of all 16 rows: with a shift and a mask, 4 values of 16 rows, one int32 lane per row,
 * exactly what one AVX-512 VNNI vpdpbusd multiplies with 4 activation values broadcast.  The
 * same shifts and masks the file layout needs (llama.cpp's) apply unchanged.  Scales: Q4_K /
 * Q5_K / Q3_K keep their 12 packed bytes in 4-byte units (unpacked for 16 rows at once with
 * llama.cpp's kmask steps, lane by lane); Q2_K / Q6_K's 16 bytes go in 2-byte units, so one
 * 32-byte load widened to int16 is the scales of sub-blocks 2i, 2i+1 of 16 rows (vpdpwssd's
 * pairs for the min sums).  d and dmin: 2-byte units (16 fp16, one vcvtph2ps).
 *
 * Arithmetic.  Per (row, token) and block, with the canonical form of simd_kquants.h:
 *     isum = sum_j sc[j] * sum_{i in j} q[i] x[i]        msum = sum_j mn[j] * bsum[j]
 * exact int32 (folded Q3_K/Q6_K: mn = sc and isum -= off * msum), then one fixed sequence
 *     acc = fma(d * dx, (float)isum, acc);  acc = fma(-(dmin * dx), (float)msum, acc)
 * (folded types: only the first), blocks in order, acc the output (one float per row and
 * token).  Scalar, AVX2 (maddubs + madd with the scales) and AVX-512 (vpdpbusd per sub-block,
 * then vpmulld by its scales; vpdpwssd for msum) differ only in the order of exact integer
 * additions: every level, tile shape, token count and thread gives the same bits. */
#ifndef XLLM_SIMD_KQUANT_PANELS_H
#define XLLM_SIMD_KQUANT_PANELS_H

#define XLLM_KP 16             /* rows per K-quant panel */
#define XLLM_KQ_TOKENS 8       /* most tokens per tile (AVX-512; AVX2 and scalar tiles take 4) */
#ifndef XLLM_KQ_ROW_GROUP
#define XLLM_KQ_ROW_GROUP 32   /* K-quant weight rows per parallel work item (2 panels) */
#endif
#ifndef XLLM_KQ_CHUNK
#define XLLM_KQ_CHUNK 8        /* blocks per k-chunk when several tokens share a panel: the panel's
                                  chunk (18-27 KB) stays in L1 while the token tiles pass */
#endif

/* One region of a file block: bytes [foff, foff + len) of each row, in units of `unit` bytes,
 * at poff in the panel block. */
typedef struct { int16_t foff, len, unit, poff; } xllm_kp_region;

/* [type][region]: values, scales, d, dmin (len 0: none).  Panel blocks are 16 x file blocks. */
static const xllm_kp_region xllm_kp_regions[5][4] = {
    {{16, 64, 4, 0}, {0, 16, 2, 1024}, {80, 2, 2, 1280}, {82, 2, 2, 1312}},        /* Q2_K  1344 */
    {{0, 96, 4, 0}, {96, 12, 4, 1536}, {108, 2, 2, 1728}, {0, 0, 2, 0}},          /* Q3_K  1760 */
    {{16, 128, 4, 0}, {4, 12, 4, 2048}, {0, 2, 2, 2240}, {2, 2, 2, 2272}},        /* Q4_K  2304 */
    {{16, 160, 4, 0}, {4, 12, 4, 2560}, {0, 2, 2, 2752}, {2, 2, 2, 2784}},        /* Q5_K  2816 */
    {{0, 192, 4, 0}, {192, 16, 2, 3072}, {208, 2, 2, 3328}, {0, 0, 2, 0}},        /* Q6_K  3360 */
};

/* Where value unit u (4 file bytes of each row: 64 panel bytes) sits in the values region:
 * slot[u].  Q6_K's units go in the order the one-token pass (XLLM_KP_PASS_512, NT = 1) first
 * touches them: its natural order (ql units 0-3, qh 32-35, ql 8-11, 16-19, qh 40-43, ...)
 * left Zen 4's hardware prefetcher behind (2 threads from memory, 5632 x 2048: 16 GB/s, 26
 * with the block prefetched in software; in this order 30 without, the pure read's 30).
 * The other types' natural order already ascends, or measured no better permuted
 * (benchmarks/README.md). */
#define XLLM_KP_SLOTS_IN_ORDER {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, \
                                24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47}
static const uint8_t xllm_kp_slot[5][48] = {
    XLLM_KP_SLOTS_IN_ORDER, XLLM_KP_SLOTS_IN_ORDER, XLLM_KP_SLOTS_IN_ORDER, XLLM_KP_SLOTS_IN_ORDER,   /* Q2_K..Q5_K */
    {0, 2, 4, 6, 24, 26, 28, 30, 8, 9, 10, 11, 32, 33, 34, 35, 12, 14, 16, 18, 36, 38, 40, 42,       /* Q6_K */
     20, 21, 22, 23, 44, 45, 46, 47, 1, 3, 5, 7, 25, 27, 29, 31, 13, 15, 17, 19, 37, 39, 41, 43},
};

/* Panel offset of byte o of region k of row r (the values region through xllm_kp_slot). */
static inline size_t xllm_kp_offset(int type, int k, int r, int o) {
    const xllm_kp_region *g = &xllm_kp_regions[type - XLLM_Q2_K][k];
    const int u = k == 0 ? xllm_kp_slot[type - XLLM_Q2_K][o / g->unit] : o / g->unit;
    return (size_t)g->poff + (size_t)XLLM_KP * g->unit * u + (size_t)g->unit * r + o % g->unit;
}

/* Repack rows [0, nr) (nr <= 16) of a K-quant matrix (row r at src + r * row_bytes, nb
 * blocks) into one panel at dst; missing rows are zero (d = dmin = 0, scales and values 0). */
static void xllm_kp_pack_panel(int type, const char *src, size_t row_bytes, int nr, int nb, char *dst) {
    const int bytes = xllm_kq_block_bytes(type);
    const xllm_kp_region *regions = xllm_kp_regions[type - XLLM_Q2_K];
    for (int b = 0; b < nb; b++) {
        uint8_t *pb = (uint8_t *)dst + (size_t)b * XLLM_KP * bytes;
        if (nr < XLLM_KP) memset(pb, 0, (size_t)XLLM_KP * bytes);
        for (int r = 0; r < nr; r++) {
            const uint8_t *blk = (const uint8_t *)src + (size_t)r * row_bytes + (size_t)b * bytes;
            for (int k = 0; k < 4; k++)
                for (int o = 0; o < regions[k].len; o++) pb[xllm_kp_offset(type, k, r, o)] = blk[regions[k].foff + o];
        }
    }
}

/* Row r's file block back from panel block pb (the scalar path reads panels through this). */
static inline void xllm_kp_unpack_block(int type, const uint8_t *pb, int r, uint8_t *blk) {
    const xllm_kp_region *regions = xllm_kp_regions[type - XLLM_Q2_K];
    for (int k = 0; k < 4; k++)
        for (int o = 0; o < regions[k].len; o++) blk[regions[k].foff + o] = pb[xllm_kp_offset(type, k, r, o)];
}

/* ------------------------------------------------------------------ scalar */

static void xllm_kp_tile_scalar(int type, const char *w, const xllm_block_q8k *x, size_t ldx, int nt,
                                int b0, int b1, float *acc, int ldacc) {
    const int bytes = xllm_kq_block_bytes(type), off = xllm_kq_offset(type);
    uint8_t blk[256], q[XLLM_QK_K];
    int8_t sc[16], mn[16];
    float d, dmin;
    for (int b = b0; b < b1; b++) {
        const uint8_t *pb = (const uint8_t *)w + (size_t)b * XLLM_KP * bytes;
        for (int r = 0; r < XLLM_KP; r++) {
            xllm_kp_unpack_block(type, pb, r, blk);
            xllm_kq_block_scales(type, blk, sc, mn, &d, &dmin);
            xllm_kq_block_values(type, blk, q);
            for (int t = 0; t < nt; t++) {
                const xllm_block_q8k *xb = x + t * ldx + b;
                int32_t isum = 0, msum = 0;
                for (int j = 0; j < 16; j++) {
                    int32_t s = 0;
                    for (int i = 16 * j; i < 16 * j + 16; i++) s += (int32_t)q[i] * xb->qs[i];
                    isum += sc[j] * s;
                    msum += mn[j] * xb->bsums[j];
                }
                float *a = acc + (size_t)t * ldacc + r;
                *a = xllm_kq_accumulate(*a, off, d, dmin, xb->d, isum, msum);
            }
        }
    }
}

#if XLLM_X86
static inline int32_t xllm_kp_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }

/* Scales per 32 values (Q4_K, Q5_K; sc and mn of group g) or per 16 (Q2_K, Q3_K, Q6_K). */
#define XLLM_KP_PER32(TYPE) ((TYPE) == XLLM_Q4_K || (TYPE) == XLLM_Q5_K)

/* pshufb controls, per dword (one row): byte k zero-extended to int32; bytes 2k, 2k+1 each
 * zero-extended to int16; the low int16 twice (AVX2's scale pairs for madd). */
#define XLLM_KP_PICK(m, k) (int)(0x80808000u | (uint32_t)(4 * (m) + (k)))
#define XLLM_KP_PAIR(m, k) (int)(0x80008000u | ((uint32_t)(4 * (m) + 2 * (k) + 1) << 16) | (uint32_t)(4 * (m) + 2 * (k)))
#define XLLM_KP_DUP(m) (int)(((uint32_t)(4 * (m) + 1) << 24) | ((uint32_t)(4 * (m)) << 16) | ((uint32_t)(4 * (m) + 1) << 8) | (uint32_t)(4 * (m)))

/* The value vector of chunk c (values 4c..4c+3) of group g (values 32g..32g+31) of a panel
 * block: llama.cpp's shifts and masks on one 4-byte unit of the 16 (or 8) rows; LDV(TYPE, u)
 * loads unit u of the values region (from its slot).  The high bits are shifted straight to
 * their place (HSHIFT) and inserted under a mask (INSERT: one vpternlogd on AVX-512).  X16 (Q4_K):
 * the high nibbles stay in place (16 q, one mask fewer); the caller scales the other
 * groups by 16 and divides the block sum by 16 (exact). */
#define XLLM_KP_SRL(v, n) ((n) != 0 ? SRL16((v), (n)) : (v))
#define XLLM_KP_HSHIFT(v, n) ((n) > 0 ? SLL16((v), (n) > 0 ? (n) : 0) : (n) < 0 ? SRL16((v), (n) < 0 ? -(n) : 0) : (v))
#define LDV(TYPE, u) LD(xllm_kp_slot[(TYPE) - XLLM_Q2_K][(u)])   /* logical value unit u */
#define XLLM_KP_VALUES(TYPE, X16, g, c)                                                                 \
    ((TYPE) == XLLM_Q2_K ? AND8(XLLM_KP_SRL(LDV(TYPE, 8 * ((g) >> 2) + (c)), 2 * ((g) & 3)), 3) :       \
     (TYPE) == XLLM_Q3_K ? INSERT(AND8(XLLM_KP_SRL(LDV(TYPE, 8 + 8 * ((g) >> 2) + (c)), 2 * ((g) & 3)), 3), \
                                  XLLM_KP_HSHIFT(LDV(TYPE, c), 2 - (g)), 0x04) :                        \
     (TYPE) == XLLM_Q4_K ? ((X16) && ((g) & 1) ? AND8(LDV(TYPE, 8 * ((g) >> 1) + (c)), (char)0xf0)      \
                                               : AND8(XLLM_KP_SRL(LDV(TYPE, 8 * ((g) >> 1) + (c)), 4 * ((g) & 1)), 0x0f)) : \
     (TYPE) == XLLM_Q5_K ? INSERT(AND8(XLLM_KP_SRL(LDV(TYPE, 8 + 8 * ((g) >> 1) + (c)), 4 * ((g) & 1)), 0x0f), \
                                  XLLM_KP_HSHIFT(LDV(TYPE, c), 4 - (g)), 0x10) :                        \
     INSERT(AND8(XLLM_KP_SRL(LDV(TYPE, 16 * ((g) >> 2) + 8 * ((g) & 1) + (c)), 4 * (((g) >> 1) & 1)), 0x0f), \
            XLLM_KP_HSHIFT(LDV(TYPE, 32 + 8 * ((g) >> 2) + (c)), 4 - 2 * ((g) & 3)), 0x30))

/* The exact int32 multiply of a sub-block's sums by its scales.  DPW: the types whose
 * 16-value sums fit in int16 (Q2_K, Q3_K, Q4_K: 16 * 15 * 127 < 2^15) take them through
 * vpdpwssd with the scale as the pair (sc, 0), one instruction where vpmulld + vpaddd are
 * three; Q5_K/Q6_K, and Q4_K at 1-2 tokens (X16 saves more there), use vpmulld. */
#define XLLM_KP_X16(TYPE, NT) ((TYPE) == XLLM_Q4_K && (NT) <= 2)
#define XLLM_KP_DPW(TYPE, NT) (((TYPE) == XLLM_Q4_K && (NT) > 2) || (TYPE) == XLLM_Q2_K || (TYPE) == XLLM_Q3_K)

/* Q4_K/Q5_K: the 12 scale bytes of each row (3 units at sp) -> s[0] scales 0..3, s[1] scales
 * 4..7, s[2] mins 0..3, s[3] mins 4..7 (bytes of each row's dword; get_scale_min_k4).
 * Q3_K: -> s[k] = scales 4k..4k+3, each + 32 (dequantize_row_q3_K's aux). */
#define XLLM_KP_DECODE_SCALES(TYPE, s)                                                                  \
    do {                                                                                                \
        const VEC u0 = LDS(0), u1 = LDS(1), u2 = LDS(2);                                                \
        if (XLLM_KP_PER32(TYPE)) {                                                                      \
            s[0] = AND32(u0, 0x3f3f3f3f);                                                               \
            s[1] = OR(AND32(u2, 0x0f0f0f0f), AND32(SRL32(u0, 2), 0x30303030));                          \
            s[2] = AND32(u1, 0x3f3f3f3f);                                                               \
            s[3] = OR(AND32(SRL32(u2, 4), 0x0f0f0f0f), AND32(SRL32(u1, 2), 0x30303030));                \
        } else {                                                                                        \
            s[0] = OR(AND32(u0, 0x0f0f0f0f), AND32(SLL32(u2, 4), 0x30303030));                          \
            s[1] = OR(AND32(u1, 0x0f0f0f0f), AND32(SLL32(u2, 2), 0x30303030));                          \
            s[2] = OR(AND32(SRL32(u0, 4), 0x0f0f0f0f), AND32(u2, 0x30303030));                          \
            s[3] = OR(AND32(SRL32(u1, 4), 0x0f0f0f0f), AND32(SRL32(u2, 2), 0x30303030));                \
        }                                                                                               \
    } while (0)

/* int32 scale of sub-block j (per-32 types: of group j) of each row. */
#define XLLM_KP_SCALE(TYPE, s, j)                                                                       \
    (XLLM_KP_PER32(TYPE) ? SHUF(s[(j) >> 2], PICKV((j) & 3)) :                                          \
     (TYPE) == XLLM_Q3_K ? SUB32(SHUF(s[(j) >> 2], PICKV((j) & 3)), 32) :                               \
     (TYPE) == XLLM_Q2_K ? AND32(SRL32(PAIRU((j) >> 1), 16 * ((j) & 1)), 0x0f) :                        \
     ((j) & 1) ? SRA32(PAIRS((j) >> 1), 16) : SRA32(SLL32(PAIRS((j) >> 1), 16), 16))

/* int16 pairs of the min sums: (mn[2i], mn[2i+1]) of each row, i < 4 (per-32 types, times
 * the 32-value activation sums) or i < 8 (times bsum[2i], bsum[2i+1]). */
#define XLLM_KP_MINPAIR(TYPE, s, i)                                                                     \
    (XLLM_KP_PER32(TYPE) ? SHUF(s[2 + ((i) >> 1)], PAIRV((i) & 1)) :                                    \
     (TYPE) == XLLM_Q3_K ? SUB16(SHUF(s[(i) >> 1], PAIRV((i) & 1)), 32) :                               \
     (TYPE) == XLLM_Q2_K ? AND32(SRL16(PAIRU(i), 4), 0x000f000f) : PAIRS(i))

/* ---- AVX-512: 16 rows per vector */
/* A value vector loaded into a register once: without the empty asm the compiler folds the
 * load into every vpandd that takes it (the two nibbles of Q4_K: twice the loads). */
XLLM_AVX512_FN static inline __m512i xllm_kp_load512(const uint8_t *p) {
    __m512i v = _mm512_loadu_si512((const void *)p);
    __asm__("" : "+v"(v));
    return v;
}
#define VEC __m512i
#define LD(u) xllm_kp_load512(pb + 64 * (u))
#define LDS(u) _mm512_loadu_si512((const void *)(sp + 64 * (u)))
#define PAIRU(i) _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(sp + 32 * (i))))
#define PAIRS(i) _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(sp + 32 * (i))))
#define SRL16(v, n) _mm512_srli_epi16((v), (n))
#define SLL16(v, n) _mm512_slli_epi16((v), (n))
#define SRL32(v, n) _mm512_srli_epi32((v), (n))
#define SLL32(v, n) _mm512_slli_epi32((v), (n))
#define SRA32(v, n) _mm512_srai_epi32((v), (n))
#define AND8(v, m) _mm512_and_si512((v), _mm512_set1_epi8(m))
#define AND32(v, m) _mm512_and_si512((v), _mm512_set1_epi32(m))
#define OR(a, b) _mm512_or_si512((a), (b))
#define INSERT(lo, hs, m) _mm512_ternarylogic_epi32((lo), (hs), _mm512_set1_epi8(m), 0xf8)   /* lo | (hs & m) */
#define SUB32(v, n) _mm512_sub_epi32((v), _mm512_set1_epi32(n))
#define SUB16(v, n) _mm512_sub_epi16((v), _mm512_set1_epi16(n))
#define SHUF(v, c) _mm512_shuffle_epi8((v), (c))
#define PICKV(k) _mm512_broadcast_i32x4(_mm_setr_epi32(XLLM_KP_PICK(0, k), XLLM_KP_PICK(1, k), XLLM_KP_PICK(2, k), XLLM_KP_PICK(3, k)))
#define PAIRV(k) _mm512_broadcast_i32x4(_mm_setr_epi32(XLLM_KP_PAIR(0, k), XLLM_KP_PAIR(1, k), XLLM_KP_PAIR(2, k), XLLM_KP_PAIR(3, k)))
#define XB(t) (x + (size_t)(t) * ldx + b)

/* isum += a * sv, the sub-block sums a times their scale sv: vpdpwssd with the pair (sc, 0)
 * or vpmulld + vpaddd (see XLLM_KP_DPW). */
#define XLLM_KP_ADD_SCALED_512(TYPE, NT, isum, a, sv)                                                  \
    ((isum) = XLLM_KP_DPW(TYPE, NT) ? _mm512_dpwssd_epi32((isum), (a), (sv))                            \
                                    : _mm512_add_epi32((isum), _mm512_mullo_epi32((a), (sv))))

/* The fixed float sequence of one block for 16 rows and one token (xllm_kq_accumulate in 16
 * lanes): dv, ndv the rows' d and -dmin, dx the token's scale. */
#define XLLM_KP_FLOAT_STEP_512(f, off, dv, ndv, dx, isum, msum)                                         \
    do {                                                                                                \
        if (off) {                                                                                      \
            const __m512i io = _mm512_sub_epi32((isum), _mm512_slli_epi32((msum), (off) == 32 ? 5 : 2)); \
            (f) = _mm512_fmadd_ps(_mm512_mul_ps((dv), (dx)), _mm512_cvtepi32_ps(io), (f));              \
        } else {                                                                                        \
            (f) = _mm512_fmadd_ps(_mm512_mul_ps((dv), (dx)), _mm512_cvtepi32_ps((isum)), (f));            \
            (f) = _mm512_fmadd_ps(_mm512_mul_ps((ndv), (dx)), _mm512_cvtepi32_ps((msum)), (f));         \
        }                                                                                               \
    } while (0)

/* One sub-block (chunks c0..c1-1 of group g) for NT tokens: vpdpbusd into a[t], then
 * isum[t] += a[t] * scale (vpdpwssd or vpmulld, see XLLM_KP_DPW). */
#define XLLM_KP_SUB_512(TYPE, NT, g, c0, c1, scale)                                                     \
    do {                                                                                                \
        __m512i a[NT];                                                                                  \
        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) a[t] = _mm512_setzero_si512();             \
        _Pragma("GCC unroll 8") for (int c = (c0); c < (c1); c++) {                                     \
            const __m512i q = XLLM_KP_VALUES(TYPE, XLLM_KP_X16(TYPE, NT), g, c);                        \
            _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                        \
                XLLM_DPBUSD512_BCAST(a[t], q, XB(t)->qs + 32 * (g) + 4 * c); \
        }                                                                                               \
        const __m512i sv = (scale);                                                                     \
        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                            \
            XLLM_KP_ADD_SCALED_512(TYPE, NT, isum[t], a[t], sv);                                        \
    } while (0)

/* The scale vector sub-block (g, h) of a block multiplies by: per-32 types one per group g
 * (X16: the even groups' low nibbles times 16), per-16 types sub-block 2g + h (DPW's pair
 * (sc, 0): Q3_K's negative scales masked to 16 bits). */
#define XLLM_KP_SUBSCALE_512(TYPE, NT, s, g, h)                                                         \
    (XLLM_KP_X16(TYPE, NT) ? ((g) & 1 ? XLLM_KP_SCALE(TYPE, s, g) : _mm512_slli_epi32(XLLM_KP_SCALE(TYPE, s, g), 4)) : \
     XLLM_KP_PER32(TYPE) ? XLLM_KP_SCALE(TYPE, s, g) :                                                  \
     _mm512_and_si512(XLLM_KP_SCALE(TYPE, s, 2 * (g) + (h)), _mm512_set1_epi32((TYPE) == XLLM_Q3_K ? 0xffff : -1)))

/* One or two tokens: eight vpdpbusd chains, one per group (chunks c0..c1-1 of each group,
 * sub-block half h), then each chain times its scale.  Two tokens (weights reused from L1)
 * issue the groups side by side chunk by chunk, so that the eight chains advance at once;
 * one token (weights from memory) walks group after group, so that the value loads go up the
 * block nearly line by line (on Zen 4 the chunk-major order, lines 0, 8, 16, 24, 1, 9, ...,
 * streamed Q4_K at 14.5 GB/s from memory with 2 threads, line order at ~30: benchmarks/
 * README.md).  The sums are exact: the same bits. */
#define XLLM_KP_PASS_512(TYPE, NT, h, c0, c1)                                                           \
    do {                                                                                                \
        __m512i a[NT][8];                                                                               \
        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                            \
            _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) a[t][g] = _mm512_setzero_si512();       \
        _Pragma("GCC unroll 64") for (int k = 0; k < 8 * ((c1) - (c0)); k++) {                          \
            const int g = (NT) == 1 ? k / ((c1) - (c0)) : k % 8;                                        \
            const int c = (c0) + ((NT) == 1 ? k % ((c1) - (c0)) : k / 8);                               \
            const __m512i q = XLLM_KP_VALUES(TYPE, XLLM_KP_X16(TYPE, NT), g, c);                        \
            _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                        \
                XLLM_DPBUSD512_BCAST(a[t][g], q, XB(t)->qs + 32 * g + 4 * c); \
        }                                                                                               \
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) {                                           \
            const __m512i sv = XLLM_KP_SUBSCALE_512(TYPE, NT, s, g, h);                                 \
            _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                        \
                XLLM_KP_ADD_SCALED_512(TYPE, NT, isum[t], a[t][g], sv);                                 \
        }                                                                                               \
    } while (0)

/* One token from one stream: Q2_K, Q3_K and Q5_K prefetch each block's own lines in order
 * before their out-of-order loads (Zen 4, 2 threads from memory, 5632 x 2048: Q3_K 13 -> 27
 * GB/s, Q5_K 23 -> 29); Q4_K and Q6_K (xllm_kp_slot) load in address order and leave it to
 * the hardware prefetcher, which the software prefetches only slowed (Q4_K 27-37 -> 29-42). */
#define XLLM_KP_PREFETCH_OWN(TYPE) ((TYPE) == XLLM_Q2_K || (TYPE) == XLLM_Q3_K || (TYPE) == XLLM_Q5_K)

#define XLLM_KP_BODY_512(TYPE, NT)                                                                      \
    const xllm_kp_region *rg = xllm_kp_regions[(TYPE) - XLLM_Q2_K];                                     \
    const size_t pblock = (size_t)XLLM_KP * xllm_kq_block_bytes(TYPE);                                  \
    const int off = xllm_kq_offset(TYPE);                                                               \
    const int pf_next = (NT) == 1 && xllm_gemv_multi_stream();   /* decode: fetch the next block */     \
    for (int b = b0; b < b1; b++) {                                                                     \
        const uint8_t *pb = (const uint8_t *)w + (size_t)b * pblock;                                    \
        const uint8_t *sp = pb + rg[1].poff;                                                            \
        __m512i s[4], isum[NT], msum[NT];                                                               \
        if (pf_next)                                                                                    \
            _Pragma("GCC unroll 64") for (size_t o = 0; o < pblock; o += 64) _mm_prefetch((const char *)pb + pblock + o, _MM_HINT_T0); \
        else if ((NT) == 1 && XLLM_KP_PREFETCH_OWN(TYPE))                                               \
            for (size_t o = 0; o < pblock; o += 64) _mm_prefetch((const char *)pb + o, _MM_HINT_T0);   \
        if ((TYPE) != XLLM_Q2_K && (TYPE) != XLLM_Q6_K) XLLM_KP_DECODE_SCALES(TYPE, s);                 \
        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) isum[t] = msum[t] = _mm512_setzero_si512(); \
        if ((NT) <= 2 && XLLM_KP_PER32(TYPE)) {                                                         \
            XLLM_KP_PASS_512(TYPE, NT, 0, 0, 8);                                                        \
        } else if ((NT) <= 2) {                                                                         \
            XLLM_KP_PASS_512(TYPE, NT, 0, 0, 4);                                                        \
            XLLM_KP_PASS_512(TYPE, NT, 1, 4, 8);                                                        \
        } else                                                                                          \
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) {                                           \
            if (XLLM_KP_X16(TYPE, NT)) {                                                                \
                const __m512i sc = XLLM_KP_SCALE(TYPE, s, g);                                           \
                XLLM_KP_SUB_512(TYPE, NT, g, 0, 8, (g & 1) ? sc : _mm512_slli_epi32(sc, 4));            \
            } else if (XLLM_KP_PER32(TYPE) && !XLLM_KP_DPW(TYPE, NT)) {                                 \
                XLLM_KP_SUB_512(TYPE, NT, g, 0, 8, XLLM_KP_SCALE(TYPE, s, g));                          \
            } else if (XLLM_KP_PER32(TYPE)) {                                                           \
                const __m512i sc = XLLM_KP_SCALE(TYPE, s, g);                                           \
                XLLM_KP_SUB_512(TYPE, NT, g, 0, 4, sc);                                                 \
                XLLM_KP_SUB_512(TYPE, NT, g, 4, 8, sc);                                                 \
            } else {                                                                                    \
                /* per 16 values; DPW needs the pair (sc, 0): Q3_K's negative scales masked to 16 bits */ \
                const __m512i m = _mm512_set1_epi32((TYPE) == XLLM_Q3_K ? 0xffff : -1);                 \
                XLLM_KP_SUB_512(TYPE, NT, g, 0, 4, _mm512_and_si512(XLLM_KP_SCALE(TYPE, s, 2 * g), m)); \
                XLLM_KP_SUB_512(TYPE, NT, g, 4, 8, _mm512_and_si512(XLLM_KP_SCALE(TYPE, s, 2 * g + 1), m)); \
            }                                                                                           \
        }                                                                                               \
        if (XLLM_KP_X16(TYPE, NT))                                                                      \
            _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) isum[t] = _mm512_srai_epi32(isum[t], 4); \
        _Pragma("GCC unroll 8") for (int i = 0; i < (XLLM_KP_PER32(TYPE) ? 4 : 8); i++) {               \
            const __m512i mp = XLLM_KP_MINPAIR(TYPE, s, i);                                             \
            _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++)                                        \
                XLLM_DPWSSD512_BCAST(msum[t], mp,                                                       \
                    XLLM_KP_PER32(TYPE) ? XB(t)->bsums32 + 2 * i : XB(t)->bsums + 2 * i);               \
        }                                                                                               \
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + rg[2].poff)));      \
        const __m512 ndv = off ? dv : _mm512_castsi512_ps(_mm512_xor_si512(_mm512_set1_epi32((int)0x80000000u), \
            _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + rg[3].poff))))));  \
        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) {                                          \
            const __m512 dx = _mm512_set1_ps(XB(t)->d);                                                 \
            __m512 f = _mm512_loadu_ps(acc + (size_t)t * ldacc);                                        \
            XLLM_KP_FLOAT_STEP_512(f, off, dv, ndv, dx, isum[t], msum[t]);                              \
            _mm512_storeu_ps(acc + (size_t)t * ldacc, f);                                               \
        }                                                                                               \
    }

#define XLLM_KP_FN_512(NAME, TYPE, NT)                                                                  \
XLLM_AVX512_FN static void xllm_kp_vnni_##NAME##_##NT(const char *w, const xllm_block_q8k *x, size_t ldx, \
                                                     int b0, int b1, float *acc, int ldacc) {           \
    XLLM_KP_BODY_512(TYPE, NT)                                                                          \
}
#define XLLM_KP_FNS_512(NAME, TYPE) \
    XLLM_KP_FN_512(NAME, TYPE, 1) XLLM_KP_FN_512(NAME, TYPE, 2) XLLM_KP_FN_512(NAME, TYPE, 4) XLLM_KP_FN_512(NAME, TYPE, 8)

/* Decode on a CPU that streams faster from several streams (xllm_gemv_multi_stream): two
 * panels (rows 0..15 at w, 16..31 at w + pstride) and one token, read side by side a vector
 * of each in turn, the next block of both prefetched; sixteen vpdpbusd chains in flight,
 * each activation broadcast serving both panels, the row sums in registers across the
 * blocks.  Each panel's arithmetic is that of the one-token tile: the same bits. */
#define XLLM_KP_GEMV2_PASS_512(TYPE, h, c0, c1)                                                         \
    do {                                                                                                \
        __m512i a0[8], a1[8];                                                                           \
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) a0[g] = a1[g] = _mm512_setzero_si512();     \
        _Pragma("GCC unroll 8") for (int c = (c0); c < (c1); c++)                                       \
            _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) {                                       \
                const int8_t *xq = x[b].qs + 32 * g + 4 * c;                                           \
                { const uint8_t *pb = pb0; XLLM_DPBUSD512_BCAST(a0[g], XLLM_KP_VALUES(TYPE, XLLM_KP_X16(TYPE, 1), g, c), xq); } \
                { const uint8_t *pb = pb1; XLLM_DPBUSD512_BCAST(a1[g], XLLM_KP_VALUES(TYPE, XLLM_KP_X16(TYPE, 1), g, c), xq); } \
            }                                                                                           \
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) {                                           \
            { const uint8_t *sp = sp0; (void)sp;                                                        \
              XLLM_KP_ADD_SCALED_512(TYPE, 1, isum0, a0[g], XLLM_KP_SUBSCALE_512(TYPE, 1, s0, g, h)); }  \
            { const uint8_t *sp = sp1; (void)sp;                                                        \
              XLLM_KP_ADD_SCALED_512(TYPE, 1, isum1, a1[g], XLLM_KP_SUBSCALE_512(TYPE, 1, s1, g, h)); }  \
        }                                                                                               \
    } while (0)

/* One panel's min sums and float step of block b (pb, sp, rg, off in scope) into the row
 * sums f: the sequence of XLLM_KP_BODY_512 for one token. */
#define XLLM_KP_GEMV_FINISH_512(TYPE, s, isum, f)                                                       \
    do {                                                                                                \
        __m512i msum = _mm512_setzero_si512();                                                          \
        _Pragma("GCC unroll 8") for (int i = 0; i < (XLLM_KP_PER32(TYPE) ? 4 : 8); i++)                 \
            XLLM_DPWSSD512_BCAST(msum, XLLM_KP_MINPAIR(TYPE, s, i),                                     \
                XLLM_KP_PER32(TYPE) ? x[b].bsums32 + 2 * i : x[b].bsums + 2 * i);                       \
        const __m512i is = XLLM_KP_X16(TYPE, 1) ? _mm512_srai_epi32(isum, 4) : isum;                    \
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + rg[2].poff)));      \
        const __m512 ndv = off ? dv : _mm512_castsi512_ps(_mm512_xor_si512(_mm512_set1_epi32((int)0x80000000u), \
            _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + rg[3].poff))))));  \
        XLLM_KP_FLOAT_STEP_512(f, off, dv, ndv, _mm512_set1_ps(x[b].d), is, msum);                      \
    } while (0)

#define XLLM_KP_GEMV2_FN_512(NAME, TYPE)                                                                \
XLLM_AVX512_FN static void xllm_kp_vnni_##NAME##_gemv2(const char *w, size_t pstride, const xllm_block_q8k *x, \
                                                      int nb, float *acc) {                             \
    const xllm_kp_region *rg = xllm_kp_regions[(TYPE) - XLLM_Q2_K];                                     \
    const size_t pblock = (size_t)XLLM_KP * xllm_kq_block_bytes(TYPE);                                  \
    const int off = xllm_kq_offset(TYPE);                                                               \
    __m512 f0 = _mm512_loadu_ps(acc), f1 = _mm512_loadu_ps(acc + XLLM_KP);                              \
    for (int b = 0; b < nb; b++) {                                                                      \
        const uint8_t *pb0 = (const uint8_t *)w + (size_t)b * pblock, *pb1 = pb0 + pstride;             \
        const uint8_t *sp0 = pb0 + rg[1].poff, *sp1 = pb1 + rg[1].poff;                                 \
        __m512i s0[4], s1[4], isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();           \
        if (b + 1 < nb)                                                                                 \
            _Pragma("GCC unroll 64") for (size_t o = 0; o < pblock; o += 64) {                          \
                _mm_prefetch((const char *)pb0 + pblock + o, _MM_HINT_T0);                              \
                _mm_prefetch((const char *)pb1 + pblock + o, _MM_HINT_T0);                              \
            }                                                                                           \
        if ((TYPE) != XLLM_Q2_K && (TYPE) != XLLM_Q6_K) {                                               \
            { const uint8_t *sp = sp0; XLLM_KP_DECODE_SCALES(TYPE, s0); }                               \
            { const uint8_t *sp = sp1; XLLM_KP_DECODE_SCALES(TYPE, s1); }                               \
        }                                                                                               \
        if (XLLM_KP_PER32(TYPE)) {                                                                      \
            XLLM_KP_GEMV2_PASS_512(TYPE, 0, 0, 8);                                                      \
        } else {                                                                                        \
            XLLM_KP_GEMV2_PASS_512(TYPE, 0, 0, 4);                                                      \
            XLLM_KP_GEMV2_PASS_512(TYPE, 1, 4, 8);                                                      \
        }                                                                                               \
        { const uint8_t *pb = pb0, *sp = sp0; (void)sp; XLLM_KP_GEMV_FINISH_512(TYPE, s0, isum0, f0); } \
        { const uint8_t *pb = pb1, *sp = sp1; (void)sp; XLLM_KP_GEMV_FINISH_512(TYPE, s1, isum1, f1); } \
    }                                                                                                   \
    _mm512_storeu_ps(acc, f0);                                                                          \
    _mm512_storeu_ps(acc + XLLM_KP, f1);                                                                \
}

XLLM_KP_GEMV2_FN_512(q2k, XLLM_Q2_K)
XLLM_KP_GEMV2_FN_512(q3k, XLLM_Q3_K)
XLLM_KP_GEMV2_FN_512(q4k, XLLM_Q4_K)
XLLM_KP_GEMV2_FN_512(q5k, XLLM_Q5_K)
XLLM_KP_GEMV2_FN_512(q6k, XLLM_Q6_K)

XLLM_KP_FNS_512(q2k, XLLM_Q2_K)
XLLM_KP_FNS_512(q3k, XLLM_Q3_K)
XLLM_KP_FNS_512(q4k, XLLM_Q4_K)
XLLM_KP_FNS_512(q5k, XLLM_Q5_K)
XLLM_KP_FNS_512(q6k, XLLM_Q6_K)

#include "simd_kquant_amx_pack.h"   /* the panels as AMX tile operands (this section's macros) */

#undef VEC
#undef LD
#undef LDS
#undef PAIRU
#undef PAIRS
#undef SRL16
#undef SLL16
#undef SRL32
#undef SLL32
#undef SRA32
#undef AND8
#undef AND32
#undef OR
#undef INSERT
#undef SUB32
#undef SUB16
#undef SHUF
#undef PICKV
#undef PAIRV

/* ---- AVX2: 8 rows per vector, each panel block as two halves (rows 8h..8h+7: +32h bytes in
 * the 4-byte-unit regions, +16h in the 2-byte ones).  maddubs pairs, summed in int16 over up
 * to XLLM_KP_RUN16 chunks, times the sub-block's scale as int16 pairs (madd) go into the int32
 * block sum. */
#define VEC __m256i
#define LD(u) _mm256_loadu_si256((const __m256i *)(pb + 32 * h + 64 * (u)))
#define LDS(u) _mm256_loadu_si256((const __m256i *)(sp + 32 * h + 64 * (u)))
#define PAIRU(i) _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(sp + 16 * h + 32 * (i))))
#define PAIRS(i) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sp + 16 * h + 32 * (i))))
#define SRL16(v, n) _mm256_srli_epi16((v), (n))
#define SLL16(v, n) _mm256_slli_epi16((v), (n))
#define SRL32(v, n) _mm256_srli_epi32((v), (n))
#define SLL32(v, n) _mm256_slli_epi32((v), (n))
#define SRA32(v, n) _mm256_srai_epi32((v), (n))
#define AND8(v, m) _mm256_and_si256((v), _mm256_set1_epi8(m))
#define AND32(v, m) _mm256_and_si256((v), _mm256_set1_epi32(m))
#define OR(a, b) _mm256_or_si256((a), (b))
#define INSERT(lo, hs, m) _mm256_or_si256((lo), _mm256_and_si256((hs), _mm256_set1_epi8(m)))
#define SUB32(v, n) _mm256_sub_epi32((v), _mm256_set1_epi32(n))
#define SUB16(v, n) _mm256_sub_epi16((v), _mm256_set1_epi16(n))
#define SHUF(v, c) _mm256_shuffle_epi8((v), (c))
#define PICKV(k) _mm256_setr_epi32(XLLM_KP_PICK(0, k), XLLM_KP_PICK(1, k), XLLM_KP_PICK(2, k), XLLM_KP_PICK(3, k), \
                                   XLLM_KP_PICK(0, k), XLLM_KP_PICK(1, k), XLLM_KP_PICK(2, k), XLLM_KP_PICK(3, k))
#define PAIRV(k) _mm256_setr_epi32(XLLM_KP_PAIR(0, k), XLLM_KP_PAIR(1, k), XLLM_KP_PAIR(2, k), XLLM_KP_PAIR(3, k), \
                                   XLLM_KP_PAIR(0, k), XLLM_KP_PAIR(1, k), XLLM_KP_PAIR(2, k), XLLM_KP_PAIR(3, k))
#define DUPV _mm256_setr_epi32(XLLM_KP_DUP(0), XLLM_KP_DUP(1), XLLM_KP_DUP(2), XLLM_KP_DUP(3), \
                               XLLM_KP_DUP(0), XLLM_KP_DUP(1), XLLM_KP_DUP(2), XLLM_KP_DUP(3))

/* maddubs outputs of one type that add in int16 without overflow: each is at most
 * 2 * qmax * 128 (Q2_K 768, Q3_K 1792, Q4_K 3840, Q5_K 7936, Q6_K 16128; the activations are
 * int8, the values unsigned), so 8, 8, 8, 4, 2 of them stay below 2^15.  Summing them in int16
 * before the one madd by the scale halves the multiplies (the multiply pipe bounds AVX2). */
#define XLLM_KP_RUN16(TYPE) ((TYPE) == XLLM_Q6_K ? 2 : (TYPE) == XLLM_Q5_K ? 4 : 8)

#define XLLM_KP_SUB_256(TYPE, NT, g, c0, c1, scale)                                                     \
    do {                                                                                                \
        const __m256i sp16 = SHUF((scale), DUPV);                                                       \
        enum { RUN = XLLM_KP_RUN16(TYPE) < (c1) - (c0) ? XLLM_KP_RUN16(TYPE) : (c1) - (c0) };          \
        _Pragma("GCC unroll 8") for (int c = (c0); c < (c1); c += RUN) {                                \
            __m256i p16[NT];                                                                            \
            _Pragma("GCC unroll 8") for (int k = 0; k < RUN; k++) {                                     \
                const __m256i q = XLLM_KP_VALUES(TYPE, 0, g, c + k);                                    \
                _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                                  \
                    const __m256i pr = _mm256_maddubs_epi16(q, _mm256_set1_epi32(                       \
                        xllm_kp_i32(XB(t)->qs + 32 * (g) + 4 * (c + k))));                              \
                    p16[t] = k == 0 ? pr : _mm256_add_epi16(p16[t], pr);                                \
                }                                                                                       \
            }                                                                                           \
            _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                        \
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p16[t], sp16));                   \
        }                                                                                               \
    } while (0)

#define XLLM_KP_BODY_256(TYPE, NT)                                                                      \
    const xllm_kp_region *rg = xllm_kp_regions[(TYPE) - XLLM_Q2_K];                                     \
    const size_t pblock = (size_t)XLLM_KP * xllm_kq_block_bytes(TYPE);                                  \
    const int off = xllm_kq_offset(TYPE);                                                               \
    for (int b = b0; b < b1; b++)      /* both halves of a block while it is in L1 */                   \
    for (int h = 0; h < 2; h++) {                                                                       \
        const uint8_t *pb = (const uint8_t *)w + (size_t)b * pblock;                                    \
        if ((NT) == 1 && h == 0)                                                                        \
            for (size_t o = 0; o < pblock; o += 64)                                                     \
                _mm_prefetch((const char *)pb + XLLM_GEMV_PREFETCH_AVX2 + o, _MM_HINT_T0);           \
        const uint8_t *sp = pb + rg[1].poff;                                                            \
        __m256i s[4], isum[NT], msum[NT];                                                               \
        if ((TYPE) != XLLM_Q2_K && (TYPE) != XLLM_Q6_K) XLLM_KP_DECODE_SCALES(TYPE, s);                 \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) isum[t] = msum[t] = _mm256_setzero_si256(); \
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++) {                                           \
            if (XLLM_KP_PER32(TYPE)) {                                                                  \
                XLLM_KP_SUB_256(TYPE, NT, g, 0, 8, XLLM_KP_SCALE(TYPE, s, g));                          \
            } else {                                                                                    \
                XLLM_KP_SUB_256(TYPE, NT, g, 0, 4, XLLM_KP_SCALE(TYPE, s, 2 * g));                      \
                XLLM_KP_SUB_256(TYPE, NT, g, 4, 8, XLLM_KP_SCALE(TYPE, s, 2 * g + 1));                  \
            }                                                                                           \
        }                                                                                               \
        _Pragma("GCC unroll 8") for (int i = 0; i < (XLLM_KP_PER32(TYPE) ? 4 : 8); i++) {               \
            const __m256i mp = XLLM_KP_MINPAIR(TYPE, s, i);                                             \
            _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                        \
                msum[t] = _mm256_add_epi32(msum[t], _mm256_madd_epi16(mp, _mm256_set1_epi32(xllm_kp_i32( \
                    XLLM_KP_PER32(TYPE) ? XB(t)->bsums32 + 2 * i : XB(t)->bsums + 2 * i))));            \
        }                                                                                               \
        const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + rg[2].poff + 16 * h))); \
        const __m256 ndv = off ? dv : _mm256_castsi256_ps(_mm256_xor_si256(_mm256_set1_epi32((int)0x80000000u), \
            _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + rg[3].poff + 16 * h)))))); \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                                          \
            const __m256 dx = _mm256_broadcast_ss(&XB(t)->d);                                           \
            float *ap = acc + (size_t)t * ldacc + 8 * h;                                                \
            __m256 f = _mm256_loadu_ps(ap);                                                             \
            if (off) {                                                                                  \
                const __m256i is = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(msum[t], off == 32 ? 5 : 2)); \
                f = _mm256_fmadd_ps(_mm256_mul_ps(dv, dx), _mm256_cvtepi32_ps(is), f);                  \
            } else {                                                                                    \
                f = _mm256_fmadd_ps(_mm256_mul_ps(dv, dx), _mm256_cvtepi32_ps(isum[t]), f);             \
                f = _mm256_fmadd_ps(_mm256_mul_ps(ndv, dx), _mm256_cvtepi32_ps(msum[t]), f);            \
            }                                                                                           \
            _mm256_storeu_ps(ap, f);                                                                    \
        }                                                                                               \
    }

#define XLLM_KP_FN_256(NAME, TYPE, NT)                                                                  \
XLLM_AVX2_FN static void xllm_kp_avx2_##NAME##_##NT(const char *w, const xllm_block_q8k *x, size_t ldx, \
                                                    int b0, int b1, float *acc, int ldacc) {            \
    XLLM_KP_BODY_256(TYPE, NT)                                                                          \
}
#define XLLM_KP_FNS_256(NAME, TYPE) XLLM_KP_FN_256(NAME, TYPE, 1) XLLM_KP_FN_256(NAME, TYPE, 2) XLLM_KP_FN_256(NAME, TYPE, 4)

XLLM_KP_FNS_256(q2k, XLLM_Q2_K)
XLLM_KP_FNS_256(q3k, XLLM_Q3_K)
XLLM_KP_FNS_256(q4k, XLLM_Q4_K)
XLLM_KP_FNS_256(q5k, XLLM_Q5_K)
XLLM_KP_FNS_256(q6k, XLLM_Q6_K)

#undef VEC
#undef LD
#undef LDS
#undef PAIRU
#undef PAIRS
#undef SRL16
#undef SLL16
#undef SRL32
#undef SLL32
#undef SRA32
#undef AND8
#undef AND32
#undef OR
#undef INSERT
#undef SUB32
#undef SUB16
#undef SHUF
#undef PICKV
#undef PAIRV
#undef DUPV
#undef XB

typedef void (*xllm_kp_tile_fn)(const char *, const xllm_block_q8k *, size_t, int, int, float *, int);

#define XLLM_KP_ROW(LEVEL, NAME) {xllm_kp_##LEVEL##_##NAME##_1, xllm_kp_##LEVEL##_##NAME##_2, \
                                  xllm_kp_##LEVEL##_##NAME##_4, XLLM_KP_ROW8_##LEVEL(NAME)}
#define XLLM_KP_ROW8_vnni(NAME) xllm_kp_vnni_##NAME##_8
#define XLLM_KP_ROW8_avx2(NAME) NULL
#define XLLM_KP_TABLE(LEVEL) {XLLM_KP_ROW(LEVEL, q2k), XLLM_KP_ROW(LEVEL, q3k), XLLM_KP_ROW(LEVEL, q4k), \
                              XLLM_KP_ROW(LEVEL, q5k), XLLM_KP_ROW(LEVEL, q6k)}
#endif

/* Tokens per tile at the level in force. */
static inline int xllm_kq_tile_tokens(void) {
    return xllm_simd_level == XLLM_SIMD_AVX512 ? XLLM_KQ_TOKENS : 4;
}

/* One K-quant tile: the panel at w (blocks [b0, b1)) times nt (1..xllm_kq_tile_tokens())
 * tokens (token t's activation blocks at x + t * ldx), into acc[t * ldacc + r], r < 16.
 * Token counts without their own kernel run as 8 + 4 + 2 + 1 pieces (tokens are independent). */
static inline void xllm_kq_tile(int type, const char *w, const xllm_block_q8k *x, size_t ldx, int nt,
                                int b0, int b1, float *acc, int ldacc) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) {
        static const xllm_kp_tile_fn vnni[5][4] = XLLM_KP_TABLE(vnni);
        static const xllm_kp_tile_fn avx2[5][4] = XLLM_KP_TABLE(avx2);
        const xllm_kp_tile_fn *fns = xllm_simd_level == XLLM_SIMD_AVX512 ? vnni[type - XLLM_Q2_K] : avx2[type - XLLM_Q2_K];
        while (nt > 0) {
            int k = 3;
            while (!fns[k] || (1 << k) > nt) k--;          /* the largest kernel that fits */
            fns[k](w, x, ldx, b0, b1, acc, ldacc);
            x += ((size_t)1 << k) * ldx;
            acc += ((size_t)1 << k) * ldacc;
            nt -= 1 << k;
        }
        return;
    }
#endif
    xllm_kp_tile_scalar(type, w, x, ldx, nt, b0, b1, acc, ldacc);
}

/* y[t * ldy + r] for rows [0, nr) of panels at w (panel p at w + p * pstride, nb blocks) and
 * nt tokens, walking the blocks in chunks when several tokens share each panel; acc:
 * nt * round_up(nr, 16) floats of scratch. */
static void xllm_kq_rows(int type, const char *w, size_t pstride, int nr, int nb,
                         const xllm_block_q8k *x, size_t ldx, int nt, float *acc, float *y, size_t ldy) {
    const int np = (nr + XLLM_KP - 1) / XLLM_KP, ld = np * XLLM_KP;
    /* one token streams each panel whole, or, on a CPU that streams faster from several
     * streams, the panels side by side: at avx512 two at a time in one kernel, else a block of
     * each in turn (chunks of one block; each row still adds its blocks in order: the same
     * bits) */
    const int kc = nt > 1 ? XLLM_KQ_CHUNK : np > 1 && xllm_gemv_multi_stream() ? 1 : nb;
    const int tile = xllm_kq_tile_tokens();
    memset(acc, 0, (size_t)nt * ld * sizeof(float));
#if XLLM_X86
    if (nt == 1 && kc == 1 && xllm_simd_level == XLLM_SIMD_AVX512) {
        typedef void (*gemv2_fn)(const char *, size_t, const xllm_block_q8k *, int, float *);
        static const gemv2_fn gemv2[5] = {xllm_kp_vnni_q2k_gemv2, xllm_kp_vnni_q3k_gemv2, xllm_kp_vnni_q4k_gemv2,
                                          xllm_kp_vnni_q5k_gemv2, xllm_kp_vnni_q6k_gemv2};
        int p = 0;
        for (; p + 2 <= np; p += 2) gemv2[type - XLLM_Q2_K](w + (size_t)p * pstride, pstride, x, nb, acc + p * XLLM_KP);
        if (p < np) xllm_kq_tile(type, w + (size_t)p * pstride, x, ldx, 1, 0, nb, acc + p * XLLM_KP, ld);
        memcpy(y, acc, nr * sizeof(float));
        return;
    }
#endif
    for (int b0 = 0; b0 < nb; b0 += kc) {
        const int b1 = b0 + kc < nb ? b0 + kc : nb;
        for (int p = 0; p < np; p++)
            for (int t0 = 0; t0 < nt; t0 += tile)
                xllm_kq_tile(type, w + (size_t)p * pstride, x + (size_t)t0 * ldx, ldx, nt - t0 < tile ? nt - t0 : tile,
                             b0, b1, acc + (size_t)t0 * ld + p * XLLM_KP, ld);
    }
    for (int t = 0; t < nt; t++) memcpy(y + (size_t)t * ldy, acc + (size_t)t * ld, nr * sizeof(float));
}

#endif /* XLLM_SIMD_KQUANT_PANELS_H */
