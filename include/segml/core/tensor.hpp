// segml/core/tensor.hpp: Tensor<T>, a dense strided n-d array over shared, 64-byte-aligned storage.
//
// Contract:
//  - A Tensor is a view: shape + strides (in elements) + offset into a shared Storage. Copying a
//    Tensor is cheap and aliases the same memory (like torch.Tensor). clone() copies the data.
//  - Views (reshape of a contiguous tensor, view, permute, transpose, slice, narrow) never copy.
//    contiguous() copies only when the layout is not row-major dense.
//  - Fresh storage is 64-byte aligned, so kernels may use aligned SIMD loads at offset 0.
//  - Every shape error throws segml::Error naming the op and the shapes, in release builds too.
//  - Allocation never ends in a bare std::bad_alloc: a shape whose product overflows, a size beyond
//    the address space and an allocation the system refuses all throw segml::Error naming the
//    dtype, the shape and the bytes.
//  - It knows nothing about autograd; see autograd/variable.hpp for the graph layer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace segml {

inline constexpr std::size_t kTensorAlignment = 64;

// Number of elements of a shape; throws on negative extents and on a product that overflows int64.
inline int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) SEGML_CHECK(d >= 0, "shape ", shape, " has a negative extent");
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) {
      for (int64_t z : shape)
        if (z == 0) return 0;  // a zero extent makes any product 0
      fail("shape ", shape, " has more elements than an int64 can count");
    }
  return n;
}

// Row-major (C order) strides of a shape, in elements.
inline Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

namespace detail {
// Recycles large buffers. A training step allocates the same large shapes every iteration; fresh
// memory for each would come from the OS (mmap) and every page would fault in on first touch,
// hundreds of MB per step, costing as much as the element-wise ops themselves and serialising
// threads on the kernel's page tables. A freed buffer of at least kMinBytes is kept instead and
// handed to the next request of at most its size and at least 7/8 of it; at most limit() bytes are
// kept, the least recently freed dropped first. Thread-safe. Disabled under AddressSanitizer, so
// that use-after-free of tensor storage stays detectable.
class BufferCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t{1} << 17;

  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache;  // never destroyed: storages may outlive statics
    return *cache;
  }
  static constexpr bool enabled() {
#if defined(__SANITIZE_ADDRESS__)
    return false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return false;
#else
    return true;
#endif
#else
    return true;
#endif
  }

  // A block of at least `bytes` (64-byte aligned); its actual size is returned through `bytes`.
  void* get(std::size_t& bytes) {
    if (enabled() && bytes >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = by_size_.lower_bound(bytes);
      if (it != by_size_.end() && it->first - it->first / 8 <= bytes) {
        bytes = it->first;
        void* p = by_age_.at(it->second).second;
        by_age_.erase(it->second);
        by_size_.erase(it);
        cached_ -= bytes;
        return p;
      }
    }
    return ::operator new(bytes, std::align_val_t{kTensorAlignment});
  }
  void put(void* p, std::size_t bytes) {
    if (enabled() && bytes >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes <= limit_) {
        by_size_.emplace(bytes, next_);
        by_age_.emplace(next_++, std::make_pair(bytes, p));
        cached_ += bytes;
        trim(limit_);
        return;
      }
    }
    ::operator delete(p, std::align_val_t{kTensorAlignment});
  }
  void set_limit(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    trim(limit_);
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim(0);
  }
  std::size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  // Frees the oldest blocks until at most `keep` bytes are cached. Caller holds the mutex.
  void trim(std::size_t keep) {
    while (cached_ > keep) {
      const auto oldest = by_age_.begin();
      const auto [size, p] = oldest->second;
      auto it = by_size_.lower_bound(size);
      while (it->second != oldest->first) ++it;
      by_size_.erase(it);
      by_age_.erase(oldest);
      cached_ -= size;
      ::operator delete(p, std::align_val_t{kTensorAlignment});
    }
  }

  std::mutex mutex_;
  std::multimap<std::size_t, uint64_t> by_size_;               // size -> age stamp
  std::map<uint64_t, std::pair<std::size_t, void*>> by_age_;  // age stamp -> (size, block), oldest first
  uint64_t next_ = 0;
  std::size_t cached_ = 0;
  std::size_t limit_ = std::size_t{1} << 30;
};
}  // namespace detail

