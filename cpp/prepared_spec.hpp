// PreparedSpec: an engine.spec.PreprocessSpec parsed once into the plain structs of
// kernels/preprocess_math.cuh, plus lazily built per-dtype lookup tables. engine/preprocess.py
// caches one per spec object, so the per-call cost is a dictionary lookup.
#pragma once
#include <pybind11/pybind11.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "preprocess_math.cuh"

namespace slicert {

struct PreparedSpec {
  explicit PreparedSpec(const pybind11::object& spec);

  // Stored value -> displayed value for every possible value of an integer dtype of <= 16 bits
  // (modality LUT + VOI + inversion folded into one table, PS3.3 C.11). Index: u8/u16 value, or
  // int16 value + 32768. Built once per dtype with displayed(), the function the CUDA kernel uses.
  const std::vector<float>& folded_lut(int in_dtype) const;

  pm::PixelParams pixel_params() const;  // pointers into the host tables below

  // Set when the chain is a clamped affine map (pm::affine_chain): every path (SIMD rows, folded
  // tables, the CUDA kernel) then evaluates pm::affine_value, so they all agree to the bit.
  bool use_affine = false;
  pm::Affine affine{};

  // Stored value -> displayed value, the one definition every path uses.
  float displayed(float stored) const {
    return use_affine ? pm::affine_value(stored, affine) : pm::pixel_value(stored, pixel_params());
  }

  int out_h = 0, out_w = 0;
  int in_channels = 1, out_channels = 1;
  bool nhwc = false;
  bool has_roi = false;
  int roi_y0 = 0, roi_x0 = 0, roi_h = 0, roi_w = 0;
  int resize = pm::RESIZE_AREA;
  bool letterbox = false;
  float pad_value = 0.0f;
  bool equalize = false;
  pm::OutputParams output{};

  float rescale_slope = 1.0f, rescale_intercept = 0.0f;
  std::vector<float> modality_lut;
  int modality_lut_first = 0;
  int voi = pm::VOI_NONE;
  float window_center = 0.0f, window_width = 1.0f;
  std::vector<float> voi_lut;
  int voi_lut_first = 0;
  float voi_lut_max = 65535.0f;
  float out_min = 0.0f, out_max = 1.0f;
  bool invert = false;

  // Device copies of the LUT tables, one entry per CUDA device, owned by cpp/cuda_resources.cpp
  // (type-erased so that this header needs no CUDA).
  mutable std::mutex device_mutex;
  mutable std::map<int, std::shared_ptr<void>> device_tables;

 private:
  mutable std::array<std::once_flag, 3> lut_once_;
  mutable std::array<std::vector<float>, 3> luts_;
};

// Output element size in bytes for pm::OutDType.
inline int out_itemsize(int out_dtype) { return out_dtype == pm::OUT_F32 ? 4 : (out_dtype == pm::OUT_F16 ? 2 : 1); }

}  // namespace slicert
