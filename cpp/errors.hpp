// Typed errors thrown by the native core. module.cpp translates each into the matching
// engine.errors class at the pybind11 boundary; nothing in the library exits or aborts.
#pragma once
#include <stdexcept>
#include <string>

namespace slicert {

struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct DicomError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BackendUnavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CudaError : std::runtime_error {
  CudaError(const std::string& what, int code, int device, const char* file, int line)
      : std::runtime_error(what), code(code), device(device), file(file), line(line) {}
  int code;
  int device;
  std::string file;
  int line;
};

}  // namespace slicert
