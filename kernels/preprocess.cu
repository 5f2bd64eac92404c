// CUDA implementation of the fused preprocessing kernel. Same semantics as cpp/preprocess.cpp: the
// per-pixel math, the resampling taps, the letterbox geometry and the output conversion all come
// from preprocess_math.cuh, compiled here for the device.
//
// One thread per output pixel gathers its source taps and evaluates pm::pixel_value per tap (the GPU
// has the arithmetic to spare, so no folded table is uploaded). Per-image statistics (zscore /
// minmax) and histogram equalization add small passes; everything is enqueued on the caller's stream,
// scratch comes from the stream-ordered allocator, and nothing synchronizes except the optional
// finite-value check of float32 input (which must read its answer back).
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_check.cuh"
#include "preprocess_launch.hpp"
#include "preprocess_math.cuh"

namespace slicert {
namespace {

constexpr int kStatBlocks = 128;
constexpr int kStatThreads = 256;

template <int DT>
__device__ __forceinline__ float load_value(const char* p) {
  // Alignment of the base pointer and of every stride to the element size is checked on the host.
  if constexpr (DT == pm::IN_U8) return static_cast<float>(*reinterpret_cast<const uint8_t*>(p));
  else if constexpr (DT == pm::IN_U16) return static_cast<float>(*reinterpret_cast<const uint16_t*>(p));
  else if constexpr (DT == pm::IN_I16) return static_cast<float>(*reinterpret_cast<const int16_t*>(p));
  else if constexpr (DT == pm::IN_I32) return static_cast<float>(*reinterpret_cast<const int32_t*>(p));
  else return *reinterpret_cast<const float*>(p);
}

// Working values (1 or 3 channels) of ROI pixel (r, c), equalization included when eq != nullptr.
template <int DT>
__device__ __forceinline__ float displayed(const CudaPreprocessArgs& a, const char* p) {
  const float x = load_value<DT>(p);
  return a.use_affine ? pm::affine_value(x, a.affine) : pm::pixel_value(x, a.pixel);
}

template <int DT>
__device__ __forceinline__ void fetch(const CudaPreprocessArgs& a, const float* eq, int r, int c, float* v) {
  const char* p = a.src + r * a.sy + c * a.sx;
  const float lo = a.pixel.out_min, hi = a.pixel.out_max;
  if (a.in_channels == 1) {
    float g = displayed<DT>(a, p);
    v[0] = eq ? eq[pm::equalize_bin(g, lo, hi)] : g;
    return;
  }
  const float R = displayed<DT>(a, p), G = displayed<DT>(a, p + a.sc), B = displayed<DT>(a, p + 2 * a.sc);
  if (a.cw == 3) {
    v[0] = R;
    v[1] = G;
    v[2] = B;
  } else {
    const float y = pm::luma_bt601(R, G, B);
    v[0] = eq ? eq[pm::equalize_bin(y, lo, hi)] : y;
  }
}

__device__ __forceinline__ void store(const CudaPreprocessArgs& a, int oy, int ox, const float* v, float shift,
                                      float div) {
  const int C = a.out_channels, H = a.geo.out_h, W = a.geo.out_w;
  for (int c = 0; c < C; ++c) {
    const float val = pm::normalize_value(v[a.cw == 1 ? 0 : c], c, a.output, shift, div);
    const int64_t idx = a.nhwc ? (static_cast<int64_t>(oy) * W + ox) * C + c
                               : (static_cast<int64_t>(c) * H + oy) * W + ox;
    if (a.output.out_dtype == pm::OUT_F32) reinterpret_cast<float*>(a.out_slot)[idx] = val;
    else if (a.output.out_dtype == pm::OUT_F16)
      reinterpret_cast<uint16_t*>(a.out_slot)[idx] = pm::float_to_half(pm::saturate_half(val));
    else reinterpret_cast<int8_t*>(a.out_slot)[idx] = pm::quantize_int8(val, a.output);
  }
}

// Resample one output pixel; write it converted, or (per-image statistics pending) as float to plane.
template <int DT>
__global__ void resample_kernel(CudaPreprocessArgs a, const float* eq, float* plane) {
  const int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= a.geo.out_w || oy >= a.geo.out_h) return;
  float v[3] = {a.pad_value, a.pad_value, a.pad_value};
  const int cy = oy - a.geo.top, cx = ox - a.geo.left;
  if (cy >= 0 && cy < a.geo.content_h && cx >= 0 && cx < a.geo.content_w) {
    if (a.ay.kind == pm::AX_AREA_DOWN) {
      const pm::AreaSpan sy = pm::area_span(a.ay, cy), sx = pm::area_span(a.ax, cx);
      float acc[3] = {0.f, 0.f, 0.f};
      for (int ky = 0; ky < sy.count; ++ky) {
        float row[3] = {0.f, 0.f, 0.f}, t[3];
        for (int kx = 0; kx < sx.count; ++kx) {
          fetch<DT>(a, eq, sy.first + ky, sx.first + kx, t);
          const float wx = pm::area_weight(sx, kx);
          for (int c = 0; c < a.cw; ++c) row[c] += wx * t[c];
        }
        const float wy = pm::area_weight(sy, ky);
        for (int c = 0; c < a.cw; ++c) acc[c] += wy * row[c];
      }
      for (int c = 0; c < a.cw; ++c) v[c] = acc[c];
    } else {
      const pm::Taps2 ty = pm::taps2(a.ay, cy), tx = pm::taps2(a.ax, cx);
      if (a.ay.kind == pm::AX_NEAREST) {
        fetch<DT>(a, eq, ty.s0, tx.s0, v);
      } else {
        float p00[3], p01[3], p10[3], p11[3];
        fetch<DT>(a, eq, ty.s0, tx.s0, p00);
        fetch<DT>(a, eq, ty.s0, tx.s1, p01);
        fetch<DT>(a, eq, ty.s1, tx.s0, p10);
        fetch<DT>(a, eq, ty.s1, tx.s1, p11);
        for (int c = 0; c < a.cw; ++c) {
          const float top = p00[c] * tx.w0 + p01[c] * tx.w1, bottom = p10[c] * tx.w0 + p11[c] * tx.w1;
          v[c] = top * ty.w0 + bottom * ty.w1;
        }
      }
    }
  }
  if (plane != nullptr) {
    for (int c = 0; c < a.cw; ++c) plane[(static_cast<int64_t>(oy) * a.geo.out_w + ox) * a.cw + c] = v[c];
    return;
  }
  store(a, oy, ox, v, 0.0f, 1.0f);
}

__global__ void store_kernel(CudaPreprocessArgs a, const float* plane, const float* shift_div) {
  const int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= a.geo.out_w || oy >= a.geo.out_h) return;
  float v[3];
  for (int c = 0; c < a.cw; ++c) v[c] = plane[(static_cast<int64_t>(oy) * a.geo.out_w + ox) * a.cw + c];
  store(a, oy, ox, v, shift_div[0], shift_div[1]);
}

