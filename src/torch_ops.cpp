// The CPU kernels of the custom ops torch.ops.splitnet_kernels.{score, score_pairs, topk,
// candidates_score, candidates_topk}, registered with the dispatcher through LibTorch's stable C
// ABI (torch_shim.h), whose functions arrive as addresses when Python registers them: no torch
// header or library is needed to build this file, and one build serves every torch from 2.10 on.
//
// Each kernel takes the calls the compiled kernels answer as they are (CPU float32 operands with
// contiguous rows, packed rows of any storage type, ranking by score, a fold plainly in range,
// a thread count known here) and makes one call into kernels/, the call _core's entries make.
// Every other call (other dtypes, sigmoid=True, a doubtful fold range, unusual layouts, bad
// operands) goes, untouched, to the op's Python kernel (_torch_ops.py, registered under the
// namespace splitnet_kernels_python), which is the specification and names every bad operand;
// its TypeError or ValueError reaches the caller as that type.
#include "torch_ops.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "splitnet_kernels/ops.h"
#include "torch_shim.h"

namespace py = pybind11;
using splitnet::Dtype;
using splitnet::index_t;
using splitnet::MetricForm;
using splitnet::Rows;
using splitnet::StoredRows;
using torch_shim::StableIValue;
using torch_shim::Tensor;

namespace {

torch_shim::Functions shim;

// The codes the running torch gives its dtypes, device and layout (read once, at registration).
struct Codes {
  std::int32_t cpu, strided, f32, f16, bf16, i8, i64;
} codes;

const splitnet::KernelTable& (*active_table)() = nullptr;
double fold_limit = 0;                // _metric.FOLD_LIMIT, given at registration
std::atomic<int> default_threads{0};  // threads=None's count; 0: the Python kernel decides
py::object* take_error = nullptr;     // _torch_ops._take_error, alive for the process
torch_shim::Library library = nullptr;

// ---- the arguments on the dispatcher's stack ---------------------------------------------------
enum class Kind { tensor, optional_tensor, real, integer, optional_integer, boolean };

// An op's arguments, copied off the stack (where the results go): a kernel that takes the call
// frees them when it is done (they are its to free), one that hands the call on leaves them, on
// the stack, to the Python kernel.
class Arguments {
 public:
  template <std::size_t N>
  Arguments(StableIValue* stack, std::uint64_t count, const Kind (&kinds)[N]) : stack_(stack), kinds_(kinds), n_(N) {
    static_assert(N <= kMost, "an op with more arguments than Arguments holds");
    if (count != N) throw std::runtime_error("splitnet_kernels: an op's schema and its C++ kernel disagree");
    std::copy(stack, stack + N, values_);
  }
  Arguments(const Arguments&) = delete;
  Arguments& operator=(const Arguments&) = delete;
  ~Arguments() {
    if (!handed_) release();
  }

  Tensor tensor(std::size_t i) const { return as<Tensor>(values_[i]); }
  Tensor optional_tensor(std::size_t i) const {
    const StableIValue* box = as<const StableIValue*>(values_[i]);
    return box ? as<Tensor>(*box) : nullptr;
  }
  double real(std::size_t i) const { return as<double>(values_[i]); }
  std::int64_t integer(std::size_t i) const { return as<std::int64_t>(values_[i]); }
  bool has(std::size_t i) const { return values_[i] != 0; }  // an optional that is not None
  std::int64_t optional_integer(std::size_t i) const { return as<std::int64_t>(*as<const StableIValue*>(values_[i])); }
  bool boolean(std::size_t i) const {
    bool value;
    std::memcpy(&value, &values_[i], sizeof value);
    return value;
  }

  // The call goes to the op's Python kernel, with the arguments as they came.
  void hand_to(const char* op) {
    handed_ = true;
    if (shim.torch_call_dispatcher(op, "", stack_, torch_shim::kTargetVersion) != 0) raise_python_error(op);
  }

