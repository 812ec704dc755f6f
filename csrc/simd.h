/* Vector helpers shared by the kernels: one float vector type `vf` of VL lanes, AVX2+FMA when the
 * build enables it, plain scalars otherwise (the portable fallback, DHSA_CPU_SIMD=portable).
 * Element conversions (f16, bf16, q8_0) follow ggml's definitions bit for bit. */
#ifndef DHSA_SIMD_H
#define DHSA_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define DHSA_AVX2 1
#include <immintrin.h>
#else
#define DHSA_AVX2 0
#endif

#define DHSA_INLINE static inline __attribute__((always_inline))

/* ---- scalar conversions ---------------------------------------------------------------------- */

DHSA_INLINE float f16_to_f32(uint16_t h) {
#if DHSA_AVX2
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        exp = 113;
        while ((man & 0x400) == 0) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

DHSA_INLINE float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- vectors ------------------------------------------------------------------------------- */

#if DHSA_AVX2
typedef __m256 vf;
#define VL 8
DHSA_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
DHSA_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
DHSA_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
DHSA_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
DHSA_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
DHSA_INLINE vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
DHSA_INLINE vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
DHSA_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); } /* a*b + c */
DHSA_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
/* lanes where x == -inf get `other`, the rest keep x */
DHSA_INLINE vf vf_neginf_to(vf x, vf other) {
    return _mm256_blendv_ps(x, other, _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
}
DHSA_INLINE float vf_hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
DHSA_INLINE float vf_hmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* exp(x) for x <= 88: Cody-Waite range reduction and a degree-6 polynomial (relative error below
 * 2e-7 against expf); exp(-inf) = 0, exp(NaN) = NaN, and inputs below -87.3 flush to 0. */
DHSA_INLINE vf vf_exp(vf x) {
    const vf lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.3762626647949f);
    vf nan_mask = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    vf under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    vf xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    vf n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    vf p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    vf r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    vf y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, x, nan_mask);
}
DHSA_INLINE void f16_to_f32_row(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    }
    for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
DHSA_INLINE void bf16_to_f32_row(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}
#else
typedef float vf;
#define VL 1
DHSA_INLINE vf vf_load(const float *p) { return *p; }
DHSA_INLINE void vf_store(float *p, vf v) { *p = v; }
DHSA_INLINE vf vf_set1(float x) { return x; }
DHSA_INLINE vf vf_zero(void) { return 0.0f; }
DHSA_INLINE vf vf_add(vf a, vf b) { return a + b; }
DHSA_INLINE vf vf_sub(vf a, vf b) { return a - b; }
DHSA_INLINE vf vf_mul(vf a, vf b) { return a * b; }
DHSA_INLINE vf vf_fma(vf a, vf b, vf c) { return fmaf(a, b, c); }
DHSA_INLINE vf vf_max(vf a, vf b) { return a > b ? a : b; }
DHSA_INLINE vf vf_neginf_to(vf x, vf other) { return x == -INFINITY ? other : x; }
DHSA_INLINE float vf_hsum(vf v) { return v; }
DHSA_INLINE float vf_hmax(vf v) { return v; }
DHSA_INLINE vf vf_exp(vf x) { return expf(x); }
DHSA_INLINE void f16_to_f32_row(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
DHSA_INLINE void bf16_to_f32_row(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}
#endif

/* A row of n elements of a dhsa_type (see dhsa.h) as f32. q8_0 rows are blocks of {f16 d; int8 q[32]}. */
DHSA_INLINE void row_to_f32(int32_t type, const char *src, float *dst, int64_t n) {
    switch (type) {
    case 0: /* DHSA_F32 */
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case 1: /* DHSA_F16 */
        f16_to_f32_row((const uint16_t *)src, dst, n);
        break;
    case 2: /* DHSA_BF16 */
        bf16_to_f32_row((const uint16_t *)src, dst, n);
        break;
    case 3: /* DHSA_Q8_0 */
        for (int64_t b = 0; b < n / 32; b++) {
            const char *blk = src + b * 34;
            uint16_t dh;
            memcpy(&dh, blk, 2);
            const float d = f16_to_f32(dh);
            const int8_t *qs = (const int8_t *)(blk + 2);
            for (int i = 0; i < 32; i++) dst[b * 32 + i] = d * (float)qs[i];
        }
        break;
    }
}

/* dst[0..n) += a row of a dhsa_type, converted to f32 (no temporary row). */
DHSA_INLINE void accum_row(int32_t type, const char *src, float *dst, int64_t n) {
    int64_t i = 0;
    switch (type) {
    case 0: { /* DHSA_F32 */
        const float *x = (const float *)src;
        for (; i + VL <= n; i += VL) vf_store(dst + i, vf_add(vf_load(dst + i), vf_load(x + i)));
        for (; i < n; i++) dst[i] += x[i];
        break;
    }
    case 1: { /* DHSA_F16 */
        const uint16_t *x = (const uint16_t *)src;
#if DHSA_AVX2
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)))));
#endif
        for (; i < n; i++) dst[i] += f16_to_f32(x[i]);
        break;
    }
    case 2: { /* DHSA_BF16 */
        const uint16_t *x = (const uint16_t *)src;
#if DHSA_AVX2
        for (; i + 8 <= n; i += 8) {
            __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i))), 16);
            _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_castsi256_ps(w)));
        }
#endif
        for (; i < n; i++) dst[i] += bf16_to_f32(x[i]);
        break;
    }
    case 3: /* DHSA_Q8_0 */
        for (int64_t b = 0; b < n / 32; b++) {
            const char *blk = src + b * 34;
            uint16_t dh;
            memcpy(&dh, blk, 2);
            const float d = f16_to_f32(dh);
            const int8_t *qs = (const int8_t *)(blk + 2);
            for (int k = 0; k < 32; k++) dst[b * 32 + k] += d * (float)qs[k];
        }
        break;
    }
}

/* tanh through exp: 1 - 2/(e^{2x}+1); saturates correctly to +-1 */
DHSA_INLINE vf vf_tanh(vf x) {
    vf e = vf_exp(vf_add(x, x));
    vf one = vf_set1(1.0f);
#if DHSA_AVX2
    return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
#else
    return isinf(e) ? 1.0f : one - 2.0f / (e + one);
#endif
}

#endif
