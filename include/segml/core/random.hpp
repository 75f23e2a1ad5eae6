// segml/core/random.hpp: Generator, a seeded, reproducible, counter-based random number generator.
//
// The engine is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
// a keyed bijection of a 128-bit counter. Draw number k of a generator seeded with s is
// philox(counter = k, key = s), so
//  - a whole buffer is drawn in parallel with element i depending only on (seed, offset, i): the
//    values never depend on the thread count or on how the work is split;
//  - the complete state is two integers (seed, offset), saved and restored with get_state() /
//    set_state(), so a resumed training run continues the exact same stream.
// Every draw (a scalar, or a buffer of n values) consumes whole 128-bit blocks and advances
// `offset` by the number of blocks used; nothing is buffered between calls.
//
// It does not reproduce PyTorch's CPU random streams (torch uses mt19937 there): only our own
// streams are reproducible. A Generator is not thread safe; the parallel fill_* functions are the
// way to use many threads. default_generator() is one process-wide instance (not thread safe either).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "segml/core/parallel.hpp"

namespace segml {

// One Philox4x32-10 block: 4 random 32-bit words for counter `ctr` under key `key`.
struct PhiloxBlock {
  uint32_t w[4];
};

inline PhiloxBlock philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2]) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
  uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
  uint32_t k0 = key_in[0], k1 = key_in[1];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0, p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// 32 random bits -> float in [0, 1): the top 24 bits scaled by 2^-24 (every value exact).
inline float bits_to_uniform_float(uint32_t x) { return static_cast<float>(x >> 8) * 0x1.0p-24f; }
// 64 random bits -> double in [0, 1): the top 53 bits scaled by 2^-53.
inline double bits_to_uniform_double(uint32_t hi, uint32_t lo) {
  const uint64_t x = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

// Everything needed to continue a stream: the key and the number of blocks already drawn.
struct GeneratorState {
  uint64_t seed = 0;
  uint64_t offset = 0;
  bool operator==(const GeneratorState&) const = default;
};

class Generator {
 public:
  // PyTorch's default seed, for familiarity only (the streams differ from torch's).
  static constexpr uint64_t kDefaultSeed = 67280421310721ull;

  explicit Generator(uint64_t seed = kDefaultSeed) { manual_seed(seed); }

  // Restarts the stream for `seed` (torch.Generator.manual_seed).
  void manual_seed(uint64_t seed) { state_ = {seed, 0}; }
  uint64_t initial_seed() const { return state_.seed; }

  GeneratorState get_state() const { return state_; }
  void set_state(const GeneratorState& s) { state_ = s; }

  // Data-parallel training: this process holds samples [first, first + count) of a batch of
  // `total` samples spread over several processes. Batch-shaped draws (ops::dropout, ops::drop_path)
  // then draw for the whole batch and keep this process's samples, so every process consumes the
  // same stream and each sample gets the values it would get with the whole batch in one process.
  // total = 0 (the default): the batch at hand is the whole batch.
  struct BatchSlice {
    int64_t first = 0, total = 0;
  };
  void set_batch_slice(int64_t first, int64_t total) { slice_ = {first, total}; }
  const BatchSlice& batch_slice() const { return slice_; }

  // The block for absolute counter `block` of this stream (does not advance the state).
  PhiloxBlock block_at(uint64_t block) const {
    const uint32_t ctr[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u};
    const uint32_t key[2] = {static_cast<uint32_t>(state_.seed), static_cast<uint32_t>(state_.seed >> 32)};
    return philox4x32_10(ctr, key);
  }
  // Reserves `blocks` consecutive blocks and returns the counter of the first one. A parallel
  // kernel calls this once, then evaluates block_at(first + i) for its own i on any thread.
  uint64_t reserve(uint64_t blocks) {
    const uint64_t first = state_.offset;
    state_.offset += blocks;
    return first;
  }

  // One uniform value in [0, 1) (consumes one block).
  template <class T = float>
  T uniform() {
    const PhiloxBlock b = block_at(reserve(1));
    if constexpr (std::is_same_v<T, float>)
      return bits_to_uniform_float(b.w[0]);
    else
      return static_cast<T>(bits_to_uniform_double(b.w[0], b.w[1]));
  }
  // One standard normal value (Box-Muller; consumes one block).
  template <class T = float>
  T normal() {
    const PhiloxBlock b = block_at(reserve(1));
    return static_cast<T>(
        box_muller(bits_to_uniform_double(b.w[0], b.w[1]), bits_to_uniform_double(b.w[2], b.w[3])).z0);
  }

  // out[i] = uniform in [0, 1), i < n. Block k yields elements [4k, 4k+4) for float, [2k, 2k+2)
  // for double. Parallel; the values depend only on (state, i), never on the thread count.
  template <class T>
  void fill_uniform(T* out, int64_t n) {
    static_assert(std::is_floating_point_v<T>);
    constexpr int64_t per = std::is_same_v<T, float> ? 4 : 2;
    fill_blocks(n, per, [out, n](const PhiloxBlock& b, int64_t i0) {
      for (int64_t j = 0; j < per && i0 + j < n; ++j) {
        if constexpr (per == 4)
          out[i0 + j] = bits_to_uniform_float(b.w[j]);
        else
          out[i0 + j] = bits_to_uniform_double(b.w[2 * j], b.w[2 * j + 1]);
      }
    });
  }
  // out[i] = mean + std * N(0, 1), i < n. Block k yields elements [2k, 2k+2) (one Box-Muller pair,
  // from 53-bit uniforms). Parallel and thread-count independent like fill_uniform.
  template <class T>
  void fill_normal(T* out, int64_t n, T mean = T(0), T std = T(1)) {
    static_assert(std::is_floating_point_v<T>);
    fill_blocks(n, 2, [out, n, mean, std](const PhiloxBlock& b, int64_t i0) {
      const auto [z0, z1] = box_muller(bits_to_uniform_double(b.w[0], b.w[1]), bits_to_uniform_double(b.w[2], b.w[3]));
      out[i0] = static_cast<T>(mean + std * z0);
      if (i0 + 1 < n) out[i0 + 1] = static_cast<T>(mean + std * z1);
    });
  }

 private:
  struct NormalPair {
    double z0, z1;
  };
  // Two independent N(0,1) from two uniforms in [0, 1); 1 - u1 is in (0, 1] so the log is finite.
  static NormalPair box_muller(double u1, double u2) {
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    const double r = std::sqrt(-2.0 * std::log(1.0 - u1));
    return {r * std::cos(kTwoPi * u2), r * std::sin(kTwoPi * u2)};
  }
  // Reserves ceil(n / per) blocks and calls emit(block, first element index) for each, in parallel.
  template <class Emit>
  void fill_blocks(int64_t n, int64_t per, Emit emit) {
    if (n <= 0) return;
    const int64_t blocks = (n + per - 1) / per;
    const uint64_t first = reserve(static_cast<uint64_t>(blocks));
    parallel_for(blocks, 1 << 13, [&](int64_t s, int64_t e) {
      for (int64_t k = s; k < e; ++k) emit(block_at(first + static_cast<uint64_t>(k)), k * per);
    });
  }

  BatchSlice slice_;
  GeneratorState state_;
};

// The process-wide generator ops use when none is passed (not thread safe).
inline Generator& default_generator() {
  static Generator g;
  return g;
}

// Re-seeds the default generator (torch.manual_seed).
inline void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace segml
