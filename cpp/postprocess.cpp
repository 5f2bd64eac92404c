// CPU post-processing: logits -> class mask, mask -> source geometry (undoing letterbox, resize and
// ROI with nearest neighbour), and per-class pixel counts. Per-pixel rules come from
// kernels/postprocess_math.cuh, shared with kernels/postprocess.cu.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
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

// Below this many bytes of work a kernel runs on the calling thread: waking pool workers costs tens
// of µs on a busy machine, more than a small mask takes (measured: 3x96x96 argmax, 90 µs pooled).
constexpr int64_t kMinBytesPerChunk = 1 << 16;

void require_out_u8(py::array& out, py::ssize_t h, py::ssize_t w, const char* what) {
  if (!out.dtype().equal(py::dtype::of<uint8_t>())) throw InputError(std::string(what) + ": out must be uint8");
  if (out.ndim() != 2 || out.shape(0) != h || out.shape(1) != w)
    throw InputError(std::string(what) + ": out must have shape (" + std::to_string(h) + ", " + std::to_string(w) + ")");
  if (!(out.flags() & py::array::c_style)) throw InputError(std::string(what) + ": out must be C-contiguous");
  if (!out.writeable()) throw InputError(std::string(what) + ": out is read-only");
}

int rows_per_chunk(int64_t bytes_per_row) {
  return static_cast<int>(std::max<int64_t>(1, kMinBytesPerChunk / std::max<int64_t>(bytes_per_row, 1)));
}

// Returns false when some logit is NaN or +-Inf (all exponent bits set), checked in the argmax pass
// instead of a second pass over the logits. Pixels go in blocks, class plane by class plane, so the
// compare/select loop vectorizes (the per-pixel rule is still pm::argmax_takes, shared with CUDA).
template <typename T>
bool argmax_planes(const T* logits, int K, int64_t H, int64_t W, uint8_t* out) {
  const int64_t plane = H * W;
  std::atomic<bool> finite{true};
  parallel_for(static_cast<int>(H), rows_per_chunk(W * K * static_cast<int64_t>(sizeof(T))), [&](int y0, int y1) {
    constexpr int kBlock = 256;
    float best_v[kBlock];
    uint8_t best[kBlock];
    uint32_t exp_max = 0;
    for (int64_t i0 = y0 * W, end = y1 * W; i0 < end; i0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, end - i0));
      const T* l0 = logits + i0;
      for (int i = 0; i < n; ++i) {
        best_v[i] = pm::logit_value(l0[i]);
        best[i] = 0;
        exp_max = std::max(exp_max, pm::exponent_bits(l0[i]));
      }
      for (int k = 1; k < K; ++k) {
        const T* lk = l0 + k * plane;
        const uint8_t kk = static_cast<uint8_t>(k);
        for (int i = 0; i < n; ++i) {
          const float v = pm::logit_value(lk[i]);
          exp_max = std::max(exp_max, pm::exponent_bits(lk[i]));
          const bool take = pm::argmax_takes(v, best_v[i]);
          best_v[i] = take ? v : best_v[i];
          best[i] = take ? kk : best[i];
        }
      }
      if (K == 1) {
        for (int i = 0; i < n; ++i) out[i0 + i] = best_v[i] > 0.0f ? 1 : 0;  // sigmoid head, as pm::argmax_class
      } else {
        std::memcpy(out + i0, best, static_cast<size_t>(n));
      }
    }
    if (exp_max == 0x7f800000u) finite = false;
  });
  return finite;
}

// The CUDA kernel's loop (one pm::argmax_class_checked per pixel), run on the host in one thread: the
// reference the device path is tested against where no GPU exists. Returns false when a logit is NaN/Inf.
template <typename T>
bool argmax_per_pixel(const T* logits, int K, int64_t H, int64_t W, uint8_t* out) {
  const int64_t plane = H * W;
  bool nonfinite = false;
  for (int64_t i = 0; i < plane; ++i) out[i] = pm::argmax_class_checked(logits + i, K, plane, &nonfinite);
  return !nonfinite;
}

const uint8_t* u8_mask(const py::array& mask, const char* what) {
  if (!mask.dtype().equal(py::dtype::of<uint8_t>())) throw InputError(std::string(what) + ": mask must be uint8");
  if (mask.ndim() != 2 || mask.shape(0) < 1 || mask.shape(1) < 1)
    throw InputError(std::string(what) + ": mask must be a non-empty 2-D (H, W) array");
  return static_cast<const uint8_t*>(mask.data());
}

