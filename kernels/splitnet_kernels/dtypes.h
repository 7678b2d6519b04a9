// The storage types of candidate rows, listed once: each one's name, element size and the kind
// of array that holds it. The binding reads its names and checks its arrays through this table.
#pragma once
#include <cstddef>
#include <cstring>

#include "build.h"

namespace splitnet {

// How candidates are stored. f16 and bf16 rows are 16-bit patterns (IEEE half, bfloat16); int8
// rows carry one float32 scale each (row ~= scale * stored).
enum class Dtype : int { f32, f16, bf16, i8 };

// array_kind sits beside dtype, in what would be padding: a row stays 24 bytes.
struct DtypeInfo {
  Dtype dtype;
  char array_kind;  // NumPy's dtype.kind of its arrays ('u': bfloat16 arrives as its uint16 bits)
  const char* name;
  index_t size;  // bytes per element
};
inline constexpr DtypeInfo kDtypes[] = {{Dtype::f32, 'f', "float32", 4},
                                        {Dtype::f16, 'f', "float16", 2},
                                        {Dtype::bf16, 'u', "bfloat16", 2},
                                        {Dtype::i8, 'i', "int8", 1}};

inline const DtypeInfo& dtype_info(Dtype dtype) { return kDtypes[static_cast<int>(dtype)]; }
inline const char* dtype_name(Dtype dtype) { return dtype_info(dtype).name; }
inline index_t element_size(Dtype dtype) { return dtype_info(dtype).size; }

// Sets *dtype and returns true when `name` (`length` chars) is one of kDtypes' names.
inline bool dtype_from_name(const char* name, std::size_t length, Dtype* dtype) {
  for (const DtypeInfo& entry : kDtypes)
    if (std::strlen(entry.name) == length && std::memcmp(entry.name, name, length) == 0) {
      *dtype = entry.dtype;
      return true;
    }
  return false;
}

}  // namespace splitnet
