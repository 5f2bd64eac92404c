// Host-side interface of the CUDA post-processing kernels (kernels/postprocess.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace slicert {

// Class mask of (K, H, W) logits (float32, or float16 when half_logits) into a uint8 (H, W) mask,
// enqueued on `stream`. Same per-pixel rule as the CPU path (pm::argmax_class_checked). When
// `nonfinite` is not null, that one device byte is set to 0 and then to 1 if any logit is NaN/Inf.
void launch_argmax_mask(const void* logits, bool half_logits, int K, int64_t H, int64_t W, uint8_t* mask,
                        uint8_t* nonfinite, cudaStream_t stream);

}  // namespace slicert
