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
#if !defined(__GCC_ATOMIC_INT_LOCK_FREE) || __GCC_ATOMIC_INT_LOCK_FREE != 2
#error "packet-ipc needs lock-free 32-bit atomics"
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
/* Words shared between the threads of one process (flags, reference counts and counters of the library's
 * objects): the same discipline, typed for what they are. Each call site names its partner with a SYNC: tag
 * too. */
static inline int pipc_load_acquire_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline int pipc_load_relaxed_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void pipc_store_release_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void pipc_store_relaxed_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline int pipc_add_fetch_relaxed_int(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
/* Reference counts: the last release (result 0) sees every write the other holders made before theirs. */
static inline int pipc_sub_fetch_acq_rel_int(int *p, int v) { return __atomic_sub_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline unsigned pipc_load_relaxed_uint(const unsigned *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline unsigned pipc_add_fetch_relaxed_uint(unsigned *p, unsigned v)
{
    return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}
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
