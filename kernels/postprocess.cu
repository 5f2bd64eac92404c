// CUDA post-processing: per-pixel class decision on the device, so a segmentation engine's logits
// need not cross PCIe (K x H x W floats) when only the uint8 mask is wanted. The rule is
// pm::argmax_class_checked from postprocess_math.cuh, shared with cpp/postprocess.cpp; the same pass
// raises a device flag when any logit is NaN/Inf, so the host can refuse the slice without the logits.
#include <cuda_runtime.h>

#include "cuda_check.cuh"
#include "postprocess_launch.hpp"
#include "postprocess_math.cuh"

namespace slicert {
namespace {

template <typename T>
__global__ void argmax_kernel(const T* logits, int K, int64_t plane, uint8_t* mask, uint8_t* nonfinite) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= plane) return;
  bool bad = false;
  mask[i] = pm::argmax_class_checked(logits + i, K, plane, &bad);
  // Every writer stores the same value, so the unordered stores need no atomic.
  if (bad && nonfinite) *nonfinite = 1;
}

}  // namespace

void launch_argmax_mask(const void* logits, bool half_logits, int K, int64_t H, int64_t W, uint8_t* mask,
                        uint8_t* nonfinite, cudaStream_t stream) {
  const int64_t plane = H * W;
  const int block = 256;
  const unsigned grid = static_cast<unsigned>((plane + block - 1) / block);
  // Cleared on the same stream first: stream order puts it before the kernel, also inside a graph.
  if (nonfinite) SLICERT_CUDA_CHECK(cudaMemsetAsync(nonfinite, 0, 1, stream));
  if (half_logits)
    argmax_kernel<<<grid, block, 0, stream>>>(static_cast<const uint16_t*>(logits), K, plane, mask, nonfinite);
  else
    argmax_kernel<<<grid, block, 0, stream>>>(static_cast<const float*>(logits), K, plane, mask, nonfinite);
  SLICERT_CUDA_CHECK_LAUNCH();
}

}  // namespace slicert
