// CPU post-processing: logits -> class mask, and mask -> source geometry (undoing letterbox,
// resize and ROI with nearest neighbour). Per-pixel rules come from kernels/postprocess_math.cuh,
// shared with kernels/postprocess.cu.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "errors.hpp"
#include "postprocess_math.cuh"
#include "prepared_spec.hpp"
#include "preprocess_cpu.hpp"
#include "thread_pool.hpp"

namespace py = pybind11;

namespace slicert {
namespace {

void require_out_u8(py::array& out, py::ssize_t h, py::ssize_t w, const char* what) {
  if (!out.dtype().equal(py::dtype::of<uint8_t>())) throw InputError(std::string(what) + ": out must be uint8");
  if (out.ndim() != 2 || out.shape(0) != h || out.shape(1) != w)
    throw InputError(std::string(what) + ": out must have shape (" + std::to_string(h) + ", " + std::to_string(w) + ")");
  if (!(out.flags() & py::array::c_style)) throw InputError(std::string(what) + ": out must be C-contiguous");
  if (!out.writeable()) throw InputError(std::string(what) + ": out is read-only");
}

template <typename T>
void argmax_planes(const T* logits, int K, int64_t H, int64_t W, uint8_t* out) {
  const int64_t plane = H * W;
  parallel_for(static_cast<int>(H), std::max<int>(1, static_cast<int>(16384 / std::max<int64_t>(W, 1))),
               [&](int y0, int y1) {
                 for (int64_t i = y0 * W; i < y1 * W; ++i) out[i] = pm::argmax_class(logits + i, K, plane);
               });
}

}  // namespace

void bind_postprocess(py::module_& m) {
  m.def("argmax_mask_into", [](py::array out, const py::array& logits) {
    if (logits.ndim() != 3) throw InputError("argmax_mask: logits must be (K, H, W)");
    if (!(logits.flags() & py::array::c_style)) throw InputError("argmax_mask: logits must be C-contiguous");
    const int64_t K = logits.shape(0), H = logits.shape(1), W = logits.shape(2);
    if (K < 1 || K > 256) throw InputError("argmax_mask: the number of classes must be in [1, 256], got " + std::to_string(K));
    if (H < 1 || W < 1) throw InputError("argmax_mask: logits are empty");
    require_out_u8(out, H, W, "argmax_mask");
    uint8_t* dst = static_cast<uint8_t*>(out.mutable_data());
    if (logits.dtype().equal(py::dtype::of<float>())) {
      const float* src = static_cast<const float*>(logits.data());
      py::gil_scoped_release nogil;
      argmax_planes(src, static_cast<int>(K), H, W, dst);
    } else if (logits.dtype().equal(py::dtype("float16"))) {
      const uint16_t* src = static_cast<const uint16_t*>(logits.data());
      py::gil_scoped_release nogil;
      argmax_planes(src, static_cast<int>(K), H, W, dst);
    } else {
      throw InputError("argmax_mask: logits must be float32 or float16");
    }
  }, py::arg("out"), py::arg("logits"), "Class index per pixel of (K, H, W) logits into a uint8 (H, W) mask.");

  m.def("mask_to_source_into", [](py::array out, const py::array& mask, const PreparedSpec& ps) {
    if (!mask.dtype().equal(py::dtype::of<uint8_t>())) throw InputError("mask_to_source: mask must be uint8");
    if (mask.ndim() != 2 || mask.shape(0) < 1 || mask.shape(1) < 1)
      throw InputError("mask_to_source: mask must be a non-empty 2-D (H, W) array");
    if (out.ndim() != 2) throw InputError("mask_to_source: out must be 2-D (source height, width)");
    const int64_t src_h = out.shape(0), src_w = out.shape(1);
    require_out_u8(out, src_h, src_w, "mask_to_source");
    const pm::Geometry g = resolve_geometry(ps, src_h, src_w);
    const int mh = static_cast<int>(mask.shape(0)), mw = static_cast<int>(mask.shape(1));
    // Column table once (-1 outside the ROI), rows mapped on the fly.
    std::vector<int> col(static_cast<size_t>(src_w), -1);
    for (int x = 0; x < g.roi_w; ++x)
      col[g.roi_x0 + x] = pm::source_to_mask(x, g.roi_w, g.left, g.content_w, g.out_w, mw);
    const char* mbase = static_cast<const char*>(mask.data());
    const int64_t msy = mask.strides(0), msx = mask.strides(1);
    uint8_t* dst = static_cast<uint8_t*>(out.mutable_data());
    py::gil_scoped_release nogil;
    parallel_for(static_cast<int>(src_h), 16, [&](int y0, int y1) {
      for (int y = y0; y < y1; ++y) {
        uint8_t* row = dst + static_cast<int64_t>(y) * src_w;
        if (y < g.roi_y0 || y >= g.roi_y0 + g.roi_h) {
          std::memset(row, 0, static_cast<size_t>(src_w));
          continue;
        }
        const int my = pm::source_to_mask(y - g.roi_y0, g.roi_h, g.top, g.content_h, g.out_h, mh);
        const char* mrow = mbase + my * msy;
        for (int64_t x = 0; x < src_w; ++x)
          row[x] = col[x] < 0 ? 0 : *reinterpret_cast<const uint8_t*>(mrow + col[x] * msx);
      }
    });
  }, py::arg("out"), py::arg("mask"), py::arg("spec"),
     "Model-geometry mask -> source geometry (nearest), 0 outside the ROI.");
}

}  // namespace slicert
