/* simd_amx.h: AMX int8 tiles for the multi-token Q8_0/Q4_0 matmuls (the K-quants': simd_amx_kquants.h).
 *
 * Included once from simd.h, after the quantized panel tiles.  Runs only when xllm_amx is on:
 * the CPU has AMX-TILE and AMX-INT8, Linux granted this process the tile data state
 * (arch_prctl ARCH_REQ_XCOMP_PERM, see xllm_cpu_has_amx) and the avx512 level is in force
 * (the float step runs on AVX-512).  Everything else falls back to the VNNI/AVX2 panel tiles.
 *
 * One tile multiply per 32-value block, since every block has its own scales:
 *     C[t][n] = sum_k A[t][k] * B[k/4][4n + k%4]          (tdpbssd, s8 x s8 -> exact int32)
 * A: up to 16 tokens x one activation block (32 bytes), loaded straight from the
 *    xllm_block_q8_act rows (stride: one token's row of blocks).
 * B: one block of 16 weight rows in the VNNI layout, i.e. two 8-row panels side by side
 *    (the panels already keep 4 consecutive values of each row together), signed: Q8_0's
 *    stored w + 128 back to w, Q4_0's nibbles unpacked minus 8.  Packed per call from the
 *    panels into a per-thread buffer, once per k-chunk of 64 blocks, and reused by every token
 *    tile (so the weights keep one layout in memory, shared with the decode path).
 * Then, per (token, row) lane, on AVX-512, the float step of every other path:
 *     acc = fma((float)C[t][n], d_w[n] * d_x[t], acc)      block after block
 * The int32 sums are exact and the float operations are those of the VNNI, AVX2 and scalar
 * tiles in the same order, so AMX gives the same bits as they do, in any batch (a sequence
 * alone decodes on the VNNI path, in a batch on AMX) and on any thread count.
 *
 * Tile registers: tmm0/tmm3 A, tmm1/tmm4 B, tmm2/tmm5 C, alternating by block.  The tile
 * instructions are written as inline asm with "memory" clobbers: GCC 12's intrinsics declare
 * no memory operands for tileloadd / tilestored (and an 8-byte one for ldtilecfg), so the
 * stores that fill a buffer before a tile load, or the loads after a tile store, could be
 * moved or dropped.
 */
#ifndef XLLM_SIMD_AMX_H
#define XLLM_SIMD_AMX_H

#define XLLM_AMX_ROWS 16         /* weight rows per tile (two panels) */
#define XLLM_AMX_TOKENS 16       /* tokens per tile */
#ifndef XLLM_AMX_CHUNK
#define XLLM_AMX_CHUNK 64        /* blocks per k-chunk: B for a row group 74 KB (on the stack, in
                                    L2), packed from longer runs of each panel in memory: the
                                    TinyLlama-shape 128-token prefill, 2 threads, second Xeon,
                                    chunks of 16 / 32 / 64 / 128: Q8_0 466 / 471 / 500-508 / 497
                                    tok/s, Q4_0 494 / 508 / 536 / 525 */
#endif
#define XLLM_AMX_GROUP_TILES ((XLLM_QROW_GROUP + XLLM_AMX_ROWS - 1) / XLLM_AMX_ROWS)
/* Fewer tokens run the 512-bit VNNI two-panel tiles (timed against them on a Xeon with AMX, C
 * harness, 5632 x 2048 from memory, 2 threads: Q8_0 16 tokens 0.91x, 32 0.89x, 48 1.20x, 64
 * 1.31x, 128 1.46x; Q4_0 16 0.98x, 32 1.18x, 48 1.34x).  The AMX tile sequence and the vector
 * float step do not overlap on that CPU (each 16 x 16 x 32 block product ~14 ns of tile loads,
 * tdpbssd and tilestored, then ~15 ns of conversion and FMAs), which caps AMX here. */
#ifndef XLLM_AMX_MIN_TOKENS_Q8_0
#define XLLM_AMX_MIN_TOKENS_Q8_0 48
#endif
#ifndef XLLM_AMX_MIN_TOKENS_Q4_0
#define XLLM_AMX_MIN_TOKENS_Q4_0 32
#endif

