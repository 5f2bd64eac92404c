#include "prepared_spec.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>

#include "errors.hpp"

namespace py = pybind11;

namespace slicert {
namespace {

// Reads one spec field as T; a wrong type or an out-of-range integer (pybind11 cast_error) becomes an
// InputError naming the field instead of a bare RuntimeError.
template <typename T>
T field(const py::object& spec, const char* name, const char* what) {
  py::object value = spec.attr(name);
  try {
    return py::cast<T>(value);
  } catch (const py::cast_error&) {
  } catch (py::error_already_set&) {
  }
  std::string shown = py::repr(value).cast<std::string>();
  if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
  throw InputError(std::string("PreprocessSpec.") + name + ": expected " + what + ", got " + shown);
}

// Strict bool: pybind11's converting caster would read None or 0/1 as a flag.
bool flag(const py::object& spec, const char* name) {
  py::object value = spec.attr(name);
  if (py::isinstance<py::bool_>(value)) return value.cast<bool>();
  const std::string type = py::str(py::type::of(value).attr("__name__")).cast<std::string>();
  if (type == "bool_") return py::bool_(value).cast<bool>();  // numpy.bool_
  throw InputError(std::string("PreprocessSpec.") + name + ": expected true or false, got " +
                   py::repr(value).cast<std::string>().substr(0, 80));
}

// The Python spec validates itself; these re-checks guard the native math against a spec mutated
// after validation (e.g. via object.__setattr__) and against float32 overflow of finite doubles.
float finite_float(const py::object& spec, const char* name) {
  const double v = field<double>(spec, name, "a number");
  const float f = static_cast<float>(v);
  if (!std::isfinite(v) || !std::isfinite(f))
    throw InputError(std::string("PreprocessSpec.") + name + ": must be a finite float32 number, got " +
                     std::to_string(v));
  return f;
}

int choice(const py::object& spec, const char* name, std::initializer_list<const char*> allowed) {
  const std::string v = field<std::string>(spec, name, "a string");
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
  out_h = field<int>(spec, "out_height", "a 32-bit integer");
  out_w = field<int>(spec, "out_width", "a 32-bit integer");
  if (out_h < 1 || out_w < 1 || out_h > 8192 || out_w > 8192)
    throw InputError("PreprocessSpec: out_height/out_width must be in [1, 8192]");
  in_channels = field<int>(spec, "in_channels", "a 32-bit integer");
  out_channels = field<int>(spec, "out_channels", "a 32-bit integer");
  if ((in_channels != 1 && in_channels != 3) || (out_channels != 1 && out_channels != 3))
    throw InputError("PreprocessSpec: in_channels/out_channels must be 1 or 3");
  nhwc = choice(spec, "layout", {"NCHW", "NHWC"}) == 1;
  output.out_dtype = choice(spec, "out_dtype", {"float32", "float16", "int8"});
  output.quant_scale = finite_float(spec, "quant_scale");
  output.quant_zero_point = field<int>(spec, "quant_zero_point", "a 32-bit integer");
  if (!(output.quant_scale > 0.0f)) throw InputError("PreprocessSpec.quant_scale: must be > 0");
  if (output.quant_zero_point < -128 || output.quant_zero_point > 127)
    throw InputError("PreprocessSpec.quant_zero_point: must be in [-128, 127]");

  rescale_slope = finite_float(spec, "rescale_slope");
  rescale_intercept = finite_float(spec, "rescale_intercept");
  if (rescale_slope == 0.0f) throw InputError("PreprocessSpec.rescale_slope: must be non-zero");
  modality_lut = table(spec, "modality_lut");
  modality_lut_first = field<int>(spec, "modality_lut_first_mapped", "a 32-bit integer");
  voi = choice(spec, "voi_function", {"none", "linear", "linear_exact", "sigmoid", "lut"});
  window_center = finite_float(spec, "window_center");
  window_width = finite_float(spec, "window_width");
  if ((voi == pm::VOI_LINEAR || voi == pm::VOI_SIGMOID) && !(window_width >= 1.0f))
    throw InputError("PreprocessSpec.window_width: must be >= 1 for LINEAR/SIGMOID (PS3.3 C.11.2.1.2.1), got " +
                     std::to_string(window_width));
  if (voi == pm::VOI_LINEAR_EXACT && !(window_width > 0.0f))
    throw InputError("PreprocessSpec.window_width: must be > 0 for LINEAR_EXACT");
  voi_lut = table(spec, "voi_lut");
  voi_lut_first = field<int>(spec, "voi_lut_first_mapped", "a 32-bit integer");
  const int bits = field<int>(spec, "voi_lut_bits", "a 32-bit integer");
  if (bits < 1 || bits > 16) throw InputError("PreprocessSpec.voi_lut_bits: must be in [1, 16]");
  voi_lut_max = static_cast<float>((1 << bits) - 1);
  if (voi == pm::VOI_LUT && voi_lut.empty()) throw InputError("PreprocessSpec.voi_lut: voi_function='lut' needs a table");
  out_min = finite_float(spec, "output_min");
  out_max = finite_float(spec, "output_max");
  if (!(out_max > out_min)) throw InputError("PreprocessSpec.output_max: must exceed output_min");
  invert = flag(spec, "invert");

  py::object roi = spec.attr("roi");
  if (!roi.is_none()) {
    auto r = field<std::vector<long long>>(spec, "roi", "4 integers (y0, x0, height, width)");
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
  letterbox = flag(spec, "letterbox");
  pad_value = finite_float(spec, "pad_value");
  output.normalize = choice(spec, "normalize", {"none", "fixed", "zscore", "minmax"});
  auto mean = field<std::vector<double>>(spec, "mean", "a list of numbers");
  auto stdv = field<std::vector<double>>(spec, "std", "a list of numbers");
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
  equalize = flag(spec, "equalize");
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