// --- per-image statistics over the content (never the pad), deterministic two-level reduction ---
__device__ __forceinline__ float content_value(const CudaPreprocessArgs& a, const float* plane, int64_t i) {
  const int64_t row_len = static_cast<int64_t>(a.geo.content_w) * a.cw;
  const int64_t y = i / row_len, rem = i % row_len;
  return plane[((a.geo.top + y) * a.geo.out_w + a.geo.left) * a.cw + rem];
}

__global__ void stats_partial_kernel(CudaPreprocessArgs a, const float* plane, const double* mean, double* part_sum,
                                     float* part_min, float* part_max) {
  __shared__ double s_sum[kStatThreads];
  __shared__ float s_min[kStatThreads], s_max[kStatThreads];
  const int64_t n = static_cast<int64_t>(a.geo.content_h) * a.geo.content_w * a.cw;
  double sum = 0.0;
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = content_value(a, plane, i);
    if (mean) {
      const double d = v - *mean;
      sum += d * d;  // second pass: centred sum of squares
    } else {
      sum += v;
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
  }
  s_sum[threadIdx.x] = sum;
  s_min[threadIdx.x] = lo;
  s_max[threadIdx.x] = hi;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step /= 2) {
    if (threadIdx.x < step) {
      s_sum[threadIdx.x] += s_sum[threadIdx.x + step];
      s_min[threadIdx.x] = fminf(s_min[threadIdx.x], s_min[threadIdx.x + step]);
      s_max[threadIdx.x] = fmaxf(s_max[threadIdx.x], s_max[threadIdx.x + step]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    part_sum[blockIdx.x] = s_sum[0];
    if (part_min) part_min[blockIdx.x] = s_min[0];
    if (part_max) part_max[blockIdx.x] = s_max[0];
  }
}

// summary = {mean, lo, hi, sum_sq}; stage 0 reduces sums/min/max, stage 1 the centred squares and
// turns everything into (shift, divisor) with the same rule as the CPU path.
__global__ void stats_finalize_kernel(CudaPreprocessArgs a, int stage, const double* part_sum, const float* part_min,
                                      const float* part_max, double* summary, float* shift_div) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double n = static_cast<double>(a.geo.content_h) * a.geo.content_w * a.cw;
  double sum = 0.0;
  for (int b = 0; b < kStatBlocks; ++b) sum += part_sum[b];
  if (stage == 0) {
    float lo = INFINITY, hi = -INFINITY;
    for (int b = 0; b < kStatBlocks; ++b) {
      lo = fminf(lo, part_min[b]);
      hi = fmaxf(hi, part_max[b]);
    }
    summary[0] = sum / n;
    summary[1] = lo;
    summary[2] = hi;
    return;
  }
  pm::normalize_stats(a.output.normalize, summary[0], sqrt(sum / n), summary[1], summary[2], a.pixel.out_min,
                      a.pixel.out_max, &shift_div[0], &shift_div[1]);
}

