// CUDA resources owned by the native module (pycuda needs a driver to even import; the TensorRT
// backend gets its memory, streams, events and graphs from here) and the CUDA preprocessing entry.
//
// Every runtime call goes through SLICERT_CUDA_CHECK, so a machine without a driver gets a
// CudaError carrying cudaErrorInsufficientDriver (35), device, file and line; a build without CUDA
// raises BackendUnavailable. Destructors never throw (errors at teardown are ignored on purpose:
// the context may already be gone at interpreter exit).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "errors.hpp"
#include "prepared_spec.hpp"
#include "preprocess_cpu.hpp"
#include "preprocess_native.hpp"

#ifdef SLICERT_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda_check.cuh"
#include "postprocess_launch.hpp"
#include "preprocess_launch.hpp"
#endif

namespace py = pybind11;

namespace slicert {
namespace {

#ifdef SLICERT_WITH_CUDA

void require_device(int device) {
  int count = 0;
  SLICERT_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw InputError("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
                     " visible)");
}

// Makes `device` current for the scope and restores the previous one.
struct DeviceScope {
  int previous = -1;
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous) != cudaSuccess) {
      cudaGetLastError();
      previous = -1;
    }
    SLICERT_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() {
    if (previous >= 0) cudaSetDevice(previous);
  }
};

// The preprocessing scratch comes from the device's default stream-ordered pool, whose release
// threshold is 0: every stream synchronization would hand its pages back to the OS and the next slice
// would map them again (CUDA Programming Guide, stream-ordered allocator, "physical page caching
// behavior"). Keep up to 64 MiB cached per device; set once per device, on the first Stream.
void keep_pool_memory(int device) {
  static std::mutex mu;
  static std::set<int> done;
  std::lock_guard<std::mutex> lk(mu);
  if (done.count(device)) return;
  done.insert(device);
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess || !supported) {
    cudaGetLastError();
    return;  // no pools (some vGPU/TCC setups): cudaMallocAsync then fails with its own CudaError
  }
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
    uint64_t keep = 64ull << 20;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  cudaGetLastError();  // an optimization only: never fail a Stream over it
}

class Event;

