// Per-pixel math and resampling geometry of the fused preprocessing kernel, shared verbatim by the
// CPU path (cpp/preprocess.cpp, host compiler) and the CUDA path (kernels/preprocess.cu, nvcc), so
// that the two cannot drift apart. Everything here is header-only, allocation-free and takes plain
// structs by value (they travel as kernel arguments).
//
// Order of operations (PS3.3 C.11): stored value -> modality LUT (C.11.1) -> VOI (C.11.2)
// -> MONOCHROME1 inversion (C.7.6.3.1.2, after VOI) -> [RGB->grey] -> [equalization]
// -> resample (ROI, resize, letterbox) -> normalization -> output dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SLICERT_HD __host__ __device__ __forceinline__
#else
#define SLICERT_HD inline
#endif

namespace slicert {
namespace pm {

enum VoiFunction : int { VOI_NONE = 0, VOI_LINEAR = 1, VOI_LINEAR_EXACT = 2, VOI_SIGMOID = 3, VOI_LUT = 4 };
enum ResizeMode : int { RESIZE_NEAREST = 0, RESIZE_BILINEAR = 1, RESIZE_AREA = 2 };
enum NormalizeMode : int { NORM_NONE = 0, NORM_FIXED = 1, NORM_ZSCORE = 2, NORM_MINMAX = 3 };
enum OutDType : int { OUT_F32 = 0, OUT_F16 = 1, OUT_I8 = 2 };
enum InDType : int { IN_U8 = 0, IN_U16 = 1, IN_I16 = 2, IN_I32 = 3, IN_F32 = 4 };

// Bins of the histogram used by equalization (over [output_min, output_max]).
constexpr int kEqualizeBins = 4096;

// Everything needed to map one stored value to its VOI output. Tables are device or host pointers
// depending on the caller.
struct PixelParams {
  float rescale_slope;
  float rescale_intercept;
  const float* modality_lut;  // nullptr: use slope/intercept
  int modality_lut_size;
  int modality_lut_first;
  int voi;
  float window_center;
  float window_width;
  const float* voi_lut;
  int voi_lut_size;
  int voi_lut_first;
  float voi_lut_max;  // 2^bits - 1: VOI LUT entries span [0, voi_lut_max]
  float out_min;
  float out_max;
  int invert;
};

// LUT index as PS3.3 C.11.1/C.11.2.1.1 define it: values below the first mapped value use the
// first entry, values beyond the last entry use the last one. Clamped in float first so that huge
// float inputs cannot overflow the int conversion.
SLICERT_HD int lut_index(float x, int first, int size) {
  float t = floorf(x) - static_cast<float>(first);
  t = fminf(fmaxf(t, 0.0f), static_cast<float>(size - 1));
  return static_cast<int>(t);
}

SLICERT_HD float modality(float x, const PixelParams& p) {
  if (p.modality_lut != nullptr) return p.modality_lut[lut_index(x, p.modality_lut_first, p.modality_lut_size)];
  return x * p.rescale_slope + p.rescale_intercept;
}

SLICERT_HD float voi(float x, const PixelParams& p) {
  const float lo = p.out_min, hi = p.out_max, range = p.out_max - p.out_min;
  switch (p.voi) {
    case VOI_LINEAR: {
      // PS3.3 C.11.2.1.2.1: the window is [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]. w == 1 is a step at
      // c - 0.5 (both comparisons below decide it, the division is never reached).
      const float c = p.window_center - 0.5f, wm1 = p.window_width - 1.0f;
      if (x <= c - 0.5f * wm1) return lo;
      if (x > c + 0.5f * wm1) return hi;
      return ((x - c) / wm1 + 0.5f) * range + lo;
    }
    case VOI_LINEAR_EXACT: {  // PS3.3 C.11.2.1.3.2
      const float c = p.window_center, w = p.window_width;
      if (x <= c - 0.5f * w) return lo;
      if (x > c + 0.5f * w) return hi;
      return ((x - c) / w + 0.5f) * range + lo;
    }
    case VOI_SIGMOID:  // PS3.3 C.11.2.1.3.1
      return range / (1.0f + expf(-4.0f * (x - p.window_center) / p.window_width)) + lo;
    case VOI_LUT:  // PS3.3 C.11.2.1.1: entries scale from [0, 2^bits - 1] to the output range.
      return lo + p.voi_lut[lut_index(x, p.voi_lut_first, p.voi_lut_size)] / p.voi_lut_max * range;
    default:
      return x;
  }
}

// Stored value -> displayed value. MONOCHROME1 (minimum = white) is inverted after VOI
// (PS3.3 C.7.6.3.1.2), mirrored inside the output range.
SLICERT_HD float pixel_value(float stored, const PixelParams& p) {
  float y = voi(modality(stored, p), p);
  return p.invert ? (p.out_max + p.out_min) - y : y;
}

// Rescale + LINEAR / LINEAR_EXACT / no VOI + inversion is one clamped affine map of the stored
// value, mathematically identical to the piecewise formulas above (the window ramp is continuous at
// both ends). The CPU evaluates it with 16-wide SIMD instead of a table lookup: measured 2-3x faster
// on a 2048^2 uint16 image, which turns the table-bound kernel into a memory-bound one. Not used for
// a modality LUT table, SIGMOID, a VOI LUT, or the LINEAR w == 1 step (no finite slope).
// Centred form y = (x - x0) * a + b: x0 is the window centre in stored-value units, so for integer
// data (slope 1, integer intercept, c - 0.5) the subtraction is exact and the result is as accurate
// as the DICOM formula itself; the uncentred x * a + b would lose ulp(|x| / w) to cancellation.
struct Affine {
  float x0, a, b;  // y = (x - x0) * a + b
  float lo, hi;    // then clamped to [lo, hi] (+-Inf when there is no window: a no-op, branch-free)
};

SLICERT_HD int affine_chain(const PixelParams& p, Affine* out) {
  if (p.modality_lut != nullptr) return 0;
  const double lo = p.out_min, hi = p.out_max, range = hi - lo;
  double x0, a, b;
  bool clamp = true;
  if (p.voi == VOI_NONE) {
    x0 = 0.0;
    a = p.rescale_slope;
    b = p.rescale_intercept;
    clamp = false;
  } else if (p.voi == VOI_LINEAR || p.voi == VOI_LINEAR_EXACT) {
    const double c = p.voi == VOI_LINEAR ? static_cast<double>(p.window_center) - 0.5 : p.window_center;
    const double w = p.voi == VOI_LINEAR ? static_cast<double>(p.window_width) - 1.0 : p.window_width;
    if (!(w > 0.0)) return 0;
    // y = ((m - c) / w + 0.5) * range + lo with m = x * slope + intercept.
    x0 = (c - p.rescale_intercept) / p.rescale_slope;
    a = p.rescale_slope * range / w;
    b = 0.5 * range + lo;
  } else {
    return 0;
  }
  if (p.invert) {  // (lo + hi) - y
    a = -a;
    b = (lo + hi) - b;
  }
  out->x0 = static_cast<float>(x0);
  out->a = static_cast<float>(a);
  out->b = static_cast<float>(b);
  out->lo = clamp ? p.out_min : -INFINITY;
  out->hi = clamp ? p.out_max : INFINITY;
  return 1;
}

// Written with comparisons (not fminf/fmaxf, whose NaN rules block vectorization); inputs are finite.
SLICERT_HD float affine_value(float x, const Affine& f) {
  float v = (x - f.x0) * f.a + f.b;
  v = v < f.lo ? f.lo : v;
  return v > f.hi ? f.hi : v;
}

// ITU-R BT.601 luma, the conversion DICOM uses for YBR_FULL (PS3.3 C.7.6.3.1.2).
SLICERT_HD float luma_bt601(float r, float g, float b) { return 0.299f * r + 0.587f * g + 0.114f * b; }

// --- histogram equalization ------------------------------------------------------------------
SLICERT_HD int equalize_bin(float v, float lo, float hi) {
  float t = (v - lo) / (hi - lo) * static_cast<float>(kEqualizeBins);
  t = fminf(fmaxf(t, 0.0f), static_cast<float>(kEqualizeBins - 1));
  return static_cast<int>(t);
}

// Classic equalization: (cdf(bin) - cdf_min) / (N - cdf_min), scaled to the output range. A constant
// image (N == cdf_min) maps to output_min: it stays constant.
SLICERT_HD float equalize_value(double cdf_bin, double cdf_min, double total, float lo, float hi) {
  const double denom = total - cdf_min;
  const double t = denom > 0.0 ? (cdf_bin - cdf_min) / denom : 0.0;
  return lo + static_cast<float>(t) * (hi - lo);
}

// --- resampling geometry -----------------------------------------------------------------------
// Tap positions and weights reproduce OpenCV's cv::resize (the oracle users compare against):
// INTER_NEAREST floor(d * scale); INTER_LINEAR half-pixel centres with edge clamping; INTER_AREA as
// exact box coverage (resizeArea) when both axes shrink, else OpenCV's area-mode linear weights.
enum AxisKind : int { AX_NEAREST = 0, AX_LINEAR = 1, AX_AREA_DOWN = 2, AX_AREA_UP = 3 };

struct AxisMap {
  int src_len;
  int dst_len;
  double scale;      // src / dst, computed as OpenCV does: 1 / (dst / src)
  double inv_scale;  // dst / src
  int kind;
};

SLICERT_HD AxisMap make_axis(int src_len, int dst_len, int kind) {
  AxisMap a;
  a.src_len = src_len;
  a.dst_len = dst_len;
  a.inv_scale = static_cast<double>(dst_len) / static_cast<double>(src_len);
  a.scale = 1.0 / a.inv_scale;
  a.kind = kind;
  return a;
}

// OpenCV takes the exact box path only when neither axis is enlarged.
SLICERT_HD void make_axes(int src_h, int src_w, int dst_h, int dst_w, int mode, AxisMap* ay, AxisMap* ax) {
  int kind = AX_NEAREST;
  if (mode == RESIZE_BILINEAR) kind = AX_LINEAR;
  if (mode == RESIZE_AREA) kind = (src_h >= dst_h && src_w >= dst_w) ? AX_AREA_DOWN : AX_AREA_UP;
  *ay = make_axis(src_h, dst_h, kind);
  *ax = make_axis(src_w, dst_w, kind);
}

// At most two taps for nearest / linear / area-up: (s0, w0) and (s0 + 1 clamped, w1).
struct Taps2 {
  int s0, s1;
  float w0, w1;
};

SLICERT_HD Taps2 taps2(const AxisMap& a, int d) {
  Taps2 t;
  if (a.kind == AX_NEAREST) {
    int s = static_cast<int>(floor(d * a.scale));
    t.s0 = t.s1 = s < a.src_len - 1 ? s : a.src_len - 1;
    t.w0 = 1.0f;
    t.w1 = 0.0f;
    return t;
  }
  int s;
  float f;
  if (a.kind == AX_LINEAR) {
    // Source coordinate in double: a float coordinate near x = 2000 is only good to ~1e-4 px.
    const double fd = (d + 0.5) * a.scale - 0.5;
    s = static_cast<int>(floor(fd));
    f = static_cast<float>(fd - s);
  } else {  // AX_AREA_UP
    s = static_cast<int>(floor(d * a.scale));
    f = static_cast<float>((d + 1) - (s + 1) * a.inv_scale);
    f = f <= 0.0f ? 0.0f : f - floorf(f);
  }
  if (s < 0) { s = 0; f = 0.0f; }
  if (s >= a.src_len - 1) { s = a.src_len - 1; f = 0.0f; }
  t.s0 = s;
  t.s1 = s + 1 < a.src_len ? s + 1 : s;
  t.w0 = 1.0f - f;
  t.w1 = f;
  return t;
}

// Box coverage of output cell d (OpenCV computeResizeAreaTab): a partial first source pixel,
// whole pixels, a partial last one; weights sum to 1.
struct AreaSpan {
  int first;  // first source index
  int count;  // number of source indices
  float w_first, w_mid, w_last;
  int has_first, has_last;
};

SLICERT_HD AreaSpan area_span(const AxisMap& a, int d) {
  const double fs1 = d * a.scale, fs2 = fs1 + a.scale;
  const double cell = fmin(a.scale, a.src_len - fs1);
  int s1 = static_cast<int>(ceil(fs1)), s2 = static_cast<int>(floor(fs2));
  s2 = s2 < a.src_len - 1 ? s2 : a.src_len - 1;
  s1 = s1 < s2 ? s1 : s2;
  AreaSpan sp;
  sp.has_first = (s1 - fs1) > 1e-3;
  sp.has_last = (fs2 - s2) > 1e-3;
  sp.w_first = static_cast<float>((s1 - fs1) / cell);
  sp.w_mid = static_cast<float>(1.0 / cell);
  sp.w_last = static_cast<float>(fmin(fmin(fs2 - s2, 1.0), cell) / cell);
  sp.first = sp.has_first ? s1 - 1 : s1;
  sp.count = (s2 - s1) + sp.has_first + sp.has_last;
  return sp;
}

SLICERT_HD float area_weight(const AreaSpan& sp, int k) {
  if (k == 0 && sp.has_first) return sp.w_first;
  if (k == sp.count - 1 && sp.has_last) return sp.w_last;
  return sp.w_mid;
}

// Where the resized ROI lands in the output plane. With letterbox the aspect ratio is kept and the
// content is centred; the rest is pad_value. mask_to_source inverts exactly this mapping.
struct Geometry {
  int roi_y0, roi_x0, roi_h, roi_w;
  int top, left, content_h, content_w;
  int out_h, out_w;
};

SLICERT_HD Geometry make_geometry(int roi_y0, int roi_x0, int roi_h, int roi_w, int out_h, int out_w,
                                  int letterbox) {
  Geometry g;
  g.roi_y0 = roi_y0;
  g.roi_x0 = roi_x0;
  g.roi_h = roi_h;
  g.roi_w = roi_w;
  g.out_h = out_h;
  g.out_w = out_w;
  if (!letterbox) {
    g.top = g.left = 0;
    g.content_h = out_h;
    g.content_w = out_w;
    return g;
  }
  const double s = fmin(static_cast<double>(out_h) / roi_h, static_cast<double>(out_w) / roi_w);
  int ch = static_cast<int>(floor(roi_h * s + 0.5)), cw = static_cast<int>(floor(roi_w * s + 0.5));
  ch = ch < 1 ? 1 : (ch > out_h ? out_h : ch);
  cw = cw < 1 ? 1 : (cw > out_w ? out_w : cw);
  g.content_h = ch;
  g.content_w = cw;
  g.top = (out_h - ch) / 2;
  g.left = (out_w - cw) / 2;
  return g;
}

// --- output conversion ---------------------------------------------------------------------------
struct OutputParams {
  int normalize;
  float mean[3];
  float std[3];
  int out_dtype;
  float quant_scale;
  int quant_zero_point;
};

// Normalization of channel c as (v - shift) / div: none (0, 1), fixed (mean[c], std[c]), or the
// zscore / minmax statistics of the resampled content computed by the caller. One formula for every
// mode keeps the output loop branch-free.
SLICERT_HD void normalize_params(int c, const OutputParams& o, float stat_shift, float stat_div, float* shift,
                                 float* div) {
  if (o.normalize == NORM_FIXED) {
    *shift = o.mean[c];
    *div = o.std[c];
  } else if (o.normalize == NORM_ZSCORE || o.normalize == NORM_MINMAX) {
    *shift = stat_shift;
    *div = stat_div;
  } else {
    *shift = 0.0f;
    *div = 1.0f;
  }
}

SLICERT_HD float normalize_value(float v, int c, const OutputParams& o, float stat_shift, float stat_div) {
  float shift, div;
  normalize_params(c, o, stat_shift, stat_div, &shift, &div);
  return (v - shift) / div;
}

// zscore / minmax statistics of the resampled content -> (shift, divisor).
// Float32 resampling of a constant image is constant only to ~1e-7 relative (the weights of one
// output pixel sum to 1 up to rounding); dividing that noise by its own spread would turn a flat
// image into +-1 garbage. A spread (max - min) at or below 1e-6 x max(|min|, |max|, output range)
// counts as no spread: the divisor becomes +Inf and the whole plane (pad included) becomes 0.
SLICERT_HD void normalize_stats(int normalize, double mean, double sd, double lo, double hi, float out_min,
                                float out_max, float* shift, float* div) {
  const double mag = fmax(fmax(fabs(lo), fabs(hi)), static_cast<double>(out_max - out_min));
  const bool flat = !(hi - lo > 1e-6 * mag);
  if (normalize == NORM_ZSCORE) {
    *shift = static_cast<float>(mean);
    *div = (flat || !(sd > 0.0)) ? INFINITY : static_cast<float>(sd);
  } else {
    *shift = static_cast<float>(lo);
    *div = flat ? INFINITY : static_cast<float>(hi - lo);
  }
}

// float -> IEEE binary16, round to nearest even, overflow to Inf (what a model input in FP16 sees).
SLICERT_HD uint16_t float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (absx < 0x38800000u) {  // subnormal half (|f| < 2^-14)
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);  // rounds to zero (<= 2^-25)
    const uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(absx >> 23);  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((absx - 0x38000000u) >> 13);
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// |x| >= 65520 rounds to Inf in binary16. A model fed Inf is silently wrong, so the CPU path refuses
// such outputs (InputError); the CUDA path cannot refuse without synchronizing the stream, so it
// saturates to the largest finite half (+-65504) instead. Either way no Inf reaches the model.
constexpr float kHalfOverflow = 65520.0f;
constexpr float kHalfMax = 65504.0f;

SLICERT_HD float saturate_half(float v) { return v > kHalfMax ? kHalfMax : (v < -kHalfMax ? -kHalfMax : v); }

// int8 model input: q = clamp(round_half_even(x / scale) + zero_point, -128, 127), as ONNX
// QuantizeLinear defines it.
SLICERT_HD int8_t quantize_int8(float v, const OutputParams& o) {
  float q = rintf(v / o.quant_scale) + static_cast<float>(o.quant_zero_point);
  // fminf(fmaxf(q, -128), 127) written with comparisons (NaN -> -128 as fmaxf does): fminf/fmaxf's
  // NaN rules kept the CPU loop scalar (1.7 ns per value; 0.45 ms for a 512^2 int8 output).
  q = q > -128.0f ? q : -128.0f;
  q = q < 127.0f ? q : 127.0f;
  return static_cast<int8_t>(q);
}

}  // namespace pm
}  // namespace slicert
