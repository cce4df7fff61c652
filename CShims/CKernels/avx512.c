// AVX-512 kernels: 16 floats (or 32/64 int8) a step; the remainder is one masked load, so there is
// no scalar tail. VNNI versions fuse the int8/int16 multiply-adds into one instruction.
#include "ckernels.h"
#include <immintrin.h>
#include <math.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

AVX512 static inline __mmask16 tail16(size_t left) { return (__mmask16)((1u << left) - 1u); }
AVX512 static inline __mmask32 tail32(size_t left) { return (__mmask32)((1ull << left) - 1ull); }

AVX512 static inline float l2sq_f32(const float *a, const float *b, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail16(n - i);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512 static inline float dot_f32(const float *a, const float *b, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512 static inline float cos_f32(const float *a, const float *b, size_t n) {
    __m512 ab = _mm512_setzero_ps(), aa = _mm512_setzero_ps(), bb = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(a + i), y = _mm512_loadu_ps(b + i);
        ab = _mm512_fmadd_ps(x, y, ab);
        aa = _mm512_fmadd_ps(x, x, aa);
        bb = _mm512_fmadd_ps(y, y, bb);
    }
    if (i < n) {
        __mmask16 m = tail16(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, a + i), y = _mm512_maskz_loadu_ps(m, b + i);
        ab = _mm512_fmadd_ps(x, y, ab);
        aa = _mm512_fmadd_ps(x, x, aa);
        bb = _mm512_fmadd_ps(y, y, bb);
    }
    float sab = _mm512_reduce_add_ps(ab), saa = _mm512_reduce_add_ps(aa), sbb = _mm512_reduce_add_ps(bb);
    if (saa == 0.0f || sbb == 0.0f) return 1.0f;
    // In double: the product of two float32 squared norms overflows for large vectors.
    return (float)(1.0 - (double)sab / sqrt((double)saa * (double)sbb));
}

// int8 without VNNI: widen 32 bytes to 32 int16 lanes, vpmaddwd into int32. Each kernel is one block
// step, run unmasked over whole blocks (the all-ones mask folds away) and once masked for the tail.
#define BLOCKS(T, width, mask_type, full, tail, acc, step)                                          \
    size_t i = 0;                                                                                   \
    for (; i + (width) <= n; i += (width)) acc = step(acc, a + i, b + i, (mask_type)(full));        \
    if (i < n) acc = step(acc, a + i, b + i, tail(n - i));

AVX512 static inline __m512i l2_i8_step(__m512i s, const int8_t *a, const int8_t *b, __mmask32 m) {
    __m512i d = _mm512_sub_epi16(_mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a)),
                                 _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b)));
    return _mm512_add_epi32(s, _mm512_madd_epi16(d, d));
}

AVX512 static inline __m512i dot_i8_step(__m512i s, const int8_t *a, const int8_t *b, __mmask32 m) {
    __m512i x = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a));
    __m512i y = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b));
    return _mm512_add_epi32(s, _mm512_madd_epi16(x, y));
}

AVX512 static inline int32_t l2sq_i8(const int8_t *a, const int8_t *b, size_t n) {
    __m512i s = _mm512_setzero_si512();
    BLOCKS(int8_t, 32, __mmask32, 0xffffffffu, tail32, s, l2_i8_step)
    return _mm512_reduce_add_epi32(s);
}

AVX512 static inline int32_t dot_i8(const int8_t *a, const int8_t *b, size_t n) {
    __m512i s = _mm512_setzero_si512();
    BLOCKS(int8_t, 32, __mmask32, 0xffffffffu, tail32, s, dot_i8_step)
    return _mm512_reduce_add_epi32(s);
}

// VNNI: L2 squares the int16 difference with vpdpwssd. The dot product uses vpdpbusd, which takes
// unsigned x signed bytes: shift a by +128 (a xor 0x80) to make it unsigned, then subtract 128 * sum(b),
// itself a vpdpbusd of ones and b.
VNNI static inline __m512i l2_vnni_step(__m512i s, const int8_t *a, const int8_t *b, __mmask32 m) {
    __m512i d = _mm512_sub_epi16(_mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a)),
                                 _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b)));
    return _mm512_dpwssd_epi32(s, d, d);
}

struct dot_acc { __m512i ab, b; };

VNNI static inline struct dot_acc dot_vnni_step(struct dot_acc s, const int8_t *a, const int8_t *b, __mmask64 m) {
    __m512i x = _mm512_maskz_loadu_epi8(m, a), y = _mm512_maskz_loadu_epi8(m, b);
    // Masked-off lanes: y is 0 there, so they add nothing to either sum.
    __m512i ux = _mm512_xor_si512(x, _mm512_set1_epi8((char)0x80));
    s.ab = _mm512_dpbusd_epi32(s.ab, ux, y);
    s.b = _mm512_dpbusd_epi32(s.b, _mm512_set1_epi8(1), y);
    return s;
}

VNNI static inline __mmask64 tail64(size_t left) { return ((__mmask64)1 << left) - 1; }

VNNI static inline int32_t l2sq_i8_vnni(const int8_t *a, const int8_t *b, size_t n) {
    __m512i s = _mm512_setzero_si512();
    BLOCKS(int8_t, 32, __mmask32, 0xffffffffu, tail32, s, l2_vnni_step)
    return _mm512_reduce_add_epi32(s);
}

