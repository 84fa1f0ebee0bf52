/* simd_avx512.h: 512-bit float GEMM tiles (F32/F16/BF16 weights, several tokens) at the
 * avx512 level.
 *
 * Included once from simd.h, after the 256-bit float tiles.  The float contract of every
 * level (see simd.h) holds here unchanged: each (row, token) dot product keeps 8 float lanes,
 * lane l accumulating w[k] * x[k] for k = l (mod 8) by FMA in k order, and xllm_tile_finish
 * reduces the 8 lanes once in a fixed order.  A 512-bit register holds the 8 lanes of TWO
 * tokens for one row: the matmul copies its input once into token pairs (8 values of token 2p,
 * then the same 8 values of token 2p+1, and so on: `xllm_pair_tokens`), and each 8-value
 * weight slice is broadcast to both halves, so one 512-bit FMA does exactly the lane
 * operations of two 256-bit ones: the same bits as the AVX2 and AVX-512VL tiles, on any batch,
 * k-chunking and thread count.  (Splitting one dot product over 16 lanes would be faster to
 * set up but would change the summation order, hence the bits, between levels.)
 *
 * Tiles of up to 6 rows x 4 pairs (8 tokens): 24 accumulators, 6 weight broadcasts and 4
 * activation loads per 24 FMAs.  An odd last token runs the 256-bit one-token tile on the
 * unpaired input (same lane operations, same bits).
 */
#ifndef XLLM_SIMD_AVX512_H
#define XLLM_SIMD_AVX512_H

#define XLLM_F512_ROWS 6     /* rows per 512-bit tile */
#define XLLM_F512_PAIRS 4    /* token pairs per 512-bit tile */
#ifndef XLLM_F512_K_CHUNK
#define XLLM_F512_K_CHUNK 1024   /* values per k-chunk: a tile's 8 tokens (32 KB) stay in L1 while the rows pass */
#endif

/* Floats of one pair row of the paired input for rows of n values (the padding keeps pair
 * rows off multiples of 4 KiB, as the float path's padded copy does). */
static inline size_t xllm_pair_stride(int n) { return 2 * (size_t)(n & ~7) + 16; }

/* dst = tokens x0 and x1 interleaved by 8 values, over the first n & ~7 values (the tail is
 * added by xllm_tile_finish from the unpaired input). */
static void xllm_pair_tokens(const float *x0, const float *x1, int n, float *dst) {
    const int kv = n & ~7;
    for (int k = 0; k < kv; k += 8) {
        memcpy(dst + 2 * k, x0 + k, 8 * sizeof(float));
        memcpy(dst + 2 * k + 8, x1 + k, 8 * sizeof(float));
    }
}

#if XLLM_X86
/* The 8 weights row[k..k+8) widened to float in both 256-bit halves. */
XLLM_AVX512_FN static inline __m512 xllm_bcast8_avx512(int type, const char *row, int k) {
    if (type == XLLM_F32)
        return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd((const double *)((const float *)row + k))));
    __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
    if (type == XLLM_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

XLLM_AVX512_FN static inline __m512 xllm_load_pair_acc(const float *lo, const float *hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_loadu_pd((const double *)lo)),
                                               _mm256_loadu_pd((const double *)hi), 1));
}

