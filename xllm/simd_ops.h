/* Elementwise kernels: RMSNorm, and for the non-llama families LayerNorm with bias, GELU (tanh
 * form), bias add.
 *
 * Included once from simd.h (it uses its dispatch level, target attributes and exp).  Each
 * kernel has a scalar and an AVX2 path that follow the same float operations in the same
 * order -- sums kept in 8 lanes and reduced in one fixed order, FMAs where the vector path
 * has them -- so every SIMD level gives the same bits (the AVX-512 level runs the AVX2 code). */

#ifndef XLLM_SIMD_OPS_H
#define XLLM_SIMD_OPS_H

/* Sum of 8 lanes in a fixed order, shared by both paths. */
static inline float xllm_reduce8(const float *l) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* ------------------------------------------------------------------ RMSNorm
 *
 * out = w * (x * r), r = 1 / sqrt(mean(x^2) + eps): the squares summed by FMA in 8 lanes (the
 * one dependent chain of a plain loop made a 2048-value row take ~3.5 us) and reduced in the
 * fixed order, the tail added after it in order. */

static void xllm_rmsnorm_scalar(float *out, const float *x, const float *w, int n, float eps) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] = fmaf(x[i + j], x[i + j], acc[j]);
    float ss = xllm_reduce8(acc);
    for (; i < n; i++) ss = fmaf(x[i], x[i], ss);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = w[i] * (r * x[i]);
}

#if XLLM_X86
XLLM_AVX2_FN static void xllm_rmsnorm_avx2(float *out, const float *x, const float *w, int n, float eps) {
    float lanes[8];
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    _mm256_storeu_ps(lanes, acc);
    float ss = xllm_reduce8(lanes);
    for (; i < n; i++) ss = fmaf(x[i], x[i], ss);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    const __m256 vr = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(vr, _mm256_loadu_ps(x + i))));
    for (; i < n; i++) out[i] = w[i] * (r * x[i]);
}
#endif

static inline void xllm_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_rmsnorm_avx2(out, x, w, n, eps); return; }
#endif
    xllm_rmsnorm_scalar(out, x, w, n, eps);
}

/* ------------------------------------------------------------------ LayerNorm
 *
 * out = (x - mean) / sqrt(var + eps) * w + b, mean and the (biased) variance over the n
 * values of the row, as torch.nn.LayerNorm computes them; two passes (mean, then squared
 * deviations) so large offsets do not cancel. */

static void xllm_layernorm_scalar(float *out, const float *x, const float *w, const float *b,
                                  int n, float eps) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j];
    float s = xllm_reduce8(acc);
    for (; i < n; i++) s += x[i];
    float mean = s / (float)n;
    for (int j = 0; j < 8; j++) acc[j] = 0.0f;
    for (i = 0; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            float d = x[i + j] - mean;
            acc[j] = fmaf(d, d, acc[j]);
        }
    float v = xllm_reduce8(acc);
    for (; i < n; i++) {
        float d = x[i] - mean;
        v = fmaf(d, d, v);
    }
    float r = 1.0f / sqrtf(v / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = fmaf((x[i] - mean) * r, w[i], b[i]);
}

#if XLLM_X86
XLLM_AVX2_FN static void xllm_layernorm_avx2(float *out, const float *x, const float *w, const float *b,
                                             int n, float eps) {
    float lanes[8];
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
    _mm256_storeu_ps(lanes, acc);
    float s = xllm_reduce8(lanes);
    for (; i < n; i++) s += x[i];
    float mean = s / (float)n;
    __m256 vm = _mm256_set1_ps(mean);
    acc = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
        acc = _mm256_fmadd_ps(d, d, acc);
    }
    _mm256_storeu_ps(lanes, acc);
    float v = xllm_reduce8(lanes);
    for (; i < n; i++) {
        float d = x[i] - mean;
        v = fmaf(d, d, v);
    }
    float r = 1.0f / sqrtf(v / (float)n + eps);
    __m256 vr = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr);
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) out[i] = fmaf((x[i] - mean) * r, w[i], b[i]);
}
#endif

static inline void xllm_layernorm(float *out, const float *x, const float *w, const float *b,
                                  int n, float eps) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_layernorm_avx2(out, x, w, b, n, eps); return; }
#endif
    xllm_layernorm_scalar(out, x, w, b, n, eps);
}

/* ------------------------------------------------------------------ GELU, tanh form
 *
 * GPT-2's gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  Since 1 + tanh(u) =
 * 2 / (1 + exp(-2u)), this is x / (1 + exp(-z)) with z = 2 sqrt(2/pi) x (1 + 0.044715 x^2):
 * the sigmoid form has no cancellation near 0 and reuses SwiGLU's exp and clamping. */

#define XLLM_GELU_K 1.5957691216057308f     /* 2 * sqrt(2 / pi) */
#define XLLM_GELU_C 0.044715f