// The nearest-neighbour map of one (source size, spec, mask size): which mask pixel every source
// pixel shows. Built once per geometry and reused for every frame of a cine. Because the map is
// separable (source row -> mask row, source column -> mask column), per-class source pixel counts
// are sum over mask pixels of row_mult[i] * col_mult[j]: exact, and O(mask) instead of O(source).
struct SourceMap {
  SourceMap(const PreparedSpec& ps, int64_t src_h, int64_t src_w, int mask_h, int mask_w)
      : src_h(src_h), src_w(src_w), mask_h(mask_h), mask_w(mask_w) {
    if (mask_h < 1 || mask_w < 1) throw InputError("mask_to_source: mask must be a non-empty 2-D (H, W) array");
    g = resolve_geometry(ps, src_h, src_w);  // InputError when the ROI reaches outside the image
    row.resize(static_cast<size_t>(g.roi_h));
    col.resize(static_cast<size_t>(g.roi_w));
    row_mult.assign(static_cast<size_t>(mask_h), 0);
    col_mult.assign(static_cast<size_t>(mask_w), 0);
    for (int y = 0; y < g.roi_h; ++y) {
      row[y] = pm::source_to_mask(y, g.roi_h, g.top, g.content_h, g.out_h, mask_h);
      ++row_mult[row[y]];
    }
    for (int x = 0; x < g.roi_w; ++x) {
      col[x] = pm::source_to_mask(x, g.roi_w, g.left, g.content_w, g.out_w, mask_w);
      ++col_mult[col[x]];
    }
    for (int j = 0; j < mask_w; ++j)
      if (col_mult[j]) used_cols.push_back(j);
    outside = src_h * src_w - static_cast<int64_t>(g.roi_h) * g.roi_w;
  }

  void check_mask(const py::array& mask, const char* what) const {
    u8_mask(mask, what);
    if (mask.shape(0) != mask_h || mask.shape(1) != mask_w)
      throw InputError(std::string(what) + ": mask has shape (" + std::to_string(mask.shape(0)) + ", " +
                       std::to_string(mask.shape(1)) + "), this mapping is for (" + std::to_string(mask_h) + ", " +
                       std::to_string(mask_w) + ")");
  }

  void to_source(uint8_t* dst, const char* mbase, int64_t msy, int64_t msx) const {
    const int x0 = g.roi_x0, x1 = g.roi_x0 + g.roi_w;
    const int* c = col.data();
    parallel_for(static_cast<int>(src_h), rows_per_chunk(src_w), [&](int y0, int y1) {
      for (int y = y0; y < y1; ++y) {
        uint8_t* out = dst + static_cast<int64_t>(y) * src_w;
        const int ry = y - g.roi_y0;
        if (ry < 0 || ry >= g.roi_h) {
          std::memset(out, 0, static_cast<size_t>(src_w));
          continue;
        }
        // Upsampling repeats each mask row over several source rows: copy the row just written.
        if (y > y0 && ry > 0 && row[ry] == row[ry - 1]) {
          std::memcpy(out, out - src_w, static_cast<size_t>(src_w));
          continue;
        }
        std::memset(out, 0, static_cast<size_t>(x0));
        std::memset(out + x1, 0, static_cast<size_t>(src_w - x1));
        const char* mrow = mbase + row[ry] * msy;
        uint8_t* o = out + x0;
        if (msx == 1) {
          const uint8_t* m = reinterpret_cast<const uint8_t*>(mrow);
          for (int x = 0; x < g.roi_w; ++x) o[x] = m[c[x]];
        } else {
          for (int x = 0; x < g.roi_w; ++x) o[x] = *reinterpret_cast<const uint8_t*>(mrow + c[x] * msx);
        }
      }
    });
  }

  std::array<int64_t, 256> counts(const char* mbase, int64_t msy, int64_t msx) const {
    std::array<int64_t, 256> hist{};
    std::array<int64_t, 256> row_hist;
    for (int i = 0; i < mask_h; ++i) {
      const int64_t rm = row_mult[i];
      if (!rm) continue;
      row_hist.fill(0);
      const char* mrow = mbase + i * msy;
      for (int j : used_cols) row_hist[*reinterpret_cast<const uint8_t*>(mrow + j * msx)] += col_mult[j];
      for (int v = 0; v < 256; ++v) hist[v] += rm * row_hist[v];
    }
    hist[0] += outside;  // outside the ROI the source mask is background
    return hist;
  }

