#include "ccompress.h"
#include <cpuid.h>
#include <lz4.h>
#include <pthread.h>

static uint32_t table[256];
static int hardware;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void setup(void) {
    unsigned a, b, c, d;
    hardware = __get_cpuid(1, &a, &b, &c, &d) && ((c >> 20) & 1);
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
        table[i] = crc;
    }
}

__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        __builtin_memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--, p++) c32 = __builtin_ia32_crc32qi(c32, *p);
    return c32;
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t n) {
    for (; n; n--, p++) crc = (crc >> 8) ^ table[(crc ^ *p) & 0xff];
    return crc;
}

uint32_t vx_crc32c(uint32_t crc, const void *data, size_t n) {
    pthread_once(&once, setup);
    crc = ~crc;
    crc = hardware ? crc_hw(crc, data, n) : crc_sw(crc, data, n);
    return ~crc;
}

size_t vx_lz4_bound(size_t n) {
    if (n > LZ4_MAX_INPUT_SIZE) return 0;
    return (size_t)LZ4_compressBound((int)n);
}

size_t vx_lz4_compress(const void *src, size_t n, void *dst, size_t capacity) {
    if (n > LZ4_MAX_INPUT_SIZE || capacity > 0x7fffffff) return 0;
    int r = LZ4_compress_default(src, dst, (int)n, (int)capacity);
    return r > 0 ? (size_t)r : 0;
}

int vx_lz4_decompress(const void *src, size_t compressed, void *dst, size_t n) {
    if (compressed > 0x7fffffff || n > 0x7fffffff) return -1;
    int r = LZ4_decompress_safe(src, dst, (int)compressed, (int)n);
    return r == (int)n ? 0 : -1;
}
