#define _GNU_SOURCE
#include "cmemory.h"
#include <numa.h>
#include <pthread.h>
#include <stdlib.h>

#define PAINT 0x5a17c0de5a17c0deULL

int vx_numa_nodes(void) {
    if (numa_available() < 0) return 1;
    int n = numa_num_configured_nodes();
    return n > 0 ? n : 1;
}

void *vx_slab_alloc(size_t bytes, int node_local) {
    if (node_local) return numa_alloc_local(bytes);  // page-aligned
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
}

int vx_stack_bounds(uintptr_t *low, uintptr_t *high) {
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return -1;
    void *addr; size_t size;
    int rc = pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
    if (rc != 0) return -1;
    *low = (uintptr_t)addr;
    *high = (uintptr_t)addr + size;
    return 0;
}

__attribute__((noinline)) uintptr_t vx_stack_here(void) { return (uintptr_t)__builtin_frame_address(0); }

void vx_stack_paint(uintptr_t low, uintptr_t high) {
    volatile uint64_t *p = (volatile uint64_t *)((low + 7) & ~(uintptr_t)7);
    volatile uint64_t *end = (volatile uint64_t *)(high & ~(uintptr_t)7);
    while (p < end) *p++ = PAINT;
}

uintptr_t vx_stack_deepest(uintptr_t low, uintptr_t from, size_t run) {
    const volatile uint64_t *p = (const volatile uint64_t *)(from & ~(uintptr_t)7);
    const volatile uint64_t *floor = (const volatile uint64_t *)((low + 7) & ~(uintptr_t)7);
    uintptr_t deepest = from;
    size_t intact = 0, words = run / 8;
    while (p > floor) {
        p--;
        if (*p == PAINT) {
            if (++intact >= words) break;
        } else {
            intact = 0;
            deepest = (uintptr_t)p;
        }
    }
    return deepest;
}


void vx_escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }
