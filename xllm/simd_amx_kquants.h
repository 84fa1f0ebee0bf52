/* simd_amx_kquants.h: AMX int8 tiles for the multi-token K-quant matmuls (Q2_K..Q6_K).
 *
 * Included from simd.h after simd_amx.h (its tile instructions, configuration and the
 * xllm_amx switch).  The weights are the 16-row K-quant panels of simd_kquant_panels.h,
 * unpacked per call into two int8 digits of sc * (q - off) (simd_kquant_amx_pack.h), once
 * per k-chunk of a row group and reused by every token tile.  Per 256-value block, 16 tokens
 * x 16 rows:
 *     C_hi = A . B_hi,  C_lo = A . B_lo        (4 + 4 tdpbssd of 64 values, A the tokens'
 *                                               Q8_K values straight from their blocks)
 *     isum = 128 * C_hi + C_lo                 (exact: the isum of every other path)
 * then on AVX-512 the min sums (vpdpwssd of the min pairs with the token's block sums) and
 * the float step of xllm_kq_accumulate, block after block: the same bits as the VNNI, AVX2
 * and scalar tiles, in any batch and on any thread count.  Where a sub-block scale used to
 * cost a vector multiply per 16 or 32 values for every token, it now costs nothing per token.
 *
 * Tile registers (xllm_akq_config): A and each digit's B for the even and the odd 64-value
 * slices, one C per digit. */
#ifndef XLLM_SIMD_AMX_KQUANTS_H
#define XLLM_SIMD_AMX_KQUANTS_H

/* Blocks per k-chunk of a panel, packed once and passed by every token tile (70 KB of
 * operands on the stack, in L2).  Longer chunks read each panel's weights from memory in
 * longer runs: TinyLlama-shape prefill of 128 tokens, 2 threads, Xeon with AMX, chunks of
 * 2 / 4 / 8 / 16 blocks: Q4_K_M 467 / 520 / 535 / 534 tok/s, Q6_K 503 (4) / 565 / 577.  (A
 * C harness with the weights warm in L3 preferred 2-4: Q4_K 1.79 ms at 2, 1.87 at 8.) */
#ifndef XLLM_AKQ_CHUNK
#define XLLM_AKQ_CHUNK 8
#endif

#if XLLM_AMX_CODE
/* Tiles for nt (1..16) tokens: A tmm0/1 (nt x 64 bytes), B tmm2-5 (16 x 64), C tmm6/7 (nt x 64). */
static void xllm_akq_config(int nt) {
    xllm_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    for (int k = 0; k < 8; k++) {
        cfg.rows[k] = (uint8_t)(k >= 2 && k <= 5 ? 16 : nt);
        cfg.colsb[k] = 64;
    }
    xllm_amx_load_config(&cfg);
}

/* One 64-value slice k of a block's product into C tmm6 (digit hi) and tmm7 (lo): A the
 * tokens' values at xq (token stride `stride` bytes).  The even slices go through tmm0 (A) /
 * tmm2, tmm3 (B), the odd ones through tmm1 / tmm4, tmm5, so that a tile is loaded again only
 * two slices after the products that read it were issued (tiles are not renamed: a load into
 * a tile a product still reads waits for it).  Measured against one A and one B pair
 * (C harness, Q4_K 5632 x 2048, 128 tokens, 2 threads): tiles alone 0.84 -> 0.81 ms; two
 * token tiles sharing each B load (four C chains) were slower, 1.07. */
#define XLLM_AKQ_SLICE(A, BH, BL, xq, blk, k)                                                          \
    do {                                                                                               \
        XLLM_TILE_LOAD(A, (xq) + 64 * (k), stride);                                                    \
        XLLM_TILE_LOAD(BH, (blk)->hi[16 * (k)], 64);                                                   \
        XLLM_TILE_DPBSSD(6, A, BH);                                                                    \
        XLLM_TILE_LOAD(BL, (blk)->lo[16 * (k)], 64);                                                   \
        XLLM_TILE_DPBSSD(7, A, BL);                                                                    \
    } while (0)

/* One tile of 16 rows x nt tokens over a chunk's nblk packed blocks pk: token t's block b at
 * x[t * ldx + b]; the output floats y[t * ldy + n], n < ncols, read back unless `first`.  A
 * block's sums go to one of two slots and are read back by the vector step one block later,
 * while the next block's products run. */
