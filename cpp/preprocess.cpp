// CPU implementation of the fused preprocessing kernel: raw stored pixels -> model input tensor in
// one pass over the source. The per-pixel math and the resampling taps come from
// kernels/preprocess_math.cuh, the same header the CUDA kernel compiles.
//
// Strategy (measured on a 2048^2 uint16 -> 256^2 area downscale): for 8/16-bit integer input the
// whole modality + VOI + inversion chain is one folded table lookup (PreparedSpec::folded_lut), and
// area downscaling accumulates source rows vertically into one float row per output row before a
// short horizontal pass, so every source pixel is read exactly once. Output rows are split over
// the persistent thread pool; the GIL is released for the whole computation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "bindings.hpp"
#include "errors.hpp"
#include "preprocess_math.cuh"
#include "prepared_spec.hpp"
#include "preprocess_cpu.hpp"
#include "thread_pool.hpp"

namespace py = pybind11;

namespace slicert {
namespace {

template <typename T>
inline T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <int DT> struct Storage;
template <> struct Storage<pm::IN_U8> { using type = uint8_t; };
template <> struct Storage<pm::IN_U16> { using type = uint16_t; };
template <> struct Storage<pm::IN_I16> { using type = int16_t; };
template <> struct Storage<pm::IN_I32> { using type = int32_t; };
template <> struct Storage<pm::IN_F32> { using type = float; };

constexpr bool is_lut_dtype(int dt) { return dt == pm::IN_U8 || dt == pm::IN_U16 || dt == pm::IN_I16; }

// Everything the inner loops need for one call.
struct PixelSource {
  SourceImage img;         // already offset to the ROI origin, h/w = ROI size
  const pm::Affine* affine;  // non-null: the whole chain is pm::affine_value (no table)
  const float* lut;        // 8/16-bit dtypes: folded table (equalization folded in for grey input)
  pm::PixelParams pp;      // int32/float32: evaluated per pixel
  const float* eq_table;   // equalization applied to the working value when it is not folded
  float lo, hi;            // output range (equalization bins)
};

template <int DT>
inline float sample(const PixelSource& s, const char* p) {
  using T = typename Storage<DT>::type;
  if (s.affine) return pm::affine_value(static_cast<float>(load<T>(p)), *s.affine);
  if constexpr (DT == pm::IN_I16) {
    return s.lut[static_cast<int>(load<T>(p)) + 32768];
  } else if constexpr (is_lut_dtype(DT)) {
    return s.lut[load<T>(p)];
  } else {
    return pm::pixel_value(static_cast<float>(load<T>(p)), s.pp);
  }
}

inline float apply_eq(const PixelSource& s, float v) {
  return s.eq_table ? s.eq_table[pm::equalize_bin(v, s.lo, s.hi)] : v;
}

// Working values of one source pixel: CW = 1 (grey, or RGB -> BT.601 luma) or 3 (RGB kept).
template <int DT, int CIN, int CW>
inline void fetch(const PixelSource& s, const char* p, float* v) {
  if constexpr (CIN == 1) {
    v[0] = apply_eq(s, sample<DT>(s, p));
  } else {
    const float r = sample<DT>(s, p), g = sample<DT>(s, p + s.img.sc), b = sample<DT>(s, p + 2 * s.img.sc);
    if constexpr (CW == 3) {
      v[0] = r;
      v[1] = g;
      v[2] = b;
    } else {
      v[0] = apply_eq(s, pm::luma_bt601(r, g, b));
    }
  }
}

// The two hot loops of area downscaling, compiled for AVX-512, AVX2 and baseline x86-64 and chosen
// at load time (GCC/Clang function multi-versioning), so one wheel runs everywhere at full width.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define SLICERT_MULTIVERSION __attribute__((noinline, target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define SLICERT_MULTIVERSION __attribute__((noinline))
#endif

// Up to eight source rows per pass: acc is loaded and stored once per group instead of per row, and
// the additions happen in the same order as one pass per row, so the result is the same bits.
// INIT: acc starts at +0 (as the generic path's cleared buffer does). `value(i, x)` is the working
// value of row i of the group at column x.
template <int M, bool INIT, typename V>
__attribute__((always_inline)) inline void rows_body(const float* __restrict w, int n, float* __restrict acc,
                                                     V value) {
  float wk[M];
  for (int i = 0; i < M; ++i) wk[i] = w[i];
  for (int x = 0; x < n; ++x) {
    float s = INIT ? 0.0f : acc[x];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) s += wk[i] * value(i, x);
    acc[x] = s;
  }
}

// Grey rows through an affine chain: SIMD at the machine's width (function multi-versioning).
template <typename T, int M, bool INIT>
SLICERT_MULTIVERSION void affine_rows(const T* const* __restrict q, const float* __restrict w, int n, pm::Affine f,
                                      float* __restrict acc) {
  const T* __restrict r[M];
  for (int i = 0; i < M; ++i) r[i] = q[i];
  rows_body<M, INIT>(w, n, acc, [&](int i, int x) { return pm::affine_value(static_cast<float>(r[i][x]), f); });
}

// RGB -> BT.601 luma through an affine chain, interleaved (SX = 3) or planar (SX = 1) pixels: the
// per-pixel fetch() of the generic path branched per sample and did not vectorize (1.8 ms vs 0.08 ms
// for grey on a 600x800 echo frame). Same operations in the same order as fetch + accumulate_row.
template <typename T, int M, bool INIT, int SX>
SLICERT_MULTIVERSION void affine_luma_rows(const T* const* __restrict q, int64_t sc, const float* __restrict w, int n,
                                           pm::Affine f, float* __restrict acc) {
  const T* __restrict r[M];
  const T* __restrict g[M];
  const T* __restrict b[M];
  for (int i = 0; i < M; ++i) {
    r[i] = q[i];
    g[i] = q[i] + sc;
    b[i] = q[i] + 2 * sc;
  }
  float wk[M];
  for (int i = 0; i < M; ++i) wk[i] = w[i];
  // The loop of rows_body, written out: through the lambda, GCC 12 no longer vectorized the three
  // channel loads (1.6 ms instead of 0.3 ms per frame).
  for (int x = 0; x < n; ++x) {
    float s = INIT ? 0.0f : acc[x];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i)
      s += wk[i] * pm::luma_bt601(pm::affine_value(static_cast<float>(r[i][x * SX]), f),
                                  pm::affine_value(static_cast<float>(g[i][x * SX]), f),
                                  pm::affine_value(static_cast<float>(b[i][x * SX]), f));
    acc[x] = s;
  }
}

