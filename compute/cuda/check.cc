#include "compute/cuda/check.h"

#include <cstdio>
#include <string>

#include "base/error.h"

namespace shoal::cuda {
namespace {

std::string failure(const char* call, const char* text, int code) {
  return std::string(call) + " failed: " + text + " (" + std::to_string(code) + ")";
}

void warn(const char* call, const char* text, int code) noexcept {
  std::fprintf(stderr, "shoal: %s failed during teardown: %s (%d)\n", call, text, code);
}

}  // namespace

void throw_cuda_error(cudaError_t status, const char* call) {
  throw DeviceError(failure(call, (std::string(cudaGetErrorName(status)) + ", " + cudaGetErrorString(status)).c_str(),
                            static_cast<int>(status)));
}

void throw_cudnn_error(cudnnStatus_t status, const char* call) {
  throw DeviceError(failure(call, cudnnGetErrorString(status), static_cast<int>(status)));
}

void throw_cublas_error(cublasStatus_t status, const char* call) {
  throw DeviceError(failure(call, cublasGetStatusString(status), static_cast<int>(status)));
}

void throw_nccl_error(ncclResult_t status, const char* call) {
  throw DeviceError(failure(call, ncclGetErrorString(status), static_cast<int>(status)));
}

bool warn_cuda(cudaError_t status, const char* call) noexcept {
  if (status == cudaSuccess) return true;
  if (status != cudaErrorCudartUnloading) warn(call, cudaGetErrorString(status), static_cast<int>(status));
  return false;
}

bool warn_cudnn(cudnnStatus_t status, const char* call) noexcept {
  if (status == CUDNN_STATUS_SUCCESS) return true;
  warn(call, cudnnGetErrorString(status), static_cast<int>(status));
  return false;
}

bool warn_cublas(cublasStatus_t status, const char* call) noexcept {
  if (status == CUBLAS_STATUS_SUCCESS) return true;
  warn(call, cublasGetStatusString(status), static_cast<int>(status));
  return false;
}

}  // namespace shoal::cuda
