// The pybind11 module splitnet_kernels._core: one entry per operation. Each checks its
// arguments, releases the GIL and makes one call into kernels/ (folding the users under the
// metric's canonical form happens inside that call); conversions and copies happen in Python.
// score, topk and score_pairs are METH_FASTCALL functions (see Arguments), the rest pybind11's.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>

#include "splitnet_kernels/exact.h"
#include "splitnet_kernels/values.h"

namespace py = pybind11;
using splitnet::Dtype;
using splitnet::index_t;
using splitnet::Isa;
using splitnet::KernelTable;
using splitnet::MetricForm;
using splitnet::Rows;
using splitnet::StoredRows;

namespace {

// The active ISA, shared with Cython modules that cimport kernels.pxd through the capsule
// `_active_isa` (separate shared objects do not share C++ inline variables): an int holding an
// Isa, so each module maps it to the kernel table of the headers it was built with.
std::atomic<int> active_isa{static_cast<int>(splitnet::detect_isa())};

const KernelTable& table() { return splitnet::kernel_table(static_cast<Isa>(active_isa.load(std::memory_order_acquire))); }

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

// The numpy kind of each storage type's array: float16 as numpy's float16, bfloat16 as uint16.
char array_kind(Dtype dtype) {
  switch (dtype) {
    case Dtype::f32: return 'f';
    case Dtype::f16: return 'f';
    case Dtype::bf16: return 'u';
    case Dtype::i8: return 'i';
  }
  return '?';
}

// Candidate storage: (N, stored) rows contiguous and aligned to their element; int8 rows with
// (N,) float32 scales, other types with none.
StoredRows stored_of(const py::array& data, const py::handle& dtype_name, const py::object& scales,
                     py::object& keep_scales) {
  const Dtype dtype = dtype_of(dtype_name);
  const index_t itemsize = splitnet::element_size(dtype);
  if (data.dtype().kind() != array_kind(dtype) || data.itemsize() != itemsize)
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

// The operands of score and topk: users, candidates, allowed subset and metric form.
struct ScanOperands {
  py::object keep_scales, keep_ids;  // converted operands, alive for the call
  Rows users;
  StoredRows rows;
  const index_t* ids = nullptr;
  index_t n_ids = 0;
  FormOperands form;

  ScanOperands(const py::array& users_array, const py::array& data, const py::handle& dtype, const py::object& scales,
               const py::object& allowed, const py::object& diag, const py::object& left, const py::object& right)
      : users(users_of(users_array)), rows(stored_of(data, dtype, scales, keep_scales)),
        form(diag, left, right, users.dim) {
    require(rows.dim >= users.dim, "data: rows of ", rows.dim, " values are shorter than the users' ", users.dim);
    std::tie(ids, n_ids) = ids_of(allowed, rows.count, keep_ids);
  }

  index_t candidates() const { return ids ? n_ids : rows.count; }
};


// ---- Entries with many arguments --------------------------------------------------------
// score, topk and score_pairs take 8 to 13 arguments; pybind11's generic dispatcher spends tens
// of nanoseconds on each (a tuple, a caster, keyword matching), which would add half again to
// the binding's share of a serving call (1 user x 1,000 ads, top-10). They are METH_FASTCALL
// functions instead: the arguments arrive as a C array, by position or keyword, and are read
// here with the same checks; C++ exceptions become the Python ones pybind11 would raise.
template <std::size_t N>
class Arguments {
 public:
  Arguments(const char* function, const char* const (&names)[N], PyObject* const* args, Py_ssize_t nargs,
            PyObject* kwnames)
      : names_(names) {
    if (nargs > static_cast<Py_ssize_t>(N))
      throw py::type_error(std::string(function) + "() takes " + std::to_string(N) + " arguments, got " +
                           std::to_string(nargs));
    for (Py_ssize_t i = 0; i < nargs; ++i) values_[i] = args[i];
    const Py_ssize_t n_keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < n_keywords; ++j) {
      PyObject* keyword = PyTuple_GET_ITEM(kwnames, j);
      std::size_t i = 0;
      while (i < N && PyUnicode_CompareWithASCIIString(keyword, names[i]) != 0) ++i;
      if (i == N || values_[i] != nullptr)
        throw py::type_error(std::string(function) + "(): " + (i == N ? "unexpected" : "repeated") + " argument '" +
                             std::string(py::str(keyword)) + "'");
      values_[i] = args[nargs + j];
    }
    for (std::size_t i = 0; i < N; ++i)
      if (values_[i] == nullptr)
        throw py::type_error(std::string(function) + "() missing argument '" + names[i] + "'");
  }

  py::object object(std::size_t i) const { return py::reinterpret_borrow<py::object>(values_[i]); }

  py::array array(std::size_t i) const {
    if (!py::isinstance<py::array>(values_[i]))
      throw py::type_error(std::string(names_[i]) + ": expected a numpy array, got " +
                           std::string(py::str(py::type::handle_of(values_[i]).attr("__name__"))));
    return py::reinterpret_borrow<py::array>(values_[i]);
  }

  float real(std::size_t i) const {
    const double value = PyFloat_AsDouble(values_[i]);
    if (value == -1.0 && PyErr_Occurred()) refuse(i, "a real number");
    return static_cast<float>(value);
  }

  long long integer(std::size_t i) const {
    const long long value = PyLong_AsLongLong(values_[i]);
    if (value == -1 && PyErr_Occurred()) refuse(i, "an integer");
    return value;
  }

  int threads(std::size_t i) const {
    const long long value = integer(i);
    require(value >= 1, names_[i], " must be >= 1, got ", value);
    return thread_count(static_cast<int>(std::min<long long>(value, std::numeric_limits<int>::max())));
  }

 private:
  [[noreturn]] void refuse(std::size_t i, const char* expected) const {
    PyErr_Clear();
    throw py::type_error(std::string(names_[i]) + ": expected " + expected + ", got " +
                         std::string(py::str(py::type::handle_of(values_[i]).attr("__name__"))));
  }

  const char* const (&names_)[N];
  PyObject* values_[N] = {};
};

template <class Body>
PyObject* guarded(Body&& body) noexcept {
  try {
    body();
    Py_RETURN_NONE;
  } catch (py::error_already_set& error) {
    error.restore();
  } catch (const py::builtin_exception& error) {
    error.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
  }
  return nullptr;
}

constexpr const char* kScoreNames[] = {"users", "data", "dtype", "scales", "allowed", "diag",
                                       "left", "right", "bias", "out", "threads"};
PyObject* score_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  return guarded([&] {
    const Arguments<11> a("score", kScoreNames, args, nargs, kwnames);
    const py::array users = a.array(0);
    const ScanOperands p(users, a.array(1), a.object(2), a.object(3), a.object(4), a.object(5), a.object(6),
                         a.object(7));
    const float bias = a.real(8);
    py::array out = a.array(9);
    float* o = output_for(out, "out", users, p.users.count, p.candidates());
    const int t = a.threads(10);
    py::gil_scoped_release release;
    splitnet::score(table(), p.users, p.rows, p.form.form, bias, p.ids, p.n_ids, o, t);
  });
}