/* The K-quants' tiles (simd_amx_kquants.h), timed against the 512-bit VNNI panel tiles (C
 * harness, 5632 x 2048 warm in L3, 2 threads, Xeon with AMX; 16 / 32 / 128 tokens): Q2_K
 * 0.79 / 1.02 / 1.38x (48: 1.14x), Q3_K 1.24 / 1.73 / 2.83x, Q4_K 0.79 / 1.06 / 1.48x (48:
 * 1.16x), Q5_K 0.93 / 1.26 / 1.88x, Q6_K 1.48 / 2.05 / 3.27x.  The folded types (Q3_K, Q6_K)
 * gain most: their VNNI tiles pay a vpmulld per 16 values and token, the tiles nothing. */
#ifndef XLLM_AMX_MIN_TOKENS_KQ
#define XLLM_AMX_MIN_TOKENS_KQ {48, 16, 32, 32, 16}   /* Q2_K, Q3_K, Q4_K, Q5_K, Q6_K */
#endif

/* The fewest tokens of a `type` matmul that run on AMX tiles (0: never). */
static inline int xllm_amx_min_tokens(int type) {
    static const int kq[5] = XLLM_AMX_MIN_TOKENS_KQ;
    return type == XLLM_Q8_0 ? XLLM_AMX_MIN_TOKENS_Q8_0 : type == XLLM_Q4_0 ? XLLM_AMX_MIN_TOKENS_Q4_0
         : xllm_is_kquant(type) ? kq[type - XLLM_Q2_K] : 0;
}

/* One block of 16 weight rows as tdpbssd's B operand, and the rows' scales. */
typedef struct {
    int8_t qs[XLLM_QK / 4][64];  /* values 4j..4j+3 of row n at qs[j][4n ..]: rows 0-7 from the first
                                    panel, 8-15 from the second */
    float d[XLLM_AMX_ROWS];      /* the 16 rows' scales (fp16 values) */
} xllm_amx_wblock;

_Static_assert(sizeof(xllm_amx_wblock) == 576, "AMX weight block is 512 + 64 bytes");

/* Whether a matmul of `type` with T tokens runs on AMX tiles. */
static inline int xllm_amx_applies(int type, int T) {
    return xllm_amx && xllm_amx_min_tokens(type) > 0 && T >= xllm_amx_min_tokens(type);
}

#if XLLM_AMX_CODE
typedef struct __attribute__((aligned(64))) {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} xllm_tilecfg;

_Static_assert(sizeof(xllm_tilecfg) == 64, "tile configuration is 64 bytes");

#define XLLM_TILE_LOAD(tmm, base, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #tmm : : "r"(base), "r"((long)(stride)) : "memory")
#define XLLM_TILE_STORE(tmm, base, stride) \
    __asm__ volatile("tilestored %%tmm" #tmm ", (%0,%1,1)" : : "r"(base), "r"((long)(stride)) : "memory")
#define XLLM_TILE_ZERO(tmm) __asm__ volatile("tilezero %%tmm" #tmm ::)
#define XLLM_TILE_DPBSSD(c, a, b) __asm__ volatile("tdpbssd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

/* ldtilecfg with the whole 64-byte configuration as its memory operand. */
static inline void xllm_amx_load_config(const xllm_tilecfg *cfg) {
    __asm__ volatile("ldtilecfg %0" : : "m"(*cfg) : "memory");
}

static inline void xllm_amx_release(void) { __asm__ volatile("tilerelease" ::: "memory"); }

/* Tiles for nt (1..16) tokens: A tmm0/3 (nt x 32 bytes), B tmm1/4 (8 x 64), C tmm2/5 (nt x 64). */
static void xllm_amx_config(int nt) {
    xllm_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int s = 0; s < 2; s++) {
        cfg.rows[3 * s] = (uint8_t)nt;
        cfg.colsb[3 * s] = XLLM_QK;
        cfg.rows[3 * s + 1] = XLLM_QK / 4;
        cfg.colsb[3 * s + 1] = 64;
        cfg.rows[3 * s + 2] = (uint8_t)nt;
        cfg.colsb[3 * s + 2] = 64;
    }
    xllm_amx_load_config(&cfg);
}

