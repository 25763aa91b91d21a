// Tensor: a shape, a dtype, a device and a buffer that is either owned (shared between views)
// or borrowed from someone else (a ZeroMQ frame, a slice of a parameter arena). Tensors carry
// no math: every operation lives in a Backend (compute/backend.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shoal {

enum class DType : std::uint8_t { f32 = 0, i32 = 1, u8 = 2 };
std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

enum class DeviceKind : std::uint8_t { cpu = 0, cuda = 1 };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::cuda, index}; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims);
  explicit Shape(std::vector<std::int64_t> dims);

  std::size_t rank() const { return dims_.size(); }
  std::int64_t operator[](std::size_t i) const { return dims_[i]; }
  std::int64_t& operator[](std::size_t i) { return dims_[i]; }
  std::int64_t numel() const;
  const std::vector<std::int64_t>& dims() const { return dims_; }
  bool operator==(const Shape&) const = default;
  std::string str() const;  // "[64, 1, 28, 28]"

 private:
  std::vector<std::int64_t> dims_;
};

// Owns device memory and knows how to free it. The deleter may carry state (a caching
// allocator that takes the block back, compute/cuda/memory_pool.h).
class Storage {
 public:
  using Deleter = std::function<void(void*)>;
  Storage(void* data, std::size_t bytes, Deleter deleter) : data_(data), bytes_(bytes), deleter_(std::move(deleter)) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_;
  std::size_t bytes_;
  Deleter deleter_;
};

class Tensor {
 public:
  Tensor() = default;

  // A zero-filled CPU tensor, 64-byte aligned. Device tensors come from Backend::allocate.
  static Tensor zeros(Shape shape, DType dtype = DType::f32);
  static Tensor from_storage(std::shared_ptr<Storage> storage, Shape shape, DType dtype, Device device);
  // A view of memory the caller keeps alive for as long as the tensor is used.
  static Tensor borrow(void* data, Shape shape, DType dtype, Device device = Device::cpu());

  bool defined() const { return data_ != nullptr || shape_.numel() == 0; }
  const Shape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  std::int64_t numel() const { return shape_.numel(); }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  bool is_cpu() const { return device_.kind == DeviceKind::cpu; }

  void* raw() const { return data_; }
  // What keeps the bytes alive (null for a borrowed tensor): a zero-copy frame holds it so
  // the bytes outlive the tensor until ZeroMQ has sent them.
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  template <typename T>
  T* data() const;  // checks the dtype

  // The same bytes under another shape with the same number of elements.
  Tensor reshaped(Shape shape) const;
  // Elements [offset, offset + count) of the flattened tensor, as a 1-D view.
  Tensor flat_slice(std::int64_t offset, std::int64_t count) const;

  std::string describe() const;  // "f32[64, 10] on cpu"

 private:
  std::shared_ptr<Storage> storage_;  // null for borrowed tensors
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_;
};

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct DTypeOf<std::int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct DTypeOf<std::uint8_t> {
  static constexpr DType value = DType::u8;
};

void check_dtype(const Tensor& t, DType expected);

template <typename T>
T* Tensor::data() const {
  check_dtype(*this, DTypeOf<T>::value);
  return static_cast<T*>(data_);
}

}  // namespace shoal