constexpr const char* kTopkNames[] = {"users", "data", "dtype", "scales", "allowed", "diag", "left",
                                      "right", "bias", "k", "out_scores", "out_ids", "threads"};
PyObject* topk_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  return guarded([&] {
    const Arguments<13> a("topk", kTopkNames, args, nargs, kwnames);
    const py::array users = a.array(0);
    const ScanOperands p(users, a.array(1), a.object(2), a.object(3), a.object(4), a.object(5), a.object(6),
                         a.object(7));
    const float bias = a.real(8);
    const TopkOutputs out(a, 9, users, p.users.count, p.candidates());
    const int t = a.threads(12);
    py::gil_scoped_release release;
    splitnet::topk(table(), p.users, p.rows, p.form.form, bias, p.ids, p.n_ids, out.k, out.scores, out.ids, t);
  });
}

constexpr const char* kPairsNames[] = {"users", "ads", "diag", "left", "right", "bias", "out", "threads"};
PyObject* score_pairs_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  return guarded([&] {
    const Arguments<8> a("score_pairs", kPairsNames, args, nargs, kwnames);
    const py::array users = a.array(0), ads = a.array(1);
    const Rows u = rows_of(users, "users", 2), v = rows_of(ads, "ads", 2);
    require(u.dim == v.dim && u.count == v.count, "users and ads: expected the same shape, got ", ShapeOf{users},
            " and ", ShapeOf{ads});
    const FormOperands form(a.object(2), a.object(3), a.object(4), u.dim);
    const float bias = a.real(5);
    py::array out = a.array(6);
    float* o = output_of(out, "out", {v.count});
    const int t = a.threads(7);
    py::gil_scoped_release release;
    splitnet::score_pairs(table(), u, v, form.form, bias, o, t);
  });
}

