// The binding's checks: each argument of an entry (src/core.cpp, the one file that includes this)
// checked and turned into the kernels' operands (Rows, StoredRows, MetricForm) or outputs, the
// message of a failed check built only when one fails. Internal linkage, as if written there.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "splitnet_kernels/dtypes.h"
#include "splitnet_kernels/filter.h"
#include "splitnet_kernels/parallel.h"
#include "splitnet_kernels/rows.h"

namespace py = pybind11;
using splitnet::Dtype;
using splitnet::index_t;
using splitnet::MetricForm;
using splitnet::Rows;
using splitnet::StoredRows;

namespace {

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks run on every call, so the message is built only when one fails: a serving call
// (1,000 ads, top-10) takes a few microseconds, and building strings would be a tenth of it.
struct ShapeOf {
  const py::array& array;
};
std::string piece(ShapeOf shape) { return shape_of(shape.array); }
template <class T>
std::string piece(const T& value) {
  if constexpr (std::is_arithmetic_v<T>) {
    return std::to_string(value);
  } else {
    return std::string(value);
  }
}

template <class... Parts>
void require(bool ok, const Parts&... parts) {
  if (ok) return;
  std::string message;
  ((message += piece(parts)), ...);
  throw py::value_error(message);
}

// A float32 array of `ndim` dimensions (1 or 2) whose rows are contiguous and float-aligned.
Rows rows_of(const py::array& a, const char* name, int ndim) {
  if (!py::isinstance<py::array_t<float>>(a))
    throw py::type_error(std::string(name) + ": expected float32, got " + std::string(py::str(a.dtype())));
  require(a.ndim() == ndim, name, ": expected ", ndim, " dimensions, got shape ", ShapeOf{a});
  const index_t count = ndim == 1 ? 1 : a.shape(0);
  const index_t dim = a.shape(ndim - 1);
  require(dim <= 1 || a.strides(ndim - 1) == 4, name, ": rows must be contiguous");
  const index_t row_bytes = count <= 1 ? dim * 4 : a.strides(0);  // one row: its stride is never used
  require(row_bytes % 4 == 0 && reinterpret_cast<std::uintptr_t>(a.data()) % 4 == 0,
          name, ": data must be aligned to 4 bytes");
  return Rows{static_cast<const float*>(a.data()), count, dim, row_bytes / 4};
}

// users: one (n,) or many (M, n).
Rows users_of(const py::array& users) {
  require(users.ndim() == 1 || users.ndim() == 2, "users: expected shape (n,) or (M, n), got ", ShapeOf{users});
  return rows_of(users, "users", static_cast<int>(users.ndim()));
}

// A C-contiguous float32 (rows, cols) matrix; `keep` holds the array for the call (a py::object:
// a default py::array is a fresh numpy array, which would cost the serving call a tenth of its time).
Rows matrix_of(const py::object& x, const char* name, py::object& keep) {
  const py::array array = x.cast<py::array>();
  keep = array;
  const Rows m = rows_of(array, name, 2);
  require(m.count <= 1 || m.stride == m.dim, name, ": must be C-contiguous");
  return m;
}

float* output_of(py::array& out, const char* name, std::initializer_list<index_t> shape, char kind = 'f') {
  require(out.writeable(), name, ": must be writable");
  const bool dtype_ok = kind == 'f' ? (out.dtype().kind() == 'f' && out.itemsize() == 4)
                                    : (out.dtype().kind() == 'i' && out.itemsize() == 8);
  if (!dtype_ok) throw py::type_error(std::string(name) + ": wrong dtype " + std::string(py::str(out.dtype())));
  require(out.ndim() == static_cast<py::ssize_t>(shape.size()), name, ": wrong shape ", ShapeOf{out});
  py::ssize_t expected_stride = out.itemsize(), i = out.ndim() - 1;
  for (auto it = shape.end(); it != shape.begin(); --i) {
    const index_t extent = *--it;
    require(out.shape(i) == extent, name, ": wrong shape ", ShapeOf{out});
    require(extent <= 1 || out.strides(i) == expected_stride, name, ": must be C-contiguous");
    expected_stride *= extent;
  }
  return static_cast<float*>(out.mutable_data());
}

// The output of `rows` per user: (n,) for one user given as (n,), else (M, n).
float* output_for(py::array& out, const char* name, const py::array& users, index_t count, index_t n, char kind = 'f') {
  return users.ndim() == 1 ? output_of(out, name, {n}, kind) : output_of(out, name, {count, n}, kind);
}

// A top-k call's k and its two outputs, arguments `first` .. `first + 2` (k, out_scores, out_ids):
// k checked against the candidates, the outputs against (users, k).
struct TopkOutputs {
  long long k;
  py::array scores_array, ids_array;
  float* scores;
  index_t* ids;

