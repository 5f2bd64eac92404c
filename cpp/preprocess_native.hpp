// Array -> SourceImage / output-slot validation shared by the CPU and CUDA bindings.
#pragma once
#include <pybind11/numpy.h>

#include "prepared_spec.hpp"
#include "preprocess_cpu.hpp"

namespace slicert {
int input_dtype_code(const pybind11::array& x);
SourceImage source_image(const pybind11::array& x, const PreparedSpec& ps);
char* output_slot(pybind11::array& out, const PreparedSpec& ps, long long batch_index);
}  // namespace slicert
