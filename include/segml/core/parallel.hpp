// segml/core/parallel.hpp: thread count and the parallel loops used by every kernel.
//
// Contract: set_num_threads(n) sets the threads segml kernels use (n >= 1). By default it is the
// number of CPUs this process may run on (its affinity mask), or OMP_NUM_THREADS / SEGML_NUM_THREADS
// when set (SEGML_NUM_THREADS wins). Kernels parallelise only through parallel_for,
// parallel_for_dynamic and parallel_run, so this setting is the single control. The threads are
// segml's own pool (core/thread_pool.hpp: how they wait on a busy machine is explained there).
// Built with SEGML_SINGLE_THREADED (CMake: -DSEGML_THREADS=OFF) everything runs on the calling
// thread and num_threads() is 1.
//
// parallel_for splits the range statically, one chunk per thread; parallel_for_dynamic hands out
// fixed chunks on demand; parallel_run(nt, f) calls f(t) for t < nt. Inside one of them (a nested
// call) each runs serially on the calling thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <type_traits>

#if defined(__linux__)
#include <sched.h>
#endif

#include "segml/core/error.hpp"
#include "segml/core/thread_pool.hpp"

namespace segml {

namespace detail {

// CPUs this process may run on: the affinity mask on Linux (what taskset / a container's cpuset
// give it), else what the standard library reports.
inline int available_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

// The first number of an OMP_NUM_THREADS-style value ("4" or "4,2"); 0 when unset. A value that is
// not a positive number is reported once on stderr and ignored, as OpenMP does.
inline int threads_from_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || (*end != '\0' && *end != ',') || n < 1 || n > ThreadPool::kMaxThreads) {
    std::fprintf(stderr, "segml: ignoring %s='%s' (expected a whole number from 1 to %d)\n", name, v, ThreadPool::kMaxThreads);
    return 0;
  }
  return static_cast<int>(n);
}

inline int default_threads() {
#if defined(SEGML_SINGLE_THREADED)
  return 1;
#else
  if (const int n = threads_from_env("SEGML_NUM_THREADS")) return n;
  if (const int n = threads_from_env("OMP_NUM_THREADS")) return n;
  return std::min(available_cpus(), ThreadPool::kMaxThreads);
#endif
}

inline std::atomic<int>& num_threads_slot() {
  static std::atomic<int> n{default_threads()};
  return n;
}

}  // namespace detail

inline int num_threads() { return detail::num_threads_slot().load(std::memory_order_relaxed); }

inline void set_num_threads(int n) {
  SEGML_CHECK(n >= 1, "set_num_threads: expected n >= 1, got ", n);
#if defined(SEGML_SINGLE_THREADED)
  n = 1;
#endif
  detail::num_threads_slot().store(std::min(n, detail::ThreadPool::kMaxThreads), std::memory_order_relaxed);
}

// Whether the calling thread is inside a parallel loop (where further loops run serially).
inline bool in_parallel() { return detail::in_pool_task(); }

// Calls f(t) for t = 0 .. nt-1 at once, one per thread (t = 0 on the caller); serially when
// nt == 1 or inside a parallel loop. For kernels that split their work themselves.
template <class F>
inline void parallel_run(int nt, F&& f) {
#if !defined(SEGML_SINGLE_THREADED)
  if (nt > 1 && !in_parallel()) {
    using Fn = std::remove_reference_t<F>;
    detail::ThreadPool::instance().run(nt, [](void* ctx, int t) { (*static_cast<Fn*>(ctx))(t); },
                                       const_cast<void*>(static_cast<const void*>(&f)));
    return;
  }
#endif
  for (int t = 0; t < nt; ++t) f(t);
}

// Calls f(begin, end) on disjoint chunks covering [0, n), in parallel when worthwhile.
// `grain` is the smallest chunk worth a thread.
template <class F>
inline void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  const int64_t max_chunks = grain > 0 ? (n + grain - 1) / grain : n;
  const int nt = static_cast<int>(std::min<int64_t>(max_chunks, num_threads()));
  if (nt <= 1 || in_parallel()) {
    f(int64_t{0}, n);
    return;
  }
  parallel_run(nt, [&](int t) { f(n * t / nt, n * (t + 1) / nt); });
}

// Calls f(begin, end) on the chunks [c * chunk, (c + 1) * chunk) of [0, n), handed to the threads
// one at a time as they become free (a dynamic schedule). For work whose chunks cost about the
// same but whose threads may not run at the same speed: on a machine shared with other processes
// a thread that loses its core for a while no longer holds up a whole statically split loop.
// Serially (one thread, or inside a parallel loop) it is one call f(0, n). f must give the same
// result whatever the chunks are.
template <class F>
inline void parallel_for_dynamic(int64_t n, int64_t chunk, F&& f) {
  if (n <= 0) return;
  chunk = chunk > 0 ? chunk : 1;
  const int64_t chunks = (n + chunk - 1) / chunk;
  const int nt = static_cast<int>(std::min<int64_t>(chunks, num_threads()));
  if (nt <= 1 || in_parallel()) {
    f(int64_t{0}, n);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_run(nt, [&](int) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks; c = next.fetch_add(1, std::memory_order_relaxed))
      f(c * chunk, std::min(n, c * chunk + chunk));
  });
}

}  // namespace segml
