// AVX2 + FMA kernels: 8 floats (or 16/32 int8) a step, two accumulators to hide FMA latency, and a
// plain loop for the remainder.
#include "ckernels.h"
#include <immintrin.h>
#include <math.h>

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline int32_t hsum256i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

AVX2 static inline float l2sq_f32(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
    }
    if (i + 8 <= n) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
        i += 8;
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) { float d = a[i] - b[i]; s += d * d; }
    return s;
}

AVX2 static inline float dot_f32(const float *a, const float *b, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    if (i + 8 <= n) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        i += 8;
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

AVX2 static inline float cos_f32(const float *a, const float *b, size_t n) {
    __m256 ab = _mm256_setzero_ps(), aa = _mm256_setzero_ps(), bb = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(b + i);
        ab = _mm256_fmadd_ps(x, y, ab);
        aa = _mm256_fmadd_ps(x, x, aa);
        bb = _mm256_fmadd_ps(y, y, bb);
    }
    float sab = hsum256(ab), saa = hsum256(aa), sbb = hsum256(bb);
    for (; i < n; i++) { sab += a[i] * b[i]; saa += a[i] * a[i]; sbb += b[i] * b[i]; }
    if (saa == 0.0f || sbb == 0.0f) return 1.0f;
    // In double: the product of two float32 squared norms overflows for large vectors.
    return (float)(1.0 - (double)sab / sqrt((double)saa * (double)sbb));
}

// int8: widen 16 bytes to 16 int16 lanes, then multiply-add pairs into int32 (vpmaddwd).
AVX2 static inline int32_t l2sq_i8(const int8_t *a, const int8_t *b, size_t n) {
    __m256i s = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + i)));
        __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + i)));
        __m256i d = _mm256_sub_epi16(x, y);
        s = _mm256_add_epi32(s, _mm256_madd_epi16(d, d));
    }
    int32_t r = hsum256i(s);
    for (; i < n; i++) { int32_t d = (int32_t)a[i] - b[i]; r += d * d; }
    return r;
}

AVX2 static inline int32_t dot_i8(const int8_t *a, const int8_t *b, size_t n) {
    __m256i s = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + i)));
        __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + i)));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(x, y));
    }
    int32_t r = hsum256i(s);
    for (; i < n; i++) r += (int32_t)a[i] * b[i];
    return r;
}

AVX2 float vx_l2sq_f32_avx2(const float *a, const float *b, size_t n) { return l2sq_f32(a, b, n); }
AVX2 float vx_dot_f32_avx2(const float *a, const float *b, size_t n) { return dot_f32(a, b, n); }
AVX2 float vx_cos_f32_avx2(const float *a, const float *b, size_t n) { return cos_f32(a, b, n); }
AVX2 int32_t vx_l2sq_i8_avx2(const int8_t *a, const int8_t *b, size_t n) { return l2sq_i8(a, b, n); }
AVX2 int32_t vx_dot_i8_avx2(const int8_t *a, const int8_t *b, size_t n) { return dot_i8(a, b, n); }

// The scan prefetches a few rows ahead: the hardware prefetcher follows one stream, but rows that
// do not start on a line boundary cross pages at irregular points.
#define MANY(name, T, R, kernel)                                                                   \
    AVX2 void name(const T *q, const T *base, size_t count, size_t dim, size_t stride, R *out) {   \
        for (size_t i = 0; i < count; i++) {                                                       \
            _mm_prefetch((const char *)(base + (i + 4) * stride), _MM_HINT_T0);                    \
            out[i] = kernel(q, base + i * stride, dim);                                            \
        }                                                                                          \
    }
MANY(vx_l2sq_f32_many_avx2, float, float, l2sq_f32)
MANY(vx_dot_f32_many_avx2, float, float, dot_f32)
MANY(vx_cos_f32_many_avx2, float, float, cos_f32)
MANY(vx_l2sq_i8_many_avx2, int8_t, int32_t, l2sq_i8)
MANY(vx_dot_i8_many_avx2, int8_t, int32_t, dot_i8)

// One query against `count` rows found anywhere (a graph hop's neighbours): see avx512.c.
AVX2 void vx_l2sq_i8_gather_avx2(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out) {
    for (size_t i = 0; i < count; i++) out[i] = l2sq_i8(q, rows[i], dim);
}
AVX2 void vx_dot_i8_gather_avx2(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out) {
    for (size_t i = 0; i < count; i++) out[i] = dot_i8(q, rows[i], dim);
}

AVX2 size_t vx_count_le_f32_avx2(const float *v, size_t n, float x) {
    __m256 t = _mm256_set1_ps(x);
    size_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) c += (size_t)__builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + i), t, _CMP_LE_OQ)));
    for (; i < n; i++) c += v[i] <= x;
    return c;
}
