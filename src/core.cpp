// The pybind11 module splitnet_kernels._core. Each function checks its arguments, releases the
// GIL and makes one call into kernels/; conversions and copies happen in Python, in the open.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <string>
#include <type_traits>

#include "splitnet_kernels/ops.h"

namespace py = pybind11;
using splitnet::index_t;
using splitnet::Isa;
using splitnet::KernelTable;
using splitnet::Rows;

namespace {

std::atomic<const KernelTable*> active_table{&splitnet::kernel_table(splitnet::detect_isa())};

const std::pair<const char*, Isa> kIsaNames[] = {
    {"scalar", Isa::scalar}, {"avx2", Isa::avx2}, {"avx512", Isa::avx512}, {"avx512bf16", Isa::avx512bf16}, {"neon", Isa::neon}};

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

void require_same_dim(const Rows& a, const Rows& b) {
  require(a.dim == b.dim, "users and ads differ in dimension: ", a.dim, " vs ", b.dim);
}

int thread_count(int threads) {
  require(threads >= 1, "threads must be >= 1, got ", threads);
  return std::min(threads, splitnet::default_pool().size());
}

const KernelTable& table() { return *active_table.load(std::memory_order_acquire); }

Isa isa_from_name(const std::string& name) {
  for (const auto& [n, isa] : kIsaNames)
    if (name == n) return isa;
  std::string known;
  for (const auto& entry : kIsaNames) known += std::string(known.empty() ? "" : ", ") + entry.first;
  throw py::value_error("unknown ISA '" + name + "' (known: " + known + ")");
}

// Candidate storage from sk.Candidates: float32, float16 (IEEE half), bfloat16 (as uint16) or
// int8 with float32 scales; rows contiguous and aligned to their element.
splitnet::PackedRows packed_of(const py::array& data, const std::string& dtype, const py::object& scales) {
  using splitnet::Dtype;
  const std::pair<const char*, std::pair<Dtype, char>> kinds[] = {
      {"float32", {Dtype::f32, 'f'}}, {"float16", {Dtype::f16, 'f'}}, {"bfloat16", {Dtype::bf16, 'u'}}, {"int8", {Dtype::i8, 'i'}}};
  for (const auto& [name, kind] : kinds) {
    if (dtype != name) continue;
    const index_t itemsize = kind.first == Dtype::f32 ? 4 : kind.first == Dtype::i8 ? 1 : 2;
    if (data.dtype().kind() != kind.second || data.itemsize() != itemsize)
      throw py::type_error("data: " + std::string(py::str(data.dtype())) + " does not hold " + dtype);
    require(data.ndim() == 2, "data: expected 2 dimensions, got shape ", ShapeOf{data});
    require(data.shape(1) <= 1 || data.strides(1) == itemsize, "data: rows must be contiguous");
    require(data.strides(0) % itemsize == 0 && reinterpret_cast<std::uintptr_t>(data.data()) % itemsize == 0,
            "data: must be aligned to its element size");
    splitnet::PackedRows rows{kind.first, data.data(), data.shape(0), data.shape(1), data.strides(0) / itemsize};
    if (kind.first == Dtype::i8) {
      require(!scales.is_none(), "int8 data needs scales");
      require(rows.dim <= (index_t{1} << 17), "int8 rows longer than 131072 would overflow int32 sums");
      const Rows s = rows_of(scales.cast<py::array>(), "scales", 1);
      require(s.dim == rows.count, "scales: expected one per row");
      rows.scales = s.data;
    }
    return rows;
  }
  throw py::value_error("unknown candidate dtype '" + dtype + "'");
}

// The allowed subset: ascending, unique, in range (checked here, since kernels index with it).
std::pair<const index_t*, index_t> ids_of(const py::object& ids, index_t count) {
  if (ids.is_none()) return {nullptr, 0};
  const auto array = ids.cast<py::array>();
  if (array.dtype().kind() != 'i' || array.itemsize() != 8 || array.ndim() != 1 || (array.shape(0) > 1 && array.strides(0) != 8))
    throw py::type_error("allowed ids: expected a contiguous 1-D int64 array");
  const auto* p = static_cast<const index_t*>(array.data());
  for (index_t i = 0; i < array.shape(0); ++i)
    require(p[i] >= 0 && p[i] < count && (i == 0 || p[i] > p[i - 1]), "allowed ids: must be ascending, unique and in [0, N)");
  return {p, array.shape(0)};
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Compiled float32 scoring kernels (see kernels/ for the C++ API).";

  m.def("score_one", [](py::array query, py::array ads, float bias, py::array out, int threads) {
    const Rows q = rows_of(query, "users", 1), a = rows_of(ads, "ads", 2);
    require_same_dim(q, a);
    float* o = output_of(out, "out", {a.count});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    splitnet::score_one(table(), q.data, a, bias, o, t);
  }, py::arg("query"), py::arg("ads"), py::arg("bias"), py::arg("out"), py::arg("threads"));

  m.def("score_cross", [](py::array users, py::array ads, float bias, py::array out, int threads) {
    const Rows u = rows_of(users, "users", 2), a = rows_of(ads, "ads", 2);
    require_same_dim(u, a);
    float* o = output_of(out, "out", {u.count, a.count});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    splitnet::score_cross(table(), u, a, bias, o, a.count, t);
  }, py::arg("users"), py::arg("ads"), py::arg("bias"), py::arg("out"), py::arg("threads"));

  m.def("score_pairs", [](py::array users, py::array ads, py::object weights, float bias, py::array out, int threads) {
    const Rows u = rows_of(users, "users", 2), a = rows_of(ads, "ads", 2);
    require_same_dim(u, a);
    require(u.count == a.count, "pairwise: users and ads differ in count");
    const float* w = nullptr;
    py::array weight_array;  // keeps the weights alive for the call
    if (!weights.is_none()) {
      weight_array = weights.cast<py::array>();
      const Rows wr = rows_of(weight_array, "weights", 1);
      require(wr.dim == a.dim, "weights: expected one weight per dimension");
      w = wr.data;
    }
    float* o = output_of(out, "out", {a.count});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    splitnet::score_pairs(table(), u, a, w, bias, o, t);
  }, py::arg("users"), py::arg("ads"), py::arg("weights"), py::arg("bias"), py::arg("out"), py::arg("threads"));

  m.def("score_pairs_factored", [](py::array users, py::array ads, py::array left, py::object right, py::object diag,
                                   float bias, py::array out, int threads) {
    const Rows u = rows_of(users, "users", 2), a = rows_of(ads, "ads", 2), l = rows_of(left, "left", 2);
    require_same_dim(u, a);
    require(u.count == a.count, "pairwise: users and ads differ in count");
    require(l.count == a.dim && l.stride == l.dim, "left must be a C-contiguous (dim, rank) matrix");
    py::array right_array, diag_array;  // keep the optional operands alive for the call
    const float* r = nullptr;
    const float* d = nullptr;
    if (!right.is_none()) {
      right_array = right.cast<py::array>();
      const Rows rr = rows_of(right_array, "right", 2);
      require(rr.count == l.count && rr.dim == l.dim && rr.stride == rr.dim, "right must be C-contiguous, shaped like left");
      r = rr.data;
    } else {
      require(l.dim == a.dim, "without right, left must be (dim, dim)");
    }
    if (!diag.is_none()) {
      diag_array = diag.cast<py::array>();
      const Rows dr = rows_of(diag_array, "diag", 1);
      require(dr.dim == a.dim, "diag: expected one weight per dimension");
      d = dr.data;
    }
    float* o = output_of(out, "out", {a.count});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    splitnet::score_pairs_factored(table(), u, a, l.data, r, l.dim, d, bias, o, t);
  }, py::arg("users"), py::arg("ads"), py::arg("left"), py::arg("right"), py::arg("diag"), py::arg("bias"),
     py::arg("out"), py::arg("threads"));

  m.def("matmul", [](py::array x, py::array w, py::array out, int threads) {
    const Rows xr = rows_of(x, "x", 2), wr = rows_of(w, "w", 2);
    require(wr.count == xr.dim && wr.stride == wr.dim, "w must be a C-contiguous (dim, cols) matrix");
    float* o = output_of(out, "out", {xr.count, wr.dim});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    splitnet::matmul(table(), xr, wr.data, wr.dim, o, wr.dim, t);
  }, py::arg("x"), py::arg("w"), py::arg("out"), py::arg("threads"));

  m.def("topk_one", [](py::array query, py::array ads, index_t k, float bias, py::array out_scores, py::array out_ids, int threads) {
    const Rows q = rows_of(query, "users", 1), a = rows_of(ads, "ads", 2);
    require_same_dim(q, a);
    require(k >= 0 && k <= a.count, "k must be in [0, number of ads]");
    float* s = output_of(out_scores, "scores", {k});
    auto* i = reinterpret_cast<index_t*>(output_of(out_ids, "ids", {k}, 'i'));
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    if (k > 0) splitnet::topk_one(table(), q.data, a, k, bias, s, i, t);
  }, py::arg("query"), py::arg("ads"), py::arg("k"), py::arg("bias"), py::arg("out_scores"), py::arg("out_ids"), py::arg("threads"));

  m.def("topk_cross", [](py::array users, py::array ads, index_t k, float bias, py::array out_scores, py::array out_ids, int threads) {
    const Rows u = rows_of(users, "users", 2), a = rows_of(ads, "ads", 2);
    require_same_dim(u, a);
    require(k >= 0 && k <= a.count, "k must be in [0, number of ads]");
    float* s = output_of(out_scores, "scores", {u.count, k});
    auto* i = reinterpret_cast<index_t*>(output_of(out_ids, "ids", {u.count, k}, 'i'));
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    if (k > 0) splitnet::topk_cross(table(), u, a, k, bias, s, i, t);
  }, py::arg("users"), py::arg("ads"), py::arg("k"), py::arg("bias"), py::arg("out_scores"), py::arg("out_ids"), py::arg("threads"));

  m.def("read_bytes", [](py::buffer buffer, int threads) {
    const py::buffer_info info = buffer.request();
    py::ssize_t expected = info.itemsize;
    for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
      require(info.shape[i] <= 1 || info.strides[i] == expected, "read_bytes: buffer must be C-contiguous");
      expected *= info.shape[i];
    }
    require(reinterpret_cast<std::uintptr_t>(info.ptr) % 8 == 0, "read_bytes: buffer must be 8-byte aligned");
    const index_t bytes = info.size * info.itemsize;
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    return splitnet::read_bytes(info.ptr, bytes, t);
  }, py::arg("buffer"), py::arg("threads"), "Reads a contiguous buffer once (the read-bandwidth floor).");

