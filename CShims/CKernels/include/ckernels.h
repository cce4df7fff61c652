// Distance kernels for float32 and int8 vectors, in AVX2+FMA and AVX-512 versions. Each function is
// compiled for its instruction set alone (per-function target attributes), so the binary runs on any
// x86-64 CPU: VexKernels checks the CPU and the OS once and calls only what both support. Every
// kernel takes unaligned pointers and any length; the one-to-N kernels read N vectors laid out
// contiguously, `stride` elements apart (stride >= dim), and write N results.
#ifndef VEXFS_CKERNELS_H
#define VEXFS_CKERNELS_H
#include <stddef.h>
#include <stdint.h>

/// What the CPU and the OS support: bit 0 AVX2+FMA, bit 1 AVX-512 F/BW/VL, bit 2 AVX-512 VNNI.
enum { VX_CPU_AVX2 = 1, VX_CPU_AVX512 = 2, VX_CPU_AVX512_VNNI = 4 };
int vx_cpu_features(void);

// Squared Euclidean distance, inner product, and cosine distance (1 - cos; 1 when a norm is zero).
float vx_l2sq_f32_avx2(const float *a, const float *b, size_t n);
float vx_dot_f32_avx2(const float *a, const float *b, size_t n);
float vx_cos_f32_avx2(const float *a, const float *b, size_t n);
float vx_l2sq_f32_avx512(const float *a, const float *b, size_t n);
float vx_dot_f32_avx512(const float *a, const float *b, size_t n);
float vx_cos_f32_avx512(const float *a, const float *b, size_t n);

// int8: exact, in 32-bit integers (no overflow below 2^31 / 128^2 = 131072 dimensions).
int32_t vx_l2sq_i8_avx2(const int8_t *a, const int8_t *b, size_t n);
int32_t vx_dot_i8_avx2(const int8_t *a, const int8_t *b, size_t n);
int32_t vx_l2sq_i8_avx512(const int8_t *a, const int8_t *b, size_t n);
int32_t vx_dot_i8_avx512(const int8_t *a, const int8_t *b, size_t n);
/// AVX-512 VNNI (vpdpbusd / vpdpwssd); call only when VX_CPU_AVX512_VNNI is set.
int32_t vx_l2sq_i8_vnni(const int8_t *a, const int8_t *b, size_t n);
int32_t vx_dot_i8_vnni(const int8_t *a, const int8_t *b, size_t n);

// One query against `count` vectors: out[i] = kernel(q, base + i * stride, dim).
void vx_l2sq_f32_many_avx2(const float *q, const float *base, size_t count, size_t dim, size_t stride, float *out);
void vx_dot_f32_many_avx2(const float *q, const float *base, size_t count, size_t dim, size_t stride, float *out);
void vx_cos_f32_many_avx2(const float *q, const float *base, size_t count, size_t dim, size_t stride, float *out);
void vx_l2sq_f32_many_avx512(const float *q, const float *base, size_t count, size_t dim, size_t stride, float *out);
void vx_dot_f32_many_avx512(const float *q, const float *base, size_t count, size_t dim, size_t stride, float *out);
void vx_cos_f32_many_avx512(const float *q, const float *base, size_t count, size_t dim, size_t stride, float *out);
void vx_l2sq_i8_many_avx2(const int8_t *q, const int8_t *base, size_t count, size_t dim, size_t stride, int32_t *out);
void vx_dot_i8_many_avx2(const int8_t *q, const int8_t *base, size_t count, size_t dim, size_t stride, int32_t *out);
void vx_l2sq_i8_many_avx512(const int8_t *q, const int8_t *base, size_t count, size_t dim, size_t stride, int32_t *out);
void vx_dot_i8_many_avx512(const int8_t *q, const int8_t *base, size_t count, size_t dim, size_t stride, int32_t *out);
void vx_l2sq_i8_many_vnni(const int8_t *q, const int8_t *base, size_t count, size_t dim, size_t stride, int32_t *out);
void vx_dot_i8_many_vnni(const int8_t *q, const int8_t *base, size_t count, size_t dim, size_t stride, int32_t *out);

// One query against `count` rows anywhere in memory: out[i] = kernel(q, rows[i], dim).
void vx_l2sq_i8_gather_avx2(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out);
void vx_dot_i8_gather_avx2(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out);
void vx_l2sq_i8_gather_avx512(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out);
void vx_dot_i8_gather_avx512(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out);
void vx_l2sq_i8_gather_vnni(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out);
void vx_dot_i8_gather_vnni(const int8_t *q, const int8_t *const *rows, size_t count, size_t dim, int32_t *out);
/// How many of v[0..<n] are at most x (in a sorted array: the index where x goes, after its equals).
size_t vx_count_le_f32_avx2(const float *v, size_t n, float x);
size_t vx_count_le_f32_avx512(const float *v, size_t n, float x);

// For the graph index: a prefetch hint, and the relaxed/acquire/release loads and stores that let
// searches read link lists while the one writer changes them (each 32-bit id is read whole).
static inline void vx_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
static inline uint32_t vx_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t vx_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void vx_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void vx_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint8_t vx_load_u8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void vx_store_u8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t vx_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void vx_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void *vx_load_acquire_ptr(void *const *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void vx_store_release_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

#endif
