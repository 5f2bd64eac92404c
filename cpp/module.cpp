#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace {

// Python exception classes live in engine/errors.py so that pure-Python code raises the same
// types; they are looked up once at import and kept for the process lifetime.
void register_exception_translation() {
  py::module_ errors = py::module_::import("engine.errors");
  static py::object input_error = errors.attr("InputError");
  static py::object dicom_error = errors.attr("DicomError");
  static py::object backend_unavailable = errors.attr("BackendUnavailable");
  static py::object cuda_error = errors.attr("CudaError");
  static py::object native_error = errors.attr("SliceRTError");

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const slicert::InputError& e) {
      py::set_error(input_error, e.what());
    } catch (const slicert::DicomError& e) {
      py::set_error(dicom_error, e.what());
    } catch (const slicert::BackendUnavailable& e) {
      py::set_error(backend_unavailable, e.what());
    } catch (const slicert::CudaError& e) {
      py::object exc = cuda_error(e.what(), py::arg("code") = e.code, py::arg("device") = e.device,
                                  py::arg("file") = e.file, py::arg("line") = e.line);
      PyErr_SetObject(cuda_error.ptr(), exc.ptr());
    } catch (const std::bad_alloc& e) {
      PyErr_SetString(PyExc_MemoryError, "SliceRT native: out of host memory");
    }
  });
  (void)native_error;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "SliceRT native core: fused preprocessing, post-processing and CUDA resources";
  register_exception_translation();
  m.attr("__version__") = SLICERT_VERSION;
  slicert::bind_cuda_info(m);
  slicert::bind_preprocess(m);
  slicert::bind_cuda_resources(m);
  slicert::bind_postprocess(m);
}
