#include "ckernels.h"
#include <cpuid.h>

// The CPU must have the instructions and the OS must save the wider registers (XCR0), or the first
// AVX-512 instruction faults even on a CPU that lists it.
static unsigned long long xgetbv0(void) {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

int vx_cpu_features(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx) return 0;
    unsigned long long xcr0 = xgetbv0();
    int ymm_saved = (xcr0 & 0x6) == 0x6;            // SSE and AVX state
    int zmm_saved = (xcr0 & 0xe6) == 0xe6;          // plus opmask and the upper ZMM registers
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int avx2 = (b >> 5) & 1;
    int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    int vnni = (c >> 11) & 1;
    int features = 0;
    if (ymm_saved && avx2 && fma) features |= VX_CPU_AVX2;
    if (zmm_saved && avx512f && avx512bw && avx512vl) {
        features |= VX_CPU_AVX512;
        if (vnni) features |= VX_CPU_AVX512_VNNI;
    }
    return features;
}