// Grey rows through a table (modality/VOI LUTs, sigmoid, folded equalization). Scalar on purpose:
// AVX2/AVX-512 gathers measured slower than scalar loads here; the M table loads per column are
// independent, which is what the grouping buys.
template <typename T, int M, bool INIT>
__attribute__((noinline, optimize("no-tree-vectorize"))) void lut_rows(const T* const* __restrict q,
                                                                        const float* __restrict w, int n,
                                                                        const float* __restrict lut,
                                                                        float* __restrict acc) {
  const T* __restrict r[M];
  for (int i = 0; i < M; ++i) r[i] = q[i];
  rows_body<M, INIT>(w, n, acc, [&](int i, int x) { return lut[r[i][x]]; });
}

// The vertical pass of one span in groups of up to eight rows: kernel(M, init, rows, weights) is
// called with M as a compile-time constant, rows as typed pointers to each row's first pixel.
template <typename T, typename K>
void span_groups(const PixelSource& s, const pm::AreaSpan& sp, K kernel) {
  for (int k = 0; k < sp.count; k += 8) {
    const T* q[8];
    float w[8];
    const int m = std::min(8, sp.count - k);
    for (int i = 0; i < m; ++i) {
      q[i] = reinterpret_cast<const T*>(s.img.base + static_cast<int64_t>(sp.first + k + i) * s.img.sy);
      w[i] = pm::area_weight(sp, k + i);
    }
    const bool init = k == 0;
    switch (m) {
      case 1: kernel(std::integral_constant<int, 1>{}, init, q, w); break;
      case 2: kernel(std::integral_constant<int, 2>{}, init, q, w); break;
      case 3: kernel(std::integral_constant<int, 3>{}, init, q, w); break;
      case 4: kernel(std::integral_constant<int, 4>{}, init, q, w); break;
      case 5: kernel(std::integral_constant<int, 5>{}, init, q, w); break;
      case 6: kernel(std::integral_constant<int, 6>{}, init, q, w); break;
      case 7: kernel(std::integral_constant<int, 7>{}, init, q, w); break;
      default: kernel(std::integral_constant<int, 8>{}, init, q, w); break;
    }
  }
}

// Table rows stay scalar: AVX2/AVX-512 gathers measured slower than scalar loads here.
template <typename T>
__attribute__((noinline)) void lut_row(const T* __restrict q, const float* __restrict lut, int n, float wy, bool init,
                                       float* __restrict acc) {
  if (init) {
    for (int x = 0; x < n; ++x) acc[x] = 0.0f + wy * lut[q[x]];
  } else {
#pragma GCC unroll 8
    for (int x = 0; x < n; ++x) acc[x] += wy * lut[q[x]];
  }
}