/* Pack blocks [b0, b1) of np (1 or 2) panels (the second at w + pstride; a missing one reads
 * as zero weights with zero scales) into out[0 .. b1-b0). */
XLLM_AVX512_FN static void xllm_amx_pack(int type, const char *w, size_t pstride, int np, int b0, int b1,
                                         xllm_amx_wblock *out) {
    const int q8 = type == XLLM_Q8_0;
    const size_t pblock = q8 ? sizeof(xllm_block_q8_0x8) : sizeof(xllm_block_q4_0x8);
    const __m256i flip = _mm256_set1_epi8((char)0x80), m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
    for (int b = b0; b < b1; b++, out++) {
        for (int h = 0; h < 2; h++) {
            if (h >= np) {                       /* rows 8..15 absent: weights 0, scales 0 */
                for (int j = 0; j < XLLM_QK / 4; j++) memset(out->qs[j] + 32, 0, 32);
                memset(out->d + 8, 0, 8 * sizeof(float));
                continue;
            }
            const uint8_t *pb = (const uint8_t *)w + h * pstride + b * pblock;
            _mm256_store_ps(out->d + 8 * h, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)pb)));
            const uint8_t *qs = pb + XLLM_PANEL * sizeof(uint16_t);
            if (q8) {
                for (int j = 0; j < XLLM_QK / 4; j++)
                    _mm256_store_si256((__m256i *)(out->qs[j] + 32 * h),
                                       _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(qs + 32 * j)), flip));
            } else {
                for (int c = 0; c < 4; c++) {
                    __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                    __m256i lo = _mm256_sub_epi8(_mm256_and_si256(raw, m4), eight);
                    __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), eight);
                    _mm256_store_si256((__m256i *)(out->qs[c] + 32 * h), lo);
                    _mm256_store_si256((__m256i *)(out->qs[c + 4] + 32 * h), hi);
                }
            }
        }
    }
}

/* The float step of one block for nt tokens: a[t] = fma(C[t], d_w * d_x[t], a[t]). */
#define XLLM_AMX_SCALE(cbuf, wblk, xcol)                                                               \
    do {                                                                                               \
        const __m512 dw_ = _mm512_load_ps((wblk)->d);                                                  \
        _Pragma("GCC unroll 16")                                                                       \
        for (int t = 0; t < XLLM_AMX_TOKENS; t++)                                                      \
            if (t < nt)                                                                                \
                a[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512((const void *)((cbuf) + 16 * t))), \
                                       _mm512_mul_ps(dw_, _mm512_set1_ps((xcol)[t * ldx].d)), a[t]);   \
    } while (0)

/* One block's tile product: C = A (tokens) . B (16 rows), left in tile C. */
#define XLLM_AMX_BLOCK(A, B, C, xa, wq)                                                                \
    do {                                                                                               \
        XLLM_TILE_LOAD(A, xa, stride);                                                                 \
        XLLM_TILE_LOAD(B, wq, 64);                                                                     \
        XLLM_TILE_ZERO(C);                                                                             \
        XLLM_TILE_DPBSSD(C, A, B);                                                                     \
    } while (0)

/* One tile of 16 rows x nt tokens over the chunk's nblk blocks: packed weights wb, token t's
 * block b at x[t*ldx + b]; accumulators acc[t*ldacc + n] for n < ncols (<= 16), read back
 * unless this is the first chunk (`first`: they start at zero, nothing is read).  Software
 * pipelined over two tile sets: block b's product is issued, then block b-1's (the other
 * set) stored to a ring of int32 tiles, then block b-3's float step reads its slot back, so
 * a tile store does not wait behind the product just issued, the tile unit and the vector
 * units overlap, and the loads never wait for a tile store in flight (Xeon with AMX, 480 MB
 * L3, C harness, Q8_0 5632 x 2048, 128 tokens, 2 threads: 1.31 -> 1.46 TOP/s, against the
 * store right after its product). */
