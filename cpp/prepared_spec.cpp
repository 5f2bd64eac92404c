#include "prepared_spec.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>

#include "errors.hpp"

namespace py = pybind11;

namespace slicert {
namespace {

// The Python spec validates itself; these re-checks guard the native math against a spec mutated
// after validation (e.g. via object.__setattr__) and against float32 overflow of finite doubles.
float finite_float(const py::object& spec, const char* name) {
  const double v = py::cast<double>(spec.attr(name));
  const float f = static_cast<float>(v);
  if (!std::isfinite(v) || !std::isfinite(f))
    throw InputError(std::string("PreprocessSpec.") + name + ": must be a finite float32 number, got " +
                     std::to_string(v));
  return f;
}

int choice(const py::object& spec, const char* name, std::initializer_list<const char*> allowed) {
  const std::string v = py::cast<std::string>(spec.attr(name));
  int i = 0;
  for (const char* a : allowed) {
    if (v == a) return i;
    ++i;
  }
  throw InputError(std::string("PreprocessSpec.") + name + ": unsupported value '" + v + "'");
}

std::vector<float> table(const py::object& spec, const char* name) {
  py::object t = spec.attr(name);
  if (t.is_none()) return {};
  auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(t);
  if (!arr || arr.ndim() != 1 || arr.size() == 0)
    throw InputError(std::string("PreprocessSpec.") + name + ": expected a non-empty 1-D table");
  std::vector<float> out(arr.data(), arr.data() + arr.size());
  for (float v : out)
    if (!std::isfinite(v)) throw InputError(std::string("PreprocessSpec.") + name + ": table contains NaN or Inf");
  return out;
}

}  // namespace

PreparedSpec::PreparedSpec(const py::object& spec) {
  out_h = py::cast<int>(spec.attr("out_height"));
  out_w = py::cast<int>(spec.attr("out_width"));
  if (out_h < 1 || out_w < 1 || out_h > 8192 || out_w > 8192)
    throw InputError("PreprocessSpec: out_height/out_width must be in [1, 8192]");
  in_channels = py::cast<int>(spec.attr("in_channels"));
  out_channels = py::cast<int>(spec.attr("out_channels"));
  if ((in_channels != 1 && in_channels != 3) || (out_channels != 1 && out_channels != 3))
    throw InputError("PreprocessSpec: in_channels/out_channels must be 1 or 3");
  nhwc = choice(spec, "layout", {"NCHW", "NHWC"}) == 1;
  output.out_dtype = choice(spec, "out_dtype", {"float32", "float16", "int8"});
  output.quant_scale = finite_float(spec, "quant_scale");
  output.quant_zero_point = py::cast<int>(spec.attr("quant_zero_point"));
  if (!(output.quant_scale > 0.0f)) throw InputError("PreprocessSpec.quant_scale: must be > 0");
  if (output.quant_zero_point < -128 || output.quant_zero_point > 127)
    throw InputError("PreprocessSpec.quant_zero_point: must be in [-128, 127]");

  rescale_slope = finite_float(spec, "rescale_slope");
  rescale_intercept = finite_float(spec, "rescale_intercept");
  if (rescale_slope == 0.0f) throw InputError("PreprocessSpec.rescale_slope: must be non-zero");
  modality_lut = table(spec, "modality_lut");
  modality_lut_first = py::cast<int>(spec.attr("modality_lut_first_mapped"));
  voi = choice(spec, "voi_function", {"none", "linear", "linear_exact", "sigmoid", "lut"});
  window_center = finite_float(spec, "window_center");
  window_width = finite_float(spec, "window_width");
  if ((voi == pm::VOI_LINEAR || voi == pm::VOI_SIGMOID) && !(window_width >= 1.0f))
    throw InputError("PreprocessSpec.window_width: must be >= 1 for LINEAR/SIGMOID (PS3.3 C.11.2.1.2.1), got " +
                     std::to_string(window_width));
  if (voi == pm::VOI_LINEAR_EXACT && !(window_width > 0.0f))
    throw InputError("PreprocessSpec.window_width: must be > 0 for LINEAR_EXACT");
  voi_lut = table(spec, "voi_lut");
  voi_lut_first = py::cast<int>(spec.attr("voi_lut_first_mapped"));
  const int bits = py::cast<int>(spec.attr("voi_lut_bits"));
  if (bits < 1 || bits > 16) throw InputError("PreprocessSpec.voi_lut_bits: must be in [1, 16]");
  voi_lut_max = static_cast<float>((1 << bits) - 1);
  if (voi == pm::VOI_LUT && voi_lut.empty()) throw InputError("PreprocessSpec.voi_lut: voi_function='lut' needs a table");
  out_min = finite_float(spec, "output_min");
  out_max = finite_float(spec, "output_max");
  if (!(out_max > out_min)) throw InputError("PreprocessSpec.output_max: must exceed output_min");
  invert = py::cast<bool>(spec.attr("invert"));

  py::object roi = spec.attr("roi");
  if (!roi.is_none()) {
    auto r = py::cast<std::vector<long long>>(roi);
    if (r.size() != 4 || r[0] < 0 || r[1] < 0 || r[2] < 1 || r[3] < 1 || r[0] > INT32_MAX || r[1] > INT32_MAX ||
        r[2] > INT32_MAX || r[3] > INT32_MAX)
      throw InputError("PreprocessSpec.roi: must be (y0 >= 0, x0 >= 0, height >= 1, width >= 1)");
    has_roi = true;
    roi_y0 = static_cast<int>(r[0]);
    roi_x0 = static_cast<int>(r[1]);
    roi_h = static_cast<int>(r[2]);
    roi_w = static_cast<int>(r[3]);
  }
  resize = choice(spec, "resize", {"nearest", "bilinear", "area"});
  letterbox = py::cast<bool>(spec.attr("letterbox"));
  pad_value = finite_float(spec, "pad_value");
  output.normalize = choice(spec, "normalize", {"none", "fixed", "zscore", "minmax"});
  auto mean = py::cast<std::vector<double>>(spec.attr("mean"));
  auto stdv = py::cast<std::vector<double>>(spec.attr("std"));
  for (int c = 0; c < 3; ++c) {
    output.mean[c] = 0.0f;
    output.std[c] = 1.0f;
  }
  if (output.normalize == pm::NORM_FIXED) {
    if ((mean.size() != 1 && mean.size() != static_cast<size_t>(out_channels)) ||
        (stdv.size() != 1 && stdv.size() != static_cast<size_t>(out_channels)))
      throw InputError("PreprocessSpec.mean/std: need 1 or out_channels values");
    for (int c = 0; c < out_channels; ++c) {
      const double m = mean[mean.size() == 1 ? 0 : c], s = stdv[stdv.size() == 1 ? 0 : c];
      if (!std::isfinite(m) || !std::isfinite(s) || !(s > 0))
        throw InputError("PreprocessSpec.mean/std: must be finite with std > 0");
      output.mean[c] = static_cast<float>(m);
      output.std[c] = static_cast<float>(s);
    }
  }
  equalize = py::cast<bool>(spec.attr("equalize"));
  use_affine = pm::affine_chain(pixel_params(), &affine) != 0;
  if (equalize && in_channels == 3 && out_channels == 3)
    throw InputError("PreprocessSpec.equalize: histogram equalization works on one grey channel; "
                     "use out_channels=1 for RGB input");
}

pm::PixelParams PreparedSpec::pixel_params() const {
  pm::PixelParams p{};
  p.rescale_slope = rescale_slope;
  p.rescale_intercept = rescale_intercept;
  p.modality_lut = modality_lut.empty() ? nullptr : modality_lut.data();
  p.modality_lut_size = static_cast<int>(modality_lut.size());
  p.modality_lut_first = modality_lut_first;
  p.voi = voi;
  p.window_center = window_center;
  p.window_width = window_width;
  p.voi_lut = voi_lut.empty() ? nullptr : voi_lut.data();
  p.voi_lut_size = static_cast<int>(voi_lut.size());
  p.voi_lut_first = voi_lut_first;
  p.voi_lut_max = voi_lut_max;
  p.out_min = out_min;
  p.out_max = out_max;
  p.invert = invert ? 1 : 0;
  return p;
}

const std::vector<float>& PreparedSpec::folded_lut(int in_dtype) const {
  if (in_dtype != pm::IN_U8 && in_dtype != pm::IN_U16 && in_dtype != pm::IN_I16)
    throw InputError("folded_lut: only 8/16-bit integer inputs have a folded table");
  std::call_once(lut_once_[in_dtype], [&] {
    const int n = in_dtype == pm::IN_U8 ? 256 : 65536;
    const int offset = in_dtype == pm::IN_I16 ? -32768 : 0;
    std::vector<float> lut(n);
    for (int i = 0; i < n; ++i) lut[i] = displayed(static_cast<float>(i + offset));
    luts_[in_dtype] = std::move(lut);
  });
  return luts_[in_dtype];
}

}  // namespace slicert
