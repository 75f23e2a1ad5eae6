// segml/kernels/concat.hpp: concatenation along one dimension, and its backward (the split).
//
// Any concat along dim `d` of row-major tensors is, viewed flat, `outer` = prod(shape[:d]) rows
// where input i contributes a contiguous run of inner[i] = shape_i[d] * prod(shape[d+1:]) elements
// to each row. Both directions are plain copies of those runs (memcpy), so this code is its own
// reference: there is no SIMD variant to check against it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "segml/core/parallel.hpp"

namespace segml::kernels {

namespace detail {
// Rows per parallel chunk: enough that a chunk moves ~64K elements.
inline int64_t concat_grain(int64_t row_len) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, row_len)); }
}  // namespace detail

// out row r = [inputs[0] row r, inputs[1] row r, ...].
// inputs[i] (outer, inner[i]), out (outer, sum(inner))
template <class T>
inline void concat_forward(T* out, const T* const* inputs, const int64_t* inner, int64_t n_inputs, int64_t outer) {
  int64_t row_len = 0;
  for (int64_t i = 0; i < n_inputs; ++i) row_len += inner[i];
  parallel_for(outer, detail::concat_grain(row_len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* o = out + r * row_len;
      for (int64_t i = 0; i < n_inputs; ++i) {
        std::memcpy(o, inputs[i] + r * inner[i], static_cast<size_t>(inner[i]) * sizeof(T));
        o += inner[i];
      }
    }
  });
}

// dinputs[i] row r = the inner[i] elements of dout row r that came from input i; a null
// dinputs[i] is skipped (that input needs no gradient).
// dout (outer, sum(inner)), dinputs[i] (outer, inner[i])
template <class T>
inline void concat_backward(T* const* dinputs, const T* dout, const int64_t* inner, int64_t n_inputs, int64_t outer) {
  int64_t row_len = 0;
  for (int64_t i = 0; i < n_inputs; ++i) row_len += inner[i];
  parallel_for(outer, detail::concat_grain(row_len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = dout + r * row_len;
      for (int64_t i = 0; i < n_inputs; ++i) {
        if (dinputs[i]) std::memcpy(dinputs[i] + r * inner[i], g, static_cast<size_t>(inner[i]) * sizeof(T));
        g += inner[i];
      }
    }
  });
}

}  // namespace segml::kernels
