// The part of LibTorch's stable C ABI (torch/csrc/inductor/aoti_torch/c/shim.h and
// torch/csrc/stable/c/shim.h, promised unchanged from torch 2.10 on) that the custom ops' CPU
// kernels use, declared here so that the package builds without torch's headers. Nothing links
// against libtorch: src/torch_ops.cpp receives these functions' addresses at run time, from the
// libtorch already loaded in the process (_torch_ops.py looks them up), into one table.
#pragma once
#include <cstdint>

namespace torch_shim {

using Error = std::int32_t;  // AOTITorchError: 0 is success
using StableIValue = std::uint64_t;
struct TensorOpaque;
using Tensor = TensorOpaque*;  // AtenTensorHandle: an owning pointer to an at::Tensor
struct LibraryOpaque;
using Library = LibraryOpaque*;  // TorchLibraryHandle
using BoxedKernel = void (*)(StableIValue* stack, std::uint64_t arguments, std::uint64_t returns);

// (2 << 56) | (10 << 48): the stable ABI of torch 2.10, whose argument encoding the kernels read
// (torch_library_impl converts for every later version).
constexpr std::uint64_t kTargetVersion = (std::uint64_t{2} << 56) | (std::uint64_t{10} << 48);

// Each entry: the C name and its signature, as the shim declares it.
#define SPLITNET_TORCH_SHIM(X)                                                                                    \
  X(aoti_torch_abi_version, std::uint64_t, ())                                                                  \
  X(aoti_torch_device_type_cpu, std::int32_t, ())                                                               \
  X(aoti_torch_dtype_float32, std::int32_t, ())                                                                 \
  X(aoti_torch_dtype_float16, std::int32_t, ())                                                                 \
  X(aoti_torch_dtype_bfloat16, std::int32_t, ())                                                                \
  X(aoti_torch_dtype_int8, std::int32_t, ())                                                                    \
  X(aoti_torch_dtype_int64, std::int32_t, ())                                                                   \
  X(aoti_torch_layout_strided, std::int32_t, ())                                                                \
  X(aoti_torch_get_data_ptr, Error, (Tensor, void**))                                                           \
  X(aoti_torch_get_dim, Error, (Tensor, std::int64_t*))                                                         \
  X(aoti_torch_get_sizes, Error, (Tensor, std::int64_t**))                                                      \
  X(aoti_torch_get_strides, Error, (Tensor, std::int64_t**))                                                    \
  X(aoti_torch_get_dtype, Error, (Tensor, std::int32_t*))                                                       \
  X(aoti_torch_get_device_type, Error, (Tensor, std::int32_t*))                                                 \
  X(aoti_torch_get_layout, Error, (Tensor, std::int32_t*))                                                      \
  X(aoti_torch_empty_strided, Error,                                                                            \
    (std::int64_t, const std::int64_t*, const std::int64_t*, std::int32_t, std::int32_t, std::int32_t, Tensor*)) \
  X(aoti_torch_delete_tensor_object, Error, (Tensor))                                                           \
  X(aoti_torch_library_init_impl, Error, (const char*, const char*, const char*, std::uint32_t, Library*))     \
  X(aoti_torch_delete_library_object, Error, (Library))                                                         \
  X(torch_library_impl, Error, (Library, const char*, BoxedKernel, std::uint64_t))                              \
  X(torch_call_dispatcher, Error, (const char*, const char*, StableIValue*, std::uint64_t))

// The table of those functions, filled at registration.
struct Functions {
#define SPLITNET_TORCH_FIELD(name, result, arguments) result(*name) arguments = nullptr;
  SPLITNET_TORCH_SHIM(SPLITNET_TORCH_FIELD)
#undef SPLITNET_TORCH_FIELD
};

}  // namespace torch_shim