 private:
  template <class T>
  static T as(StableIValue value) {
    T result;
    std::memcpy(&result, &value, sizeof result);
    return result;
  }

  void release() {
    for (std::size_t i = 0; i < n_; ++i) {
      if (kinds_[i] == Kind::tensor) {
        shim.aoti_torch_delete_tensor_object(tensor(i));
      } else if ((kinds_[i] == Kind::optional_tensor || kinds_[i] == Kind::optional_integer) && has(i)) {
        StableIValue* box = as<StableIValue*>(values_[i]);
        if (kinds_[i] == Kind::optional_tensor) shim.aoti_torch_delete_tensor_object(as<Tensor>(*box));
        delete box;  // torch >= 2.10 boxes an optional's value with new (stableivalue_conversions.h)
      }
    }
  }

  [[noreturn]] static void raise_python_error(const char* op) {
    py::gil_scoped_acquire gil;
    const py::object error = (*take_error)();
    if (error.is_none()) throw std::runtime_error(std::string(op) + " failed");
    const auto [kind, message] = error.cast<std::pair<std::string, std::string>>();
    if (kind == "TypeError") throw py::type_error(message);
    if (kind == "ValueError") throw py::value_error(message);
    throw std::runtime_error(message);
  }

  static constexpr std::size_t kMost = 11;
  StableIValue* stack_;
  const Kind* kinds_;
  std::size_t n_;
  StableIValue values_[kMost] = {};
  bool handed_ = false;
};

// A new CPU tensor owned here until it is put on the stack as a result.
class Output {
 public:
  Output(std::initializer_list<std::int64_t> shape, std::int32_t dtype) {
    std::int64_t sizes[2], strides[2], stride = 1;
    const std::int64_t ndim = static_cast<std::int64_t>(shape.size());
    std::copy(shape.begin(), shape.end(), sizes);
    for (std::int64_t d = ndim - 1; d >= 0; --d) strides[d] = stride, stride *= std::max<std::int64_t>(sizes[d], 1);
    void* data = nullptr;
    if (shim.aoti_torch_empty_strided(ndim, sizes, strides, dtype, codes.cpu, 0, &tensor_) != 0 ||
        shim.aoti_torch_get_data_ptr(tensor_, &data) != 0)
      throw std::runtime_error("splitnet_kernels: could not allocate an op's result");
    data_ = data;
  }
  Output(const Output&) = delete;
  Output& operator=(const Output&) = delete;
  ~Output() {
    if (tensor_) shim.aoti_torch_delete_tensor_object(tensor_);
  }

  template <class T>
  T* data() const { return static_cast<T*>(data_); }
  void put(StableIValue* slot) {
    *slot = 0;
    std::memcpy(slot, &tensor_, sizeof tensor_);
    tensor_ = nullptr;
  }