// --- histogram equalization: histogram of displayed values over the ROI, then the CDF table ---
template <int DT>
__global__ void histogram_kernel(CudaPreprocessArgs a, unsigned int* hist) {
  __shared__ unsigned int bins[pm::kEqualizeBins];
  for (int i = threadIdx.x; i < pm::kEqualizeBins; i += blockDim.x) bins[i] = 0;
  __syncthreads();
  const int64_t n = static_cast<int64_t>(a.geo.roi_h) * a.geo.roi_w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[3];
    fetch<DT>(a, nullptr, static_cast<int>(i / a.geo.roi_w), static_cast<int>(i % a.geo.roi_w), v);
    atomicAdd(&bins[pm::equalize_bin(v[0], a.pixel.out_min, a.pixel.out_max)], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < pm::kEqualizeBins; i += blockDim.x)
    if (bins[i]) atomicAdd(&hist[i], bins[i]);
}

// One block: the CDF as a parallel inclusive scan of the 4096 bin counts (each of 1024 threads owns 4
// consecutive bins), instead of one thread walking 2 x 4096 bins in FP64 (slow on Orin, whose FP64 rate
// is 1/64 of FP32). Counts are summed as 64-bit integers, exactly, so `run`, `cdf_min` and `total`
// reach pm::equalize_value as the same doubles the serial loop produced: the table is bit-identical.
constexpr int kScanThreads = 1024;
constexpr int kBinsPerThread = pm::kEqualizeBins / kScanThreads;
static_assert(pm::kEqualizeBins % kScanThreads == 0, "bins must split evenly over the scan threads");