// A C-contiguous 1-D array of `length` values of the given kind ('f': float32, 'i': int64).
const void* vector_of(const py::array& a, const char* name, index_t length, char kind) {
  const bool dtype_ok = a.dtype().kind() == kind && a.itemsize() == (kind == 'f' ? 4 : 8);
  if (!dtype_ok) throw py::type_error(std::string(name) + ": expected " + (kind == 'f' ? "float32" : "int64") +
                                      ", got " + std::string(py::str(a.dtype())));
  require(a.ndim() == 1 && a.shape(0) == length, name, ": expected (", length, ",), got shape ", ShapeOf{a});
  require(length <= 1 || a.strides(0) == a.itemsize(), name, ": must be contiguous");
  return a.data();
}

constexpr const char* kValueNames[] = {"queries", "data", "dtype", "scales", "allowed", "bids", "ids", "bias",
                                       "begin", "end", "k", "scores", "best_ids", "counts", "threads"};
PyObject* topk_value_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  PyObject* resume = nullptr;
  PyObject* done = guarded([&] {
    const Arguments<15> a("topk_value", kValueNames, args, nargs, kwnames);
    py::object keep_scales, keep_ids;
    const Rows queries = rows_of(a.array(0), "queries", 2);
    const StoredRows rows = stored_of(a.array(1), a.object(2), a.object(3), keep_scales);
    require(queries.dim == rows.dim, "queries: expected rows of ", rows.dim, " values (the stored rows'), got ",
            queries.dim);
    const auto [positions, n_positions] = ids_of(a.object(4), rows.count, keep_ids);
    const auto* bids = static_cast<const float*>(vector_of(a.array(5), "bids", rows.count, 'f'));
    const auto* ids = static_cast<const index_t*>(vector_of(a.array(6), "ids", rows.count, 'i'));
    const float bias = a.real(7);
    const index_t size = positions ? n_positions : rows.count;
    const long long begin = a.integer(8), end = a.integer(9), k = a.integer(10);
    require(0 <= begin && begin <= end && end <= size, "begin, end: expected 0 <= begin <= end <= ", size, ", got ",
            begin, ", ", end);
    require(k >= 0, "k must be >= 0, got ", k);
    py::array scores = a.array(11), best_ids = a.array(12), counts = a.array(13);
    float* s = output_of(scores, "scores", {queries.count, k});
    auto* i = reinterpret_cast<index_t*>(output_of(best_ids, "best_ids", {queries.count, k}, 'i'));
    auto* c = reinterpret_cast<index_t*>(output_of(counts, "counts", {queries.count}, 'i'));
    for (index_t u = 0; u < queries.count; ++u) require(0 <= c[u] && c[u] <= k, "counts: must be in [0, k]");
    const int t = a.threads(14);
    const splitnet::ValueScan scan{rows, bids, ids, positions, n_positions, begin, end, bias};
    splitnet::ValueScanned scanned;
    {
      py::gil_scoped_release release;
      scanned = splitnet::topk_value(table(), queries, scan, k, s, i, c, t);
    }
    resume = Py_BuildValue("(LL)", static_cast<long long>(scanned.resume), static_cast<long long>(scanned.scored));
  });
  if (done == nullptr) return nullptr;
  Py_DECREF(done);
  return resume;
}

constexpr const char* kExactNames[] = {"users", "data", "dtype", "scales", "allowed", "exact", "norms",
                                       "residuals", "diag", "left", "right", "bias", "k", "out_scores",
                                       "out_ids", "threads", "block_norms", "block_residuals", "block"};
