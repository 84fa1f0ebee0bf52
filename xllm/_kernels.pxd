# The kernels' contract: the C helpers from simd.h, the structures a decoder step reads,
# and the pointer kernels (`noexcept nogil`) that _kernels.pyx implements.

from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, int64_t

cdef extern from "simd.h" nogil:
    int XLLM_SIMD_SCALAR
    int XLLM_SIMD_AVX2
    int XLLM_SIMD_AVX512
    int XLLM_SIMD_AMX
    int XLLM_F32
    int XLLM_F16
    int XLLM_Q4_0
    int XLLM_Q8_0
    bint xllm_is_legacy_quant(int type)
    int XLLM_Q2_K
    int XLLM_Q3_K
    int XLLM_Q4_K
    int XLLM_Q5_K
    int XLLM_Q6_K
    int XLLM_QK_K
    int XLLM_KQ_ROW_GROUP
    int XLLM_QK
    int XLLM_TILE_ROWS
    int XLLM_TILE_TOKENS
    int XLLM_ROW_GROUP
    int XLLM_K_CHUNK
    int XLLM_PANEL
    int XLLM_QROW_GROUP
    int XLLM_QK_CHUNK
    int XLLM_QTILE_PANELS
    int XLLM_QTILE_TOKENS
    int xllm_simd_level
    ctypedef struct xllm_block_q8_0:
        uint16_t d
        int8_t qs[32]
    ctypedef struct xllm_block_q8_act:
        float d
        int32_t sum
        int8_t qs[32]
    void xllm_quantize_row_q8_act(const float *x, xllm_block_q8_act *y, int n)
    int XLLM_Q8_ACT_RUN
    ctypedef struct xllm_block_q8k:
        int8_t qs[256]
        int16_t bsums[16]
        float d
    void xllm_quantize_row_q8k(const float *x, xllm_block_q8k *y, int n)
    int xllm_is_kquant(int type)
    int xllm_kq_block_bytes(int type)
    int XLLM_KP
    void xllm_kp_pack_panel(int type, const char *src, size_t row_bytes, int nr, int nb, char *dst)
    void xllm_kq_rows(int type, const char *w, size_t pstride, int nr, int nb,
                      const xllm_block_q8k *x, size_t ldx, int nt, float *acc, float *y, size_t ldy)
    int xllm_cpu_has_avx2()
    int xllm_cpu_has_avx512vnni()
    int xllm_set_simd_level(int level)
    int xllm_simd_level_now()
    int xllm_cpu_has_amx()
    bint xllm_amx_applies(int type, int T)
    int xllm_amx_min_tokens(int type)
    int xllm_qtile_tokens(int type)
    int xllm_gemv_streams
    int xllm_gemv_panels(int type)
    int xllm_gemv_multi_stream()
    void xllm_amx_panels(int type, const char *w, size_t pstride, int np, const xllm_block_q8_act *x,
                         int nb, int T, float *y, size_t ldy, int ny)
    void xllm_amx_kq_rows(int type, const char *w, size_t pstride, int nr, int nb, const xllm_block_q8k *x,
                          int T, float *y, size_t ldy)
    size_t xllm_pair_stride(int n)
    void xllm_pair_tokens(const float *x0, const float *x1, int n, float *dst)
    void xllm_float_rows_avx512(int type, const char *w, size_t ldw, int nr, const float *xp, size_t ldp,
                                const float *x, size_t ldx, int T, int n, float *acc, int ldacc)
    float xllm_fp16_to_fp32(uint16_t h)
    uint16_t xllm_fp32_to_fp16(float f)
    void xllm_quantize_row_q8_0(const float *x, xllm_block_q8_0 *y, int n)
    void xllm_dequantize_row(int type, const void *src, float *dst, int n)
    float xllm_dot_f32(const float *a, const float *b, int n)
    void xllm_axpy_f32(float a, const float *x, float *y, int n)
    void xllm_swiglu(float *gate, const float *up, int n)
    void xllm_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
    void xllm_layernorm(float *out, const float *x, const float *w, const float *b, int n, float eps)
    void xllm_rope(float *v, const float *cs, int half, int neox)
    void xllm_gelu_tanh(float *x, int n)
    void xllm_add_f32(float *x, const float *b, int n)
    void xllm_attend_block(const float *q, const float *kb, const float *vb, size_t stride, int n_pos,
                           int hd, float scale, float *m, float *l, float *out, float *scores)
    void xllm_tile(int type, const char *w, size_t ldw, int nr, const void *x, size_t ldx,
                   int nt, int k0, int k1, float *acc, int ldacc)
    size_t xllm_panel_bytes(size_t row_bytes)
    void xllm_pack_panel(int type, const char *src, size_t row_bytes, int nr, int nb, char *dst)
    void xllm_qtile(int type, const char *w, size_t pstride, int np, const xllm_block_q8_act *x,
                    size_t ldx, int nt, int b0, int b1, float *acc, int ldacc)
    void xllm_tile_finish(int type, const char *w, size_t ldw, int nr, const float *x, size_t ldx,
                          int nt, int n, const float *acc, int ldacc, float *y, size_t ldy)