XLLM_AVX512_FN static inline void xllm_store_pair_acc(float *lo, float *hi, __m512 v) {
    _mm256_storeu_pd((double *)lo, _mm512_castpd512_pd256(_mm512_castps_pd(v)));
    _mm256_storeu_pd((double *)hi, _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* NR rows (row r at w + r*ldw) x NP pairs (pair p at xp + p*ldp) over k in [k0, kv), kv - k0
 * a multiple of 8; token t's accumulators at acc[(t*ldacc + r)*8 ..], which the first chunk
 * (k0 == 0) starts from zero instead of reading (the caller need not clear them). */
#define XLLM_F512_TILE(NR, NP)                                                                         \
XLLM_AVX512_FN static void xllm_ftile512_##NR##x##NP(int type, const char *w, size_t ldw, const float *xp, \
                                                     size_t ldp, int k0, int kv, float *acc, int ldacc) { \
    __m512 c[NR][NP];                                                                                  \
    for (int p = 0; p < NP; p++)                                                                       \
        for (int r = 0; r < NR; r++)                                                                   \
            c[r][p] = k0 == 0 ? _mm512_setzero_ps()                                                    \
                              : xllm_load_pair_acc(acc + ((size_t)(2 * p) * ldacc + r) * 8,           \
                                                   acc + ((size_t)(2 * p + 1) * ldacc + r) * 8);      \
    for (int k = k0; k < kv; k += 8) {                                                                 \
        __m512 xv[NP];                                                                                 \
        for (int p = 0; p < NP; p++) xv[p] = _mm512_loadu_ps(xp + p * ldp + 2 * (size_t)k);           \
        for (int r = 0; r < NR; r++) {                                                                 \
            __m512 wv = xllm_bcast8_avx512(type, w + r * ldw, k);                                      \
            for (int p = 0; p < NP; p++) c[r][p] = _mm512_fmadd_ps(wv, xv[p], c[r][p]);                \
        }                                                                                              \
    }                                                                                                  \
    for (int p = 0; p < NP; p++)                                                                       \
        for (int r = 0; r < NR; r++)                                                                   \
            xllm_store_pair_acc(acc + ((size_t)(2 * p) * ldacc + r) * 8,                              \
                                acc + ((size_t)(2 * p + 1) * ldacc + r) * 8, c[r][p]);                \
}

#define XLLM_F512_TILES(NR) XLLM_F512_TILE(NR, 1) XLLM_F512_TILE(NR, 2) XLLM_F512_TILE(NR, 3) XLLM_F512_TILE(NR, 4)
XLLM_F512_TILES(1)
XLLM_F512_TILES(2)
XLLM_F512_TILES(3)
XLLM_F512_TILES(4)
XLLM_F512_TILES(5)
XLLM_F512_TILES(6)

typedef void (*xllm_ftile512_fn)(int, const char *, size_t, const float *, size_t, int, int, float *, int);

/* Accumulate rows [0, nr) of W (row r at w + r*ldw) for T >= 2 tokens over all n values:
 * pairs of tokens from the paired input xp (pair p at xp + p*ldp, see xllm_pair_tokens), an
 * odd last token from the unpaired x (token t at x + t*ldx).  acc as for xllm_tile, but only
 * an odd last token's accumulators need to start cleared (the pairs' tiles start from zero);
 * the caller reduces it with xllm_tile_finish (which adds the n % 8 tail from x). */
XLLM_AVX512_FN static void xllm_float_rows_avx512(int type, const char *w, size_t ldw, int nr,
                                                  const float *xp, size_t ldp, const float *x, size_t ldx,
                                                  int T, int n, float *acc, int ldacc) {
    static const xllm_ftile512_fn tiles[6][4] = {
        {xllm_ftile512_1x1, xllm_ftile512_1x2, xllm_ftile512_1x3, xllm_ftile512_1x4},
        {xllm_ftile512_2x1, xllm_ftile512_2x2, xllm_ftile512_2x3, xllm_ftile512_2x4},
        {xllm_ftile512_3x1, xllm_ftile512_3x2, xllm_ftile512_3x3, xllm_ftile512_3x4},
        {xllm_ftile512_4x1, xllm_ftile512_4x2, xllm_ftile512_4x3, xllm_ftile512_4x4},
        {xllm_ftile512_5x1, xllm_ftile512_5x2, xllm_ftile512_5x3, xllm_ftile512_5x4},
        {xllm_ftile512_6x1, xllm_ftile512_6x2, xllm_ftile512_6x3, xllm_ftile512_6x4}};
    const int pairs = T / 2;
    for (int k0 = 0; k0 < n; k0 += XLLM_F512_K_CHUNK) {
        const int k1 = n - k0 < XLLM_F512_K_CHUNK ? n : k0 + XLLM_F512_K_CHUNK;
        const int kv = k0 + ((k1 - k0) & ~7);
        for (int p0 = 0; p0 < pairs; p0 += XLLM_F512_PAIRS) {
            const int np = pairs - p0 < XLLM_F512_PAIRS ? pairs - p0 : XLLM_F512_PAIRS;
            for (int r0 = 0; r0 < nr; r0 += XLLM_F512_ROWS) {
                const int nrr = nr - r0 < XLLM_F512_ROWS ? nr - r0 : XLLM_F512_ROWS;
                tiles[nrr - 1][np - 1](type, w + r0 * ldw, ldw, xp + p0 * ldp, ldp, k0, kv,
                                       acc + ((size_t)(2 * p0) * ldacc + r0) * 8, ldacc);
            }
        }
        if (T & 1)
            xllm_tile_float_avx2(type, w, ldw, nr, x + (size_t)(T - 1) * ldx, ldx, 1, k0, k1,
                                 acc + (size_t)(T - 1) * ldacc * 8, ldacc);
    }
}
#endif

#endif /* XLLM_SIMD_AVX512_H */
