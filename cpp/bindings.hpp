// One bind_* function per native component; module.cpp calls them all.
#pragma once
#include <pybind11/pybind11.h>

namespace slicert {
void bind_cuda_info(pybind11::module_& m);
void bind_preprocess(pybind11::module_& m);
void bind_cuda_resources(pybind11::module_& m);
void bind_postprocess(pybind11::module_& m);
}  // namespace slicert