// Caps the bytes of freed tensor storage kept for reuse (default 1 GiB); 0 releases it all and
// turns recycling off.
inline void set_tensor_cache_limit(std::size_t bytes) { detail::BufferCache::instance().set_limit(bytes); }
// Bytes of freed tensor storage currently kept for reuse.
inline std::size_t tensor_cache_bytes() { return detail::BufferCache::instance().cached_bytes(); }
// Returns the freed tensor storage kept for reuse to the system, keeping the limit (e.g. after an
// inference, before work on a large image that needs the memory more). With glibc, the freed
// blocks are also handed back to the kernel (malloc_trim), not only to the allocator.
inline void release_tensor_cache() {
  detail::BufferCache::instance().release();
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// The name of a tensor element type in messages: float32, int64, ...
template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, double>) return "float64";
  else if constexpr (std::is_same_v<T, int64_t>) return "int64";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32";
  else if constexpr (std::is_same_v<T, uint8_t>) return "uint8";
  else if constexpr (std::is_same_v<T, bool>) return "bool";
  else return "element";
}

namespace detail {
// "1.5 GB" / "12.0 MB" / "512 bytes"
inline std::string bytes_text(double bytes) {
  char buf[64];
  if (bytes >= 1e9) std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  else if (bytes >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  else std::snprintf(buf, sizeof buf, "%.0f bytes", bytes);
  return buf;
}
}  // namespace detail

// Owning, aligned buffer of n elements of T. Uninitialised for trivial T. Large buffers are
// recycled (detail::BufferCache). A size that cannot be represented or allocated throws
// segml::Error saying what was asked for (dtype, `shape` when given, bytes), never std::bad_alloc.
template <class T>
std::shared_ptr<T[]> allocate_aligned(int64_t n, const Shape* shape = nullptr) {
  static_assert(std::is_trivially_copyable_v<T>, "Tensor elements must be trivially copyable");
  const auto what = [&] {
    std::ostringstream os;
    os << "cannot allocate a " << dtype_name<T>() << " tensor";
    if (shape) os << " of shape " << shape_str(*shape);
    os << " (" << n << " elements, " << detail::bytes_text(double(n) * double(sizeof(T))) << ")";
    return os.str();
  };
  std::size_t bytes = 0;
  if (n < 0 || __builtin_mul_overflow(static_cast<std::size_t>(n), sizeof(T), &bytes) ||
      bytes > static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()))
    fail(what(), ": more bytes than the address space holds");
  bytes = std::max<std::size_t>(bytes, kTensorAlignment);
  void* p = nullptr;
  try {
    p = detail::BufferCache::instance().get(bytes);
  } catch (const std::bad_alloc&) {
    fail(what(), ": out of memory");
  }
  return std::shared_ptr<T[]>(static_cast<T*>(p), [bytes](T* q) { detail::BufferCache::instance().put(q, bytes); });
}

template <class T>
class Tensor {
 public:
  using value_type = T;

  // An undefined tensor (no storage). defined() is false.
  Tensor() = default;

  // ---- factories --------------------------------------------------------
  static Tensor empty(Shape shape) {
    Tensor t;
    t.numel_ = shape_numel(shape);
    t.strides_ = contiguous_strides(shape);
    t.shape_ = std::move(shape);
    t.storage_ = allocate_aligned<T>(t.numel_, &t.shape_);
    return t;
  }
  static Tensor zeros(Shape shape) { return full(std::move(shape), T(0)); }
  static Tensor ones(Shape shape) { return full(std::move(shape), T(1)); }
  static Tensor full(Shape shape, T value) {
    Tensor t = empty(std::move(shape));
    T* d = t.data();
    parallel_for(t.numel_, kParallelCopy, [&](int64_t i0, int64_t i1) { std::fill(d + i0, d + i1, value); });
    return t;
  }
  static Tensor from(Shape shape, const std::vector<T>& values) {
    Tensor t = empty(std::move(shape));
    SEGML_CHECK(static_cast<int64_t>(values.size()) == t.numel_, "Tensor::from: shape ", t.shape_, " holds ",
                t.numel_, " elements but ", values.size(), " values were given");
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }
  static Tensor empty_like(const Tensor& o) { return empty(o.shape_); }
  static Tensor zeros_like(const Tensor& o) { return zeros(o.shape_); }

