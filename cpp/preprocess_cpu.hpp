// Entry points of the CPU preprocessing kernel shared by the Python bindings and the CUDA
// resource code (which reuses the validation and geometry).
#pragma once
#include <cstdint>

#include "preprocess_math.cuh"
#include "prepared_spec.hpp"

namespace slicert {

// A validated view of the source pixels: pointer to element (0, 0, channel 0) and byte strides
// (any sign). channels: 1 (grey 2-D) or 3 (interleaved RGB, sc = stride between R, G and B).
struct SourceImage {
  const char* base;
  int64_t h, w;
  int64_t sy, sx, sc;
  int dtype;  // pm::InDType
  int channels;
};

// ROI (checked against the image) and letterbox placement for an image of src_h x src_w pixels.
pm::Geometry resolve_geometry(const PreparedSpec& ps, int64_t src_h, int64_t src_w);

// Writes batch slot `out_slot` (C-contiguous, spec layout and dtype). Caller releases the GIL.
void preprocess_cpu(const PreparedSpec& ps, const SourceImage& img, char* out_slot);

}  // namespace slicert
