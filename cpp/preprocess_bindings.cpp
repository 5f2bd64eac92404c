// Python boundary of the preprocessing kernel: every array is validated here (dtype, shape,
// strides, contiguity, batch slot) and rejected with an InputError naming the problem before any
// pixel is touched; the computation itself runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bindings.hpp"
#include "errors.hpp"
#include "prepared_spec.hpp"
#include "preprocess_cpu.hpp"
#include "preprocess_native.hpp"
#include "thread_pool.hpp"

namespace py = pybind11;

namespace slicert {

namespace {
std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}
}  // namespace

int input_dtype_code(const py::array& x) {
  const py::dtype dt = x.dtype();
  if (dt.equal(py::dtype::of<uint8_t>())) return pm::IN_U8;
  if (dt.equal(py::dtype::of<uint16_t>())) return pm::IN_U16;
  if (dt.equal(py::dtype::of<int16_t>())) return pm::IN_I16;
  if (dt.equal(py::dtype::of<int32_t>())) return pm::IN_I32;
  if (dt.equal(py::dtype::of<float>())) return pm::IN_F32;
  throw InputError("input dtype " + py::str(dt).cast<std::string>() +
                   " is not supported: use uint8, uint16, int16, int32 or float32 in native byte order");
}

SourceImage source_image(const py::array& x, const PreparedSpec& ps) {
  SourceImage img{};
  img.dtype = input_dtype_code(x);
  if (ps.in_channels == 1) {
    if (x.ndim() != 2)
      throw InputError("grey input (in_channels=1) must be 2-D (H, W) after frame selection, got shape " +
                       shape_str(x));
    img.channels = 1;
    img.sc = 0;
  } else {
    if (x.ndim() != 3 || x.shape(2) != 3)
      throw InputError("RGB input (in_channels=3) must be (H, W, 3), got shape " + shape_str(x));
    img.channels = 3;
    img.sc = x.strides(2);
  }
  img.h = x.shape(0);
  img.w = x.shape(1);
  if (img.h == 0 || img.w == 0) throw InputError("input image is empty: shape " + shape_str(x));
  img.sy = x.strides(0);
  img.sx = x.strides(1);
  img.base = static_cast<const char*>(x.data());
  return img;
}

char* output_slot(py::array& out, const PreparedSpec& ps, long long batch_index) {
  static const char* names[] = {"float32", "float16", "int8"};
  const int od = ps.output.out_dtype;
  const bool dtype_ok = od == pm::OUT_F32   ? out.dtype().equal(py::dtype::of<float>())
                        : od == pm::OUT_I8  ? out.dtype().equal(py::dtype::of<int8_t>())
                                            : out.dtype().equal(py::dtype("float16"));
  if (!dtype_ok)
    throw InputError(std::string("output dtype ") + py::str(out.dtype()).cast<std::string>() +
                     " does not match spec.out_dtype=" + names[od]);
  const int C = ps.out_channels;
  const py::ssize_t want[2][3] = {{C, ps.out_h, ps.out_w}, {ps.out_h, ps.out_w, C}};
  const auto& w = want[ps.nhwc ? 1 : 0];
  if (out.ndim() != 4 || out.shape(1) != w[0] || out.shape(2) != w[1] || out.shape(3) != w[2])
    throw InputError("output shape " + shape_str(out) + " does not match the spec: expected (N, " +
                     std::to_string(w[0]) + ", " + std::to_string(w[1]) + ", " + std::to_string(w[2]) + ") for " +
                     (ps.nhwc ? "NHWC" : "NCHW"));
  if (!(out.flags() & py::array::c_style))
    throw InputError("output buffer must be C-contiguous (strides " + std::to_string(out.strides(0)) + ", ...)");
  if (!out.writeable()) throw InputError("output buffer is read-only");
  if (batch_index < 0 || batch_index >= out.shape(0))
    throw InputError("batch_index " + std::to_string(batch_index) + " is out of range for a batch of " +
                     std::to_string(out.shape(0)));
  const py::ssize_t slot_bytes = static_cast<py::ssize_t>(C) * ps.out_h * ps.out_w * out_itemsize(od);
  return static_cast<char*>(out.mutable_data()) + batch_index * slot_bytes;
}

void bind_preprocess(py::module_& m) {
  py::class_<PreparedSpec>(m, "PreparedSpec",
                           "A PreprocessSpec parsed for the native kernels (tables folded lazily, reused per call).")
      .def(py::init<const py::object&>(), py::arg("spec"))
      .def_readonly("out_height", &PreparedSpec::out_h)
      .def_readonly("out_width", &PreparedSpec::out_w)
      .def("folded_lut", [](const PreparedSpec& ps, const std::string& dtype) {
        const int code = dtype == "uint8" ? pm::IN_U8 : dtype == "uint16" ? pm::IN_U16 : dtype == "int16" ? pm::IN_I16 : -1;
        if (code < 0) throw InputError("folded_lut: dtype must be uint8, uint16 or int16");
        const auto& lut = ps.folded_lut(code);
        return py::array_t<float>(static_cast<py::ssize_t>(lut.size()), lut.data());
      }, py::arg("dtype"), "Copy of the stored-value -> displayed-value table for an integer dtype.");

  m.def("preprocess_into", [](py::array out, const py::array& x, const PreparedSpec& ps, long long batch_index) {
    const SourceImage img = source_image(x, ps);
    char* slot = output_slot(out, ps, batch_index);
    py::gil_scoped_release nogil;
    preprocess_cpu(ps, img, slot);
  }, py::arg("out"), py::arg("x"), py::arg("spec"), py::arg("batch_index") = 0,
     "Fused preprocessing of one image into slot batch_index of a caller-owned output tensor (CPU).");

  m.def("geometry", [](const PreparedSpec& ps, long long src_h, long long src_w) {
    const pm::Geometry g = resolve_geometry(ps, src_h, src_w);
    py::dict d;
    d["roi"] = py::make_tuple(g.roi_y0, g.roi_x0, g.roi_h, g.roi_w);
    d["content"] = py::make_tuple(g.top, g.left, g.content_h, g.content_w);
    d["out"] = py::make_tuple(g.out_h, g.out_w);
    return d;
  }, py::arg("spec"), py::arg("src_h"), py::arg("src_w"),
     "ROI (y0, x0, h, w) in source pixels and content box (top, left, h, w) in output pixels.");

  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Threads used by the CPU kernels (caller included).");
  m.def("get_num_threads", &get_num_threads);
}

}  // namespace slicert
