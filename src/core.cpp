// The pybind11 module splitnet_kernels._core: its entries, one per operation. Each checks its
// arguments (operand_checks.h), releases the GIL and makes one call into kernels/ (folding the
// users under the metric's canonical form happens inside that call); conversions and copies
// happen in Python. score, topk and the other many-argument entries are METH_FASTCALL functions
// (fastcall.h), the rest pybind11's.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "splitnet_kernels/exact.h"
#include "splitnet_kernels/values.h"

#include "fastcall.h"
#include "operand_checks.h"
#include "torch_ops.h"

using splitnet::Isa;
using splitnet::KernelTable;

namespace {

// The active ISA, shared with Cython modules that cimport kernels.pxd through the capsule
// `_active_isa` (separate shared objects do not share C++ inline variables): an int holding an
// Isa, so each module maps it to the kernel table of the headers it was built with.
std::atomic<int> active_isa{static_cast<int>(splitnet::detect_isa())};

const KernelTable& table() { return splitnet::kernel_table(static_cast<Isa>(active_isa.load(std::memory_order_acquire))); }

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
    require(!p.filter, "allowed: score takes ids (ascending int64), not a bitmap");
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
    splitnet::topk(table(), p.users, p.rows, p.form.form, bias, p.ids, p.n_ids, out.k, out.scores, out.ids, t,
                   p.filter);
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

// An exact set's heads (exact.h, Levels): None, or (rotation (n, n) float64, its orthogonality,
// blocks (ceil(count / 16), 16 width + 128) int8 in score_heads_i8's layout, block_head_residuals
// (blocks,) float32), all C-contiguous.
splitnet::Levels levels_of(const py::object& x, const StoredRows& rows, index_t blocks) {
  if (x.is_none()) return {};
  require(py::isinstance<py::tuple>(x) && py::len(x) == 4,
          "levels: expected (rotation, orthogonality, blocks, block_head_residuals) or None");
  const auto parts = py::reinterpret_borrow<py::tuple>(x);
  const auto rotation = parts[0].cast<py::array>(), heads = parts[2].cast<py::array>();
  const double orthogonality = parts[1].cast<double>();
  require(py::isinstance<py::array_t<double>>(rotation) && rotation.ndim() == 2 &&
              rotation.shape(0) == rotation.shape(1) && rotation.shape(0) >= 1 && rotation.shape(0) <= rows.dim &&
              (rotation.flags() & py::array::c_style),
          "levels: rotation must be a C-contiguous float64 (n, n), n <= ", rows.dim, ", got ", ShapeOf{rotation});
  require(orthogonality >= 0 && orthogonality < 0x1p-20, "levels: orthogonality must be in [0, 2^-20), got ",
          orthogonality);
  const index_t width = heads.ndim() == 2 ? (heads.shape(1) - 128) / 16 : 0;
  require(py::isinstance<py::array_t<std::int8_t>>(heads) && heads.ndim() == 2 &&
              heads.shape(0) == (rows.count + 15) / 16 && width >= 4 && width % 4 == 0 &&
              heads.shape(1) == 16 * width + 128 && width <= rotation.shape(0) && (heads.flags() & py::array::c_style) &&
              reinterpret_cast<std::uintptr_t>(heads.data()) % 4 == 0,
          "levels: blocks must be a C-contiguous, 4-byte aligned int8 (", (rows.count + 15) / 16,
          ", 16 width + 128), width a multiple of 4 and <= n, got ", ShapeOf{heads});
  return {static_cast<const double*>(rotation.data()), rotation.shape(0), orthogonality,
          static_cast<const std::int8_t*>(heads.data()), width,
          static_cast<const float*>(vector_of(parts[3].cast<py::array>(), "block_head_residuals", blocks, 'f'))};
}

constexpr const char* kExactNames[] = {"users", "data", "dtype", "scales", "allowed", "exact", "norms",
                                       "residuals", "diag", "left", "right", "bias", "k", "out_scores",
                                       "out_ids", "threads", "block_norms", "block_residuals", "block",
                                       "levels"};
PyObject* topk_exact_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
  PyObject* counts = nullptr;
  PyObject* done = guarded([&] {
    const Arguments<20> a("topk_exact", kExactNames, args, nargs, kwnames);
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
                                   static_cast<index_t>(block), levels_of(a.object(19), p.rows, blocks)};
    splitnet::Certified certified;
    {
      py::gil_scoped_release release;
      certified = splitnet::topk_exact(table(), p.users, p.rows, rows, p.form.form, bias, p.ids, p.n_ids, out.k,
                                       out.scores, out.ids, t, p.filter);
    }
    counts = Py_BuildValue("(LLd)", static_cast<long long>(certified.rescored),
                           static_cast<long long>(certified.refined), certified.bytes);
  });
  if (done == nullptr) return nullptr;
  Py_DECREF(done);
  return counts;
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
     "else (M, k). allowed: None, ascending int64 ids (their rows gathered), or a bitmap of the N candidates "
     "(uint64 words, bit c % 64 of word c / 64: every row read, the others left out); k <= the allowed count."},
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
     "out_ids, threads, block_norms, block_residuals, block, levels)\n--\n\n"
     "topk over the float32 rows `exact` (N, stored), bit for bit, from a certified scan of data (the same rows in a "
     "reduced dtype) with per-row bounds norms >= ||a|| and residuals >= ||a - a~||, and their largest over each "
     "`block` rows (block_norms, block_residuals: ceil(N / block) each): only the rows that may enter are re-scored "
     "in float32. levels: None, or the set's heads (rotation, orthogonality, blocks, block_head_residuals) for "
     "the progressive scan. Returns (rows re-scored, rows read past their head, "
     "bytes of data and per-row values read)."},
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
  m.def("isas", [] {
    std::vector<std::pair<std::string, bool>> levels;
    for (const splitnet::IsaLevel& level : splitnet::kIsaLevels) levels.emplace_back(level.name, level.supported());
    return levels;
  }, "Every instruction set the kernels know, as (name, whether this CPU runs it), the scalar reference first.");
  m.def("supported_isas", [] {
    std::vector<std::string> names;
    for (const splitnet::IsaLevel& level : splitnet::kIsaLevels)
      if (level.supported()) names.emplace_back(level.name);
    return names;
  }, "Every instruction set this CPU can run, the scalar reference first.");
  m.def("set_isa", [](const std::string& name) {
    Isa isa;
    if (!splitnet::isa_from_name(name.data(), name.size(), &isa)) {
      std::string known;
      for (const splitnet::IsaLevel& level : splitnet::kIsaLevels) known += std::string(known.empty() ? "" : ", ") + level.name;
      throw py::value_error("unknown ISA '" + name + "' (known: " + known + ")");
    }
    if (!splitnet::isa_supported(isa))
      throw py::value_error("ISA '" + name + "' is not supported by this CPU (detected: " +
                            splitnet::isa_name(splitnet::detect_isa()) + ")");
    active_isa.store(static_cast<int>(isa), std::memory_order_release);
  }, py::arg("name"), "Use the kernels of a supported instruction set from now on (here and in kernels.pxd users).");
  m.def("max_threads", [] { return splitnet::default_pool().size(); }, "Threads one call can use.");
  add_torch_ops(m, table);
  m.attr("_active_isa") = py::capsule(static_cast<void*>(&active_isa), "splitnet_kernels._core._active_isa");
}