 private:
  Tensor tensor_ = nullptr;
  void* data_ = nullptr;
};

// ---- what a kernel here takes -------------------------------------------------------------------
// A dense CPU tensor's layout, or false for anything else.
struct View {
  const void* data = nullptr;
  std::int64_t ndim = 0;
  const std::int64_t* sizes = nullptr;
  const std::int64_t* strides = nullptr;
  std::int32_t dtype = -1;
};

bool view_of(Tensor t, View& v) {
  std::int32_t device = -1, layout = -1;
  void* data = nullptr;
  std::int64_t *sizes = nullptr, *strides = nullptr;
  if (shim.aoti_torch_get_device_type(t, &device) != 0 || device != codes.cpu ||
      shim.aoti_torch_get_layout(t, &layout) != 0 || layout != codes.strided ||
      shim.aoti_torch_get_dim(t, &v.ndim) != 0 || shim.aoti_torch_get_sizes(t, &sizes) != 0 ||
      shim.aoti_torch_get_strides(t, &strides) != 0 || shim.aoti_torch_get_dtype(t, &v.dtype) != 0 ||
      shim.aoti_torch_get_data_ptr(t, &data) != 0)
    return false;
  v.data = data, v.sizes = sizes, v.strides = strides;
  return true;
}

// Rows (count, dim) of `itemsize`-byte elements from a 1-D (one row) or 2-D view: each row
// contiguous, rows apart by at least a row (the layouts the binding reads without a copy).
bool rows_of(const View& v, index_t& count, index_t& dim, index_t& stride) {
  if (v.ndim != 1 && v.ndim != 2) return false;
  dim = v.sizes[v.ndim - 1];
  count = v.ndim == 1 ? 1 : v.sizes[0];
  if (dim > 1 && v.strides[v.ndim - 1] != 1) return false;
  stride = count <= 1 ? dim : v.strides[0];
  return stride >= dim;
}

bool float_rows(Tensor t, int ndim, Rows& rows) {
  View v;
  if (t == nullptr || !view_of(t, v) || v.dtype != codes.f32 || v.ndim != ndim) return false;
  rows.data = static_cast<const float*>(v.data);
  return rows_of(v, rows.count, rows.dim, rows.stride);
}

// A C-contiguous float32 (count, dim) matrix, or a (dim,) vector when count is 0.
const float* contiguous(Tensor t, index_t count, index_t dim) {
  Rows rows;
  if (!float_rows(t, count == 0 ? 1 : 2, rows) || rows.dim != dim || (count != 0 && rows.count != count) ||
      (rows.count > 1 && rows.stride != dim))
    return nullptr;
  return rows.data;
}

// dot's ones, the form the kernels take for S = I (diag and left None).
const float* ones(index_t n) {
  thread_local std::vector<float> values;
  if (static_cast<index_t>(values.size()) < n) values.assign(static_cast<std::size_t>(n), 1.0f);
  return values.data();
}

double norm(const float* x, index_t n) {
  double sum = 0;
  for (index_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return std::sqrt(sum);
}

// _torch_ops.check_fold_range's first test: every user's norm times the Frobenius norms of the
// form's magnitudes within the limit. A user that fails it (or a NaN) goes to the Python kernel,
// which forms the exact bound and refuses past it.
bool fold_plainly_in_range(const Rows& users, const MetricForm& form) {
  if (form.left == nullptr) return true;  // a diagonal form overflows as IEEE does, on every backend
  const double left = norm(form.left, form.dim * form.rank);
  const double factors = left * (form.right ? norm(form.right, form.dim * form.rank) : 1.0);
  const double gain = std::max(factors + (form.diag ? norm(form.diag, form.dim) : 0.0), left);
  for (index_t u = 0; u < users.count; ++u)
    if (!(norm(users.row(u), users.dim) * gain <= fold_limit)) return false;
  return true;
}

// The metric's form (diag, left, right at `first`) for users of `dim`, or false.
bool form_of(const Arguments& a, std::size_t first, index_t dim, MetricForm& form) {
  const Tensor diag = a.optional_tensor(first), left = a.optional_tensor(first + 1),
               right = a.optional_tensor(first + 2);
  form.dim = dim;
  if (diag && !(form.diag = contiguous(diag, 0, dim))) return false;
  if (left) {
    View v;
    if (!view_of(left, v) || v.ndim != 2 || v.sizes[0] != dim || v.sizes[1] < 1) return false;
    form.rank = v.sizes[1];
    if (!(form.left = contiguous(left, dim, form.rank))) return false;
    if (right ? !(form.right = contiguous(right, dim, form.rank)) : form.rank != dim) return false;
  } else if (right) {
    return false;
  }
  if (!diag && !left) form.diag = ones(dim);
  return true;
}

// threads (an int? at i): the count a call uses, or 0 where the Python kernel decides.
int threads_of(const Arguments& a, std::size_t i) {
  const std::int64_t asked = a.has(i) ? a.optional_integer(i) : default_threads.load(std::memory_order_relaxed);
  if (asked < 1) return 0;
  return static_cast<int>(std::min<std::int64_t>(asked, splitnet::default_pool().size()));
}

bool stored_dtype(std::int32_t code, Dtype& dtype) {
  if (code == codes.f32) return dtype = Dtype::f32, true;
  if (code == codes.f16) return dtype = Dtype::f16, true;
  if (code == codes.bf16) return dtype = Dtype::bf16, true;
  if (code == codes.i8) return dtype = Dtype::i8, true;
  return false;
}

// The operands of every op: users, candidates (a float32 matrix or packed rows), allowed ids,
// form, bias and threads.
struct Scan {
  Rows users;
  bool one_user = false;
  StoredRows rows{};
  bool subset = false;  // allowed given: only the ids (an empty tensor's data may be null)
  const index_t* ids = nullptr;
  index_t n_ids = 0;
  MetricForm form;
  float bias = 0;
  int threads = 0;

  index_t candidates() const { return subset ? n_ids : rows.count; }
};

bool users_of(const Arguments& a, Scan& scan) {
  View v;
  if (!view_of(a.tensor(0), v) || v.dtype != codes.f32 || (v.ndim != 1 && v.ndim != 2)) return false;
  scan.one_user = v.ndim == 1;
  scan.users.data = static_cast<const float*>(v.data);
  return rows_of(v, scan.users.count, scan.users.dim, scan.users.stride) && scan.users.dim >= 1;
}

// score, score_pairs, topk: users, ads (N, n) float32, diag, left, right, bias, (k), threads.
bool plain_scan(const Arguments& a, std::size_t threads_at, Scan& scan) {
  Rows ads;
  if (!users_of(a, scan) || !float_rows(a.tensor(1), 2, ads) || ads.dim != scan.users.dim) return false;
  scan.rows = splitnet::stored(ads);
  scan.bias = static_cast<float>(a.real(5));
  scan.threads = threads_of(a, threads_at);
  return scan.threads > 0 && form_of(a, 2, scan.users.dim, scan.form) && fold_plainly_in_range(scan.users, scan.form);
}

// candidates_score, candidates_topk: users, data, scales, allowed, diag, left, right, bias, (k), threads.
bool packed_scan(const Arguments& a, std::size_t threads_at, Scan& scan) {
  View data;
  if (!users_of(a, scan) || !view_of(a.tensor(1), data) || data.ndim != 2 || !stored_dtype(data.dtype, scan.rows.dtype))
    return false;
  scan.rows.data = data.data;
  if (!rows_of(data, scan.rows.count, scan.rows.dim, scan.rows.stride) || data.ndim != 2 ||
      scan.rows.dim < scan.users.dim || data.sizes[0] != scan.rows.count)
    return false;
  if (scan.rows.count <= 1) scan.rows.stride = scan.rows.dim;
  const Tensor scales = a.optional_tensor(2);
  if ((scan.rows.dtype == Dtype::i8) != (scales != nullptr)) return false;
  if (scales && (!(scan.rows.scales = contiguous(scales, 0, scan.rows.count)) || scan.rows.dim > (index_t{1} << 17)))
    return false;
  if (const Tensor allowed = a.optional_tensor(3)) {
    View v;
    if (!view_of(allowed, v) || v.dtype != codes.i64 || v.ndim != 1 || (v.sizes[0] > 1 && v.strides[0] != 1))
      return false;
    scan.subset = true;
    scan.ids = static_cast<const index_t*>(v.data);
    scan.n_ids = v.sizes[0];
    for (index_t i = 0; i < scan.n_ids; ++i)  // ascending, unique, in range: the kernels index with them
      if (scan.ids[i] < 0 || scan.ids[i] >= scan.rows.count || (i > 0 && scan.ids[i] <= scan.ids[i - 1])) return false;
  }
  scan.bias = static_cast<float>(a.real(7));
  scan.threads = threads_of(a, threads_at);
  return scan.threads > 0 && form_of(a, 4, scan.users.dim, scan.form) && fold_plainly_in_range(scan.users, scan.form);
}

// ---- the kernels ----------------------------------------------------------------------------------
// The ops' schemas (_torch_ops.SCHEMAS), argument by argument.
constexpr Kind kTensor = Kind::tensor, kOptionalTensor = Kind::optional_tensor, kReal = Kind::real,
               kInteger = Kind::integer, kOptionalInteger = Kind::optional_integer, kBoolean = Kind::boolean;
// users, ads, diag, left, right, bias, threads (score and score_pairs)
constexpr Kind kScore[] = {kTensor, kTensor, kOptionalTensor, kOptionalTensor, kOptionalTensor, kReal,
                           kOptionalInteger};
// users, ads, diag, left, right, bias, k, threads, sigmoid
constexpr Kind kTopk[] = {kTensor, kTensor, kOptionalTensor, kOptionalTensor, kOptionalTensor, kReal, kInteger,
                          kOptionalInteger, kBoolean};
// users, data, scales, allowed, diag, left, right, bias, threads
constexpr Kind kCandidatesScore[] = {kTensor,         kTensor,         kOptionalTensor, kOptionalTensor, kOptionalTensor,
                                     kOptionalTensor, kOptionalTensor, kReal,           kOptionalInteger};
// users, data, scales, allowed, diag, left, right, bias, k, threads, sigmoid
constexpr Kind kCandidatesTopk[] = {kTensor,         kTensor,         kOptionalTensor, kOptionalTensor,
                                    kOptionalTensor, kOptionalTensor, kOptionalTensor, kReal,
                                    kInteger,        kOptionalInteger, kBoolean};

void score_into(StableIValue* stack, const Scan& scan) {
  const index_t n = scan.candidates();
  Output out = scan.one_user ? Output({n}, codes.f32) : Output({scan.users.count, n}, codes.f32);
  if (scan.users.count > 0 && n > 0)
    splitnet::score(active_table(), scan.users, scan.rows, scan.form, scan.bias, scan.ids, scan.n_ids,
                    out.data<float>(), scan.threads);
  out.put(&stack[0]);
}

void topk_into(StableIValue* stack, const Scan& scan, std::int64_t k) {
  const index_t kept = std::min<index_t>(k, scan.candidates());
  Output scores = scan.one_user ? Output({kept}, codes.f32) : Output({scan.users.count, kept}, codes.f32);
  Output ids = scan.one_user ? Output({kept}, codes.i64) : Output({scan.users.count, kept}, codes.i64);
  splitnet::topk(active_table(), scan.users, scan.rows, scan.form, scan.bias, scan.ids, scan.n_ids, kept,
                 scores.data<float>(), ids.data<index_t>(), scan.threads);
  scores.put(&stack[0]);
  ids.put(&stack[1]);
}

void score_kernel(StableIValue* stack, std::uint64_t count, std::uint64_t) {
  Arguments a(stack, count, kScore);
  Scan scan;
  if (!plain_scan(a, 6, scan)) return a.hand_to("splitnet_kernels_python::score");
  score_into(stack, scan);
}

void score_pairs_kernel(StableIValue* stack, std::uint64_t count, std::uint64_t) {
  Arguments a(stack, count, kScore);
  Scan scan;
  if (!plain_scan(a, 6, scan) || scan.one_user || scan.users.count != scan.rows.count)
    return a.hand_to("splitnet_kernels_python::score_pairs");
  Output out({scan.rows.count}, codes.f32);
  if (scan.rows.count > 0)
    splitnet::score_pairs(active_table(), scan.users,
                          Rows{static_cast<const float*>(scan.rows.data), scan.rows.count, scan.rows.dim,
                               scan.rows.stride},
                          scan.form, scan.bias, out.data<float>(), scan.threads);
  out.put(&stack[0]);
}

void topk_kernel(StableIValue* stack, std::uint64_t count, std::uint64_t) {
  Arguments a(stack, count, kTopk);
  Scan scan;
  if (a.integer(6) < 1 || a.boolean(8) || !plain_scan(a, 7, scan)) return a.hand_to("splitnet_kernels_python::topk");
  topk_into(stack, scan, a.integer(6));
}

void candidates_score_kernel(StableIValue* stack, std::uint64_t count, std::uint64_t) {
  Arguments a(stack, count, kCandidatesScore);
  Scan scan;
  if (!packed_scan(a, 8, scan)) return a.hand_to("splitnet_kernels_python::candidates_score");
  score_into(stack, scan);
}

void candidates_topk_kernel(StableIValue* stack, std::uint64_t count, std::uint64_t) {
  Arguments a(stack, count, kCandidatesTopk);
  Scan scan;
  if (a.integer(8) < 1 || a.boolean(10) || !packed_scan(a, 9, scan))
    return a.hand_to("splitnet_kernels_python::candidates_topk");
  topk_into(stack, scan, a.integer(8));
}

// ---- registration ----------------------------------------------------------------------------------
void check(torch_shim::Error error, const char* what) {
  if (error != 0) throw std::runtime_error(std::string("the stable ABI refused ") + what);
}

void register_torch_ops(const py::object& resolve, const py::object& take_python_error, double limit, int threads) {
  if (library != nullptr) return;  // once per process: the registrations live as long as it
  torch_shim::Functions found;
#define SPLITNET_TORCH_FIND(name, result, arguments) \
  found.name = reinterpret_cast<decltype(found.name)>(resolve(#name).cast<std::uintptr_t>());
  SPLITNET_TORCH_SHIM(SPLITNET_TORCH_FIND)
#undef SPLITNET_TORCH_FIND
  const std::uint64_t version = found.aoti_torch_abi_version();
  if (version < torch_shim::kTargetVersion)
    throw py::value_error("the running torch's stable ABI is older than 2.10 (" + std::to_string(version >> 56) + "." +
                          std::to_string((version >> 48) & 0xff) + ")");
  shim = found;
  codes = {shim.aoti_torch_device_type_cpu(), shim.aoti_torch_layout_strided(), shim.aoti_torch_dtype_float32(),
           shim.aoti_torch_dtype_float16(),   shim.aoti_torch_dtype_bfloat16(), shim.aoti_torch_dtype_int8(),
           shim.aoti_torch_dtype_int64()};
  fold_limit = limit;
  default_threads.store(threads);
  take_error = new py::object(take_python_error);
  torch_shim::Library made = nullptr;
  check(shim.aoti_torch_library_init_impl("splitnet_kernels", "CPU", __FILE__, __LINE__, &made), "the CPU library");
  const std::pair<const char*, torch_shim::BoxedKernel> kernels[] = {
      {"score", score_kernel}, {"score_pairs", score_pairs_kernel}, {"topk", topk_kernel},
      {"candidates_score", candidates_score_kernel}, {"candidates_topk", candidates_topk_kernel}};
  for (const auto& [name, kernel] : kernels)
    check(shim.torch_library_impl(made, name, kernel, torch_shim::kTargetVersion), name);
  library = made;
}

}  // namespace

void add_torch_ops(py::module_& module, const splitnet::KernelTable& (*table)()) {
  active_table = table;
  module.def("register_torch_ops", &register_torch_ops, py::arg("resolve"), py::arg("take_error"),
             py::arg("fold_limit"), py::arg("threads"),
             "Registers the CPU kernels of torch.ops.splitnet_kernels.* (defined beforehand, with their Python "
             "kernels also under splitnet_kernels_python): resolve(name) gives a stable-ABI function's address in "
             "the running libtorch; take_error() gives (type name, message) of the last Python kernel "
             "error in this thread; threads is threads=None's count (0: the Python kernel decides). Once per "
             "process; raises ValueError where the running torch lacks the stable ABI of 2.10.");
  module.def("set_torch_threads", [](int threads) { default_threads.store(std::max(threads, 0)); },
             py::arg("threads"), "threads=None's count for the custom ops' CPU kernels (0: the Python kernel decides).");
}
