#include "compute/tensor.h"

#include <gtest/gtest.h>

#include "base/error.h"

namespace shoal {
namespace {

TEST(Tensor, ZerosViewsAndSlices) {
  Tensor t = Tensor::zeros(Shape{2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.bytes(), 96u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.raw()) % 64, 0u) << "64-byte aligned";
  for (int i = 0; i < 24; ++i) t.data<float>()[i] = static_cast<float>(i);
  Tensor v = t.reshaped(Shape{6, 4});
  EXPECT_EQ(v.raw(), t.raw());
  Tensor s = t.flat_slice(10, 5);
  EXPECT_EQ(s.shape(), Shape{5});
  EXPECT_EQ(s.data<float>()[0], 10.f);
  EXPECT_THROW(t.reshaped(Shape{5, 5}), InternalError);
  EXPECT_THROW(t.flat_slice(20, 5), InternalError);
  EXPECT_THROW(t.data<std::int32_t>(), InternalError) << "dtype is checked";
  EXPECT_EQ(t.describe(), "f32[2, 3, 4] on cpu");
}

TEST(Tensor, ViewsKeepStorageAlive) {
  Tensor slice;
  {
    Tensor t = Tensor::zeros(Shape{100});
    t.data<float>()[50] = 7.f;
    slice = t.flat_slice(50, 10);
  }
  EXPECT_EQ(slice.data<float>()[0], 7.f);
}

TEST(Tensor, BorrowedMemory) {
  float buffer[4] = {1, 2, 3, 4};
  Tensor t = Tensor::borrow(buffer, Shape{2, 2}, DType::f32);
  EXPECT_EQ(t.data<float>()[3], 4.f);
}

}  // namespace
}  // namespace shoal