// acc[x*CW + c] (+)= wy * value(row r, column x) for x in [0, n); init: store instead of add.
template <int DT, int CIN, int CW>
void accumulate_row(const PixelSource& s, int r, int n, float wy, bool init, float* acc) {
  using T = typename Storage<DT>::type;
  const char* p = s.img.base + static_cast<int64_t>(r) * s.img.sy;
  if constexpr (CIN == 1 && is_lut_dtype(DT)) {
    // Hot path: contiguous, aligned row of 8/16-bit values -> one table lookup per pixel.
    if (s.lut && s.img.sx == static_cast<int64_t>(sizeof(T)) && reinterpret_cast<uintptr_t>(p) % alignof(T) == 0) {
      lut_row(reinterpret_cast<const T*>(p), s.lut + (DT == pm::IN_I16 ? 32768 : 0), n, wy, init, acc);
      return;
    }
  }
  if (init) std::fill(acc, acc + static_cast<size_t>(n) * CW, 0.0f);
  float v[3];
  for (int x = 0; x < n; ++x, p += s.img.sx) {
    fetch<DT, CIN, CW>(s, p, v);
    for (int c = 0; c < CW; ++c) acc[x * CW + c] += wy * v[c];
  }
}

// Vertical part of an area downscale: acc = sum over the span's rows of weight * value.
template <int DT, int CIN, int CW>
void accumulate_span(const PixelSource& s, const pm::AreaSpan& sp, int n, float* acc) {
  using T = typename Storage<DT>::type;
  const int64_t e = static_cast<int64_t>(sizeof(T));
  const bool aligned = reinterpret_cast<uintptr_t>(s.img.base) % alignof(T) == 0 && s.img.sy % e == 0;
  if constexpr (CIN == 1) {
    if (aligned && s.img.sx == e && s.affine && !s.eq_table) {
      const pm::Affine f = *s.affine;
      span_groups<T>(s, sp, [&](auto M, bool init, const T* const* q, const float* w) {
        if (init) affine_rows<T, M, true>(q, w, n, f, acc);
        else affine_rows<T, M, false>(q, w, n, f, acc);
      });
      return;
    }
    if constexpr (is_lut_dtype(DT)) {
      if (aligned && s.img.sx == e && s.lut && !s.affine) {
        const float* lut = s.lut + (DT == pm::IN_I16 ? 32768 : 0);
        span_groups<T>(s, sp, [&](auto M, bool init, const T* const* q, const float* w) {
          if (init) lut_rows<T, M, true>(q, w, n, lut, acc);
          else lut_rows<T, M, false>(q, w, n, lut, acc);
        });
        return;
      }
    }
  }
  if constexpr (CIN == 3 && CW == 1 && std::is_integral_v<T>) {
    const bool interleaved = s.img.sx == 3 * e && s.img.sc == e, planar = s.img.sx == e;
    if (s.affine && !s.eq_table && aligned && s.img.sc % e == 0 && (interleaved || planar)) {
      const pm::Affine f = *s.affine;
      const int64_t sc = s.img.sc / e;
      span_groups<T>(s, sp, [&](auto M, bool init, const T* const* q, const float* w) {
        if (interleaved) {
          if (init) affine_luma_rows<T, M, true, 3>(q, sc, w, n, f, acc);
          else affine_luma_rows<T, M, false, 3>(q, sc, w, n, f, acc);
        } else {
          if (init) affine_luma_rows<T, M, true, 1>(q, sc, w, n, f, acc);
          else affine_luma_rows<T, M, false, 1>(q, sc, w, n, f, acc);
        }
      });
      return;
    }
  }
  for (int k = 0; k < sp.count; ++k) accumulate_row<DT, CIN, CW>(s, sp.first + k, n, pm::area_weight(sp, k), k == 0, acc);
}

// Per-output taps of one axis for area downscaling, padded to the same count and stored tap-major
// (idx[k * n + d], w[k * n + d]) so the horizontal pass vectorizes across output pixels; padding
// taps have weight 0 and a valid index, which adds an exact +0.
struct TapTable {
  int taps = 0, n = 0;
  int uniform_factor = 0;  // > 0: an integer downscale, output d = mean of source [d*f, d*f + f)
  std::vector<int> idx;
  std::vector<float> w;
};

TapTable area_table(const pm::AxisMap& a) {
  TapTable t;
  t.n = a.dst_len;
  for (int d = 0; d < a.dst_len; ++d) t.taps = std::max(t.taps, pm::area_span(a, d).count);
  t.idx.assign(static_cast<size_t>(t.taps) * t.n, 0);
  t.w.assign(static_cast<size_t>(t.taps) * t.n, 0.0f);
  for (int d = 0; d < a.dst_len; ++d) {
    const pm::AreaSpan sp = pm::area_span(a, d);
    for (int k = 0; k < t.taps; ++k) {
      t.idx[static_cast<size_t>(k) * t.n + d] = k < sp.count ? sp.first + k : sp.first;
      t.w[static_cast<size_t>(k) * t.n + d] = k < sp.count ? pm::area_weight(sp, k) : 0.0f;
    }
  }
  bool uniform = t.taps >= 2 && t.taps <= 16;
  for (int d = 0; d < t.n && uniform; ++d)
    for (int k = 0; k < t.taps && uniform; ++k)
      uniform = t.idx[static_cast<size_t>(k) * t.n + d] == d * t.taps + k &&
                t.w[static_cast<size_t>(k) * t.n + d] == t.w[0];
  if (uniform) t.uniform_factor = t.taps;
  return t;
}