__global__ void __launch_bounds__(kScanThreads) equalize_table_kernel(const unsigned int* hist, float lo, float hi,
                                                                       float* table) {
  __shared__ unsigned long long partial[kScanThreads];
  __shared__ int first_nonzero;
  const int t = threadIdx.x;
  if (t == 0) first_nonzero = pm::kEqualizeBins;
  unsigned long long own[kBinsPerThread];
  unsigned long long sum = 0;
  for (int k = 0; k < kBinsPerThread; ++k) {
    own[k] = hist[t * kBinsPerThread + k];
    sum += own[k];
  }
  partial[t] = sum;
  __syncthreads();
  for (int k = 0; k < kBinsPerThread; ++k)
    if (own[k] > 0) {
      atomicMin(&first_nonzero, t * kBinsPerThread + k);
      break;
    }
  for (int step = 1; step < kScanThreads; step *= 2) {  // Hillis-Steele inclusive scan of the thread sums
    const unsigned long long add = t >= step ? partial[t - step] : 0ull;
    __syncthreads();
    partial[t] += add;
    __syncthreads();
  }
  const double total = static_cast<double>(partial[kScanThreads - 1]);
  unsigned long long run = t > 0 ? partial[t - 1] : 0ull;
  const int first = first_nonzero;
  // cdf_min: the cumulative count at the first non-empty bin (-1 when every bin is empty, as before).
  double cdf_min = -1.0;
  if (first < pm::kEqualizeBins) {
    const int owner = first / kBinsPerThread;
    unsigned long long c = owner > 0 ? partial[owner - 1] : 0ull;
    for (int k = owner * kBinsPerThread; k <= first; ++k) c += hist[k];
    cdf_min = static_cast<double>(c);
  }
  for (int k = 0; k < kBinsPerThread; ++k) {
    run += own[k];
    table[t * kBinsPerThread + k] = pm::equalize_value(static_cast<double>(run), cdf_min, total, lo, hi);
  }
}

template <int DT>
__global__ void finite_kernel(CudaPreprocessArgs a, unsigned long long* first_bad) {
  const int64_t n = static_cast<int64_t>(a.geo.roi_h) * a.geo.roi_w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i / a.geo.roi_w), c = static_cast<int>(i % a.geo.roi_w);
    const char* p = a.src + r * a.sy + c * a.sx;
    for (int ch = 0; ch < a.in_channels; ++ch)
      if (!isfinite(load_value<DT>(p + ch * a.sc)))
        atomicMin(first_bad, (static_cast<unsigned long long>(r) << 32) | static_cast<unsigned int>(c));
  }
}

size_t align_up(size_t v) { return (v + 255) & ~static_cast<size_t>(255); }

template <int DT>
void enqueue(const CudaPreprocessArgs& a, cudaStream_t stream, char* scratch, size_t plane_off, bool stats) {
  unsigned long long* first_bad = reinterpret_cast<unsigned long long*>(scratch);
  unsigned int* hist = reinterpret_cast<unsigned int*>(scratch + 256);
  float* eq_table = reinterpret_cast<float*>(scratch + 256 + align_up(pm::kEqualizeBins * 4));
  char* stat_base = scratch + 256 + 2 * align_up(pm::kEqualizeBins * 4);
  double* part_sum = reinterpret_cast<double*>(stat_base);
  float* part_min = reinterpret_cast<float*>(stat_base + align_up(kStatBlocks * 8));
  float* part_max = reinterpret_cast<float*>(stat_base + align_up(kStatBlocks * 8) + align_up(kStatBlocks * 4));
  double* summary = reinterpret_cast<double*>(stat_base + align_up(kStatBlocks * 8) + 2 * align_up(kStatBlocks * 4));
  float* shift_div = reinterpret_cast<float*>(reinterpret_cast<char*>(summary) + 256);
  float* plane = stats ? reinterpret_cast<float*>(scratch + plane_off) : nullptr;
  (void)first_bad;

  const float* eq = nullptr;
  if (a.equalize) {
    SLICERT_CUDA_CHECK(cudaMemsetAsync(hist, 0, pm::kEqualizeBins * sizeof(unsigned int), stream));
    histogram_kernel<DT><<<120, 256, 0, stream>>>(a, hist);
    SLICERT_CUDA_CHECK_LAUNCH();
    equalize_table_kernel<<<1, kScanThreads, 0, stream>>>(hist, a.pixel.out_min, a.pixel.out_max, eq_table);
    SLICERT_CUDA_CHECK_LAUNCH();
    eq = eq_table;
  }
  const dim3 block(32, 8);
  const dim3 grid((a.geo.out_w + block.x - 1) / block.x, (a.geo.out_h + block.y - 1) / block.y);
  resample_kernel<DT><<<grid, block, 0, stream>>>(a, eq, plane);
  SLICERT_CUDA_CHECK_LAUNCH();
  if (!stats) return;
  stats_partial_kernel<<<kStatBlocks, kStatThreads, 0, stream>>>(a, plane, nullptr, part_sum, part_min, part_max);
  SLICERT_CUDA_CHECK_LAUNCH();
  stats_finalize_kernel<<<1, 1, 0, stream>>>(a, 0, part_sum, part_min, part_max, summary, shift_div);
  SLICERT_CUDA_CHECK_LAUNCH();
  stats_partial_kernel<<<kStatBlocks, kStatThreads, 0, stream>>>(a, plane, summary, part_sum, nullptr, nullptr);
  SLICERT_CUDA_CHECK_LAUNCH();
  stats_finalize_kernel<<<1, 1, 0, stream>>>(a, 1, part_sum, nullptr, nullptr, summary, shift_div);
  SLICERT_CUDA_CHECK_LAUNCH();
  store_kernel<<<grid, block, 0, stream>>>(a, plane, shift_div);
  SLICERT_CUDA_CHECK_LAUNCH();
}

