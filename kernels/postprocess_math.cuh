// Per-pixel post-processing shared by cpp/postprocess.cpp (host) and kernels/postprocess.cu
// (device): class decision from logits and the output-to-source nearest-neighbour mapping.
#pragma once

#include <cstdint>

#include "preprocess_math.cuh"

namespace slicert {
namespace pm {

// IEEE binary16 bits -> float (exact), for FP16 logits from a reduced-precision engine.
SLICERT_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);  // Inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

SLICERT_HD float logit_value(float v) { return v; }
SLICERT_HD float logit_value(uint16_t half_bits) { return half_to_float(half_bits); }

// Whether logit v of a later class replaces the best so far: strictly greater (ties keep the lower
// class, as numpy.argmax), and any number beats a NaN.
SLICERT_HD bool argmax_takes(float v, float best_v) { return v > best_v || (best_v != best_v && v == v); }

// Non-finite (NaN/Inf) logits have all exponent bits set.
SLICERT_HD uint32_t exponent_bits(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits & 0x7f800000u;
}
SLICERT_HD uint32_t exponent_bits(uint16_t half_bits) {
  return (half_bits & 0x7c00u) == 0x7c00u ? 0x7f800000u : 0u;  // binary16 Inf/NaN, as float's
}

// Class of one pixel from K logit planes (plane stride `plane` elements), and whether any of its K
// logits is NaN or +-Inf (`*nonfinite` set to true then; never cleared). K == 1 is a binary (sigmoid)
// head: foreground where the logit is > 0, i.e. sigmoid > 0.5. Ties go to the lower class, as
// numpy.argmax does; a NaN logit never wins. This is the CUDA kernel's per-pixel rule; the CPU path
// applies the same argmax_takes / exponent_bits block by block so its loops vectorize.
template <typename T>
SLICERT_HD uint8_t argmax_class_checked(const T* logits, int K, int64_t plane, bool* nonfinite) {
  uint32_t exp_max = exponent_bits(logits[0]);
  int best = 0;
  float best_v = logit_value(logits[0]);
  for (int k = 1; k < K; ++k) {
    const T raw = logits[k * plane];
    const float v = logit_value(raw);
    const uint32_t e = exponent_bits(raw);
    exp_max = e > exp_max ? e : exp_max;
    if (argmax_takes(v, best_v)) {
      best_v = v;
      best = k;
    }
  }
  if (exp_max == 0x7f800000u) *nonfinite = true;
  if (K == 1) return best_v > 0.0f ? 1 : 0;
  return static_cast<uint8_t>(best);
}

template <typename T>
SLICERT_HD uint8_t argmax_class(const T* logits, int K, int64_t plane) {
  bool ignored = false;
  return argmax_class_checked(logits, K, plane, &ignored);
}

// Source pixel index (row or column, relative to the ROI) -> mask index along one axis: nearest
// from the ROI back to the letterboxed content (as cv2.resize INTER_NEAREST does), then from the
// output plane to the mask (which may have another resolution than the model input).
SLICERT_HD int source_to_mask(int r, int roi_len, int content_off, int content_len, int out_len, int mask_len) {
  const AxisMap back = make_axis(content_len, roi_len, AX_NEAREST);
  const int c = taps2(back, r).s0;
  const AxisMap to_mask = make_axis(mask_len, out_len, AX_NEAREST);  // mask upsampled to the output grid
  return taps2(to_mask, content_off + c).s0;
}

}  // namespace pm
}  // namespace slicert
