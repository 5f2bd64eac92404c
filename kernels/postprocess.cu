// CUDA post-processing: per-pixel class decision on the device, so a segmentation engine's logits
// need not cross PCIe (K x H x W floats) when only the uint8 mask is wanted. The rule is
// pm::argmax_class from postprocess_math.cuh, shared with cpp/postprocess.cpp.
#include <cuda_runtime.h>

#include "cuda_check.cuh"
#include "postprocess_launch.hpp"
#include "postprocess_math.cuh"

namespace slicert {
namespace {

template <typename T>
__global__ void argmax_kernel(const T* logits, int K, int64_t plane, uint8_t* mask) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < plane) mask[i] = pm::argmax_class(logits + i, K, plane);
}

}  // namespace

void launch_argmax_mask(const void* logits, bool half_logits, int K, int64_t H, int64_t W, uint8_t* mask,
                        cudaStream_t stream) {
  const int64_t plane = H * W;
  const int block = 256;
  const unsigned grid = static_cast<unsigned>((plane + block - 1) / block);
  if (half_logits)
    argmax_kernel<<<grid, block, 0, stream>>>(static_cast<const uint16_t*>(logits), K, plane, mask);
  else
    argmax_kernel<<<grid, block, 0, stream>>>(static_cast<const float*>(logits), K, plane, mask);
  SLICERT_CUDA_CHECK_LAUNCH();
}

}  // namespace slicert
