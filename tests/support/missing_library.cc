// A stand-in for a CUDA library (cuDNN, say) that a host lacks: the broken CUDA module of
// tests/devices/cuda_module_test.cc needs it, and the test leaves it behind.
extern "C" int shoal_test_stand_in_library() { return 1; }