  // ---- inspection -------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t numel() const { return numel_; }
  int64_t offset() const { return offset_; }
  // size(-1) is the last extent, as in PyTorch.
  int64_t size(int64_t d) const { return shape_[static_cast<size_t>(wrap_dim(d, "size"))]; }
  int64_t stride(int64_t d) const { return strides_[static_cast<size_t>(wrap_dim(d, "stride"))]; }

  // Pointer to the first element (storage + offset). Valid for strided access through strides().
  T* data() { return storage_.get() + offset_; }
  const T* data() const { return storage_.get() + offset_; }

  bool is_contiguous() const {
    if (numel_ == 0) return true;  // nothing to lay out (and contiguous() must not recurse on it)
    int64_t expected = 1;
    for (size_t i = shape_.size(); i-- > 0;) {
      if (shape_[i] == 1) continue;
      if (strides_[i] != expected) return false;
      expected *= shape_[i];
    }
    return true;
  }

  bool shares_storage_with(const Tensor& o) const { return storage_ == o.storage_; }

  // Element access by full index; for tests, fixtures and debugging, not hot loops.
  T& at(std::initializer_list<int64_t> idx) { return data()[linear_offset(idx)]; }
  const T& at(std::initializer_list<int64_t> idx) const { return data()[linear_offset(idx)]; }

  // ---- views ------------------------------------------------------------
  // Same data, new shape; requires a contiguous tensor. One extent may be -1.
  Tensor view(Shape shape) const {
    SEGML_CHECK(is_contiguous(), "view: tensor of shape ", shape_, " is not contiguous; use reshape()");
    Tensor t = *this;
    t.shape_ = infer_shape(std::move(shape), "view");
    t.strides_ = contiguous_strides(t.shape_);
    return t;
  }
  // view() when contiguous, otherwise a contiguous copy with the new shape.
  Tensor reshape(Shape shape) const { return is_contiguous() ? view(std::move(shape)) : contiguous().view(std::move(shape)); }