VNNI static inline int32_t dot_i8_vnni(const int8_t *a, const int8_t *b, size_t n) {
    struct dot_acc s = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    BLOCKS(int8_t, 64, __mmask64, ~0ull, tail64, s, dot_vnni_step)
    return _mm512_reduce_add_epi32(s.ab) - 128 * _mm512_reduce_add_epi32(s.b);
}

AVX512 float vx_l2sq_f32_avx512(const float *a, const float *b, size_t n) { return l2sq_f32(a, b, n); }
AVX512 float vx_dot_f32_avx512(const float *a, const float *b, size_t n) { return dot_f32(a, b, n); }
AVX512 float vx_cos_f32_avx512(const float *a, const float *b, size_t n) { return cos_f32(a, b, n); }
AVX512 int32_t vx_l2sq_i8_avx512(const int8_t *a, const int8_t *b, size_t n) { return l2sq_i8(a, b, n); }
AVX512 int32_t vx_dot_i8_avx512(const int8_t *a, const int8_t *b, size_t n) { return dot_i8(a, b, n); }
VNNI int32_t vx_l2sq_i8_vnni(const int8_t *a, const int8_t *b, size_t n) { return l2sq_i8_vnni(a, b, n); }
VNNI int32_t vx_dot_i8_vnni(const int8_t *a, const int8_t *b, size_t n) { return dot_i8_vnni(a, b, n); }

#define MANY(attr, name, T, R, kernel)                                                             \
    attr void name(const T *q, const T *base, size_t count, size_t dim, size_t stride, R *out) {   \
        for (size_t i = 0; i < count; i++) {                                                       \
            _mm_prefetch((const char *)(base + (i + 4) * stride), _MM_HINT_T0);                    \
            out[i] = kernel(q, base + i * stride, dim);                                            \
        }                                                                                          \
    }
MANY(AVX512, vx_l2sq_f32_many_avx512, float, float, l2sq_f32)
MANY(AVX512, vx_dot_f32_many_avx512, float, float, dot_f32)
MANY(AVX512, vx_cos_f32_many_avx512, float, float, cos_f32)
MANY(AVX512, vx_l2sq_i8_many_avx512, int8_t, int32_t, l2sq_i8)
MANY(AVX512, vx_dot_i8_many_avx512, int8_t, int32_t, dot_i8)
MANY(VNNI, vx_l2sq_i8_many_vnni, int8_t, int32_t, l2sq_i8_vnni)
MANY(VNNI, vx_dot_i8_many_vnni, int8_t, int32_t, dot_i8_vnni)

// One query against `count` rows found anywhere (a graph hop's neighbours): one call, and no branch
// between rows, so the loads of every row can be in flight together.
#define GATHER(attr, name, kernel)                                                                    \
    attr void name(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out) { \
        for (size_t i = 0; i < count; i++) out[i] = kernel(q, rows[i], dim);                          \
    }
GATHER(AVX512, vx_l2sq_i8_gather_avx512, l2sq_i8)
GATHER(AVX512, vx_dot_i8_gather_avx512, dot_i8)
GATHER(VNNI, vx_l2sq_i8_gather_vnni, l2sq_i8_vnni)

// The dot product against many rows turns the shift around: the row is made unsigned (y xor 0x80,
// so y + 128) and the query stays signed, so the correction is 128 * sum(query), one number per call,
// and each row costs one vpdpbusd and one reduction instead of two of each.
VNNI void vx_dot_i8_gather_vnni(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i ones = _mm512_set1_epi8(1), qs = _mm512_setzero_si512();
    size_t full = dim / 64;
    __mmask64 last = tail64(dim % 64);
    for (size_t b = 0; b < full; b++) qs = _mm512_dpbusd_epi32(qs, ones, _mm512_loadu_si512(q + 64 * b));
    if (last) qs = _mm512_dpbusd_epi32(qs, ones, _mm512_maskz_loadu_epi8(last, q + 64 * full));
    const int32_t correction = 128 * _mm512_reduce_add_epi32(qs);
    if (dim <= 64) {
        // One block: the query stays in a register. Masked-off lanes of the row become 0x80, but
        // the query is 0 there.
        __mmask64 m = dim == 64 ? ~0ull : last;
        __m512i x = _mm512_maskz_loadu_epi8(m, q);
        for (size_t i = 0; i < count; i++) {
            __m512i y = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, rows[i]), flip);
            out[i] = _mm512_reduce_add_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), y, x)) - correction;
        }
        return;
    }
    for (size_t i = 0; i < count; i++) {
        __m512i acc = _mm512_setzero_si512();
        for (size_t b = 0; b < full; b++)
            acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(_mm512_loadu_si512(rows[i] + 64 * b), flip),
                                      _mm512_loadu_si512(q + 64 * b));
        if (last)
            acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(_mm512_maskz_loadu_epi8(last, rows[i] + 64 * full), flip),
                                      _mm512_maskz_loadu_epi8(last, q + 64 * full));
        out[i] = _mm512_reduce_add_epi32(acc) - correction;
    }
}

// How many of `n` floats are at most x: where x goes in a sorted array, with no branch to mispredict.
AVX512 size_t vx_count_le_f32_avx512(const float *v, size_t n, float x) {
    __m512 t = _mm512_set1_ps(x);
    size_t c = 0, i = 0;
    for (; i + 16 <= n; i += 16) c += (size_t)__builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(v + i), t, _CMP_LE_OQ));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        c += (size_t)__builtin_popcount(_mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, v + i), t, _CMP_LE_OQ));
    }
    return c;
}