// Integer downscale (the common 2x/4x/8x case): consecutive taps, one weight. Same additions in the
// same order as horizontal_pass, but contiguous loads the compiler turns into shuffles, ~6x faster
// than gathers (measured).
template <int F>
SLICERT_MULTIVERSION void horizontal_uniform_f(const float* __restrict acc, float w, int n, float* __restrict out) {
  for (int d = 0; d < n; ++d) {
    float s = 0.0f;
    for (int k = 0; k < F; ++k) s += w * acc[d * F + k];
    out[d] = s;
  }
}

void horizontal_uniform(const float* acc, int f, float w, int n, float* out) {
  switch (f) {
    case 2: return horizontal_uniform_f<2>(acc, w, n, out);
    case 3: return horizontal_uniform_f<3>(acc, w, n, out);
    case 4: return horizontal_uniform_f<4>(acc, w, n, out);
    case 5: return horizontal_uniform_f<5>(acc, w, n, out);
    case 6: return horizontal_uniform_f<6>(acc, w, n, out);
    case 7: return horizontal_uniform_f<7>(acc, w, n, out);
    case 8: return horizontal_uniform_f<8>(acc, w, n, out);
    default:
      for (int d = 0; d < n; ++d) {
        float s = 0.0f;
        for (int k = 0; k < f; ++k) s += w * acc[d * f + k];
        out[d] = s;
      }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// 16 outputs at a time held in one register across all their taps (the tap-major loop below reloads
// and stores every output once per tap). Same multiply, then add, in the same order: same bits.
__attribute__((target("avx512f"))) void horizontal_pass_avx512(const float* acc, const int* idx, const float* w,
                                                               int taps, int n, float* out) {
  int d = 0;
  for (; d + 16 <= n; d += 16) {
    __m512 s = _mm512_setzero_ps();
    for (int k = 0; k < taps; ++k) {
      const size_t o = static_cast<size_t>(k) * n + d;
      const __m512 a = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xffff, _mm512_loadu_si512(idx + o), acc, 4);
      s = _mm512_add_ps(s, _mm512_mul_ps(_mm512_loadu_ps(w + o), a));
    }
    _mm512_storeu_ps(out + d, s);
  }
  for (; d < n; ++d) {
    float s = 0.0f;
    for (int k = 0; k < taps; ++k) s += w[static_cast<size_t>(k) * n + d] * acc[idx[static_cast<size_t>(k) * n + d]];
    out[d] = s;
  }
}
const bool g_have_avx512 = __builtin_cpu_supports("avx512f");
#endif

SLICERT_MULTIVERSION void horizontal_pass_any(const float* __restrict acc, const int* __restrict idx,
                                              const float* __restrict w, int taps, int n, float* __restrict out) {
  for (int d = 0; d < n; ++d) out[d] = 0.0f;
  for (int k = 0; k < taps; ++k) {
    const int* ik = idx + static_cast<size_t>(k) * n;
    const float* wk = w + static_cast<size_t>(k) * n;
    for (int d = 0; d < n; ++d) out[d] += wk[d] * acc[ik[d]];
  }
}

void horizontal_pass(const float* acc, const int* idx, const float* w, int taps, int n, float* out) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (g_have_avx512) return horizontal_pass_avx512(acc, idx, w, taps, n, out);
#endif
  horizontal_pass_any(acc, idx, w, taps, n, out);
}

struct Plan {
  const PreparedSpec* spec;
  PixelSource src;
  pm::Geometry geo;
  pm::AxisMap ay, ax;
  int cw;
  char* out_slot;  // batch slot b of the output tensor
  float stat_shift = 0.0f, stat_div = 1.0f;
  // float16 output: a value that would round to Inf (see pm::kHalfOverflow); the call then raises.
  mutable std::atomic<bool> half_overflow{false};
  mutable std::atomic<float> half_overflow_value{0.0f};
};

// Output conversion of one contiguous run of normalized values.
void convert_f32(const float* src, char* dst, int n) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }

#if defined(__x86_64__) && defined(__GNUC__)
// F16C rounds to nearest even and overflows to Inf exactly like pm::float_to_half (tested bit-exact
// against NumPy), at 8 values per instruction instead of a branchy bit-twiddle per value.
__attribute__((target("avx,f16c"))) void convert_f16_f16c(const float* src, char* dst, int n) {
  int x = 0;
  for (; x + 8 <= n; x += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * x),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; x < n; ++x) {
    const uint16_t h = pm::float_to_half(src[x]);
    std::memcpy(dst + 2 * x, &h, 2);
  }
}
const bool g_have_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif

void convert_f16(const float* src, char* dst, int n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (g_have_f16c) return convert_f16_f16c(src, dst, n);
#endif
  for (int x = 0; x < n; ++x) {
    const uint16_t h = pm::float_to_half(src[x]);
    std::memcpy(dst + 2 * x, &h, 2);
  }
}

// Branch-free, so it vectorizes (the early-exit loop it guards did not: 0.1 ms of a 512^2 float16
// output); the loop above runs only to name the offending value.
SLICERT_MULTIVERSION bool all_below_half_overflow(const float* __restrict v, int n) {
  int bad = 0;  // an int reduction vectorizes; a bool one did not (GCC 12)
  for (int i = 0; i < n; ++i) bad |= !(std::fabs(v[i]) < pm::kHalfOverflow);
  return !bad;
}

SLICERT_MULTIVERSION void convert_i8(const float* __restrict src, int8_t* __restrict dst, int n, pm::OutputParams o) {
  for (int x = 0; x < n; ++x) dst[x] = pm::quantize_int8(src[x], o);
}

void store_row(const Plan& pl, int oy, const float* row) {
  const PreparedSpec& ps = *pl.spec;
  const int C = ps.out_channels, W = ps.out_w, H = ps.out_h, cw = pl.cw;
  const int od = ps.output.out_dtype, isz = out_itemsize(od);
  thread_local std::vector<float> tmp;
  tmp.resize(static_cast<size_t>(W) * C);
  float shift[3], div[3];
  for (int c = 0; c < C; ++c) pm::normalize_params(c, ps.output, pl.stat_shift, pl.stat_div, &shift[c], &div[c]);
  auto emit = [&](const float* vals, char* dst, int n) {
    if (od == pm::OUT_F32) convert_f32(vals, dst, n);
    else if (od == pm::OUT_F16) {
      if (!all_below_half_overflow(vals, n)) {
        for (int i = 0; i < n; ++i)
          if (!(std::fabs(vals[i]) < pm::kHalfOverflow)) {
            pl.half_overflow_value.store(vals[i]);
            pl.half_overflow.store(true);
            break;
          }
      }
      convert_f16(vals, dst, n);
    }
    else convert_i8(vals, reinterpret_cast<int8_t*>(dst), n, ps.output);
  };
  if (ps.nhwc) {
    float* t = tmp.data();
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < C; ++c) t[x * C + c] = (row[x * cw + (cw == 1 ? 0 : c)] - shift[c]) / div[c];
    emit(t, pl.out_slot + static_cast<int64_t>(oy) * W * C * isz, W * C);
    return;
  }
  for (int c = 0; c < C; ++c) {
    float* t = tmp.data();
    const float sh = shift[c], dv = div[c];
    if (cw == 1) {
      for (int x = 0; x < W; ++x) t[x] = (row[x] - sh) / dv;
    } else {
      for (int x = 0; x < W; ++x) t[x] = (row[x * 3 + c] - sh) / dv;
    }
    emit(t, pl.out_slot + (static_cast<int64_t>(c) * H + oy) * W * isz, W);
  }
}

