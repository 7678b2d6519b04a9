// The pybind11 module splitnet_kernels._core. Each function checks its arguments, releases the
// GIL and makes one call into kernels/; conversions and copies happen in Python, in the open.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <string>
#include <tuple>
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

// An optional float32 vector argument of `length` values: null for None. `keep` holds the array
// for the call (a conversion from another type makes a new one).
const float* optional_vector(const py::object& x, const char* name, index_t length, py::array& keep) {
  if (x.is_none()) return nullptr;
  keep = x.cast<py::array>();
  const Rows v = rows_of(keep, name, 1);
  require(v.dim == length, name, ": expected ", length, " values, got ", v.dim);
  return v.data;
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
splitnet::PackedRows packed_of(const py::array& data, const std::string& dtype, const py::object& scales,
                               py::array& keep_scales) {
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
      rows.scales = optional_vector(scales, "scales", rows.count, keep_scales);
    }
    return rows;
  }
  throw py::value_error("unknown candidate dtype '" + dtype + "'");
}

// The allowed subset: ascending, unique, in range (checked here, since kernels index with it).
std::pair<const index_t*, index_t> ids_of(const py::object& ids, index_t count, py::array& keep) {
  if (ids.is_none()) return {nullptr, 0};
  const py::array& array = keep = ids.cast<py::array>();
  if (array.dtype().kind() != 'i' || array.itemsize() != 8 || array.ndim() != 1 || (array.shape(0) > 1 && array.strides(0) != 8))
    throw py::type_error("allowed ids: expected a contiguous 1-D int64 array");
  const auto* p = static_cast<const index_t*>(array.data());
  for (index_t i = 0; i < array.shape(0); ++i)
    require(p[i] >= 0 && p[i] < count && (i == 0 || p[i] > p[i - 1]), "allowed ids: must be ascending, unique and in [0, N)");
  return {p, array.shape(0)};
}

// The operands of score_packed and topk_packed: one query (dim,) or many (M, dim, no allowed
// subset), the stored rows, and the allowed ids; `keep_*` hold converted arrays for the call.
struct PackedOperands {
  py::array keep_scales, keep_ids;
  bool cross = false;
  Rows queries{};
  splitnet::PackedRows rows{};
  const index_t* ids = nullptr;
  index_t n_ids = 0;

  PackedOperands(const py::array& query, const py::array& data, const std::string& dtype, const py::object& scales,
                 const py::object& allowed)
      : cross(query.ndim() == 2), queries(rows_of(query, "users", cross ? 2 : 1)),
        rows(packed_of(data, dtype, scales, keep_scales)) {
    require(queries.dim == rows.dim, "users and candidates differ in dimension");
    std::tie(ids, n_ids) = ids_of(allowed, rows.count, keep_ids);
    require(!cross || ids == nullptr, "allowed: only with one user");
  }

  index_t candidates() const { return ids ? n_ids : rows.count; }
};

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
    py::array keep;
    const float* w = optional_vector(weights, "weights", a.dim, keep);
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
    py::array keep_right, keep_diag;  // converted operands, alive for the call
    const float* r = nullptr;
    if (!right.is_none()) {
      keep_right = right.cast<py::array>();
      const Rows rr = rows_of(keep_right, "right", 2);
      require(rr.count == l.count && rr.dim == l.dim && rr.stride == rr.dim, "right must be C-contiguous, shaped like left");
      r = rr.data;
    } else {
      require(l.dim == a.dim, "without right, left must be (dim, dim)");
    }
    const float* d = optional_vector(diag, "diag", a.dim, keep_diag);
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
    const PackedOperands p(query, data, dtype, scales, allowed);
    float* o = p.cross ? output_of(out, "out", {p.queries.count, p.rows.count}) : output_of(out, "out", {p.candidates()});
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    if (p.cross) {
      splitnet::score_cross(table(), p.queries, p.rows, bias, o, p.rows.count, t);
    } else {
      splitnet::score_one(table(), p.queries.data, p.rows, bias, o, t, p.ids, p.n_ids);
    }
  }, py::arg("query"), py::arg("data"), py::arg("dtype"), py::arg("scales"), py::arg("allowed"), py::arg("bias"),
     py::arg("out"), py::arg("threads"));

  m.def("topk_packed", [](py::array query, py::array data, const std::string& dtype, py::object scales,
                          py::object allowed, index_t k, float bias, py::array out_scores, py::array out_ids, int threads) {
    const PackedOperands p(query, data, dtype, scales, allowed);
    require(k >= 0 && k <= p.candidates(), "k must be in [0, number of candidates]");
    float* s = p.cross ? output_of(out_scores, "scores", {p.queries.count, k}) : output_of(out_scores, "scores", {k});
    auto* i = reinterpret_cast<index_t*>(p.cross ? output_of(out_ids, "ids", {p.queries.count, k}, 'i')
                                                 : output_of(out_ids, "ids", {k}, 'i'));
    const int t = thread_count(threads);
    py::gil_scoped_release release;
    if (k > 0 && p.cross) {
      splitnet::topk_cross(table(), p.queries, p.rows, k, bias, s, i, t);
    } else if (k > 0) {
      splitnet::topk_one(table(), p.queries.data, p.rows, k, bias, s, i, t, p.ids, p.n_ids);
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