PyObject* topk_exact_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  PyObject* rescored = nullptr;
  PyObject* done = guarded([&] {
    const Arguments<19> a("topk_exact", kExactNames, args, nargs, kwnames);
    const py::array users = a.array(0);
    const ScanOperands p(users, a.array(1), a.object(2), a.object(3), a.object(4), a.object(8), a.object(9),
                         a.object(10));
    require(p.rows.dtype != Dtype::f32, "dtype: an exact set scans a reduced type, got float32");
    const py::array exact_array = a.array(5);
    const Rows exact = rows_of(exact_array, "exact", 2);
    require(exact.count == p.rows.count && exact.dim == p.rows.dim, "exact: expected the float32 rows of data's shape (",
            p.rows.count, ", ", p.rows.dim, "), got ", ShapeOf{exact_array});
    const auto* norms = static_cast<const float*>(vector_of(a.array(6), "norms", p.rows.count, 'f'));
    const auto* residuals = static_cast<const float*>(vector_of(a.array(7), "residuals", p.rows.count, 'f'));
    const float bias = a.real(11);
    const TopkOutputs out(a, 12, users, p.users.count, p.candidates());
    const int t = a.threads(15);
    const long long block = a.integer(18);
    require(block >= 1, "block: rows per stored maximum, >= 1, got ", block);
    const index_t blocks = (p.rows.count + block - 1) / block;
    const splitnet::ExactRows rows{exact, norms, residuals,
                                   static_cast<const float*>(vector_of(a.array(16), "block_norms", blocks, 'f')),
                                   static_cast<const float*>(vector_of(a.array(17), "block_residuals", blocks, 'f')),
                                   static_cast<index_t>(block)};
    index_t count;
    {
      py::gil_scoped_release release;
      count = splitnet::topk_exact(table(), p.users, p.rows, rows, p.form.form, bias, p.ids, p.n_ids, out.k,
                                   out.scores, out.ids, t);
    }
    rescored = PyLong_FromLongLong(count);
  });
  if (done == nullptr) return nullptr;
  Py_DECREF(done);
  return rescored;
}

constexpr const char* kFoldNames[] = {"users", "diag", "left", "right", "out", "threads"};
PyObject* fold_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  return guarded([&] {
    const Arguments<6> a("fold", kFoldNames, args, nargs, kwnames);
    const Rows users = rows_of(a.array(0), "users", 2);
    const FormOperands form(a.object(1), a.object(2), a.object(3), users.dim);
    py::array out = a.array(4);
    float* o = output_of(out, "out", {users.count, users.dim});
    const int t = a.threads(5);
    py::gil_scoped_release release;
    splitnet::fold_users(table(), form.form, users, o, users.dim, users.dim, t);
  });
}

constexpr const char* kProbabilityNames[] = {"x"};
PyObject* probability_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  return guarded([&] {
    const Arguments<1> a("probability", kProbabilityNames, args, nargs, kwnames);
    py::array x = a.array(0);
    require(x.writeable(), "x: must be writable");
    if (!(x.dtype().kind() == 'f' && x.itemsize() == 4) || !(x.flags() & py::array::c_style))
      throw py::type_error("x: expected a C-contiguous float32 array");
    float* values = static_cast<float*>(x.mutable_data());
    const index_t n = x.size();
    py::gil_scoped_release release;
    for (index_t j = 0; j < n; ++j) values[j] = splitnet::probability(values[j]);
  });
}