// Fills row[0, out_w*cw) with the resampled working values of output row oy (pad included).
template <int DT, int CIN, int CW>
void compute_row(const Plan& pl, const TapTable* xt, const std::vector<pm::Taps2>& x2, int oy, float* row,
                 std::vector<float>& acc) {
  const pm::Geometry& g = pl.geo;
  const float pad = pl.spec->pad_value;
  const int cy = oy - g.top;
  if (cy < 0 || cy >= g.content_h) {
    std::fill(row, row + static_cast<size_t>(g.out_w) * CW, pad);
    return;
  }
  std::fill(row, row + static_cast<size_t>(g.left) * CW, pad);
  std::fill(row + static_cast<size_t>(g.left + g.content_w) * CW, row + static_cast<size_t>(g.out_w) * CW, pad);
  float* dst = row + static_cast<size_t>(g.left) * CW;
  const PixelSource& s = pl.src;

  if (pl.ay.kind == pm::AX_AREA_DOWN) {
    const int n = g.roi_w;
    acc.resize(static_cast<size_t>(n) * CW);
    const pm::AreaSpan sp = pm::area_span(pl.ay, cy);
    accumulate_span<DT, CIN, CW>(s, sp, n, acc.data());
    if constexpr (CW == 1) {
      if (xt->uniform_factor > 0) {
        horizontal_uniform(acc.data(), xt->uniform_factor, xt->w[0], g.content_w, dst);
      } else {
        horizontal_pass(acc.data(), xt->idx.data(), xt->w.data(), xt->taps, g.content_w, dst);
      }
    } else {
      std::fill(dst, dst + static_cast<size_t>(g.content_w) * CW, 0.0f);
      for (int k = 0; k < xt->taps; ++k)
        for (int cx = 0; cx < g.content_w; ++cx) {
          const size_t t = static_cast<size_t>(k) * xt->n + cx;
          for (int c = 0; c < CW; ++c) dst[cx * CW + c] += xt->w[t] * acc[static_cast<size_t>(xt->idx[t]) * CW + c];
        }
    }
    return;
  }

  // At most 2x2 taps: gather per output pixel, horizontal then vertical as OpenCV does.
  const pm::Taps2 ty = pm::taps2(pl.ay, cy);
  const char* r0 = s.img.base + static_cast<int64_t>(ty.s0) * s.img.sy;
  const char* r1 = s.img.base + static_cast<int64_t>(ty.s1) * s.img.sy;
  const int64_t sx = s.img.sx;
  if (pl.ay.kind == pm::AX_NEAREST) {
    for (int cx = 0; cx < g.content_w; ++cx) fetch<DT, CIN, CW>(s, r0 + x2[cx].s0 * sx, dst + cx * CW);
    return;
  }
  float a[3], b[3], c2[3], d[3];
  for (int cx = 0; cx < g.content_w; ++cx) {
    const pm::Taps2& tx = x2[cx];
    fetch<DT, CIN, CW>(s, r0 + tx.s0 * sx, a);
    fetch<DT, CIN, CW>(s, r0 + tx.s1 * sx, b);
    fetch<DT, CIN, CW>(s, r1 + tx.s0 * sx, c2);
    fetch<DT, CIN, CW>(s, r1 + tx.s1 * sx, d);
    for (int c = 0; c < CW; ++c) {
      const float top = a[c] * tx.w0 + b[c] * tx.w1, bottom = c2[c] * tx.w0 + d[c] * tx.w1;
      dst[cx * CW + c] = top * ty.w0 + bottom * ty.w1;
    }
  }
}

template <int DT, int CIN, int CW>
void run_plan(Plan& pl) {
  const pm::Geometry& g = pl.geo;
  TapTable xt;
  std::vector<pm::Taps2> x2;
  if (pl.ax.kind == pm::AX_AREA_DOWN) {
    xt = area_table(pl.ax);
  } else {
    x2.resize(g.content_w);
    for (int cx = 0; cx < g.content_w; ++cx) x2[cx] = pm::taps2(pl.ax, cx);
  }
  const int norm = pl.spec->output.normalize;
  const bool needs_stats = norm == pm::NORM_ZSCORE || norm == pm::NORM_MINMAX;
  const size_t row_len = static_cast<size_t>(g.out_w) * CW;
  // Rows per chunk: an area row costs ~roi_w * taps, a gather row ~content_w.
  const int min_chunk = pl.ay.kind == pm::AX_AREA_DOWN ? 1 : std::max(1, 4096 / std::max(1, g.content_w));

  if (!needs_stats) {
    parallel_for(g.out_h, min_chunk, [&](int y0, int y1) {
      thread_local std::vector<float> row, acc;
      row.resize(row_len);
      for (int oy = y0; oy < y1; ++oy) {
        compute_row<DT, CIN, CW>(pl, &xt, x2, oy, row.data(), acc);
        store_row(pl, oy, row.data());
      }
    });
    return;
  }
  // Per-image statistics need the whole resampled image first: resample into a float plane, reduce
  // over the content (never the letterbox pad), then normalize and convert.
  std::vector<float> plane(row_len * g.out_h);
  parallel_for(g.out_h, min_chunk, [&](int y0, int y1) {
    thread_local std::vector<float> acc;
    for (int oy = y0; oy < y1; ++oy) compute_row<DT, CIN, CW>(pl, &xt, x2, oy, plane.data() + row_len * oy, acc);
  });
  double sum = 0.0, lo = INFINITY, hi = -INFINITY;
  const double count = static_cast<double>(g.content_h) * g.content_w * CW;
  for (int y = g.top; y < g.top + g.content_h; ++y) {
    const float* r = plane.data() + row_len * y + static_cast<size_t>(g.left) * CW;
    for (size_t i = 0; i < static_cast<size_t>(g.content_w) * CW; ++i) {
      sum += r[i];
      lo = std::min(lo, static_cast<double>(r[i]));
      hi = std::max(hi, static_cast<double>(r[i]));
    }
  }
  const double mean = sum / count;
  double ss = 0.0;
  if (norm == pm::NORM_ZSCORE) {  // second pass: centred sum of squares (no cancellation)
    for (int y = g.top; y < g.top + g.content_h; ++y) {
      const float* r = plane.data() + row_len * y + static_cast<size_t>(g.left) * CW;
      for (size_t i = 0; i < static_cast<size_t>(g.content_w) * CW; ++i) ss += (r[i] - mean) * (r[i] - mean);
    }
  }
  pm::normalize_stats(norm, mean, std::sqrt(ss / count), lo, hi, pl.spec->out_min, pl.spec->out_max, &pl.stat_shift,
                      &pl.stat_div);
  parallel_for(g.out_h, std::max(1, 16384 / g.out_w), [&](int y0, int y1) {
    for (int oy = y0; oy < y1; ++oy) store_row(pl, oy, plane.data() + row_len * oy);
  });
}