  int64_t src_h, src_w;
  int mask_h, mask_w;
  pm::Geometry g{};
  std::vector<int> row, col;                  // ROI row / column -> mask row / column
  std::vector<int64_t> row_mult, col_mult;    // source rows / columns showing each mask row / column
  std::vector<int> used_cols;                 // mask columns with col_mult > 0
  int64_t outside = 0;                        // source pixels outside the ROI
};

py::array_t<int64_t> counts_array(const std::array<int64_t, 256>& hist, int num_classes) {
  if (num_classes < 1 || num_classes > 256)
    throw InputError("class counts: num_classes must be in [1, 256], got " + std::to_string(num_classes));
  for (int v = 255; v >= num_classes; --v)
    if (hist[v]) throw InputError("class_areas_mm2: mask holds class " + std::to_string(v) +
                                  " but num_classes=" + std::to_string(num_classes));
  py::array_t<int64_t> out(num_classes);
  std::memcpy(out.mutable_data(), hist.data(), sizeof(int64_t) * static_cast<size_t>(num_classes));
  return out;
}

// Histogram of a uint8 image: four sub-histograms break the store-to-load chain when neighbouring
// pixels share a class (masks are mostly long runs), uint32 bins flushed every 2^24 pixels per bin set.
std::array<int64_t, 256> histogram_u8(const char* base, int64_t h, int64_t w, int64_t sy, int64_t sx) {
  std::array<int64_t, 256> hist{};
  std::vector<uint32_t> sub(4 * 256, 0);
  int64_t pending = 0;
  auto flush = [&] {
    for (int v = 0; v < 256; ++v) {
      hist[v] += static_cast<int64_t>(sub[v]) + sub[256 + v] + sub[512 + v] + sub[768 + v];
    }
    std::fill(sub.begin(), sub.end(), 0u);
    pending = 0;
  };
  for (int64_t y = 0; y < h; ++y) {
    const char* r = base + y * sy;
    int64_t x = 0;
    if (sx == 1) {
      const uint8_t* p = reinterpret_cast<const uint8_t*>(r);
      for (; x + 4 <= w; x += 4) {
        ++sub[p[x]];
        ++sub[256 + p[x + 1]];
        ++sub[512 + p[x + 2]];
        ++sub[768 + p[x + 3]];
      }
    }
    for (; x < w; ++x) ++sub[*reinterpret_cast<const uint8_t*>(r + x * sx)];
    pending += w;
    if (pending >= (int64_t{1} << 24)) flush();
  }
  flush();
  return hist;
}

// The shared tail of SourceMap.to_source_into and mask_to_source_into: `mask` already checked.
void to_source_into(const SourceMap& s, py::array& out, const py::array& mask) {
  require_out_u8(out, s.src_h, s.src_w, "mask_to_source");
  const char* mbase = static_cast<const char*>(mask.data());
  const int64_t msy = mask.strides(0), msx = mask.strides(1);
  uint8_t* dst = static_cast<uint8_t*>(out.mutable_data());
  py::gil_scoped_release nogil;
  s.to_source(dst, mbase, msy, msx);
}

// Checks (K, H, W) float32/float16 logits and the uint8 (H, W) output, then runs `run` without the GIL.
template <typename Run>
bool argmax_dispatch(py::array& out, const py::array& logits, Run run) {
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
    return run(src, static_cast<int>(K), H, W, dst);
  }
  if (logits.dtype().equal(py::dtype("float16"))) {
    const uint16_t* src = static_cast<const uint16_t*>(logits.data());
    py::gil_scoped_release nogil;
    return run(src, static_cast<int>(K), H, W, dst);
  }
  throw InputError("argmax_mask: logits must be float32 or float16");
}

}  // namespace

