// Error checks for every CUDA runtime, cuDNN, cuBLAS and NCCL call in the CUDA backend. A
// failed call throws shoal::DeviceError naming the call, the numeric status and the library's
// own text, so "cudnnConvolutionForward(...) failed: CUDNN_STATUS_BAD_PARAM (3)" reaches the
// job's one-line error instead of a bare code. Destructors, which must not throw, use the
// warn_* forms instead: they report on stderr and carry on.
//
// C++17: included by the kernels (nvcc) as well as by the host code.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

namespace shoal::cuda {

// Throw DeviceError("<call> failed: <text> (<code>)").
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call);
[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* call);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call);
[[noreturn]] void throw_nccl_error(ncclResult_t status, const char* call);

inline void check_cuda(cudaError_t status, const char* call) {
  if (__builtin_expect(status != cudaSuccess, 0)) throw_cuda_error(status, call);
}
inline void check_cudnn(cudnnStatus_t status, const char* call) {
  if (__builtin_expect(status != CUDNN_STATUS_SUCCESS, 0)) throw_cudnn_error(status, call);
}
inline void check_cublas(cublasStatus_t status, const char* call) {
  if (__builtin_expect(status != CUBLAS_STATUS_SUCCESS, 0)) throw_cublas_error(status, call);
}
inline void check_nccl(ncclResult_t status, const char* call) {
  if (__builtin_expect(status != ncclSuccess, 0)) throw_nccl_error(status, call);
}

// For destructors: a failure is written to stderr; a runtime already unloaded at process exit
// (cudaErrorCudartUnloading) is expected there and stays silent. True when the call succeeded.
bool warn_cuda(cudaError_t status, const char* call) noexcept;
bool warn_cudnn(cudnnStatus_t status, const char* call) noexcept;
bool warn_cublas(cublasStatus_t status, const char* call) noexcept;

}  // namespace shoal::cuda

#define SHOAL_CUDA_CHECK(expr) ::shoal::cuda::check_cuda((expr), #expr)
#define SHOAL_CUDNN_CHECK(expr) ::shoal::cuda::check_cudnn((expr), #expr)
#define SHOAL_CUBLAS_CHECK(expr) ::shoal::cuda::check_cublas((expr), #expr)
#define SHOAL_NCCL_CHECK(expr) ::shoal::cuda::check_nccl((expr), #expr)
#define SHOAL_CUDA_WARN(expr) ::shoal::cuda::warn_cuda((expr), #expr)
#define SHOAL_CUDNN_WARN(expr) ::shoal::cuda::warn_cudnn((expr), #expr)
#define SHOAL_CUBLAS_WARN(expr) ::shoal::cuda::warn_cublas((expr), #expr)
