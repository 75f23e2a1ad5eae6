// segml/core/parallel.hpp: thread count and the parallel-for used by every kernel.
//
// Contract: set_num_threads(n) sets the threads segml kernels use (n >= 1). By default it is
// OpenMP's default, which honours OMP_NUM_THREADS. Without OpenMP everything runs on one thread and
// parallel_for is a plain loop. Kernels parallelise only through parallel_for / the omp pragmas
// with num_threads(num_threads()), so this setting is the single control. parallel_for splits the
// range statically, one chunk per thread; parallel_for_dynamic hands out fixed chunks on demand.
#pragma once

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "segml/core/error.hpp"

namespace segml {

namespace detail {
inline int& num_threads_slot() {
#if defined(_OPENMP)
  static int n = omp_get_max_threads();
#else
  static int n = 1;
#endif
  return n;
}
}  // namespace detail

inline int num_threads() { return detail::num_threads_slot(); }

inline void set_num_threads(int n) {
  SEGML_CHECK(n >= 1, "set_num_threads: expected n >= 1, got ", n);
#if defined(_OPENMP)
  detail::num_threads_slot() = n;
  omp_set_num_threads(n);
#else
  detail::num_threads_slot() = 1;
#endif
}

// Calls f(begin, end) on disjoint chunks covering [0, n), in parallel when worthwhile.
// `grain` is the smallest chunk worth a thread.
template <class F>
inline void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
#if defined(_OPENMP)
  const int64_t max_chunks = grain > 0 ? (n + grain - 1) / grain : n;
  const int nt = static_cast<int>(max_chunks < num_threads() ? max_chunks : num_threads());
  if (nt > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num();
      const int64_t b = n * t / nt, e = n * (t + 1) / nt;
      f(b, e);
    }
    return;
  }
#else
  (void)grain;
#endif
  f(int64_t{0}, n);
}

// Calls f(begin, end) on the chunks [c * chunk, (c + 1) * chunk) of [0, n), handed to the threads
// one at a time as they become free (OpenMP's dynamic schedule). For work whose chunks cost about
// the same but whose threads may not run at the same speed: on a machine shared with other
// processes a thread that loses its core for a while no longer holds up a whole statically split
// loop. Serially (one thread, or inside a parallel region) it is one call f(0, n). f must give the
// same result whatever the chunks are.
template <class F>
inline void parallel_for_dynamic(int64_t n, int64_t chunk, F&& f) {
  if (n <= 0) return;
  chunk = chunk > 0 ? chunk : 1;
#if defined(_OPENMP)
  const int64_t chunks = (n + chunk - 1) / chunk;
  const int nt = static_cast<int>(chunks < num_threads() ? chunks : num_threads());
  if (nt > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t c = 0; c < chunks; ++c) f(c * chunk, c * chunk + chunk < n ? c * chunk + chunk : n);
    return;
  }
#endif
  f(int64_t{0}, n);
}

}  // namespace segml