cdef extern from "omp_team.h" nogil:
    void xllm_team_block_signals(int n)


cdef extern from "simd_kv.h" nogil:
    int XLLM_BF16
    size_t xllm_kv_row_bytes(int type, int n)
    void xllm_kv_store_row(int type, const float *x, void *dst, int n)
    void xllm_attend_block_kv(int type, const float *q, const char *kb, const char *vb, size_t stride,
                              int n_pos, int hd, float scale, float *m, float *l, float *out, float *scores)


cdef extern from "simd_attend_group.h" nogil:
    int XLLM_GROUP_SCRATCH
    int xllm_attend_group_heads(int type, int group, int hd)
    void xllm_prefetch_rows(const char *p, size_t stride, int n, size_t bytes)
    void xllm_attend_block_group(int type, int G, const float *q, const char *kb, const char *vb, size_t stride,
                                 int n_pos, int hd, float scale, float *m, float *l, float *out, float *probs)


ctypedef struct Matrix:
    const char *data        # F32/F16: rows x row_bytes, row-major, W[o, :] is row o;
                            # Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL matmul operands: panels of 8 rows
                            # (simd.h, xllm_pack_panel), ceil(rows/8) x 8 x row_bytes; Q2_K..Q6_K
                            # operands: panels of 16 rows (simd_kquant_panels.h), ceil(rows/16) x 16 x
                            # row_bytes; the embedding table keeps the file's rows
    int type                # XLLM_F32 / F16 / BF16 (float path), a panel type, or Q2_K..Q6_K
    int rows                # output features
    int cols                # input features
    size_t row_bytes        # bytes of one row in `type`


ctypedef struct Layer:
    # every bias pointer is NULL when the architecture has none (ModelConfig's switches)
    const float *attn_norm  # (dim,) RMSNorm / LayerNorm weight before attention
    const float *attn_norm_b  # (dim,) LayerNorm bias
    Matrix wq               # (n_heads*head_dim, dim); a fused attn_qkv is split into q/k/v row views
    Matrix wk               # (n_kv_heads*head_dim, dim)
    Matrix wv               # (n_kv_heads*head_dim, dim)
    const float *bq         # (q_dim,) q/k/v biases (qwen2, gpt2)
    const float *bk         # (kv_dim,)
    const float *bv         # (kv_dim,)
    Matrix wo               # (dim, n_heads*head_dim)
    const float *bo         # (dim,)
    const float *ffn_norm   # (dim,) norm weight before the FFN
    const float *ffn_norm_b # (dim,)
    Matrix w_gate           # (hidden_dim, dim)  "w1"; rows = 0 for a GELU FFN (no gate)
    Matrix w_up             # (hidden_dim, dim)  "w3"
    Matrix w_down           # (dim, hidden_dim)  "w2"
    const float *b_gate     # (hidden_dim,)
    const float *b_up       # (hidden_dim,)
    const float *b_down     # (dim,)


ctypedef struct Dims:
    int dim                 # residual stream width
    int hidden_dim          # FFN width
    int n_layers
    int n_heads             # query heads
    int n_kv_heads          # key/value heads
    int head_dim
    int q_dim               # n_heads * head_dim
    int kv_dim              # n_kv_heads * head_dim
    int vocab_size
    int max_seq_len
    float norm_eps
    bint layer_norm         # LayerNorm with bias (gpt2) instead of RMSNorm
    bint gelu               # FFN gelu_tanh(up) (gpt2) instead of silu(gate) * up
    bint rope               # rotary positions (else learned position embeddings are added)
    bint rope_neox          # rotate (i, i + head_dim/2) (qwen2) instead of (2i, 2i+1)


