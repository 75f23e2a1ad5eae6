// segml/simd/dispatch.hpp: how a kernel written once on the backends of simd/vec.hpp is run.
//
//   simd::dispatch<T>(f)                 calls f(S{}) once, S the backend of the active ISA for
//                                        element type T (float: Avx512 / Avx2 / Neon / Scalar<float>
//                                        as segml::isa() says; double: Scalar<double>)
//   simd::parallel_for<T>(n, grain, f)   reads the ISA once, splits [0, n) over the threads as
//                                        segml::parallel_for does and calls f(S{}, begin, end) per
//                                        chunk
//   simd::lanes<T>(isa)                  the lane count of that backend (1: scalar)
//   Rounding::each_op (second template argument of both): the entered body is compiled with
//                                        -ffp-contract=off, so a * b + c rounds twice as written,
//                                        for kernels that must reproduce a reference operation by
//                                        operation (PyTorch's optimizers). By default the compiler
//                                        may fuse a multiply and an add where the ISA has FMA.
//
// Both enter the backend through simd::enter(S{}, g): one function per backend, compiled for that
// backend's ISA (its target attribute) and marked flatten, so that g and everything g calls (the
// kernel's rows, the backend's operations) is inlined into it and compiled for that ISA. This is
// how one template body becomes AVX-512, AVX2, NEON and scalar code: GCC only inlines a function
// with intrinsics into a caller with the same target, and a template cannot carry a target that
// depends on its parameter. So kernels dispatch at their entry, never inside row loops, and keep
// work that should not be inlined (allocations, thread pool calls) outside the entered function.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "segml/core/cpu.hpp"
#include "segml/core/parallel.hpp"
#include "segml/simd/vec.hpp"

namespace segml::simd {

enum class Rounding { may_fuse, each_op };

#if defined(__clang__)
#define SEGML_UNFUSED  // clang contracts only within one expression and has no per-function switch here
#else
#define SEGML_UNFUSED __attribute__((optimize("fp-contract=off")))
#endif

template <class T, class G>
__attribute__((flatten)) inline decltype(auto) enter(Scalar<T> s, G&& g) {
  return g(s);
}
#if defined(__x86_64__)
template <class G>
SEGML_TARGET_AVX2 __attribute__((flatten)) inline decltype(auto) enter(Avx2 s, G&& g) {
  return g(s);
}
template <class G>
SEGML_TARGET_AVX512 __attribute__((flatten)) inline decltype(auto) enter(Avx512 s, G&& g) {
  return g(s);
}
#endif
#if defined(__aarch64__)
template <class G>
__attribute__((flatten)) inline decltype(auto) enter(Neon s, G&& g) {
  return g(s);
}
#endif

// The same, each operation rounded (Rounding::each_op).
template <class T, class G>
SEGML_UNFUSED __attribute__((flatten)) inline decltype(auto) enter_unfused(Scalar<T> s, G&& g) {
  return g(s);
}
#if defined(__x86_64__)
template <class G>
SEGML_TARGET_AVX2 SEGML_UNFUSED __attribute__((flatten)) inline decltype(auto) enter_unfused(Avx2 s, G&& g) {
  return g(s);
}
template <class G>
SEGML_TARGET_AVX512 SEGML_UNFUSED __attribute__((flatten)) inline decltype(auto) enter_unfused(Avx512 s, G&& g) {
  return g(s);
}
#endif
#if defined(__aarch64__)
template <class G>
SEGML_UNFUSED __attribute__((flatten)) inline decltype(auto) enter_unfused(Neon s, G&& g) {
  return g(s);
}
#endif

template <Rounding R, class S, class G>
inline decltype(auto) enter_as(S s, G&& g) {
  if constexpr (R == Rounding::each_op)
    return enter_unfused(s, g);
  else
    return enter(s, g);
}

// f(S{}) on the backend of `isa` for element type T (only float has vector backends).
template <class T, Rounding R = Rounding::may_fuse, class F>
inline decltype(auto) dispatch_on(Isa isa, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    switch (isa) {
#if defined(__x86_64__)
      case Isa::avx512: return enter_as<R>(Avx512{}, f);
      case Isa::avx2: return enter_as<R>(Avx2{}, f);
#endif
#if defined(__aarch64__)
      case Isa::neon: return enter_as<R>(Neon{}, f);
#endif
      default: break;
    }
  }
  return enter_as<R>(Scalar<T>{}, f);
}

// Lanes of the backend `isa` selects for T: 1 means the scalar backend (kernels whose scalar path
// is their reference twin test this once at entry).
template <class T>
inline int64_t lanes(Isa isa) {
  return dispatch_on<T>(isa, [](auto s) { return decltype(s)::lanes; });
}

template <class T, Rounding R = Rounding::may_fuse, class F>
inline decltype(auto) dispatch(F&& f) {
  return dispatch_on<T, R>(segml::isa(), std::forward<F>(f));
}

template <class T, Rounding R = Rounding::may_fuse, class F>
inline void parallel_for(int64_t n, int64_t grain, F&& f) {
  const Isa isa = segml::isa();
  segml::parallel_for(n, grain, [&](int64_t b, int64_t e) { dispatch_on<T, R>(isa, [&](auto s) { f(s, b, e); }); });
}

}  // namespace segml::simd