template <int DT>
void dispatch_channels(Plan& pl) {
  const int cin = pl.src.img.channels;
  if (cin == 1) run_plan<DT, 1, 1>(pl);
  else if (pl.cw == 1) run_plan<DT, 3, 1>(pl);
  else run_plan<DT, 3, 3>(pl);
}

void check_finite_f32(const SourceImage& img) {
  std::mutex mu;
  int64_t bad_row = -1, bad_col = -1;
  parallel_for(static_cast<int>(img.h), 64, [&](int y0, int y1) {
    for (int y = y0; y < y1; ++y) {
      const char* p = img.base + static_cast<int64_t>(y) * img.sy;
      for (int64_t x = 0; x < img.w; ++x, p += img.sx)
        for (int c = 0; c < img.channels; ++c)
          if (!std::isfinite(load<float>(p + c * img.sc))) {
            std::lock_guard<std::mutex> lk(mu);
            if (bad_row < 0 || y < bad_row) { bad_row = y; bad_col = x; }
            return;
          }
    }
  });
  if (bad_row >= 0)
    throw InputError("input pixels contain NaN or Inf (first at ROI row " + std::to_string(bad_row) + ", column " +
                     std::to_string(bad_col) + "); SliceRT refuses non-finite pixels instead of guessing a value");
}

// Histogram equalization needs the distribution of the displayed values over the whole ROI before
// the first output pixel can be written.
struct EqualizeTables {
  std::vector<float> lut;    // grey 8/16-bit: folded table with equalization composed in
  std::vector<float> table;  // otherwise: kEqualizeBins entries applied to the working value
};

template <int DT, int CIN>
EqualizeTables build_equalization(const PixelSource& s) {
  const SourceImage& img = s.img;
  const float lo = s.lo, hi = s.hi;
  std::vector<double> bins(pm::kEqualizeBins, 0.0);
  std::mutex mu;
  EqualizeTables out;
  if constexpr (CIN == 1 && is_lut_dtype(DT)) {
    // Histogram of stored values, then of their displayed values: one cheap pass over the pixels.
    const int n = DT == pm::IN_U8 ? 256 : 65536;
    const int offset = DT == pm::IN_I16 ? 32768 : 0;
    std::vector<uint64_t> raw(n, 0);
    parallel_for(static_cast<int>(img.h), 32, [&](int y0, int y1) {
      std::vector<uint32_t> local(n, 0);
      for (int y = y0; y < y1; ++y) {
        const char* p = img.base + static_cast<int64_t>(y) * img.sy;
        for (int64_t x = 0; x < img.w; ++x, p += img.sx)
          ++local[static_cast<int>(load<typename Storage<DT>::type>(p)) + offset];
      }
      std::lock_guard<std::mutex> lk(mu);
      for (int i = 0; i < n; ++i) raw[i] += local[i];
    });
    for (int i = 0; i < n; ++i)
      if (raw[i]) bins[pm::equalize_bin(s.lut[i], lo, hi)] += static_cast<double>(raw[i]);
  } else {
    parallel_for(static_cast<int>(img.h), 32, [&](int y0, int y1) {
      std::vector<double> local(pm::kEqualizeBins, 0.0);
      PixelSource plain = s;
      plain.eq_table = nullptr;
      float v[3];
      for (int y = y0; y < y1; ++y) {
        const char* p = img.base + static_cast<int64_t>(y) * img.sy;
        for (int64_t x = 0; x < img.w; ++x, p += img.sx) {
          fetch<DT, CIN, 1>(plain, p, v);
          local[pm::equalize_bin(v[0], lo, hi)] += 1.0;
        }
      }
      std::lock_guard<std::mutex> lk(mu);
      for (int i = 0; i < pm::kEqualizeBins; ++i) bins[i] += local[i];
    });
  }
  std::vector<double> cdf(pm::kEqualizeBins);
  double run = 0.0, cdf_min = -1.0;
  for (int i = 0; i < pm::kEqualizeBins; ++i) {
    run += bins[i];
    cdf[i] = run;
    if (cdf_min < 0.0 && bins[i] > 0.0) cdf_min = run;
  }
  out.table.resize(pm::kEqualizeBins);
  for (int i = 0; i < pm::kEqualizeBins; ++i) out.table[i] = pm::equalize_value(cdf[i], cdf_min, run, lo, hi);
  if constexpr (CIN == 1 && is_lut_dtype(DT)) {
    const int n = DT == pm::IN_U8 ? 256 : 65536;
    out.lut.resize(n);
    for (int i = 0; i < n; ++i) out.lut[i] = out.table[pm::equalize_bin(s.lut[i], lo, hi)];
    out.table.clear();
  }
  return out;
}

