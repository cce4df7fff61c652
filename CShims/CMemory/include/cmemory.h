// Memory and stack primitives for VexMemory: node-local slabs through libnuma, and the stack
// painting and scanning behind the stack-budget monitor (word loops that must not themselves touch
// the stack they measure).
#ifndef VEXFS_CMEMORY_H
#define VEXFS_CMEMORY_H
#include <stddef.h>
#include <stdint.h>

/// NUMA nodes libnuma reports; 1 when it is unavailable or reports none.
int vx_numa_nodes(void);
/// `bytes` of 64-byte-aligned memory: on the calling thread's node when `node_local`, else from
/// posix_memalign. NULL on failure. Slabs are never given back: the pool keeps them for the process.
void *vx_slab_alloc(size_t bytes, int node_local);

/// The calling thread's stack: [*low, *high). 0 on success.
int vx_stack_bounds(uintptr_t *low, uintptr_t *high);
/// An address in the caller's frame (the stack grows down from `high`).
uintptr_t vx_stack_here(void);
/// Fills [low, high) with the paint pattern (both rounded inwards to 8 bytes).
void vx_stack_paint(uintptr_t low, uintptr_t high);
/// Scanning down from `from`, the lowest address written since painting: the scan stops at the
/// first `run` bytes of intact paint, or at `low`. Returns `from` when nothing below was touched.
uintptr_t vx_stack_deepest(uintptr_t low, uintptr_t from, size_t run);

/// Makes `p` escape, so a benchmark's malloc/free pair cannot be optimised away.
void vx_escape(void *p);


/// Relaxed counters for per-operation figures.
static inline void vx_counter_add(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint64_t vx_counter_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

#endif
