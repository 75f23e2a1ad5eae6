// segml/io/safetensors.hpp: read and write HuggingFace safetensors files.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian u64 N, then N bytes of
// UTF-8 JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the byte buffer. Offsets are relative to the buffer.
//
// Reading validates everything the reference reader does, and says which file and tensor is wrong:
// file shorter than 8 bytes, N > 100,000,000 or past the end of the file, invalid JSON, duplicate
// names, unknown dtypes, negative or overflowing shapes, byte ranges that do not match
// shape x dtype size, ranges with gaps or overlaps, a buffer that does not end at the end of file,
// and metadata that is not a string->string map.
// F32, F16, BF16 and F64 are converted to the requested float type; integer dtypes (I64, I32, U8, ...)
// are readable as raw values too (e.g. num_batches_tracked, label fixtures).
// Writing produces F32 or F16 (and I64 for integer buffers), sorted as the reference writer does,
// header padded with spaces to a multiple of 8, to a temp file renamed into place (atomic).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include "segml/core/file.hpp"
#include "segml/core/tensor.hpp"

namespace segml::safetensors {

static_assert(std::endian::native == std::endian::little, "segml's safetensors I/O assumes a little-endian host");

inline constexpr uint64_t kMaxHeaderSize = 100'000'000;

enum class Dtype { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

inline std::optional<Dtype> parse_dtype(const std::string& s) {
  static const std::map<std::string, Dtype> names = {
      {"BOOL", Dtype::BOOL}, {"U8", Dtype::U8},   {"I8", Dtype::I8},   {"I16", Dtype::I16}, {"U16", Dtype::U16},
      {"F16", Dtype::F16},   {"BF16", Dtype::BF16}, {"I32", Dtype::I32}, {"U32", Dtype::U32}, {"F32", Dtype::F32},
      {"F64", Dtype::F64},   {"I64", Dtype::I64}, {"U64", Dtype::U64}};
  auto it = names.find(s);
  if (it == names.end()) return std::nullopt;
  return it->second;
}

inline const char* dtype_name(Dtype d) {
  static const char* names[] = {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"};
  return names[static_cast<int>(d)];
}

inline size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::BOOL: case Dtype::U8: case Dtype::I8: return 1;
    case Dtype::I16: case Dtype::U16: case Dtype::F16: case Dtype::BF16: return 2;
    case Dtype::I32: case Dtype::U32: case Dtype::F32: return 4;
    case Dtype::F64: case Dtype::I64: case Dtype::U64: return 8;
  }
  return 0;
}

// IEEE half -> float, exact (subnormals, inf, nan included).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    v = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

// float -> IEEE half, round to nearest even, overflow to inf.
inline uint16_t float_to_half(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {                         // result is subnormal or zero
    const float a = std::bit_cast<float>(ax);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));  // a / 2^-24, ties to even
  }
  const uint32_t rounded = ax + 0xfffu + ((ax >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

inline float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

struct TensorInfo {
  Dtype dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // relative to the data buffer
};

// An opened, fully validated safetensors file held in memory.
class File {
 public:
  explicit File(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) fail("safetensors: cannot open '", path, "'");
    const std::streamoff size = in.tellg();  // one read of the whole file (not byte by byte)
    if (size < 0) fail("safetensors: cannot read the size of '", path, "'");
    bytes_.resize(static_cast<size_t>(size));
    in.seekg(0);
    if (!in.read(bytes_.data(), size)) fail("safetensors: cannot read '", path, "' (", size, " bytes)");
    parse();
  }
  // Parses bytes already in memory; `name` is used in error messages.
  File(std::vector<char> bytes, std::string name) : path_(std::move(name)), bytes_(std::move(bytes)) { parse(); }

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return infos_.count(name) > 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [k, v] : infos_) out.push_back(k);
    return out;
  }
  const TensorInfo& info(const std::string& name) const {
    auto it = infos_.find(name);
    if (it == infos_.end()) fail("safetensors: '", path_, "' has no tensor named '", name, "'");
    return it->second;
  }

  // The named tensor converted to T (float or double from F32/F16/BF16/F64; integer dtypes as values).
  template <class T>
  Tensor<T> get(const std::string& name) const {
    Tensor<T> t = Tensor<T>::empty(info(name).shape);
    read_into(name, t.data());
    return t;
  }

  // The named tensor converted to T, written to dst (as many values as the tensor has).
  template <class T>
  void read_into(const std::string& name, T* dst) const {
    const TensorInfo& ti = info(name);
    const char* src = data_begin() + ti.begin;
    int64_t n = 1;
    for (int64_t d : ti.shape) n *= d;
    auto load = [&](auto tag) {
      using S = decltype(tag);
      for (int64_t i = 0; i < n; ++i) {
        S v;
        std::memcpy(&v, src + i * static_cast<int64_t>(sizeof(S)), sizeof(S));
        dst[i] = static_cast<T>(v);
      }
    };
    switch (ti.dtype) {
      case Dtype::F32: load(float{}); break;
      case Dtype::F64: load(double{}); break;
      case Dtype::I64: load(int64_t{}); break;
      case Dtype::I32: load(int32_t{}); break;
      case Dtype::U32: load(uint32_t{}); break;
      case Dtype::I16: load(int16_t{}); break;
      case Dtype::U16: load(uint16_t{}); break;
      case Dtype::I8: load(int8_t{}); break;
      case Dtype::U8: case Dtype::BOOL: load(uint8_t{}); break;
      case Dtype::U64: load(uint64_t{}); break;
      case Dtype::F16:
      case Dtype::BF16:
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, src + 2 * i, 2);
          dst[i] = static_cast<T>(ti.dtype == Dtype::F16 ? half_to_float(h) : bf16_to_float(h));
        }
        break;
    }
  }

  // Like get(), but checks the shape first and names the file and tensor when it differs.
  template <class T>
  Tensor<T> get(const std::string& name, const Shape& expected) const {
    const TensorInfo& ti = info(name);
    if (ti.shape != expected)
      fail("safetensors: tensor '", name, "' in '", path_, "' has shape ", ti.shape, ", expected ", expected);
    return get<T>(name);
  }

 private:
  const char* data_begin() const { return bytes_.data() + 8 + header_size_; }

  void parse() {
    const uint64_t file_size = bytes_.size();
    if (file_size < 8) fail("safetensors: '", path_, "' is ", file_size, " bytes, too short for the 8-byte header length");
    uint64_t n;
    std::memcpy(&n, bytes_.data(), 8);
    if (n > kMaxHeaderSize) fail("safetensors: '", path_, "' declares a header of ", n, " bytes (limit ", kMaxHeaderSize, ")");
    if (n > file_size - 8)
      fail("safetensors: '", path_, "' is truncated: header of ", n, " bytes but only ", file_size - 8, " bytes follow");
    header_size_ = n;
    const std::string header(bytes_.data() + 8, n);
    nlohmann::json j;
    bool duplicate = false;
    std::string dup_key;
    try {
      // The callback sees every key at object depth 1, so duplicates can be rejected (nlohmann keeps the last).
      std::vector<std::string> seen;
      j = nlohmann::json::parse(header, [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
        if (depth == 1 && ev == nlohmann::json::parse_event_t::key) {
          const std::string k = parsed.get<std::string>();
          if (std::find(seen.begin(), seen.end(), k) != seen.end()) {
            duplicate = true;
            dup_key = k;
          }
          seen.push_back(k);
        }
        return true;
      });
    } catch (const nlohmann::json::exception& e) {
      fail("safetensors: '", path_, "' has an invalid JSON header: ", e.what());
    }
    if (duplicate) fail("safetensors: '", path_, "' names tensor '", dup_key, "' twice");
    if (!j.is_object()) fail("safetensors: '", path_, "' header is not a JSON object");

    std::vector<std::pair<uint64_t, std::string>> by_offset;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& e = it.value();
      if (name == "__metadata__") {
        if (!e.is_object()) fail("safetensors: '", path_, "' __metadata__ must be an object of strings");
        for (auto m = e.begin(); m != e.end(); ++m) {
          if (!m.value().is_string())
            fail("safetensors: '", path_, "' __metadata__ value for '", m.key(), "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      auto where = [&] { return "safetensors: tensor '" + name + "' in '" + path_ + "'"; };
      if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
        fail(where(), " must be an object with dtype, shape and data_offsets");
      if (!e["dtype"].is_string()) fail(where(), ": dtype is not a string");
      const auto dt = parse_dtype(e["dtype"].get<std::string>());
      if (!dt) fail(where(), " has unsupported dtype '", e["dtype"].get<std::string>(), "'");
      TensorInfo ti;
      ti.dtype = *dt;
      if (!e["shape"].is_array()) fail(where(), ": shape is not an array");
      uint64_t count = 1;
      for (const auto& d : e["shape"]) {
        if (!d.is_number_unsigned()) fail(where(), ": shape entries must be non-negative integers");
        const uint64_t v = d.get<uint64_t>();
        if (v != 0 && count > std::numeric_limits<uint64_t>::max() / v) fail(where(), ": shape overflows");
        count *= v;
        ti.shape.push_back(static_cast<int64_t>(v));
      }
      const auto& off = e["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail(where(), ": data_offsets must be two non-negative integers");
      ti.begin = off[0].get<uint64_t>();
      ti.end = off[1].get<uint64_t>();
      if (ti.end < ti.begin) fail(where(), ": data_offsets [", ti.begin, ", ", ti.end, "] end before they begin");
      const uint64_t esize = dtype_size(ti.dtype);
      if (count > std::numeric_limits<uint64_t>::max() / esize) fail(where(), ": byte size overflows");
      if (ti.end - ti.begin != count * esize)
        fail(where(), " has shape ", ti.shape, " and dtype ", dtype_name(ti.dtype), " (", count * esize,
             " bytes) but its data_offsets span ", ti.end - ti.begin, " bytes");
      by_offset.emplace_back(ti.begin, name);
      infos_[name] = std::move(ti);
    }
    // Ranges must tile the buffer exactly: sorted by begin, each begins where the previous ended.
    std::sort(by_offset.begin(), by_offset.end(), [&](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : infos_[a.second].end < infos_[b.second].end;
    });
    uint64_t expected = 0;
    for (const auto& [begin, name] : by_offset) {
      const TensorInfo& ti = infos_[name];
      if (ti.begin != expected)
        fail("safetensors: tensor '", name, "' in '", path_, "' starts at byte ", ti.begin, " but the previous tensor ends at ",
             expected, " (gap or overlap)");
      expected = ti.end;
    }
    if (8 + header_size_ + expected != file_size)
      fail("safetensors: '", path_, "' data buffer is ", file_size - 8 - header_size_, " bytes but the tensors cover ", expected,
           " bytes (", (8 + header_size_ + expected > file_size ? "file truncated" : "trailing bytes"), ")");
  }

  std::string path_;
  std::vector<char> bytes_;
  uint64_t header_size_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: a float tensor stored as F32 or F16, or int64 values stored as I64.
struct Entry {
  Dtype dtype = Dtype::F32;
  Shape shape;
  std::vector<char> bytes;
};

template <class T>
Entry make_entry(const Tensor<T>& t, Dtype dtype = Dtype::F32) {
  Entry e;
  e.dtype = dtype;
  e.shape = t.shape();
  const Tensor<T> c = t.contiguous();
  const int64_t n = c.numel();
  e.bytes.resize(static_cast<size_t>(n) * dtype_size(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const T v = c.data()[i];
    char* p = e.bytes.data() + i * static_cast<int64_t>(dtype_size(dtype));
    if (dtype == Dtype::F32) {
      const float f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
    } else if (dtype == Dtype::F16) {
      const uint16_t h = float_to_half(static_cast<float>(v));
      std::memcpy(p, &h, 2);
    } else if (dtype == Dtype::I64) {
      const int64_t k = static_cast<int64_t>(v);
      std::memcpy(p, &k, 8);
    } else if (dtype == Dtype::F64) {
      const double d = static_cast<double>(v);
      std::memcpy(p, &d, 8);
    } else {
      fail("safetensors: writing dtype ", dtype_name(dtype), " is not supported (use F32, F16, F64 or I64)");
    }
  }
  return e;
}

// Serialises entries as the reference writer does (dtype descending, then name), header padded to 8.
inline std::vector<char> serialize(const std::map<std::string, Entry>& tensors,
                                   const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, const Entry*>> order;
  for (const auto& [k, e] : tensors) order.emplace_back(k, &e);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    if (a.second->dtype != b.second->dtype) return static_cast<int>(a.second->dtype) > static_cast<int>(b.second->dtype);
    return a.first < b.first;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, e] : order) {
    SEGML_CHECK(e->bytes.size() == static_cast<size_t>(shape_numel(e->shape)) * dtype_size(e->dtype),
                "safetensors: entry '", name, "' has ", e->bytes.size(), " bytes for shape ", e->shape);
    header[name] = {{"dtype", dtype_name(e->dtype)}, {"shape", e->shape}, {"data_offsets", {offset, offset + e->bytes.size()}}};
    offset += e->bytes.size();
  }
  std::string h = header.dump();
  while (h.size() % 8) h.push_back(' ');
  std::vector<char> out(8 + h.size());
  const uint64_t n = h.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, h.data(), h.size());
  out.reserve(out.size() + offset);
  for (const auto& [name, e] : order) out.insert(out.end(), e->bytes.begin(), e->bytes.end());
  return out;
}

// Writes bytes to path atomically and durably: a temp file "<path>.tmp<pid>" in the same folder,
// flushed and fsynced, renamed over path, then the folder fsynced.
inline void write_file_atomic(const std::string& path, const std::vector<char>& bytes) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot open '", tmp, "' for writing");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      fail("writing '", tmp, "' failed (disk full?)");
    }
  }
  try {
    file::fsync_path(tmp);
  } catch (const Error&) {
    std::remove(tmp.c_str());
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail("cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
  file::fsync_path(file::parent_of(path));
}

inline void save(const std::string& path, const std::map<std::string, Entry>& tensors,
                 const std::map<std::string, std::string>& metadata = {}) {
  write_file_atomic(path, serialize(tensors, metadata));
}

}  // namespace segml::safetensors
