// Every CUDA runtime call and kernel launch goes through these macros: a failure becomes a
// slicert::CudaError carrying the error name, device, file and line (never an abort).
#pragma once
#include <cuda_runtime_api.h>

#include <string>

#include "errors.hpp"

namespace slicert {

inline void cuda_check(cudaError_t status, const char* expr, const char* file, int line) {
  if (status == cudaSuccess) return;
  int device = -1;
  cudaGetDevice(&device);  // best effort: may itself fail when no driver is present
  cudaGetLastError();      // clear the sticky error state for non-fatal errors
  throw CudaError(std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ") in " + expr,
                  static_cast<int>(status), device, file, line);
}

}  // namespace slicert

#define SLICERT_CUDA_CHECK(expr) ::slicert::cuda_check((expr), #expr, __FILE__, __LINE__)
// After a <<<...>>> launch: catches bad configurations at once; execution errors surface on sync.
#define SLICERT_CUDA_CHECK_LAUNCH() ::slicert::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
