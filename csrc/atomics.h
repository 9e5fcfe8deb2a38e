/*
 * atomics.h - the one file that says memory_order (liburing's barrier.h pattern).
 *
 * Shared memory between processes holds plain integers; these wrappers are the only way the core reads or
 * writes the ones another process also touches. Every call site carries a `SYNC:` tag naming its partner.
 * They require lock-free 32- and 64-bit atomics (true on every Linux target we build for; checked below),
 * since a lock-based atomic in shared memory would not work across processes.
 */
#ifndef PIPC_ATOMICS_H
#define PIPC_ATOMICS_H

#include <stdint.h>

#if !defined(__GCC_ATOMIC_LLONG_LOCK_FREE) || __GCC_ATOMIC_LLONG_LOCK_FREE != 2
#error "packet-ipc needs lock-free 64-bit atomics"
#endif

static inline uint64_t pipc_load_acquire64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t pipc_load_relaxed64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void pipc_store_release64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void pipc_store_relaxed64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t pipc_fetch_add_relaxed64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint32_t pipc_load_acquire32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t pipc_load_relaxed32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void pipc_store_release32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void pipc_store_relaxed32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* Full fence: orders a store before a later load (Dekker-style "set my waiting flag, then re-check"). */
static inline void pipc_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void pipc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* PIPC_ATOMICS_H */