XLLM_AVX512_FN static void xllm_amx_tile(const xllm_amx_wblock *wb, int nblk, const xllm_block_q8_act *x,
                                         size_t ldx, int nt, float *acc, size_t ldacc, int ncols, int first) {
    int32_t ring[4][XLLM_AMX_TOKENS * 16] __attribute__((aligned(64)));
    const __mmask16 m = ncols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << ncols) - 1);
    const long stride = (long)(ldx * sizeof(xllm_block_q8_act));
    __m512 a[XLLM_AMX_TOKENS];
    _Pragma("GCC unroll 16")
    for (int t = 0; t < XLLM_AMX_TOKENS; t++)
        a[t] = t < nt && !first ? _mm512_maskz_loadu_ps(m, acc + (size_t)t * ldacc) : _mm512_setzero_ps();
    for (int b = 0; b < nblk + 3; b++) {
        if (b < nblk) {
            if (b & 1) XLLM_AMX_BLOCK(3, 4, 5, x[b].qs, wb[b].qs);
            else XLLM_AMX_BLOCK(0, 1, 2, x[b].qs, wb[b].qs);
        }
        if (b >= 1 && b <= nblk) {
            if ((b - 1) & 1) XLLM_TILE_STORE(5, ring[(b - 1) & 3], 64);
            else XLLM_TILE_STORE(2, ring[(b - 1) & 3], 64);
        }
        if (b >= 3) XLLM_AMX_SCALE(ring[(b - 3) & 3], wb + b - 3, x + b - 3);
    }
    _Pragma("GCC unroll 16")
    for (int t = 0; t < XLLM_AMX_TOKENS; t++)
        if (t < nt) _mm512_mask_storeu_ps(acc + (size_t)t * ldacc, m, a[t]);
}

/* y[t*ldy + n] for the ny (<= 8 * np) rows of np (<= XLLM_QROW_GROUP / 8) panels (panel p at
 * w + p*pstride) and T tokens (token t's nb activation blocks at x + t*nb), over all blocks.
 * Written straight into the output (no accumulator buffer to clear and copy out), only rows
 * n < ny.
 * Called on an OpenMP thread; loads its own tile configuration and releases the tiles at
 * the end. */
XLLM_AVX512_FN static void xllm_amx_panels(int type, const char *w, size_t pstride, int np,
                                           const xllm_block_q8_act *x, int nb, int T, float *y, size_t ldy,
                                           int ny) {
    xllm_amx_wblock wb[XLLM_AMX_GROUP_TILES][XLLM_AMX_CHUNK] __attribute__((aligned(64)));
    const int ng = (np + 1) / 2;
    int config_rows = 0;
    for (int k0 = 0; k0 < nb; k0 += XLLM_AMX_CHUNK) {
        const int nblk = nb - k0 < XLLM_AMX_CHUNK ? nb - k0 : XLLM_AMX_CHUNK;
        for (int g = 0; g < ng; g++)
            xllm_amx_pack(type, w + 2 * g * pstride, pstride, np - 2 * g < 2 ? np - 2 * g : 2, k0, k0 + nblk, wb[g]);
        for (int t0 = 0; t0 < T; t0 += XLLM_AMX_TOKENS) {
            const int nt = T - t0 < XLLM_AMX_TOKENS ? T - t0 : XLLM_AMX_TOKENS;
            if (nt != config_rows) {
                xllm_amx_config(nt);
                config_rows = nt;
            }
            for (int g = 0; g < ng; g++) {
                const int ncols = ny - 16 * g < 16 ? ny - 16 * g : 16;
                xllm_amx_tile(wb[g], nblk, x + (size_t)t0 * nb + k0, nb, nt, y + (size_t)t0 * ldy + 16 * g,
                              ldy, ncols, k0 == 0);
            }
        }
    }
    if (config_rows) xllm_amx_release();
}
#else
/* Without the tile code (not x86-64 Linux with GCC/clang) xllm_amx stays 0 and
 * xllm_amx_applies is false, so this is never reached; it only gives the call a target. */
static void xllm_amx_panels(int type, const char *w, size_t pstride, int np, const xllm_block_q8_act *x,
                            int nb, int T, float *y, size_t ldy, int ny) {
    (void)type; (void)w; (void)pstride; (void)np; (void)x; (void)nb; (void)T; (void)y; (void)ldy; (void)ny;
}
#endif

#endif /* XLLM_SIMD_AMX_H */
