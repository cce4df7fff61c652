// What the index's files need from C: LZ4 block compression (liblz4) and CRC-32C checksums
// (the SSE4.2 instruction where the CPU has it, a table otherwise).
#ifndef VEXFS_CCOMPRESS_H
#define VEXFS_CCOMPRESS_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli) of `n` bytes, continuing from `crc` (start with 0).
uint32_t vx_crc32c(uint32_t crc, const void *data, size_t n);
/// Worst-case compressed size of `n` bytes; 0 when `n` is too large for one LZ4 block.
size_t vx_lz4_bound(size_t n);
/// Compresses; returns the compressed size, 0 on failure.
size_t vx_lz4_compress(const void *src, size_t n, void *dst, size_t capacity);
/// Decompresses exactly `n` bytes; returns 0 on success, -1 when the input is damaged.
int vx_lz4_decompress(const void *src, size_t compressed, void *dst, size_t n);

#endif