// The first lines are the text signature (inspect.signature reads it).
PyMethodDef kEntries[] = {
    {"score", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(score_entry)), METH_FASTCALL | METH_KEYWORDS,
     "score(users, data, dtype, scales, allowed, diag, left, right, bias, out, threads)\n--\n\n"
     "out = fold(users) . candidates + bias under S = diag(diag) + left right^T: users (n,) -> out (N,), (M, n) -> "
     "(M, N); N counts the allowed candidates when allowed is set. data (N, stored >= n) holds dtype rows "
     "(float32, float16, bfloat16 as uint16, int8 with scales (N,)), zero past n."},
    {"topk", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(topk_entry)), METH_FASTCALL | METH_KEYWORDS,
     "topk(users, data, dtype, scales, allowed, diag, left, right, bias, k, out_scores, out_ids, threads)\n--\n\n"
     "The best k scores per user (as score), best first, and their candidate ids (int64): (k,) for users (n,), "
     "else (M, k)."},
    {"score_pairs", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(score_pairs_entry)),
     METH_FASTCALL | METH_KEYWORDS,
     "score_pairs(users, ads, diag, left, right, bias, out, threads)\n--\n\n"
     "out[i] = users[i]^T S ads[i] + bias, users and ads (B, n) float32, out (B,)."},
    {"topk_value", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(topk_value_entry)),
     METH_FASTCALL | METH_KEYWORDS,
     "topk_value(queries, data, dtype, scales, allowed, bids, ids, bias, begin, end, k, scores, best_ids, counts, "
     "threads)\n--\n\n"
     "Continues each user's best-k list by value, bids[r] * sigmoid(queries[u] . row r + bias), with one objective's "
     "rows (bids descending; row r reported as ids[r]): positions [begin, end) of the allowed rows (or of all). "
     "scores / best_ids (M, k) hold counts[u] entries, best first; returns (where a later scan resumes, rows "
     "scored)."},
    {"topk_exact", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(topk_exact_entry)),
     METH_FASTCALL | METH_KEYWORDS,
     "topk_exact(users, data, dtype, scales, allowed, exact, norms, residuals, diag, left, right, bias, k, out_scores, "
     "out_ids, threads, block_norms, block_residuals, block)\n--\n\n"
     "topk over the float32 rows `exact` (N, stored), bit for bit, from a certified scan of data (the same rows in a "
     "reduced dtype) with per-row bounds norms >= ||a|| and residuals >= ||a - a~||, and their largest over each "
     "`block` rows (block_norms, block_residuals: ceil(N / block) each): only the rows that may enter are re-scored "
     "in float32. Returns how many were."},
    {"fold", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fold_entry)), METH_FASTCALL | METH_KEYWORDS,
     "fold(users, diag, left, right, out, threads)\n--\n\n"
     "out = users^T S under S = diag(diag) + left right^T, users and out (M, n): the kernels' own fold, with the "
     "bits score and topk fold with."},
    {"probability", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(probability_entry)),
     METH_FASTCALL | METH_KEYWORDS,
     "probability(x)\n--\n\nIn place: x = sigmoid(x), in double, rounded to float32 (x C-contiguous float32)."},
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Compiled scoring kernels (see kernels/ for the C++ API): score, topk and score_pairs under a metric's "
            "canonical form S = diag(diag) + left right^T.";

  for (PyMethodDef& entry : kEntries) {
    PyObject* function = PyCFunction_NewEx(&entry, nullptr, m.attr("__name__").ptr());
    if (function == nullptr) throw py::error_already_set();
    m.add_object(entry.ml_name, py::reinterpret_steal<py::object>(function));
  }

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
    return splitnet::read_bytes(table(), info.ptr, bytes, t);
  }, py::arg("buffer"), py::arg("threads"), "Reads a contiguous buffer once (the read-bandwidth floor).");

  m.def("detected_isa", [] { return splitnet::isa_name(splitnet::detect_isa()); },
        "The best instruction set this CPU supports.");
  m.def("active_isa", [] { return splitnet::isa_name(table().isa); }, "The instruction set the kernels use now.");
  m.def("supported_isas", [] {
    std::vector<std::string> names;
    for (const auto& entry : splitnet::kIsaNames)
      if (splitnet::isa_supported(entry.isa)) names.emplace_back(entry.name);
    return names;
  }, "Every instruction set this CPU can run, the scalar reference first.");
  m.def("set_isa", [](const std::string& name) {
    Isa isa;
    if (!splitnet::isa_from_name(name.data(), name.size(), &isa)) {
      std::string known;
      for (const auto& entry : splitnet::kIsaNames) known += std::string(known.empty() ? "" : ", ") + entry.name;
      throw py::value_error("unknown ISA '" + name + "' (known: " + known + ")");
    }
    if (!splitnet::isa_supported(isa))
      throw py::value_error("ISA '" + name + "' is not supported by this CPU (detected: " +
                            splitnet::isa_name(splitnet::detect_isa()) + ")");
    active_isa.store(static_cast<int>(isa), std::memory_order_release);
  }, py::arg("name"), "Use the kernels of a supported instruction set from now on (here and in kernels.pxd users).");
  m.def("max_threads", [] { return splitnet::default_pool().size(); }, "Threads one call can use.");
  m.attr("_active_isa") = py::capsule(static_cast<void*>(&active_isa), "splitnet_kernels._core._active_isa");
}
