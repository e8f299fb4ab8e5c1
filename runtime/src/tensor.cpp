#include "qrnn/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "qrnn/errors.hpp"

namespace qrnn {

DType dtype_from_name(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "float16") return DType::Float16;
  if (name == "bfloat16") return DType::BFloat16;
  if (name == "int64") return DType::Int64;
  if (name == "int32") return DType::Int32;
  if (name == "bool") return DType::Bool;
  throw BundleError("unknown dtype '" + name + "' (expected float32, float16, bfloat16, int64, int32 or bool)");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::Bool: return "bool";
  }
  return "?";
}

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: return 2;
    case DType::Int64: return 8;
    case DType::Bool: return 1;
  }
  return 0;
}

// Elements of `shape` times `elem` bytes; ConfigError when a dimension is negative or the size
// does not fit (a hostile or broken manifest could otherwise wrap it into a small buffer).
static std::size_t checked_bytes(const std::vector<int64_t>& shape, std::size_t elem) {
  constexpr int64_t kMax = int64_t{1} << 48;  // 256 TiB: no real tensor, and no overflow below
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ConfigError("tensor shape has a negative dimension");
    if (d != 0 && n > kMax / d) throw ConfigError("tensor shape is too large");
    n *= d;
  }
  if (n > kMax / static_cast<int64_t>(elem)) throw ConfigError("tensor shape is too large");
  return static_cast<std::size_t>(n) * elem;
}

Tensor::Tensor(DType dtype, std::vector<int64_t> shape)
    : dtype_(dtype), shape_(std::move(shape)), data_(checked_bytes(shape_, dtype_size(dtype)), 0) {}

Tensor Tensor::from_floats(const std::vector<float>& values, std::vector<int64_t> shape) {
  Tensor t(DType::Float32, std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel()) throw ConfigError("Tensor::from_floats: size does not match the shape");
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_ids(const std::vector<int64_t>& ids, std::vector<int64_t> shape) {
  Tensor t(DType::Int64, std::move(shape));
  if (static_cast<int64_t>(ids.size()) != t.numel()) throw ConfigError("Tensor::from_ids: size does not match the shape");
  std::memcpy(t.raw(), ids.data(), t.nbytes());
  return t;
}

int64_t Tensor::numel() const { return static_cast<int64_t>(checked_bytes(shape_, 1)); }

std::vector<float> Tensor::to_floats() const {
  const int64_t n = numel();
  std::vector<float> out(static_cast<std::size_t>(n));
  switch (dtype_) {
    case DType::Float32:
      std::memcpy(out.data(), raw(), nbytes());
      break;
    case DType::Float16:
      for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(data<uint16_t>()[i]);
      break;
    case DType::BFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = bfloat16_to_float(data<uint16_t>()[i]);
      break;
    default:
      throw ConfigError(std::string("cannot read a ") + dtype_name(dtype_) + " tensor as floats");
  }
  return out;
}

std::vector<float> Tensor::row_floats(int64_t row) const {
  if (rank() == 0 || row < 0 || row >= shape_[0]) throw ConfigError("row_floats: row out of range for " + describe());
  Tensor r = take_rows(*this, {row});
  return r.to_floats();
}

std::string Tensor::describe() const {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < shape_.size(); ++i) s << (i ? ", " : "") << shape_[i];
  s << "] " << dtype_name(dtype_);
  return s.str();
}

static std::size_t row_bytes(const Tensor& t) {
  if (t.rank() == 0) throw ConfigError("cannot take rows of a scalar tensor");
  return t.shape()[0] == 0 ? 0 : t.nbytes() / static_cast<std::size_t>(t.shape()[0]);
}

