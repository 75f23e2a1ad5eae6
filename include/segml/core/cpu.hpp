// segml/core/cpu.hpp: the one place that decides which SIMD instruction set the kernels use.
//
// Contract: the ISA is detected once per process (CPUID via gcc/clang builtins on x86-64; NEON is
// part of every AArch64 CPU) and can be lowered, never raised, with the environment variable
// SEGML_ISA=scalar|avx2|avx512|neon (used by the tests to run every kernel path on one machine) or
// with set_isa(). Kernels never test CPU features themselves: they enter their code for isa()
// through simd/dispatch.hpp. One binary runs on any x86-64; other CPUs run the scalar backend.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "segml/core/error.hpp"

namespace segml {

// scalar < avx2 < avx512 on x86-64; neon is AArch64's only vector ISA.
enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::neon: return "neon";
    default: return "scalar";
  }
}

// What the CPU supports (AVX2 means AVX2 + FMA; AVX-512 means F + BW + DQ + VL).
inline Isa detect_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#elif defined(__aarch64__)
  return Isa::neon;
#endif
  return Isa::scalar;
}

// Whether this CPU runs `i`: scalar always; on x86-64 every level up to the detected one.
inline bool isa_supported(Isa i) {
  const Isa hw = detect_isa();
  if (i == Isa::scalar || i == hw) return true;
  return hw != Isa::neon && i != Isa::neon && i <= hw;
}

// Every ISA this CPU runs, lowest first: what a test of every kernel path loops over.
inline std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

namespace detail {
inline Isa parse_isa(const char* s) {
  if (!std::strcmp(s, "scalar")) return Isa::scalar;
  if (!std::strcmp(s, "avx2")) return Isa::avx2;
  if (!std::strcmp(s, "avx512")) return Isa::avx512;
  if (!std::strcmp(s, "neon")) return Isa::neon;
  fail("SEGML_ISA='", s, "': expected scalar, avx2, avx512 or neon");
}
inline Isa& isa_slot() {
  static Isa isa = [] {
    const Isa hw = detect_isa();
    const char* env = std::getenv("SEGML_ISA");
    if (!env || !*env) return hw;
    const Isa want = parse_isa(env);
    if (isa_supported(want)) return want;
    // Lowered, never raised: AVX-512 asked of an AVX2 CPU gives AVX2; another architecture's ISA
    // gives scalar.
    return (hw != Isa::neon && want != Isa::neon) ? hw : Isa::scalar;
  }();
  return isa;
}
}  // namespace detail

// The ISA kernels use now.
inline Isa isa() { return detail::isa_slot(); }

// Selects an ISA no higher than the hardware supports (throws otherwise). Returns the previous one.
inline Isa set_isa(Isa want) {
  SEGML_CHECK(isa_supported(want), "set_isa: this CPU does not support ", isa_name(want), " (it supports up to ",
              isa_name(detect_isa()), ")");
  const Isa prev = detail::isa_slot();
  detail::isa_slot() = want;
  return prev;
}

// RAII ISA override for tests: ScopedIsa s(Isa::scalar); ...
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa want) : prev_(set_isa(want)) {}
  ~ScopedIsa() { detail::isa_slot() = prev_; }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa prev_;
};

}  // namespace segml