  template <class Args>
  TopkOutputs(const Args& a, int first, const py::array& users, index_t n_users, index_t candidates)
      : k(a.integer(first)) {
    require(k >= 0 && k <= candidates, "k must be in [0, ", candidates, "] (the candidates), got ", k);
    scores_array = a.array(first + 1), ids_array = a.array(first + 2);
    scores = output_for(scores_array, "out_scores", users, n_users, k);
    ids = reinterpret_cast<index_t*>(output_for(ids_array, "out_ids", users, n_users, k, 'i'));
  }
};

// An optional float32 vector argument of `length` values: null for None. `keep` holds the array
// for the call (a conversion from another type makes a new one).
const float* optional_vector(const py::object& x, const char* name, index_t length, py::object& keep) {
  if (x.is_none()) return nullptr;
  const py::array array = x.cast<py::array>();
  keep = array;
  const Rows v = rows_of(array, name, 1);
  require(v.dim == length, name, ": expected ", length, " values, got ", v.dim);
  return v.data;
}

// The metric's canonical form for users of `dim`: S = diag(diag) + left right^T (MetricForm).
struct FormOperands {
  py::object keep_diag, keep_left, keep_right;  // converted operands, alive for the call
  MetricForm form;

  FormOperands(const py::object& diag, const py::object& left, const py::object& right, index_t dim) {
    form.dim = dim;
    form.diag = optional_vector(diag, "diag", dim, keep_diag);
    if (!left.is_none()) {
      const py::array left_array = left.cast<py::array>();
      keep_left = left_array;
      const Rows l = matrix_of(left_array, "left", keep_left);
      require(l.count == dim, "left: expected (", dim, ", rank) for users of dimension ", dim, ", got shape ",
              ShapeOf{left_array});
      require(l.dim >= 1, "left: rank must be >= 1, got shape ", ShapeOf{left_array});
      form.left = l.data;
      form.rank = l.dim;
      if (!right.is_none()) {
        const py::array right_array = right.cast<py::array>();
        const Rows r = matrix_of(right_array, "right", keep_right);
        require(r.count == l.count && r.dim == l.dim, "right: expected the shape of left ", ShapeOf{left_array},
                ", got ", ShapeOf{right_array});
        form.right = r.data;
      } else {
        require(l.dim == dim, "left: without right, left is all of S and must be (", dim, ", ", dim, "), got shape ",
                ShapeOf{left_array});
      }
    } else {
      require(right.is_none(), "right: given without left");
    }
    require(form.diag != nullptr || form.left != nullptr, "diag and left are both None: the metric has no term");
  }
};

int thread_count(int threads) {
  require(threads >= 1, "threads must be >= 1, got ", threads);
  return std::min(threads, splitnet::default_pool().size());
}

// The storage type's name, as a str.
Dtype dtype_of(const py::handle& name) {
  if (!PyUnicode_Check(name.ptr()))
    throw py::type_error("dtype: expected a str, got " + std::string(py::str(py::type::handle_of(name))));
  Py_ssize_t length = 0;
  const char* text = PyUnicode_AsUTF8AndSize(name.ptr(), &length);
  if (text == nullptr) throw py::error_already_set();
  Dtype dtype;
  if (!splitnet::dtype_from_name(text, static_cast<std::size_t>(length), &dtype)) {
    std::string known;
    for (const auto& entry : splitnet::kDtypes) known += std::string(known.empty() ? "" : ", ") + entry.name;
    throw py::value_error("dtype: unknown candidate dtype '" + std::string(text, length) + "' (known: " + known + ")");
  }
  return dtype;
}

// Candidate storage: (N, stored) rows contiguous and aligned to their element; int8 rows with
// (N,) float32 scales, other types with none.
StoredRows stored_of(const py::array& data, const py::handle& dtype_name, const py::object& scales,
                     py::object& keep_scales) {
  const Dtype dtype = dtype_of(dtype_name);
  const index_t itemsize = splitnet::element_size(dtype);
  if (data.dtype().kind() != splitnet::dtype_info(dtype).array_kind || data.itemsize() != itemsize)
    throw py::type_error("data: " + std::string(py::str(data.dtype())) + " does not hold " + splitnet::dtype_name(dtype));
  require(data.ndim() == 2, "data: expected 2 dimensions, got shape ", ShapeOf{data});
  require(data.shape(1) <= 1 || data.strides(1) == itemsize, "data: rows must be contiguous");
  require(data.strides(0) % itemsize == 0 && reinterpret_cast<std::uintptr_t>(data.data()) % itemsize == 0,
          "data: must be aligned to its element size");
  StoredRows rows{dtype, data.data(), data.shape(0), data.shape(1), data.strides(0) / itemsize};
  if (rows.count <= 1) rows.stride = rows.dim;  // one row: its stride is never used
  if (dtype == Dtype::i8) {
    require(!scales.is_none(), "scales: int8 data needs scales");
    require(rows.dim <= (index_t{1} << 17), "data: int8 rows longer than 131072 would overflow int32 sums");
    rows.scales = optional_vector(scales, "scales", rows.count, keep_scales);
  } else {
    require(scales.is_none(), "scales: only int8 data has scales, got ", splitnet::dtype_name(dtype), " data");
  }
  return rows;
}

// The allowed subset: ascending, unique, in range (checked here, since kernels index with it).
std::pair<const index_t*, index_t> ids_of(const py::object& ids, index_t count, py::object& keep) {
  if (ids.is_none()) return {nullptr, 0};
  const py::array array = ids.cast<py::array>();
  keep = array;
  if (array.dtype().kind() != 'i' || array.itemsize() != 8 || array.ndim() != 1 || (array.shape(0) > 1 && array.strides(0) != 8))
    throw py::type_error("allowed: expected a contiguous 1-D int64 array");
  const auto* p = static_cast<const index_t*>(array.data());
  for (index_t i = 0; i < array.shape(0); ++i)
    require(p[i] >= 0 && p[i] < count && (i == 0 || p[i] > p[i - 1]), "allowed: ids must be ascending, unique and in [0, ",
            count, ")");
  return {p, array.shape(0)};
}

// A dense allowed subset: a bitmap of `count` candidates (uint64 words, bit c % 64 of word
// c / 64; bits past `count` are never read), (W,) for every user or (users, W) one per user; and
// the most candidates it allows a user.
std::pair<splitnet::Filter, index_t> filter_of(const py::array& array, index_t count, index_t users) {
  const index_t words = (count + 63) / 64;
  const bool per_user = array.ndim() == 2;
  require((array.ndim() == 1 || (per_user && array.shape(0) == users)) && array.shape(array.ndim() - 1) == words,
          "allowed: a bitmap of ", count, " candidates is (", words, ",) uint64 words, or (", users, ", ", words,
          ") for one per user, got shape ", ShapeOf{array});
  require(array.flags() & py::array::c_style, "allowed: the bitmap must be C-contiguous");
  const auto* p = static_cast<const std::uint64_t*>(array.data());
  index_t most = 0;
  for (index_t u = 0; u < (per_user ? users : 1); ++u) {
    index_t allowed = 0;
    for (index_t w = 0; w < words; ++w) {
      const index_t rest = count - 64 * w;
      const std::uint64_t word = p[u * words + w];
      allowed += __builtin_popcountll(rest >= 64 ? word : word & ((std::uint64_t{1} << rest) - 1));
    }
    most = std::max(most, allowed);
  }
  return {splitnet::Filter{p, per_user ? words : 0}, most};
}

// The operands of score and topk: users, candidates, allowed subset (ids, or a bitmap for
// top-k) and metric form.
struct ScanOperands {
  py::object keep_scales, keep_ids;  // converted operands, alive for the call
  Rows users;
  StoredRows rows;
  const index_t* ids = nullptr;
  index_t n_ids = 0;
  splitnet::Filter filter;
  index_t n_allowed = 0;  // the most candidates the filter allows a user
  FormOperands form;