Tensor concat_rows(const std::vector<const Tensor*>& parts) {
  if (parts.empty()) throw ConfigError("concat_rows: nothing to stack");
  const Tensor& first = *parts[0];
  std::vector<int64_t> shape = first.shape();
  if (shape.empty()) throw ConfigError("concat_rows: cannot stack scalars");
  int64_t rows = 0;
  for (const Tensor* p : parts) {
    if (p->dtype() != first.dtype() || p->rank() != first.rank() ||
        !std::equal(p->shape().begin() + 1, p->shape().end(), first.shape().begin() + 1))
      throw StreamError("cannot stack states " + p->describe() + " and " + first.describe() +
                        ": every stream of a batch must have the same state shapes");
    rows += p->shape()[0];
  }
  shape[0] = rows;
  Tensor out(first.dtype(), shape);
  auto* dst = static_cast<unsigned char*>(out.raw());
  for (const Tensor* p : parts) {
    std::memcpy(dst, p->raw(), p->nbytes());
    dst += p->nbytes();
  }
  return out;
}

Tensor take_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  const std::size_t rb = row_bytes(t);
  std::vector<int64_t> shape = t.shape();
  shape[0] = static_cast<int64_t>(rows.size());
  Tensor out(t.dtype(), shape);
  auto* dst = static_cast<unsigned char*>(out.raw());
  const auto* src = static_cast<const unsigned char*>(t.raw());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= t.shape()[0]) throw StreamError("row index out of range for " + t.describe());
    std::memcpy(dst + i * rb, src + static_cast<std::size_t>(rows[i]) * rb, rb);
  }
  return out;
}

Tensor repeat_row(const Tensor& t, int64_t row, int64_t n) {
  return take_rows(t, std::vector<int64_t>(static_cast<std::size_t>(n), row));
}

Tensor concat_time(const std::vector<const Tensor*>& parts) {
  if (parts.empty()) throw ConfigError("concat_time: nothing to concatenate");
  const Tensor& first = *parts[0];
  if (first.rank() < 2) throw ConfigError("concat_time: tensors need rank >= 2, got " + first.describe());
  const int64_t B = first.shape()[0];
  std::size_t inner = dtype_size(first.dtype());  // bytes of one time step of one row
  for (std::size_t i = 2; i < first.rank(); ++i) inner *= static_cast<std::size_t>(first.shape()[i]);
  int64_t T = 0;
  for (const Tensor* p : parts) {
    if (p->dtype() != first.dtype() || p->rank() != first.rank() || p->shape()[0] != B ||
        !std::equal(p->shape().begin() + 2, p->shape().end(), first.shape().begin() + 2))
      throw StreamError("concat_time: " + p->describe() + " does not fit " + first.describe());
    T += p->shape()[1];
  }
  std::vector<int64_t> shape = first.shape();
  shape[1] = T;
  Tensor out(first.dtype(), shape);
  auto* dst = static_cast<unsigned char*>(out.raw());
  for (int64_t b = 0; b < B; ++b) {
    for (const Tensor* p : parts) {
      const std::size_t n = static_cast<std::size_t>(p->shape()[1]) * inner;
      std::memcpy(dst, static_cast<const unsigned char*>(p->raw()) + static_cast<std::size_t>(b) * n, n);
      dst += n;
    }
  }
  return out;
}

Tensor pad_time(const Tensor& t, int64_t length) {
  if (t.rank() < 2 || t.shape()[1] > length) throw ConfigError("pad_time: cannot pad " + t.describe());
  std::vector<int64_t> shape = t.shape();
  shape[1] = length;
  Tensor out(t.dtype(), shape);
  const std::size_t src_row = t.shape()[0] ? t.nbytes() / t.shape()[0] : 0;
  const std::size_t dst_row = t.shape()[0] ? out.nbytes() / t.shape()[0] : 0;
  for (int64_t b = 0; b < t.shape()[0]; ++b)
    std::memcpy(static_cast<unsigned char*>(out.raw()) + b * dst_row,
                static_cast<const unsigned char*>(t.raw()) + b * src_row, src_row);
  return out;
}

// IEEE 754 binary16 <-> binary32, round to nearest even (subnormals, inf and NaN kept).
float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {
      float f = std::ldexp(static_cast<float>(man), -24);
      return sign ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0);  // inf / NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;                                  // overflow -> inf
  if (ax < 0x38800000u) {                                                         // subnormal half
    float a;
    std::memcpy(&a, &ax, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  uint32_t r = ax - 0x38000000u;  // rebias exponent
  r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  return sign | static_cast<uint16_t>(r);
}

float bfloat16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_bfloat16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace qrnn
