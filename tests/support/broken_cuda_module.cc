// A CUDA module that cannot be loaded because a library it needs is missing, as
// libshoal_cuda.so is on a host without cuDNN (tests/devices/cuda_module_test.cc).
extern "C" int shoal_test_stand_in_library();
extern "C" __attribute__((visibility("default"))) const void* shoal_cuda_module_v1() {
  return shoal_test_stand_in_library() != 0 ? nullptr : nullptr;
}