XLLM_AVX512_FN static void xllm_akq_tile(int type, const xllm_akq_block *pk, int nblk, const xllm_block_q8k *x,
                                         size_t ldx, int nt, float *y, size_t ldy, int ncols, int first) {
    int32_t ch[2][XLLM_AMX_TOKENS * 16] __attribute__((aligned(64)));
    int32_t cl[2][XLLM_AMX_TOKENS * 16] __attribute__((aligned(64)));
    const __mmask16 m = ncols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << ncols) - 1);
    const long stride = (long)(ldx * sizeof(xllm_block_q8k));
    const int off = xllm_kq_offset(type), per32 = XLLM_KP_PER32(type), npairs = per32 ? 4 : 8;
    __m512 f[XLLM_AMX_TOKENS];
    _Pragma("GCC unroll 16")
    for (int t = 0; t < XLLM_AMX_TOKENS; t++)
        f[t] = t < nt && !first ? _mm512_maskz_loadu_ps(m, y + (size_t)t * ldy) : _mm512_setzero_ps();
    for (int b = 0; b <= nblk; b++) {
        if (b < nblk) {
            const int8_t *xq = (const int8_t *)x[b].qs;
            XLLM_TILE_ZERO(6);
            XLLM_TILE_ZERO(7);
            XLLM_AKQ_SLICE(0, 2, 3, xq, pk + b, 0);
            XLLM_AKQ_SLICE(1, 4, 5, xq, pk + b, 1);
            XLLM_AKQ_SLICE(0, 2, 3, xq, pk + b, 2);
            XLLM_AKQ_SLICE(1, 4, 5, xq, pk + b, 3);
            XLLM_TILE_STORE(6, ch[b & 1], 64);
            XLLM_TILE_STORE(7, cl[b & 1], 64);
        }
        if (b == 0) continue;
        const int p = b - 1;                 /* block p's vector step */
        const xllm_akq_block *blk = pk + p;
        const int32_t *cph = ch[p & 1], *cpl = cl[p & 1];
        const __m512 dv = _mm512_load_ps(blk->d), ndv = _mm512_load_ps(blk->nd);
        _Pragma("GCC unroll 16")
        for (int t = 0; t < XLLM_AMX_TOKENS; t++) {
            if (t >= nt) break;
            const xllm_block_q8k *xb = x + (size_t)t * ldx + p;
            const __m512i isum = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512((const void *)(cph + 16 * t)), 7),
                                                  _mm512_load_si512((const void *)(cpl + 16 * t)));
            const __m512 dx = _mm512_set1_ps(xb->d);
            f[t] = _mm512_fmadd_ps(_mm512_mul_ps(dv, dx), _mm512_cvtepi32_ps(isum), f[t]);
            if (!off) {
                const int16_t *bs = per32 ? xb->bsums32 : xb->bsums;
                __m512i msum = _mm512_setzero_si512();
                for (int i = 0; i < npairs; i++)
                    XLLM_DPWSSD512_BCAST(msum, _mm512_load_si512((const void *)blk->mins[i]), bs + 2 * i);
                f[t] = _mm512_fmadd_ps(_mm512_mul_ps(ndv, dx), _mm512_cvtepi32_ps(msum), f[t]);
            }
        }
    }
    _Pragma("GCC unroll 16")
    for (int t = 0; t < XLLM_AMX_TOKENS; t++)
        if (t < nt) _mm512_mask_storeu_ps(y + (size_t)t * ldy, m, f[t]);
}

/* y[t * ldy + n] for the nr (<= XLLM_KQ_ROW_GROUP) rows of the K-quant panels at w (panel p at
 * w + p * pstride, nb blocks) and T tokens (token t's blocks at x + t * nb), written straight
 * into the output, only rows n < nr.  Called on an OpenMP thread: loads its own tile
 * configuration and releases the tiles at the end. */
XLLM_AVX512_FN static void xllm_amx_kq_rows(int type, const char *w, size_t pstride, int nr, int nb,
                                            const xllm_block_q8k *x, int T, float *y, size_t ldy) {
    xllm_akq_block pk[1][XLLM_AKQ_CHUNK] __attribute__((aligned(64)));
    const int kc = XLLM_AKQ_CHUNK;
    const int np = (nr + XLLM_KP - 1) / XLLM_KP;
    int config_rows = 0;
    for (int k0 = 0; k0 < nb; k0 += kc) {
        const int nblk = nb - k0 < kc ? nb - k0 : kc;
        for (int p = 0; p < np; p++) {
            const int ncols = nr - XLLM_KP * p < XLLM_KP ? nr - XLLM_KP * p : XLLM_KP;
            xllm_akq_pack(type, w + (size_t)p * pstride, k0, k0 + nblk, pk[0]);
            for (int t0 = 0; t0 < T; t0 += XLLM_AMX_TOKENS) {
                const int nt = T - t0 < XLLM_AMX_TOKENS ? T - t0 : XLLM_AMX_TOKENS;
                if (nt != config_rows) {
                    xllm_akq_config(nt);
                    config_rows = nt;
                }
                xllm_akq_tile(type, pk[0], nblk, x + (size_t)t0 * nb + k0, nb, nt, y + (size_t)t0 * ldy + XLLM_KP * p,
                              ldy, ncols, k0 == 0);
            }
        }
    }
    if (config_rows) xllm_amx_release();
}
#else
/* Without the tile code xllm_amx stays 0 and xllm_amx_applies is false: never reached. */
static void xllm_amx_kq_rows(int type, const char *w, size_t pstride, int nr, int nb, const xllm_block_q8k *x,
                             int T, float *y, size_t ldy) {
    (void)type; (void)w; (void)pstride; (void)nr; (void)nb; (void)x; (void)T; (void)y; (void)ldy;
}
#endif

#endif /* XLLM_SIMD_AMX_KQUANTS_H */