static inline float xllm_gelu_tanh_scalar(float x) {
    float z = (XLLM_GELU_K * x) * fmaf(XLLM_GELU_C, x * x, 1.0f);
    float nz = -z;
    int big = nz > XLLM_EXP_HI;
    nz = nz > XLLM_EXP_LO ? nz : XLLM_EXP_LO;
    nz = nz < XLLM_EXP_HI ? nz : XLLM_EXP_HI;
    float ex = big ? INFINITY : xllm_exp_scalar(nz);
    return x / (1.0f + ex);
}

#if XLLM_X86
XLLM_AVX2_FN static void xllm_gelu_tanh_avx2(float *x, int n) {
    const __m256 lo = _mm256_set1_ps(XLLM_EXP_LO), hi = _mm256_set1_ps(XLLM_EXP_HI);
    const __m256 one = _mm256_set1_ps(1.0f), k = _mm256_set1_ps(XLLM_GELU_K), c = _mm256_set1_ps(XLLM_GELU_C);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 z = _mm256_mul_ps(_mm256_mul_ps(k, v), _mm256_fmadd_ps(c, _mm256_mul_ps(v, v), one));
        __m256 nz = _mm256_sub_ps(_mm256_setzero_ps(), z);
        __m256 big = _mm256_cmp_ps(nz, hi, _CMP_GT_OQ);
        __m256 ex = xllm_exp_avx2(_mm256_min_ps(_mm256_max_ps(nz, lo), hi));
        ex = _mm256_blendv_ps(ex, _mm256_set1_ps(INFINITY), big);
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, ex)));
    }
    for (; i < n; i++) x[i] = xllm_gelu_tanh_scalar(x[i]);
}
#endif

/* x[i] = gelu_tanh(x[i]) */
static inline void xllm_gelu_tanh(float *x, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_gelu_tanh_avx2(x, n); return; }
#endif
    for (int i = 0; i < n; i++) x[i] = xllm_gelu_tanh_scalar(x[i]);
}

/* ------------------------------------------------------------------ bias add
 *
 * x[i] += b[i]: projection biases and learned position embeddings. */

#if XLLM_X86
XLLM_AVX2_FN static void xllm_add_f32_avx2(float *x, const float *b, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++) x[i] += b[i];
}
#endif

static inline void xllm_add_f32(float *x, const float *b, int n) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_add_f32_avx2(x, b, n); return; }
#endif
    for (int i = 0; i < n; i++) x[i] += b[i];
}

/* ------------------------------------------------------------------ RoPE
 *
 * Pair i of a head, (x0, x1) -> (x0 c - x1 s, x0 s + x1 c) with c, s = cs[2i], cs[2i + 1]:
 * adjacent pairs (x[2i], x[2i + 1]), or with neox the halves (x[i], x[i + half]).  Each
 * product is rounded before the sum (no FMA contraction) on every level: the same bits. */

__attribute__((optimize("fp-contract=off")))
static void xllm_rope_pairs_scalar(float *v, const float *cs, int i0, int half, int neox) {
    const int step = neox ? 1 : 2, other = neox ? half : 1;
    for (int i = i0; i < half; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1], x0 = v[step * i], x1 = v[step * i + other];
        const float x0c = x0 * c, x1s = x1 * s, x0s = x0 * s, x1c = x1 * c;
        v[step * i] = x0c - x1s;
        v[step * i + other] = x0s + x1c;
    }
}

#if XLLM_X86
__attribute__((optimize("fp-contract=off")))
XLLM_AVX2_FN static void xllm_rope_avx2(float *v, const float *cs, int half, int neox) {
    int i = 0;
    if (!neox) {
        for (; i + 4 <= half; i += 4) {                     /* 4 pairs: x0 x1 x0' x1' ... */
            const __m256 x = _mm256_loadu_ps(v + 2 * i), t = _mm256_loadu_ps(cs + 2 * i);
            const __m256 xc = _mm256_mul_ps(x, _mm256_moveldup_ps(t));                        /* x0 c, x1 c */
            const __m256 xs = _mm256_mul_ps(_mm256_permute_ps(x, 0xB1), _mm256_movehdup_ps(t)); /* x1 s, x0 s */
            _mm256_storeu_ps(v + 2 * i, _mm256_addsub_ps(xc, xs));                             /* -, + */
        }
    } else {
        for (; i + 8 <= half; i += 8) {                     /* 8 pairs: the table de-interleaved */
            const __m256 t0 = _mm256_loadu_ps(cs + 2 * i), t1 = _mm256_loadu_ps(cs + 2 * i + 8);
            const __m256 c = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(t0, t1, 0x88)), 0xD8));
            const __m256 s = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(t0, t1, 0xDD)), 0xD8));
            const __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
            _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
            _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)));
        }
    }
    xllm_rope_pairs_scalar(v, cs, i, half, neox);
}
#endif

/* Rotate one head of 2 * half values at v by the position's table row cs (half (cos, sin)). */
static inline void xllm_rope(float *v, const float *cs, int half, int neox) {
#if XLLM_X86
    if (xllm_simd_level >= XLLM_SIMD_AVX2) { xllm_rope_avx2(v, cs, half, neox); return; }
#endif
    xllm_rope_pairs_scalar(v, cs, 0, half, neox);
}

#endif /* XLLM_SIMD_OPS_H */
