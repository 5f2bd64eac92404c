// CUDA availability, reported without ever raising at import: a machine without a driver is
// the normal case for CPU deployments and CI.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings.hpp"

#ifdef SLICERT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

namespace slicert {

void bind_cuda_info(py::module_& m) {
  m.def("cuda_compiled", []() {
#ifdef SLICERT_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when this build contains the CUDA kernels.");

  m.def("cuda_devices", []() -> py::tuple {
#ifdef SLICERT_WITH_CUDA
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      cudaGetLastError();
      return py::make_tuple(0, std::string(cudaGetErrorName(status)) + " (" + std::to_string(int(status)) +
                                   "): " + cudaGetErrorString(status));
    }
    if (count == 0) return py::make_tuple(0, std::string("no CUDA device visible"));
    return py::make_tuple(count, std::string(""));
#else
    return py::make_tuple(0, std::string("SliceRT was built without CUDA (SLICERT_CUDA=OFF or nvcc not found)"));
#endif
  }, "(device_count, reason): reason is empty when at least one device is usable.");

  m.def("cuda_runtime_version", []() -> int {
#ifdef SLICERT_WITH_CUDA
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) { cudaGetLastError(); return 0; }
    return v;
#else
    return 0;
#endif
  }, "CUDA runtime version compiled in (e.g. 13000), 0 without CUDA.");

  m.def("cuda_device_properties", [](int device) -> py::dict {
    py::dict d;
#ifdef SLICERT_WITH_CUDA
    cudaDeviceProp prop{};
    cudaError_t status = cudaGetDeviceProperties(&prop, device);
    if (status != cudaSuccess) {
      cudaGetLastError();
      d["error"] = std::string(cudaGetErrorName(status));
      return d;
    }
    d["name"] = std::string(prop.name);
    d["compute_capability"] = py::make_tuple(prop.major, prop.minor);
    d["total_memory_bytes"] = prop.totalGlobalMem;
    d["multiprocessors"] = prop.multiProcessorCount;
    d["integrated"] = prop.integrated != 0;  // Jetson/DRIVE: no hardware-compatible TensorRT plans
#else
    (void)device;
    d["error"] = std::string("built without CUDA");
#endif
    return d;
  }, py::arg("device") = 0, "Name, compute capability and memory of one device, or {'error': ...}.");
}

}  // namespace slicert