  m.def("score_packed", [](py::array query, py::array data, const std::string& dtype, py::object scales,
                           py::object allowed, float bias, py::array out, int threads) {
    const bool cross = query.ndim() == 2;  // many users: (M, dim) queries, no allowed subset
    const Rows q = rows_of(query, "users", cross ? 2 : 1);
    py::array scale_array = scales.is_none() ? py::array() : scales.cast<py::array>();  // alive for the call
    const splitnet::PackedRows rows = packed_of(data, dtype, scales.is_none() ? py::object(py::none()) : py::object(scale_array));
    require(q.dim == rows.dim, "users and candidates differ in dimension");
    py::array allowed_array = allowed.is_none() ? py::array() : allowed.cast<py::array>();
    const auto [ids, n_ids] = ids_of(allowed.is_none() ? py::object(py::none()) : py::object(allowed_array), rows.count);
    require(!cross || ids == nullptr, "allowed: only with one user");
    float* o = cross ? output_of(out, "out", {q.count, rows.count}) : output_of(out, "out", {ids ? n_ids : rows.count});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    if (cross) {
      splitnet::score_cross(table(), q, rows, bias, o, rows.count, t);
    } else {
      splitnet::score_one(table(), q.data, rows, bias, o, t, ids, n_ids);
    }
  }, py::arg("query"), py::arg("data"), py::arg("dtype"), py::arg("scales"), py::arg("allowed"), py::arg("bias"),
     py::arg("out"), py::arg("threads"));