template <int DT>
bool check_finite(const CudaPreprocessArgs& a, cudaStream_t stream, char* scratch, long long* nonfinite_at) {
  unsigned long long* first_bad = reinterpret_cast<unsigned long long*>(scratch);
  SLICERT_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), stream));
  finite_kernel<DT><<<120, 256, 0, stream>>>(a, first_bad);
  SLICERT_CUDA_CHECK_LAUNCH();
  unsigned long long host = 0;
  SLICERT_CUDA_CHECK(cudaMemcpyAsync(&host, first_bad, sizeof host, cudaMemcpyDeviceToHost, stream));
  SLICERT_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host == ~0ull) {
    *nonfinite_at = -1;
    return true;
  }
  *nonfinite_at = static_cast<long long>(host);
  return false;
}

// Returns scratch to the stream-ordered pool on every exit path.
struct ScratchGuard {
  char* ptr = nullptr;
  cudaStream_t stream;
  ~ScratchGuard() {
    if (ptr) cudaFreeAsync(ptr, stream);
  }
};

}  // namespace

void launch_preprocess(const CudaPreprocessArgs& a, cudaStream_t stream, long long* nonfinite_at) {
  const bool stats = a.output.normalize == pm::NORM_ZSCORE || a.output.normalize == pm::NORM_MINMAX;
  const size_t fixed = 256 + 2 * align_up(pm::kEqualizeBins * 4) + align_up(kStatBlocks * 8) +
                       2 * align_up(kStatBlocks * 4) + 512;
  const size_t plane_bytes = stats ? static_cast<size_t>(a.geo.out_h) * a.geo.out_w * a.cw * sizeof(float) : 0;
  ScratchGuard scratch;
  scratch.stream = stream;
  SLICERT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch.ptr), fixed + plane_bytes, stream));
  switch (a.in_dtype) {
#define SLICERT_DISPATCH(DT)                                                                      \
  case DT:                                                                                        \
    if (nonfinite_at != nullptr && !check_finite<DT>(a, stream, scratch.ptr, nonfinite_at)) return; \
    enqueue<DT>(a, stream, scratch.ptr, fixed, stats);                                            \
    break;
    SLICERT_DISPATCH(pm::IN_U8)
    SLICERT_DISPATCH(pm::IN_U16)
    SLICERT_DISPATCH(pm::IN_I16)
    SLICERT_DISPATCH(pm::IN_I32)
    SLICERT_DISPATCH(pm::IN_F32)
#undef SLICERT_DISPATCH
    default:
      throw InputError("launch_preprocess: unsupported input dtype");
  }
}

}  // namespace slicert