class Stream {
 public:
  explicit Stream(int device) : device_(device) {
    require_device(device);
    DeviceScope scope(device);
    SLICERT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    keep_pool_memory(device);
  }
  ~Stream() { close(); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  void close() {
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }
  cudaStream_t get() const {
    if (!stream_) throw InputError("Stream is closed");
    return stream_;
  }
  void synchronize() const {
    cudaStream_t s = get();
    py::gil_scoped_release nogil;
    SLICERT_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  bool capturing() const {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    SLICERT_CUDA_CHECK(cudaStreamIsCapturing(get(), &status));
    return status != cudaStreamCaptureStatusNone;
  }
  int device() const { return device_; }
  uintptr_t handle() const { return reinterpret_cast<uintptr_t>(get()); }
  cudaStream_t raw() const noexcept { return stream_; }  // nullptr once closed; never throws
  // Later work on this stream waits until `event` (recorded on any stream) has completed; the host does
  // not block.
  void wait(const Event& event) const;

 private:
  cudaStream_t stream_ = nullptr;
  int device_;
};

class Event {
 public:
  Event(bool timing, int device) : device_(device) {
    require_device(device);
    DeviceScope scope(device);
    SLICERT_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~Event() {
    if (event_) cudaEventDestroy(event_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(const Stream& s) { SLICERT_CUDA_CHECK(cudaEventRecord(event_, s.get())); }
  // Record on a stream SliceRT does not own, given as a handle: a cudaStream_t as an integer, or 1
  // (cudaStreamLegacy) / 2 (cudaStreamPerThread), the CUDA Array Interface v3 conventions.
  void record_on(uintptr_t handle) {
    if (handle == 0) throw InputError("Event.record_on: stream handle 0 is ambiguous (CAI v3 disallows it)");
    DeviceScope scope(device_);
    SLICERT_CUDA_CHECK(cudaEventRecord(event_, reinterpret_cast<cudaStream_t>(handle)));
  }
  void synchronize() {
    py::gil_scoped_release nogil;
    SLICERT_CUDA_CHECK(cudaEventSynchronize(event_));
  }
  bool query() {
    const cudaError_t st = cudaEventQuery(event_);
    if (st == cudaErrorNotReady) {
      cudaGetLastError();
      return false;
    }
    SLICERT_CUDA_CHECK(st);
    return true;
  }
  // Milliseconds from `start` to this event (both recorded, this one completed).
  float elapsed_ms_since(const Event& start) {
    float ms = 0.0f;
    SLICERT_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
  int device_;
};

void Stream::wait(const Event& event) const { SLICERT_CUDA_CHECK(cudaStreamWaitEvent(get(), event.get(), 0)); }

// Contiguous C-order host array: (pointer, bytes). Refuses anything the copy would misread.
std::pair<char*, size_t> host_bytes(const py::array& a, bool writable, const char* what) {
  if (!(a.flags() & py::array::c_style))
    throw InputError(std::string(what) + ": host array must be C-contiguous");
  if (writable && !a.writeable()) throw InputError(std::string(what) + ": host array is read-only");
  return {static_cast<char*>(const_cast<void*>(a.data())), static_cast<size_t>(a.nbytes())};
}

class DeviceBuffer {
 public:
  DeviceBuffer(size_t nbytes, int device) : nbytes_(nbytes), device_(device) {
    if (nbytes == 0) throw InputError("DeviceBuffer: nbytes must be > 0");
    require_device(device);
    DeviceScope scope(device);
    SLICERT_CUDA_CHECK(cudaMalloc(&ptr_, nbytes));
  }
  ~DeviceBuffer() { free(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void free() noexcept {  // also runs from the destructor: must not throw
    if (ptr_) {
      int previous = -1;
      if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
      cudaSetDevice(device_);
      cudaFree(ptr_);
      if (previous >= 0) cudaSetDevice(previous);
      cudaGetLastError();
    }
    ptr_ = nullptr;
  }
  char* data() const {
    if (!ptr_) throw InputError("DeviceBuffer has been freed");
    return static_cast<char*>(ptr_);
  }
  void check_range(size_t offset, size_t n, const char* what) const {
    if (offset > nbytes_ || n > nbytes_ - offset)
      throw InputError(std::string(what) + ": " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                       " exceed the " + std::to_string(nbytes_) + "-byte device buffer");
  }
  // Asynchronous on `stream` when given (truly asynchronous from pinned memory; from pageable
  // memory the runtime stages the data before returning, so the array may be reused at once).
  void copy_from_host(const py::array& src, const Stream* stream, size_t offset) {
    auto [p, n] = host_bytes(src, false, "DeviceBuffer.copy_from_host");
    check_range(offset, n, "DeviceBuffer.copy_from_host");
    char* dst = data() + offset;
    py::gil_scoped_release nogil;
    if (stream) SLICERT_CUDA_CHECK(cudaMemcpyAsync(dst, p, n, cudaMemcpyHostToDevice, stream->get()));
    else SLICERT_CUDA_CHECK(cudaMemcpy(dst, p, n, cudaMemcpyHostToDevice));
  }
  void copy_to_host(py::array& dst, const Stream* stream, size_t offset) {
    auto [p, n] = host_bytes(dst, true, "DeviceBuffer.copy_to_host");
    check_range(offset, n, "DeviceBuffer.copy_to_host");
    const char* src = data() + offset;
    py::gil_scoped_release nogil;
    if (stream) SLICERT_CUDA_CHECK(cudaMemcpyAsync(p, src, n, cudaMemcpyDeviceToHost, stream->get()));
    else SLICERT_CUDA_CHECK(cudaMemcpy(p, src, n, cudaMemcpyDeviceToHost));
  }
  void memset(int value, const Stream* stream) {
    if (stream) SLICERT_CUDA_CHECK(cudaMemsetAsync(data(), value, nbytes_, stream->get()));
    else SLICERT_CUDA_CHECK(cudaMemset(data(), value, nbytes_));
  }
  size_t nbytes() const { return nbytes_; }
  int device() const { return device_; }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(data()); }

 private:
  void* ptr_ = nullptr;
  size_t nbytes_;
  int device_;
};

class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t nbytes) : nbytes_(nbytes) {
    if (nbytes == 0) throw InputError("PinnedBuffer: nbytes must be > 0");
    int count = 0;
    SLICERT_CUDA_CHECK(cudaGetDeviceCount(&count));
    SLICERT_CUDA_CHECK(cudaHostAlloc(&ptr_, nbytes, cudaHostAllocPortable));
  }
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  size_t nbytes() const { return nbytes_; }
  void* data() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  size_t nbytes_;
};

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph() { reset(); }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  void begin_capture(const Stream& s) {
    reset();
    // Thread-local mode: other threads' unrelated CUDA calls do not invalidate this capture.
    SLICERT_CUDA_CHECK(cudaStreamBeginCapture(s.get(), cudaStreamCaptureModeThreadLocal));
  }
  void end_capture(const Stream& s) {
    SLICERT_CUDA_CHECK(cudaStreamEndCapture(s.get(), &graph_));
    const cudaError_t st = cudaGraphInstantiate(&exec_, graph_, 0ULL);
    if (st != cudaSuccess) {
      exec_ = nullptr;
      reset();
    }
    SLICERT_CUDA_CHECK(st);
  }
  // Ends a capture that failed part-way (an enqueue refused, an exception) without raising: the
  // stream leaves capture mode, whatever was captured is discarded, and the (non-sticky) capture
  // error is cleared, so the caller can launch the same work eagerly (TensorRT's sampleInference
  // does the same on a failed capture).
  void abort_capture(const Stream& s) noexcept {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (s.raw() && cudaStreamIsCapturing(s.raw(), &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
      cudaGraph_t partial = nullptr;
      cudaStreamEndCapture(s.raw(), &partial);
      if (partial) cudaGraphDestroy(partial);
    }
    cudaGetLastError();
    reset();
  }
  void launch(const Stream& s) {
    if (!exec_) throw InputError("CudaGraph.launch: nothing captured (call begin_capture/end_capture first)");
    SLICERT_CUDA_CHECK(cudaGraphLaunch(exec_, s.get()));
  }
  bool ready() const { return exec_ != nullptr; }

 private:
  void reset() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

struct DeviceTables {
  float* modality = nullptr;
  float* voi = nullptr;
  int device = 0;
  ~DeviceTables() {  // never throws; frees on its own device, like DeviceBuffer::free
    if (!modality && !voi) return;
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    cudaSetDevice(device);
    if (modality) cudaFree(modality);
    if (voi) cudaFree(voi);
    if (previous >= 0) cudaSetDevice(previous);
    cudaGetLastError();
  }
};

float* upload(const std::vector<float>& t) {
  if (t.empty()) return nullptr;
  float* d = nullptr;
  SLICERT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&d), t.size() * sizeof(float)));
  const cudaError_t st = cudaMemcpy(d, t.data(), t.size() * sizeof(float), cudaMemcpyHostToDevice);
  if (st != cudaSuccess) cudaFree(d);
  SLICERT_CUDA_CHECK(st);
  return d;
}

// Device copies of the spec's LUT tables (uploaded once per device, synchronously: do it before
// capturing a graph, e.g. with cuda_prepare or one ordinary call).
std::shared_ptr<DeviceTables> device_tables(const PreparedSpec& ps, int device, bool capturing) {
  std::lock_guard<std::mutex> lk(ps.device_mutex);
  auto it = ps.device_tables.find(device);
  if (it != ps.device_tables.end()) return std::static_pointer_cast<DeviceTables>(it->second);
  if (capturing && (!ps.modality_lut.empty() || !ps.voi_lut.empty()))
    throw InputError("preprocess_cuda_into: the spec's LUT tables are not on device " + std::to_string(device) +
                     " yet; call cuda_prepare(spec) or run once before capturing a CUDA graph");
  DeviceScope scope(device);
  auto t = std::make_shared<DeviceTables>();
  t->device = device;
  t->modality = upload(ps.modality_lut);
  t->voi = upload(ps.voi_lut);
  if (t->modality || t->voi) {
    // cudaMemcpy from pageable memory may return before the DMA has landed ("API synchronization
    // behavior"), and SliceRT's non-blocking streams are not ordered after the legacy stream: wait for it
    // here, once per spec and device, so no kernel or graph replay reads a half-written table.
    SLICERT_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  }
  ps.device_tables[device] = t;
  return t;
}

struct DevicePtr {
  char* ptr;
  const DeviceBuffer* buffer;  // nullptr when a raw pointer was given (no bounds known)
};

DevicePtr device_ptr(const py::object& o, const char* what) {
  if (py::isinstance<DeviceBuffer>(o)) {
    const DeviceBuffer& b = o.cast<const DeviceBuffer&>();
    return {b.data(), &b};
  }
  if (py::isinstance<py::int_>(o)) {
    const auto v = o.cast<unsigned long long>();
    if (v == 0) throw InputError(std::string(what) + ": null device pointer");
    return {reinterpret_cast<char*>(static_cast<uintptr_t>(v)), nullptr};
  }
  throw InputError(std::string(what) + ": expected a DeviceBuffer or an integer device pointer");
}

int dtype_code(const std::string& name, int* itemsize) {
  static const struct { const char* name; int code, size; } table[] = {
      {"uint8", pm::IN_U8, 1}, {"uint16", pm::IN_U16, 2}, {"int16", pm::IN_I16, 2},
      {"int32", pm::IN_I32, 4}, {"float32", pm::IN_F32, 4}};
  for (const auto& t : table)
    if (name == t.name) {
      *itemsize = t.size;
      return t.code;
    }
  throw InputError("input dtype " + name + " is not supported: use uint8, uint16, int16, int32 or float32");
}

void preprocess_cuda_into(const py::object& out, const py::object& x, const std::vector<long long>& shape,
                          const std::vector<long long>& strides, const std::string& dtype, const PreparedSpec& ps,
                          const Stream& stream, long long batch_index, bool check_finite) {
  int itemsize = 0;
  const int dt = dtype_code(dtype, &itemsize);
  const size_t want_dims = ps.in_channels == 1 ? 2 : 3;
  if (shape.size() != want_dims || strides.size() != want_dims || (want_dims == 3 && shape[2] != 3))
    throw InputError(std::string("preprocess_cuda_into: in_channels=") + std::to_string(ps.in_channels) +
                     " needs shape " + (want_dims == 2 ? "(H, W)" : "(H, W, 3)") + " and one stride per axis");
  for (long long s : shape)
    if (s <= 0) throw InputError("preprocess_cuda_into: input image is empty");
  const DevicePtr in = device_ptr(x, "preprocess_cuda_into input");
  const DevicePtr dst = device_ptr(out, "preprocess_cuda_into output");
  if (reinterpret_cast<uintptr_t>(in.ptr) % itemsize != 0)
    throw InputError("preprocess_cuda_into: input pointer is not aligned to its " + std::to_string(itemsize) +
                     "-byte elements");
  long long lo = 0, hi = 0;  // byte extent reached by the strided view
  for (size_t i = 0; i < want_dims; ++i) {
    if (strides[i] % itemsize != 0)
      throw InputError("preprocess_cuda_into: stride " + std::to_string(strides[i]) + " is not a multiple of the " +
                       std::to_string(itemsize) + "-byte element size (device loads must be aligned)");
    (strides[i] < 0 ? lo : hi) += (shape[i] - 1) * strides[i];
  }
  if (in.buffer && (lo < 0 || static_cast<size_t>(hi + itemsize) > in.buffer->nbytes()))
    throw InputError("preprocess_cuda_into: input strides reach outside the " + std::to_string(in.buffer->nbytes()) +
                     "-byte device buffer");
  if (batch_index < 0) throw InputError("batch_index " + std::to_string(batch_index) + " is out of range");
  const size_t slot = static_cast<size_t>(ps.out_channels) * ps.out_h * ps.out_w * out_itemsize(ps.output.out_dtype);
  if (dst.buffer && (static_cast<size_t>(batch_index) + 1) * slot > dst.buffer->nbytes())
    throw InputError("batch_index " + std::to_string(batch_index) + " is out of range for a " +
                     std::to_string(dst.buffer->nbytes()) + "-byte output buffer of " + std::to_string(slot) +
                     "-byte slots");
  if (reinterpret_cast<uintptr_t>(dst.ptr) % 4 != 0)
    throw InputError("preprocess_cuda_into: output pointer must be 4-byte aligned");

  const pm::Geometry geo = resolve_geometry(ps, shape[0], shape[1]);
  const bool capturing = stream.capturing();
  const bool scan = check_finite && dt == pm::IN_F32;
  if (scan && capturing)
    throw InputError("preprocess_cuda_into: the float32 finite-value check reads its result back, which a CUDA "
                     "graph cannot; pass check_finite=False while capturing (and check on the host)");
  const auto tables = device_tables(ps, stream.device(), capturing);

  CudaPreprocessArgs a{};
  a.src = in.ptr + geo.roi_y0 * strides[0] + geo.roi_x0 * strides[1];
  a.sy = strides[0];
  a.sx = strides[1];
  a.sc = want_dims == 3 ? strides[2] : 0;
  a.in_dtype = dt;
  a.in_channels = ps.in_channels;
  a.cw = (ps.in_channels == 3 && ps.out_channels == 3) ? 3 : 1;
  a.pixel = ps.pixel_params();
  a.pixel.modality_lut = tables->modality;
  a.pixel.voi_lut = tables->voi;
  a.use_affine = ps.use_affine ? 1 : 0;
  a.affine = ps.affine;
  a.geo = geo;
  pm::make_axes(geo.roi_h, geo.roi_w, geo.content_h, geo.content_w, ps.resize, &a.ay, &a.ax);
  a.output = ps.output;
  a.out_channels = ps.out_channels;
  a.nhwc = ps.nhwc ? 1 : 0;
  a.pad_value = ps.pad_value;
  a.equalize = ps.equalize ? 1 : 0;
  a.out_slot = dst.ptr + batch_index * slot;

  long long bad = -1;
  {
    py::gil_scoped_release nogil;
    DeviceScope scope(stream.device());
    launch_preprocess(a, stream.get(), scan ? &bad : nullptr);
  }
  if (bad >= 0)
    throw InputError("input pixels contain NaN or Inf (first at ROI row " + std::to_string(bad >> 32) + ", column " +
                     std::to_string(bad & 0xffffffffLL) +
                     "); SliceRT refuses non-finite pixels instead of guessing a value");
}

void argmax_mask_cuda_into(const py::object& out, const py::object& logits, const std::vector<long long>& shape,
                           const std::string& dtype, const Stream& stream, const py::object& nonfinite) {
  if (shape.size() != 3 || shape[0] < 1 || shape[0] > 256 || shape[1] < 1 || shape[2] < 1)
    throw InputError("argmax_mask_cuda_into: shape must be (K, H, W) with 1 <= K <= 256 and H, W >= 1");
  if (dtype != "float32" && dtype != "float16")
    throw InputError("argmax_mask_cuda_into: logits dtype must be float32 or float16, got " + dtype);
  const bool half = dtype == "float16";
  const size_t plane = static_cast<size_t>(shape[1]) * static_cast<size_t>(shape[2]);
  const DevicePtr src = device_ptr(logits, "argmax_mask_cuda_into logits");
  const DevicePtr dst = device_ptr(out, "argmax_mask_cuda_into mask");
  if (src.buffer && static_cast<size_t>(shape[0]) * plane * (half ? 2 : 4) > src.buffer->nbytes())
    throw InputError("argmax_mask_cuda_into: (K, H, W) logits exceed the device buffer");
  if (dst.buffer && plane > dst.buffer->nbytes())
    throw InputError("argmax_mask_cuda_into: the (H, W) uint8 mask exceeds the device buffer");
  if (reinterpret_cast<uintptr_t>(src.ptr) % (half ? 2 : 4) != 0)
    throw InputError("argmax_mask_cuda_into: logits pointer is not aligned to its elements");
  uint8_t* flag = nullptr;  // optional: one device byte, 1 after the kernel when a logit is NaN/Inf
  if (!nonfinite.is_none()) flag = reinterpret_cast<uint8_t*>(device_ptr(nonfinite, "argmax_mask_cuda_into nonfinite").ptr);
  cudaStream_t s = stream.get();
  py::gil_scoped_release nogil;
  DeviceScope scope(stream.device());
  launch_argmax_mask(src.ptr, half, static_cast<int>(shape[0]), shape[1], shape[2],
                     reinterpret_cast<uint8_t*>(dst.ptr), flag, s);
}

void set_device(int device) {
  require_device(device);
  SLICERT_CUDA_CHECK(cudaSetDevice(device));
}

void device_synchronize(int device) {
  require_device(device);
  py::gil_scoped_release nogil;
  DeviceScope scope(device);
  SLICERT_CUDA_CHECK(cudaDeviceSynchronize());
}

// ("device", n) for device memory of device n, ("managed", n) for managed memory, ("host", -1) for
// pinned or ordinary host memory.
py::tuple pointer_device(uintptr_t ptr) {
  if (ptr == 0) throw InputError("pointer_device: null pointer");
  cudaPointerAttributes attr{};
  SLICERT_CUDA_CHECK(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)));
  switch (attr.type) {
    case cudaMemoryTypeDevice: return py::make_tuple("device", attr.device);
    case cudaMemoryTypeManaged: return py::make_tuple("managed", attr.device);
    default: return py::make_tuple("host", -1);
  }
}

#else  // no CUDA in this build: same names, each refuses with BackendUnavailable.

[[noreturn]] void no_cuda() {
  throw BackendUnavailable("SliceRT was built without CUDA (SLICERT_CUDA=OFF or nvcc not found)");
}
struct Stream {
  explicit Stream(int) { no_cuda(); }
};
struct Event {
  Event(bool, int) { no_cuda(); }
};
struct DeviceBuffer {
  DeviceBuffer(size_t, int) { no_cuda(); }
};
struct PinnedBuffer {
  explicit PinnedBuffer(size_t) { no_cuda(); }
};
struct CudaGraph {
  CudaGraph() { no_cuda(); }
};

#endif

}  // namespace