template <int DT>
void run_dtype(const PreparedSpec& ps, Plan& pl) {
  PixelSource& s = pl.src;
  // Grey 8/16-bit input with equalization needs the table (equalization is folded into it);
  // otherwise an affine chain is evaluated directly and anything else goes through the table.
  const bool fold_eq = ps.equalize && s.img.channels == 1 && is_lut_dtype(DT);
  if (ps.use_affine && !fold_eq) s.affine = &ps.affine;
  else if constexpr (is_lut_dtype(DT)) s.lut = ps.folded_lut(DT).data();
  if constexpr (DT == pm::IN_F32) check_finite_f32(s.img);
  EqualizeTables eq;
  if (ps.equalize) {
    if (s.img.channels == 1) eq = build_equalization<DT, 1>(s);
    else eq = build_equalization<DT, 3>(s);
    if (!eq.lut.empty()) s.lut = eq.lut.data();
    if (!eq.table.empty()) s.eq_table = eq.table.data();
  }
  dispatch_channels<DT>(pl);
}

}  // namespace

pm::Geometry resolve_geometry(const PreparedSpec& ps, int64_t src_h, int64_t src_w) {
  if (src_h < 1 || src_w < 1) throw InputError("input image is empty (" + std::to_string(src_h) + "x" +
                                               std::to_string(src_w) + " pixels)");
  if (src_h > INT32_MAX || src_w > INT32_MAX) throw InputError("input image side exceeds 2^31 - 1 pixels");
  int y0 = 0, x0 = 0, h = static_cast<int>(src_h), w = static_cast<int>(src_w);
  if (ps.has_roi) {
    if (static_cast<int64_t>(ps.roi_y0) + ps.roi_h > src_h || static_cast<int64_t>(ps.roi_x0) + ps.roi_w > src_w)
      throw InputError("PreprocessSpec.roi (y0=" + std::to_string(ps.roi_y0) + ", x0=" + std::to_string(ps.roi_x0) +
                       ", h=" + std::to_string(ps.roi_h) + ", w=" + std::to_string(ps.roi_w) +
                       ") reaches outside the " + std::to_string(src_h) + "x" + std::to_string(src_w) + " image");
    y0 = ps.roi_y0;
    x0 = ps.roi_x0;
    h = ps.roi_h;
    w = ps.roi_w;
  }
  return pm::make_geometry(y0, x0, h, w, ps.out_h, ps.out_w, ps.letterbox ? 1 : 0);
}

void preprocess_cpu(const PreparedSpec& ps, const SourceImage& full, char* out_slot) {
  Plan pl;
  pl.spec = &ps;
  pl.geo = resolve_geometry(ps, full.h, full.w);
  PixelSource& s = pl.src;
  s.img = full;
  s.img.base = full.base + pl.geo.roi_y0 * full.sy + pl.geo.roi_x0 * full.sx;
  s.img.h = pl.geo.roi_h;
  s.img.w = pl.geo.roi_w;
  s.lut = nullptr;
  s.affine = nullptr;
  s.pp = ps.pixel_params();
  s.eq_table = nullptr;
  s.lo = ps.out_min;
  s.hi = ps.out_max;
  pl.cw = (full.channels == 3 && ps.out_channels == 3) ? 3 : 1;
  pl.out_slot = out_slot;
  pm::make_axes(pl.geo.roi_h, pl.geo.roi_w, pl.geo.content_h, pl.geo.content_w, ps.resize, &pl.ay, &pl.ax);
  switch (full.dtype) {
    case pm::IN_U8: run_dtype<pm::IN_U8>(ps, pl); break;
    case pm::IN_U16: run_dtype<pm::IN_U16>(ps, pl); break;
    case pm::IN_I16: run_dtype<pm::IN_I16>(ps, pl); break;
    case pm::IN_I32: run_dtype<pm::IN_I32>(ps, pl); break;
    case pm::IN_F32: run_dtype<pm::IN_F32>(ps, pl); break;
    default: throw InputError("unsupported input dtype");
  }
  if (pl.half_overflow.load())
    throw InputError("out_dtype=float16: an output value (" + std::to_string(pl.half_overflow_value.load()) +
                     ") is beyond the float16 range |x| <= 65504 and would reach the model as Inf; window the input "
                     "(voi_function), normalize it, or use float32 output");
}

}  // namespace slicert
