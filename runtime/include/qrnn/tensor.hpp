// A small owning host tensor: dtype + shape + contiguous row-major bytes. Graph inputs and
// outputs are batch-first ([B, ...], DESIGN.md section 3), so batching streams is stacking and
// splitting along axis 0, which for contiguous storage is concatenating and cutting byte ranges.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qrnn {

enum class DType { Float32, Float16, BFloat16, Int64, Int32, Bool };

// "float32" -> DType::Float32 etc. (the manifest's dtype names); throws BundleError on others.
DType dtype_from_name(const std::string& name);
const char* dtype_name(DType t);
std::size_t dtype_size(DType t);

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, std::vector<int64_t> shape);  // zero-filled

  static Tensor from_floats(const std::vector<float>& values, std::vector<int64_t> shape);
  static Tensor from_ids(const std::vector<int64_t>& ids, std::vector<int64_t> shape);

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(std::size_t i) const { return shape_.at(i); }
  std::size_t rank() const { return shape_.size(); }
  int64_t numel() const;
  std::size_t nbytes() const { return data_.size(); }
  bool empty() const { return data_.empty(); }

  void* raw() { return data_.data(); }
  const void* raw() const { return data_.data(); }
  template <class T>
  T* data() { return reinterpret_cast<T*>(data_.data()); }
  template <class T>
  const T* data() const { return reinterpret_cast<const T*>(data_.data()); }

  // Values as float32 (float32, float16 and bfloat16 tensors); throws ConfigError otherwise.
  std::vector<float> to_floats() const;
  // One row along axis 0 as float32: [shape[1:]] flattened.
  std::vector<float> row_floats(int64_t row) const;

  // "[1, 7, 32] float32", for error messages.
  std::string describe() const;

 private:
  DType dtype_ = DType::Float32;
  std::vector<int64_t> shape_;
  std::vector<unsigned char> data_;
};

// Stacks tensors of shapes [b_i, rest...] (same rest, same dtype) into [sum b_i, rest...].
Tensor concat_rows(const std::vector<const Tensor*>& parts);
// Rows `rows` (indices along axis 0, repeats allowed) of t: [rows.size(), rest...].
Tensor take_rows(const Tensor& t, const std::vector<int64_t>& rows);
// Row `row` repeated `n` times: [n, rest...].
Tensor repeat_row(const Tensor& t, int64_t row, int64_t n);
// Concatenates [B, T_i, rest...] tensors along axis 1 (e.g. encoder memory chunk by chunk).
Tensor concat_time(const std::vector<const Tensor*>& parts);
// Pads [1, S, rest...] to [1, S_max, rest...] with zeros along axis 1.
Tensor pad_time(const Tensor& t, int64_t length);

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bfloat16_to_float(uint16_t b);
uint16_t float_to_bfloat16(float f);

}  // namespace qrnn