  ScanOperands(const py::array& users_array, const py::array& data, const py::handle& dtype, const py::object& scales,
               const py::object& allowed, const py::object& diag, const py::object& left, const py::object& right)
      : users(users_of(users_array)), rows(stored_of(data, dtype, scales, keep_scales)),
        form(diag, left, right, users.dim) {
    require(rows.dim >= users.dim, "data: rows of ", rows.dim, " values are shorter than the users' ", users.dim);
    if (py::isinstance<py::array>(allowed) && py::array(allowed).dtype().is(py::dtype::of<std::uint64_t>())) {
      keep_ids = allowed;  // uint64 words: a bitmap; anything else: ids (ids_of checks them)
      std::tie(filter, n_allowed) = filter_of(py::array(allowed), rows.count, users.count);
    } else {
      std::tie(ids, n_ids) = ids_of(allowed, rows.count, keep_ids);
    }
  }

  index_t candidates() const { return ids ? n_ids : filter ? n_allowed : rows.count; }
};

// A C-contiguous 1-D array of `length` values of the given kind ('f': float32, 'i': int64).
const void* vector_of(const py::array& a, const char* name, index_t length, char kind) {
  const bool dtype_ok = a.dtype().kind() == kind && a.itemsize() == (kind == 'f' ? 4 : 8);
  if (!dtype_ok) throw py::type_error(std::string(name) + ": expected " + (kind == 'f' ? "float32" : "int64") +
                                      ", got " + std::string(py::str(a.dtype())));
  require(a.ndim() == 1 && a.shape(0) == length, name, ": expected (", length, ",), got shape ", ShapeOf{a});
  require(length <= 1 || a.strides(0) == a.itemsize(), name, ": must be contiguous");
  return a.data();
}

}  // namespace