  m.def("topk_packed", [](py::array query, py::array data, const std::string& dtype, py::object scales,
                          py::object allowed, index_t k, float bias, py::array out_scores, py::array out_ids, int threads) {
    const bool cross = query.ndim() == 2;  // many users: (M, dim) queries, no allowed subset
    const Rows q = rows_of(query, "users", cross ? 2 : 1);
    py::array scale_array = scales.is_none() ? py::array() : scales.cast<py::array>();
    const splitnet::PackedRows rows = packed_of(data, dtype, scales.is_none() ? py::object(py::none()) : py::object(scale_array));
    require(q.dim == rows.dim, "users and candidates differ in dimension");
    py::array allowed_array = allowed.is_none() ? py::array() : allowed.cast<py::array>();
    const auto [ids, n_ids] = ids_of(allowed.is_none() ? py::object(py::none()) : py::object(allowed_array), rows.count);
    require(k >= 0 && k <= (ids ? n_ids : rows.count), "k must be in [0, number of candidates]");
    require(!cross || ids == nullptr, "allowed: only with one user");
    float* s = cross ? output_of(out_scores, "scores", {q.count, k}) : output_of(out_scores, "scores", {k});
    auto* i = reinterpret_cast<index_t*>(cross ? output_of(out_ids, "ids", {q.count, k}, 'i')
                                               : output_of(out_ids, "ids", {k}, 'i'));
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    if (k > 0 && cross) {
      splitnet::topk_cross(table(), q, rows, k, bias, s, i, t);
    } else if (k > 0) {
      splitnet::topk_one(table(), q.data, rows, k, bias, s, i, t, ids, n_ids);
    }
  }, py::arg("query"), py::arg("data"), py::arg("dtype"), py::arg("scales"), py::arg("allowed"), py::arg("k"),
     py::arg("bias"), py::arg("out_scores"), py::arg("out_ids"), py::arg("threads"));

  m.def("detected_isa", [] { return splitnet::isa_name(splitnet::detect_isa()); },
        "The best instruction set this CPU supports.");
  m.def("active_isa", [] { return splitnet::isa_name(table().isa); }, "The instruction set the kernels use now.");
  m.def("supported_isas", [] {
    std::vector<std::string> names;
    for (const auto& [name, isa] : kIsaNames)
      if (splitnet::isa_supported(isa)) names.emplace_back(name);
    return names;
  }, "Every instruction set this CPU can run, the scalar reference first.");
  m.def("set_isa", [](const std::string& name) {
    const Isa isa = isa_from_name(name);
    if (!splitnet::isa_supported(isa))
      throw py::value_error("ISA '" + name + "' is not supported by this CPU (detected: " +
                            splitnet::isa_name(splitnet::detect_isa()) + ")");
    active_table.store(&splitnet::kernel_table(isa), std::memory_order_release);
  }, py::arg("name"), "Use the kernels of a supported instruction set from now on.");
  m.def("max_threads", [] { return splitnet::default_pool().size(); }, "Threads one call can use.");
}
