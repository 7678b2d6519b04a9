// The custom ops' CPU kernels (src/torch_ops.cpp): the one call that adds their entries to _core.
#pragma once
#include <pybind11/pybind11.h>

#include "splitnet_kernels/dispatch.h"

// Adds register_torch_ops and set_torch_threads to the module; `table` gives the active ISA's
// kernels, as for the module's own entries.
void add_torch_ops(pybind11::module_& module, const splitnet::KernelTable& (*table)());
