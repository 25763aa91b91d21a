#include "compute/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "base/error.h"

namespace shoal {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return 4;
    case DType::i32:
      return 4;
    case DType::u8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "f32";
    case DType::i32:
      return "i32";
    case DType::u8:
      return "u8";
  }
  return "?";
}

std::string Device::str() const {
  return kind == DeviceKind::cpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Shape::Shape(std::initializer_list<std::int64_t> dims) : dims_(dims) {}
Shape::Shape(std::vector<std::int64_t> dims) : dims_(std::move(dims)) {}

std::int64_t Shape::numel() const {
  std::int64_t n = 1;
  for (auto d : dims_) n *= d;
  return n;
}

std::string Shape::str() const {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < dims_.size(); ++i) out << (i ? ", " : "") << dims_[i];
  out << ']';
  return out.str();
}

Storage::~Storage() {
  if (deleter_ != nullptr) deleter_(data_);
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
  for (auto d : shape.dims()) SHOAL_ASSERT(d >= 0, "negative dimension in " << shape.str());
  std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
  std::size_t rounded = (bytes + 63) / 64 * 64;
  void* data = rounded == 0 ? nullptr : std::aligned_alloc(64, rounded);
  if (rounded != 0 && data == nullptr) throw std::bad_alloc();
  if (rounded != 0) std::memset(data, 0, rounded);
  auto storage = std::make_shared<Storage>(data, bytes, [](void* p) { std::free(p); });
  return from_storage(std::move(storage), std::move(shape), dtype, Device::cpu());
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, Shape shape, DType dtype, Device device) {
  SHOAL_ASSERT(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype) <= storage->bytes(),
               "storage too small for " << shape.str());
  Tensor t;
  t.data_ = storage->data();
  t.storage_ = std::move(storage);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::borrow(void* data, Shape shape, DType dtype, Device device) {
  Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::reshaped(Shape shape) const {
  SHOAL_ASSERT(shape.numel() == numel(), "cannot view " << shape_.str() << " as " << shape.str());
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::flat_slice(std::int64_t offset, std::int64_t count) const {
  SHOAL_ASSERT(offset >= 0 && count >= 0 && offset + count <= numel(),
               "slice [" << offset << ", " << offset + count << ") out of " << numel() << " elements");
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + static_cast<std::size_t>(offset) * dtype_size(dtype_);
  t.shape_ = Shape{count};
  return t;
}

std::string Tensor::describe() const { return std::string(dtype_name(dtype_)) + shape_.str() + " on " + device_.str(); }

void check_dtype(const Tensor& t, DType expected) {
  SHOAL_ASSERT(t.dtype() == expected, "tensor " << t.describe() << " accessed as " << dtype_name(expected));
}

}  // namespace shoal