  Tensor permute(const std::vector<int64_t>& dims) const {
    SEGML_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: ", dims.size(), " dims given for tensor of shape ",
                shape_);
    Tensor t = *this;
    std::vector<bool> seen(dims.size(), false);
    for (size_t i = 0; i < dims.size(); ++i) {
      const int64_t d = wrap_dim(dims[i], "permute");
      SEGML_CHECK(!seen[static_cast<size_t>(d)], "permute: dim ", d, " repeated for tensor of shape ", shape_);
      seen[static_cast<size_t>(d)] = true;
      t.shape_[i] = shape_[static_cast<size_t>(d)];
      t.strides_[i] = strides_[static_cast<size_t>(d)];
    }
    return t;
  }
  Tensor transpose(int64_t d0, int64_t d1) const {
    d0 = wrap_dim(d0, "transpose");
    d1 = wrap_dim(d1, "transpose");
    Tensor t = *this;
    std::swap(t.shape_[static_cast<size_t>(d0)], t.shape_[static_cast<size_t>(d1)]);
    std::swap(t.strides_[static_cast<size_t>(d0)], t.strides_[static_cast<size_t>(d1)]);
    return t;
  }
  // Elements start, start+step, ... < end along dim (Python slice semantics for non-negative step).
  Tensor slice(int64_t d, int64_t start, int64_t end, int64_t step = 1) const {
    d = wrap_dim(d, "slice");
    const int64_t n = shape_[static_cast<size_t>(d)];
    SEGML_CHECK(step > 0, "slice: step must be positive, got ", step);
    if (start < 0) start += n;
    if (end < 0) end += n;
    start = std::clamp<int64_t>(start, 0, n);
    end = std::clamp<int64_t>(end, start, n);
    Tensor t = *this;
    t.offset_ += start * strides_[static_cast<size_t>(d)];
    t.shape_[static_cast<size_t>(d)] = (end - start + step - 1) / step;
    t.strides_[static_cast<size_t>(d)] *= step;
    t.numel_ = shape_numel(t.shape_);
    return t;
  }
  // length elements from start along dim; out-of-range is an error (torch.narrow).
  Tensor narrow(int64_t d, int64_t start, int64_t length) const {
    d = wrap_dim(d, "narrow");
    const int64_t n = shape_[static_cast<size_t>(d)];
    SEGML_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: start ", start, " length ", length,
                " out of range for dim ", d, " of shape ", shape_);
    return slice(d, start, start + length);
  }

  // ---- copies -----------------------------------------------------------
  Tensor contiguous() const {
    if (is_contiguous()) return *this;
    Tensor t = empty(shape_);
    t.copy_(*this);
    return t;
  }
  Tensor clone() const {
    Tensor t = empty(shape_);
    t.copy_(*this);
    return t;
  }
  // Elementwise conversion to another dtype (always a new contiguous tensor).
  template <class U>
  Tensor<U> to() const {
    Tensor<U> out = Tensor<U>::empty(shape_);
    U* o = out.data();
    int64_t i = 0;
    for_each_offset([&](int64_t off) { o[i++] = static_cast<U>(data()[off]); });
    return out;
  }

  // ---- in-place ---------------------------------------------------------
  void fill_(T value) {
    for_each_offset([&](int64_t off) { data()[off] = value; });
  }
  // Copies src (same shape, any strides) into this tensor's elements.
  void copy_(const Tensor& src) {
    SEGML_CHECK(src.shape_ == shape_, "copy_: source shape ", src.shape_, " differs from destination shape ", shape_);
    if (is_contiguous() && src.is_contiguous()) {
      T* d = data();
      const T* sp = src.data();
      if (d + numel_ <= sp || sp + numel_ <= d) {  // disjoint: split over threads when large
        parallel_for(numel_, kParallelCopy, [&](int64_t i0, int64_t i1) {
          std::memcpy(d + i0, sp + i0, static_cast<size_t>(i1 - i0) * sizeof(T));
        });
      } else if (numel_) {
        std::memmove(d, sp, static_cast<size_t>(numel_) * sizeof(T));
      }
      return;
    }
    if (is_contiguous() && copy_transposed(src)) return;
    if (is_contiguous()) {  // gather: walk the source's strides, write densely
      T* d = data();
      const T* sp = src.data();
      if (numel_ >= kParallelCopy && dim() >= 2) {  // large (a permute's copy): rows of the two outer dims in parallel
        const int64_t outer = shape_[0] * shape_[1], inner = numel_ / std::max<int64_t>(outer, 1);
        Tensor rest = src;  // the inner dims' view: its offsets are relative to one outer position
        rest.shape_.erase(rest.shape_.begin(), rest.shape_.begin() + 2);
        rest.strides_.erase(rest.strides_.begin(), rest.strides_.begin() + 2);
        rest.numel_ = inner;
        parallel_for(outer, std::max<int64_t>(1, kParallelCopy / std::max<int64_t>(inner, 1)), [&](int64_t o0, int64_t o1) {
          for (int64_t o = o0; o < o1; ++o) {
            const T* base = sp + (o / shape_[1]) * src.strides_[0] + (o % shape_[1]) * src.strides_[1];
            T* out = d + o * inner;
            rest.for_each_offset([&](int64_t off) { *out++ = base[off]; });
          }
        });
        return;
      }
      int64_t i = 0;
      src.for_each_offset([&](int64_t off) { d[i++] = sp[off]; });
      return;
    }
    const Tensor s = src.contiguous();  // scatter: read densely, walk our strides
    const T* sp = s.data();
    int64_t i = 0;
    for_each_offset([&](int64_t off) { data()[off] = sp[i++]; });
  }
  // this += other (same shape). The gradient accumulation primitive.
  void add_(const Tensor& other) {
    SEGML_CHECK(other.shape_ == shape_, "add_: shape ", other.shape_, " cannot be added to shape ", shape_);
    if (is_contiguous() && other.is_contiguous()) {
      T* a = data();
      const T* b = other.data();
      parallel_for(numel_, kParallelCopy, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) a[i] += b[i];
      });
      return;
    }
    const Tensor o = other.contiguous();
    const T* b = o.data();
    int64_t i = 0;
    for_each_offset([&](int64_t off) { data()[off] += b[i++]; });
  }

  // Calls f(offset) for every element in row-major index order (offsets relative to data()).
  template <class F>
  void for_each_offset(F&& f) const {
    if (numel_ == 0) return;
    const size_t r = shape_.size();
    if (r == 0) {
      f(int64_t{0});
      return;
    }
    std::vector<int64_t> idx(r, 0);
    int64_t off = 0;
    const int64_t inner = shape_[r - 1], inner_stride = strides_[r - 1];
    for (;;) {
      for (int64_t j = 0; j < inner; ++j) f(off + j * inner_stride);
      size_t d = r - 1;
      for (;;) {
        if (d == 0) return;
        --d;
        off += strides_[d];
        if (++idx[d] < shape_[d]) break;
        off -= strides_[d] * shape_[d];
        idx[d] = 0;
      }
    }
  }

 private:
  static constexpr int64_t kParallelCopy = int64_t{1} << 16;  // elements worth splitting over threads

  // Copies src into this contiguous tensor when src is, once adjacent dims that are dense in it are
  // merged, a batch of transposed matrices: this[b][r][c] = src.data()[b*sb + r + c*sc] (an NCHW <->
  // NHWC permute). Tiles of the matrix are copied in parallel, so both sides stay in cache. Returns
  // false, copying nothing, for any other layout.
  bool copy_transposed(const Tensor& src) {
    int64_t n[3] = {1, 1, 1}, st[3] = {0, 0, 0};  // merged (batch, rows, cols), their source strides
    int dims = 0;
    for (size_t i = 0; i < shape_.size(); ++i) {
      if (shape_[i] == 1) continue;
      if (dims > 0 && st[dims - 1] == src.strides_[i] * shape_[i]) {  // dense continuation: merge
        n[dims - 1] *= shape_[i];
        st[dims - 1] = src.strides_[i];
        continue;
      }
      if (dims == 3) return false;
      n[dims] = shape_[i];
      st[dims++] = src.strides_[i];
    }
    if (dims < 2) return false;
    if (dims == 2) {  // no batch dim: shift (rows, cols) to positions 1, 2
      n[2] = n[1], st[2] = st[1], n[1] = n[0], st[1] = st[0], n[0] = 1, st[0] = 0;
    }
    const int64_t B = n[0], R = n[1], C = n[2], sb = st[0], sc = st[2];
    if (st[1] != 1 || sc == 1 || R * C < 4096) return false;
    constexpr int64_t kTileR = 256, kTileC = 8;  // at most 8 strided streams per tile
    const int64_t tiles_r = (R + kTileR - 1) / kTileR;
    T* d = data();
    const T* sp = src.data();
    parallel_for(B * tiles_r, std::max<int64_t>(1, kParallelCopy / (kTileR * C)), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / tiles_r, r0 = (t % tiles_r) * kTileR, r1 = std::min(R, r0 + kTileR);
        const T* sbase = sp + b * sb;
        T* dbase = d + b * R * C;
        for (int64_t c0 = 0; c0 < C; c0 += kTileC) {
          const int64_t c1 = std::min(C, c0 + kTileC);
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = c0; c < c1; ++c) dbase[r * C + c] = sbase[r + c * sc];
        }
      }
    });
    return true;
  }

  int64_t wrap_dim(int64_t d, const char* op) const {
    const int64_t r = dim();
    SEGML_CHECK(d >= -r && d < r, op, ": dim ", d, " out of range for tensor of shape ", shape_);
    return d < 0 ? d + r : d;
  }
  Shape infer_shape(Shape shape, const char* op) const {
    int64_t known = 1, infer = -1;
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] == -1) {
        SEGML_CHECK(infer < 0, op, ": more than one -1 in ", shape);
        infer = static_cast<int64_t>(i);
      } else {
        SEGML_CHECK(shape[i] >= 0, op, ": invalid extent in ", shape);
        known *= shape[i];
      }
    }
    if (infer >= 0) {
      SEGML_CHECK(known > 0 && numel_ % known == 0, op, ": cannot infer -1 in ", shape, " for tensor of shape ", shape_);
      shape[static_cast<size_t>(infer)] = numel_ / known;
    }
    SEGML_CHECK(shape_numel(shape) == numel_, op, ": shape ", shape, " is invalid for tensor of shape ", shape_, " (",
                numel_, " elements)");
    return shape;
  }
  int64_t linear_offset(std::initializer_list<int64_t> idx) const {
    SEGML_CHECK(static_cast<int64_t>(idx.size()) == dim(), "at: ", idx.size(), " indices for tensor of shape ", shape_);
    int64_t off = 0;
    size_t d = 0;
    for (int64_t i : idx) {
      SEGML_CHECK(i >= 0 && i < shape_[d], "at: index ", i, " out of range for dim ", d, " of shape ", shape_);
      off += i * strides_[d++];
    }
    return off;
  }

  std::shared_ptr<T[]> storage_;
  int64_t offset_ = 0;
  int64_t numel_ = 0;
  Shape shape_;
  Shape strides_;
};

}  // namespace segml