void bind_cuda_resources(py::module_& m) {
#ifdef SLICERT_WITH_CUDA
  py::class_<Stream>(m, "Stream", "A non-blocking CUDA stream on one device.")
      .def(py::init<int>(), py::arg("device") = 0)
      .def("synchronize", &Stream::synchronize)
      .def("close", &Stream::close)
      .def_property_readonly("handle", &Stream::handle, "cudaStream_t as an integer (for TensorRT execute_async).")
      .def_property_readonly("device", &Stream::device)
      .def_property_readonly("capturing", &Stream::capturing)
      .def("wait", &Stream::wait, py::arg("event"), "Later work on this stream waits for `event` (no host block).")
      .def("__enter__", [](Stream& s) -> Stream& { return s; }, py::return_value_policy::reference)
      .def("__exit__", [](Stream& s, py::args) { s.close(); });

  py::class_<Event>(m, "Event", "A CUDA event; with timing=True, elapsed_ms measures GPU time between two.")
      .def(py::init<bool, int>(), py::arg("timing") = true, py::arg("device") = 0)
      .def("record", &Event::record, py::arg("stream"))
      .def("record_on", &Event::record_on, py::arg("stream_handle"),
           "Record on a foreign stream handle (cudaStream_t as int, 1 legacy, 2 per-thread default).")
      .def("synchronize", &Event::synchronize)
      .def("query", &Event::query, "True when all work before the record has completed.")
      .def("elapsed_ms", &Event::elapsed_ms_since, py::arg("start"),
           "Milliseconds of GPU time from `start` to this event.");

  py::class_<DeviceBuffer>(m, "DeviceBuffer", "cudaMalloc'd device memory.")
      .def(py::init<size_t, int>(), py::arg("nbytes"), py::arg("device") = 0)
      .def_property_readonly("ptr", &DeviceBuffer::ptr)
      .def_property_readonly("nbytes", &DeviceBuffer::nbytes)
      .def_property_readonly("device", &DeviceBuffer::device)
      .def("copy_from_host", &DeviceBuffer::copy_from_host, py::arg("src"), py::arg("stream") = nullptr,
           py::arg("offset") = 0)
      .def("copy_to_host", &DeviceBuffer::copy_to_host, py::arg("dst"), py::arg("stream") = nullptr,
           py::arg("offset") = 0)
      .def("memset", &DeviceBuffer::memset, py::arg("value"), py::arg("stream") = nullptr)
      .def("free", &DeviceBuffer::free);

  py::class_<PinnedBuffer>(m, "PinnedBuffer", "Page-locked host memory (cudaHostAlloc) for asynchronous copies.")
      .def(py::init<size_t>(), py::arg("nbytes"))
      .def_property_readonly("nbytes", &PinnedBuffer::nbytes)
      .def_property_readonly("ptr", [](const PinnedBuffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def("array", [](py::object self, const py::object& dtype, const std::vector<py::ssize_t>& shape) {
        const PinnedBuffer& b = self.cast<const PinnedBuffer&>();
        const py::dtype dt = py::dtype::from_args(dtype);
        size_t n = static_cast<size_t>(dt.itemsize());
        for (py::ssize_t s : shape) {
          if (s < 0) throw InputError("PinnedBuffer.array: negative dimension");
          n *= static_cast<size_t>(s);
        }
        if (n > b.nbytes())
          throw InputError("PinnedBuffer.array: " + std::to_string(n) + " bytes requested from a " +
                           std::to_string(b.nbytes()) + "-byte buffer");
        return py::array(dt, shape, b.data(), self);  // the view keeps the buffer alive
      }, py::arg("dtype"), py::arg("shape"), "A NumPy view of the pinned memory.");

  py::class_<CudaGraph>(m, "CudaGraph", "Capture work on a stream once, replay it with one launch.")
      .def(py::init<>())
      .def("begin_capture", &CudaGraph::begin_capture, py::arg("stream"))
      .def("end_capture", &CudaGraph::end_capture, py::arg("stream"))
      .def("abort_capture", &CudaGraph::abort_capture, py::arg("stream"),
           "End a failed capture without raising and discard it (then run the work eagerly).")
      .def("launch", &CudaGraph::launch, py::arg("stream"))
      .def_property_readonly("ready", &CudaGraph::ready);

  m.def("preprocess_cuda_into", &preprocess_cuda_into, py::arg("out"), py::arg("x"), py::arg("shape"),
        py::arg("strides"), py::arg("dtype"), py::arg("spec"), py::arg("stream"), py::arg("batch_index") = 0,
        py::arg("check_finite") = true,
        "Fused preprocessing on the GPU: device input (shape, byte strides, dtype name) -> slot batch_index of a "
        "device output, enqueued on `stream`.");
  m.def("argmax_mask_cuda_into", &argmax_mask_cuda_into, py::arg("out"), py::arg("logits"), py::arg("shape"),
        py::arg("dtype"), py::arg("stream"), py::arg("nonfinite") = py::none(),
        "Class mask (uint8 H x W) of device logits (K, H, W), enqueued on `stream`; `nonfinite` (optional device "
        "pointer to one byte) is set to 0, then to 1 when any logit is NaN/Inf, in the same pass.");
  m.def("cuda_prepare", [](const PreparedSpec& ps, int device) {
    require_device(device);
    device_tables(ps, device, false);
  }, py::arg("spec"), py::arg("device") = 0, "Upload the spec's LUT tables to a device (before graph capture).");
  m.def("set_device", &set_device, py::arg("device"),
        "cudaSetDevice for the calling thread (TensorRT binds its objects to the current device).");
  m.def("device_synchronize", &device_synchronize, py::arg("device"), "cudaDeviceSynchronize on `device`.");
  m.def("pointer_device", &pointer_device, py::arg("ptr"),
        "(kind, device) of a pointer: ('device', n), ('managed', n) or ('host', -1).");
#else
  py::class_<Stream>(m, "Stream").def(py::init<int>(), py::arg("device") = 0);
  py::class_<Event>(m, "Event").def(py::init<bool, int>(), py::arg("timing") = true, py::arg("device") = 0);
  py::class_<DeviceBuffer>(m, "DeviceBuffer").def(py::init<size_t, int>(), py::arg("nbytes"), py::arg("device") = 0);
  py::class_<PinnedBuffer>(m, "PinnedBuffer").def(py::init<size_t>(), py::arg("nbytes"));
  py::class_<CudaGraph>(m, "CudaGraph").def(py::init<>());
  m.def("preprocess_cuda_into", [](py::args, py::kwargs) { no_cuda(); });
  m.def("cuda_prepare", [](py::args, py::kwargs) { no_cuda(); });
  m.def("argmax_mask_cuda_into", [](py::args, py::kwargs) { no_cuda(); });
  m.def("set_device", [](py::args, py::kwargs) { no_cuda(); });
  m.def("device_synchronize", [](py::args, py::kwargs) { no_cuda(); });
  m.def("pointer_device", [](py::args, py::kwargs) { no_cuda(); });
#endif
}

}  // namespace slicert