ctypedef struct KVPool:
    char *k                 # (n_layers, n_blocks, block_size) rows of keys, row_bytes each
    char *v                 # the same for values
    int type                # XLLM_F32 / F16 / BF16 / Q8_0 (simd_kv.h)
    size_t row_bytes        # one position's kv_dim values in `type`
    size_t head_bytes       # one kv head's part of a row: row_bytes / n_kv_heads
    int n_blocks
    int block_size          # positions per block


ctypedef struct Batch:
    int n_tokens            # T: tokens processed in this step, grouped by sequence
    const int32_t *tokens   # (T,) token ids
    const int32_t *pos      # (T,) position of each token in its sequence
    const int32_t *seq      # (T,) index of the token's sequence in this batch
    const int32_t *blocks   # (n_seqs, max_blocks) block table rows, -1 past the end
    int max_blocks          # row length of `blocks`
    int n_out               # rows whose logits are wanted
    const int32_t *out_rows # (n_out,) token indices (into 0..T-1), ascending


# Tensor parallelism (xllm/parallel): sums a (n,) float buffer over the ranks, in place;
# called after the row-parallel projections (attention output, FFN down), before their bias
ctypedef void (*xllm_allreduce_fn)(float *buf, int n, void *ctx) noexcept nogil


ctypedef struct Workspace:
    int max_tokens          # T capacity of every buffer below
    int n_threads
    float *x                # (T, dim) residual stream
    float *xb               # (T, max(dim, q_dim)) normed input / attention output
    float *q                # (T, q_dim)
    float *k                # (T, kv_dim)
    float *v                # (T, kv_dim)
    float *hb               # (T, hidden_dim) gate, then SwiGLU output
    float *hb2              # (T, hidden_dim) up
    float *xout             # (T, dim) projection output before the residual add
    char *xq                # (T, max_cols/32) xllm_block_q8_act: activations quantized once per matmul
    char *xk                # (T, max_cols/256) xllm_block_q8k: the same for K-quant weights
    float *xpad             # (T, max_cols + XPAD) float matmul input, rows padded off 4 KiB multiples
    float *acc              # (n_threads, acc_per_thread) matmul accumulators: 8 lanes per (row, token)
                            # for F32/F16, one float per (row, token) for the quantized types
    size_t acc_per_thread
    float *att              # (n_threads, att_per_thread) attention scratch: a block's scores (of 4 heads)
    size_t att_per_thread
    const float *rope       # (max_seq_len, head_dim/2, 2) cos, sin
    double *op_seconds      # (N_OPS,) per-operator time when profiling, else NULL
    xllm_allreduce_fn allreduce   # NULL in a single process
    void *allreduce_ctx
    double work_per_thread_ns   # an operator takes a thread per this much estimated work; 0: all
    long long parallel_regions  # regions run with more than one thread (counted, never reset here)


cdef void c_matmul(const Matrix *w, const float *x, int n_tokens, float *y, Workspace *ws) noexcept nogil
cdef void c_matmul_multi(const Matrix **w, float **y, int n, const float *x, int n_tokens, Workspace *ws) noexcept nogil
cdef void c_rmsnorm(float *out, const float *x, const float *weight, int n_tokens, int dim, float eps) noexcept nogil
cdef void c_rope(float *vec, const int32_t *pos, int n_tokens, int n_heads, int head_dim, const float *table,
                 bint neox) noexcept nogil
cdef void c_layernorm(float *out, const float *x, const float *weight, const float *bias, int n_tokens, int dim,
                      float eps) noexcept nogil
cdef void c_gelu_tanh(float *x, int n) noexcept nogil
cdef void c_add_bias(float *x, const float *bias, int n_tokens, int width) noexcept nogil
cdef void c_swiglu(float *gate, const float *up, int n) noexcept nogil
cdef void c_add_inplace(float *x, const float *y, int n) noexcept nogil
cdef void c_softmax(float *x, int n) noexcept nogil
cdef void c_attention(const Dims *d, const KVPool *kv, int layer, const Batch *b, Workspace *ws) noexcept nogil
cdef void c_decoder_step(const Dims *d, const Layer *layers, const Matrix *embed, const Matrix *pos_embed,
                       const float *final_norm, const float *final_norm_b, const Matrix *classifier,
                       const KVPool *kv, const Batch *b, Workspace *ws, float *logits) noexcept nogil