void bind_postprocess(py::module_& m) {
  m.def("argmax_mask_into", [](py::array out, const py::array& logits) {
    return argmax_dispatch(out, logits, [](const auto* src, int K, int64_t H, int64_t W, uint8_t* dst) {
      return argmax_planes(src, K, H, W, dst);
    });
  }, py::arg("out"), py::arg("logits"),
     "Class index per pixel of (K, H, W) logits into a uint8 (H, W) mask; returns False when a logit is NaN/Inf.");
  m.def("argmax_mask_per_pixel_into", [](py::array out, const py::array& logits) {
    return argmax_dispatch(out, logits, [](const auto* src, int K, int64_t H, int64_t W, uint8_t* dst) {
      return argmax_per_pixel(src, K, H, W, dst);
    });
  }, py::arg("out"), py::arg("logits"),
     "argmax_mask_into computed by the CUDA kernel's per-pixel loop (pm::argmax_class_checked) on the host, one "
     "thread: the CPU reference of the device argmax and its NaN/Inf flag.");

  py::class_<SourceMap, std::shared_ptr<SourceMap>>(
      m, "SourceMap", "Nearest-neighbour map from a model-geometry mask to the source image (one geometry).")
      .def(py::init([](const PreparedSpec& ps, int64_t src_h, int64_t src_w, int mask_h, int mask_w) {
             return std::make_shared<SourceMap>(ps, src_h, src_w, mask_h, mask_w);
           }),
           py::arg("spec"), py::arg("src_h"), py::arg("src_w"), py::arg("mask_h"), py::arg("mask_w"))
      .def_property_readonly("src_hw", [](const SourceMap& s) { return py::make_tuple(s.src_h, s.src_w); })
      .def_property_readonly("mask_hw", [](const SourceMap& s) { return py::make_tuple(s.mask_h, s.mask_w); })
      .def_property_readonly("row_multiplicity", [](const SourceMap& s) {
        return py::array_t<int64_t>(static_cast<py::ssize_t>(s.row_mult.size()), s.row_mult.data());
      })
      .def_property_readonly("col_multiplicity", [](const SourceMap& s) {
        return py::array_t<int64_t>(static_cast<py::ssize_t>(s.col_mult.size()), s.col_mult.data());
      })
      .def_property_readonly("outside_roi", [](const SourceMap& s) { return s.outside; })
      .def("to_source_into", [](const SourceMap& s, py::array out, const py::array& mask) {
        s.check_mask(mask, "mask_to_source");
        to_source_into(s, out, mask);
      }, py::arg("out"), py::arg("mask"), "Mask -> source geometry into `out` (uint8 (src_h, src_w)), 0 outside the ROI.")
      .def("class_counts", [](const SourceMap& s, const py::array& mask, int num_classes) {
        s.check_mask(mask, "class counts");
        const char* mbase = static_cast<const char*>(mask.data());
        const int64_t msy = mask.strides(0), msx = mask.strides(1);
        std::array<int64_t, 256> hist;
        {
          py::gil_scoped_release nogil;
          hist = s.counts(mbase, msy, msx);
        }
        return counts_array(hist, num_classes);
      }, py::arg("mask"), py::arg("num_classes"),
         "Per-class pixel counts of the source-geometry mask (int64 [num_classes]), computed from the model mask.");

  m.def("class_counts_u8", [](const py::array& mask, int num_classes) {
    const char* base = reinterpret_cast<const char*>(u8_mask(mask, "class_areas_mm2"));
    const int64_t h = mask.shape(0), w = mask.shape(1), sy = mask.strides(0), sx = mask.strides(1);
    std::array<int64_t, 256> hist;
    {
      py::gil_scoped_release nogil;
      hist = histogram_u8(base, h, w, sy, sx);
    }
    return counts_array(hist, num_classes);
  }, py::arg("mask"), py::arg("num_classes"), "Per-class pixel counts of a uint8 (H, W) mask (int64 [num_classes]).");

  m.def("mask_to_source_into", [](py::array out, const py::array& mask, const PreparedSpec& ps) {
    u8_mask(mask, "mask_to_source");
    if (out.ndim() != 2) throw InputError("mask_to_source: out must be 2-D (source height, width)");
    const SourceMap s(ps, out.shape(0), out.shape(1), static_cast<int>(mask.shape(0)), static_cast<int>(mask.shape(1)));
    to_source_into(s, out, mask);
  }, py::arg("out"), py::arg("mask"), py::arg("spec"),
     "Model-geometry mask -> source geometry (nearest), 0 outside the ROI (builds the map per call; "
     "SourceMap reuses it).");
}

}  // namespace slicert
