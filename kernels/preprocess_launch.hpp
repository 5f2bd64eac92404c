// Host-side interface of the CUDA preprocessing kernel (kernels/preprocess.cu), in plain C++ so
// that cpp/cuda_resources.cpp (host compiler) can call it. Only built with SLICERT_WITH_CUDA.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "preprocess_math.cuh"

namespace slicert {

struct CudaPreprocessArgs {
  const char* src;         // device pointer to the ROI origin (row roi_y0, column roi_x0, channel 0)
  int64_t sy, sx, sc;      // byte strides
  int in_dtype;            // pm::InDType
  int in_channels;         // 1 or 3
  int cw;                  // working channels: 1 (grey / luma) or 3 (RGB kept)
  pm::PixelParams pixel;   // table pointers are device pointers
  int use_affine;          // the chain is pm::affine_value(x, affine) (same choice as the CPU path)
  pm::Affine affine;
  pm::Geometry geo;
  pm::AxisMap ay, ax;
  pm::OutputParams output;
  int out_channels;
  int nhwc;
  float pad_value;
  int equalize;
  char* out_slot;          // device pointer to batch slot b
};

// Enqueues the whole pipeline on `stream` (statistics passes included; scratch comes from the
// stream-ordered allocator, so it is graph-capturable). When `nonfinite_at` is non-null (float32
// input), a finite-value scan runs first and the call synchronizes the stream to read its result:
// *nonfinite_at = -1, or row * 2^32 + column of the first NaN/Inf in the ROI.
void launch_preprocess(const CudaPreprocessArgs& args, cudaStream_t stream, long long* nonfinite_at);

}  // namespace slicert
