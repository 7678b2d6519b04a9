# Cython declarations of the header-only C++ kernels (splitnet_kernels/ops.h) and checked nogil
# helpers on typed memoryviews, for serving code: `from splitnet_kernels.kernels cimport topk_one_f32`.
#
# Build the cimporting module as C++17 with splitnet_kernels.get_include() on its include path:
#     Extension(..., language="c++", include_dirs=[sk.get_include()],
#               extra_compile_args=["-std=c++17", "-O2"], extra_link_args=["-pthread"])
# The helpers score plain dot products on the package's active ISA (sk.set_isa changes it here too:
# they read it from splitnet_kernels._core, see active_table below); for a learned metric pass
# metric.fold(user) as the query and metric.bias as the bias (the package's Metric does the algebra).
# Each checks shapes and raises ValueError (acquiring the GIL only to raise), so a wrong shape never
# writes past a buffer (declare your def wrappers' memoryview arguments `not None`: a None view
# reads as shape 0). The raw declarations take any kernel_table(isa) and row stride, unchecked.

cimport cython
from libc.stdint cimport int64_t

cdef extern from "splitnet_kernels/ops.h" namespace "splitnet" nogil:
    ctypedef int64_t index_t

    enum class Isa(int):  # the names come from isa_name (dispatch.h's one list, kIsaLevels)
        scalar
        avx2
        avx512
        avx512vnni
        neon

    cppclass KernelTable:  # function pointers filled per ISA; pass it whole to the operations
        Isa isa

    cppclass Rows:
        const float* data
        index_t count
        index_t dim
        index_t stride  # elements between consecutive rows

    cppclass ThreadPool:
        int size()

    const char* isa_name(Isa isa)
    bint isa_supported(Isa isa)
    Isa detect_isa()
    const KernelTable& kernel_table(Isa isa)  # the caller checks isa_supported first
    ThreadPool& default_pool() except +

    # Exactly as in ops.h; the vectors they allocate can throw, hence except +.
    void score_one(const KernelTable& table, const float* query, const Rows& rows, float bias,
                   float* out, int threads) except +
    void score_cross(const KernelTable& table, const Rows& users, const Rows& rows, float bias,
                     float* out, index_t out_stride, int threads) except +
    void score_pairs(const KernelTable& table, const Rows& users, const Rows& rows,
                     const float* weights, float bias, float* out, int threads) except +
    void score_pairs_full(const KernelTable& table, const Rows& users, const Rows& rows,
                          const float* S, float bias, float* out, int threads) except +
    void topk_one(const KernelTable& table, const float* query, const Rows& rows, index_t k,
                  float bias, float* out_scores, index_t* out_ids, int threads) except +
    void topk_cross(const KernelTable& table, const Rows& users, const Rows& rows, index_t k,
                    float bias, float* out_scores, index_t* out_ids, int threads) except +


# The active ISA is the package's (sk.set_isa), not this module's own: separate shared objects do
# not share C++ inline variables, so the first call imports splitnet_kernels._core and keeps a
# pointer to the int it holds the active Isa in (the capsule _core._active_isa); every call
# then reads that int and takes the matching table of the headers this module was built with.
# Without the compiled package, the detected ISA. No lock is held while the GIL is taken.
cdef extern from *:
    """
    #include <atomic>
    #include "splitnet_kernels/ops.h"
    namespace splitnet_pxd {
    inline std::atomic<int>* active_isa_slot() {
      static std::atomic<std::atomic<int>*> cached{nullptr};
      std::atomic<int>* slot = cached.load(std::memory_order_acquire);
      if (slot != nullptr) return slot;
      const PyGILState_STATE gil = PyGILState_Ensure();
      PyObject* core = PyImport_ImportModule("splitnet_kernels._core");
      if (core != nullptr) {
        slot = static_cast<std::atomic<int>*>(PyCapsule_Import("splitnet_kernels._core._active_isa", 0));
        Py_DECREF(core);
      }
      if (slot == nullptr) PyErr_Clear();
      PyGILState_Release(gil);
      if (slot == nullptr) {
        static std::atomic<int> detected{static_cast<int>(splitnet::detect_isa())};
        slot = &detected;
      }
      cached.store(slot, std::memory_order_release);
      return slot;
    }
    inline const splitnet::KernelTable& active_table() {
      return splitnet::kernel_table(static_cast<splitnet::Isa>(active_isa_slot()->load(std::memory_order_acquire)));
    }
    }  // namespace splitnet_pxd
    """
    const KernelTable& active_table "splitnet_pxd::active_table"() nogil


cdef inline const char* active_isa() noexcept nogil:
    """The name of the ISA the helpers run (the package's active one)."""
    return isa_name(active_table().isa)


cdef inline int max_threads() except -1 nogil:
    """Threads one call can use: the process-wide pool of this module, one per core."""
    return default_pool().size()


cdef inline Rows rows_of(const float[:, ::1] matrix) noexcept nogil:
    cdef Rows rows
    with cython.boundscheck(False):  # an empty view only forms the pointer, never reads it
        rows.data = &matrix[0, 0]
    rows.count = matrix.shape[0]
    rows.dim = matrix.shape[1]
    rows.stride = matrix.shape[1]
    return rows


cdef inline int checked_threads(int threads) except -1 nogil:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return min(threads, max_threads())


cdef inline int check_rows(const float[:, ::1] rows, const char* rows_name, Py_ssize_t count,
                           Py_ssize_t dim, const char* what) except -1 nogil:
    """rows must be (count, dim), count < 0 meaning any; what says where dim comes from."""
    if (count >= 0 and rows.shape[0] != count) or rows.shape[1] != dim:
        raise ValueError(f"{rows_name.decode()} has shape ({rows.shape[0]}, {rows.shape[1]}); "
                         f"expected ({count if count >= 0 else 'any'}, {dim}) {what.decode()}")
    return 0


cdef inline int check_length(Py_ssize_t length, const char* name, Py_ssize_t expected,
                             const char* what) except -1 nogil:
    if length != expected:
        raise ValueError(f"{name.decode()} has length {length}; expected {expected} {what.decode()}")
    return 0


cdef inline int score_one_f32(const float[::1] query, const float[:, ::1] ads, float bias,
                              float[::1] out, int threads) except -1 nogil:
    """out[i] = query . ads[i] + bias; query (n,), ads (N, n), out (N,)."""
    threads = checked_threads(threads)
    check_rows(ads, b"ads", -1, query.shape[0], b"(dim from query)")
    check_length(out.shape[0], b"out", ads.shape[0], b"(one per row of ads)")
    with cython.boundscheck(False):
        score_one(active_table(), &query[0], rows_of(ads), bias, &out[0],
                  threads)
    return 0


cdef inline int score_cross_f32(const float[:, ::1] users, const float[:, ::1] ads, float bias,
                                float[:, ::1] out, int threads) except -1 nogil:
    """out[u, i] = users[u] . ads[i] + bias; users (M, n), ads (N, n), out (M, N)."""
    threads = checked_threads(threads)
    check_rows(ads, b"ads", -1, users.shape[1], b"(dim from users)")
    if out.shape[0] != users.shape[0] or out.shape[1] != ads.shape[0]:
        raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}); expected "
                         f"({users.shape[0]}, {ads.shape[0]}) (users x ads)")
    with cython.boundscheck(False):
        score_cross(active_table(), rows_of(users), rows_of(ads), bias, &out[0, 0],
                    out.shape[1], threads)
    return 0


cdef inline int score_pairs_f32(const float[:, ::1] users, const float[:, ::1] ads,
                                const float[::1] weights, float bias, float[::1] out,
                                int threads) except -1 nogil:
    """out[i] = sum_d users[i, d] * weights[d] * ads[i, d] + bias; weights None means all ones."""
    threads = checked_threads(threads)
    check_rows(ads, b"ads", users.shape[0], users.shape[1], b"(the shape of users)")
    check_length(out.shape[0], b"out", users.shape[0], b"(one per pair)")
    cdef const float* weight_data = NULL
    if weights is not None:
        check_length(weights.shape[0], b"weights", users.shape[1], b"(the dim of users)")
        with cython.boundscheck(False):
            weight_data = &weights[0]
    with cython.boundscheck(False):
        score_pairs(active_table(), rows_of(users), rows_of(ads), weight_data, bias,
                    &out[0], threads)
    return 0


cdef inline int score_pairs_full_f32(const float[:, ::1] users, const float[:, ::1] ads,
                                     const float[:, ::1] S, float bias, float[::1] out,
                                     int threads) except -1 nogil:
    """out[i] = users[i]^T S ads[i] + bias; S (n, n) row-major."""
    threads = checked_threads(threads)
    check_rows(ads, b"ads", users.shape[0], users.shape[1], b"(the shape of users)")
    check_rows(S, b"S", users.shape[1], users.shape[1], b"(dim x dim)")
    check_length(out.shape[0], b"out", users.shape[0], b"(one per pair)")
    with cython.boundscheck(False):
        score_pairs_full(active_table(), rows_of(users), rows_of(ads), &S[0, 0], bias,
                         &out[0], threads)
    return 0


cdef inline index_t checked_k(index_t k, Py_ssize_t count) except -1 nogil:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return min(k, <index_t>count)


cdef inline index_t topk_one_f32(const float[::1] query, const float[:, ::1] ads, index_t k,
                                 float bias, float[::1] out_scores, int64_t[::1] out_ids,
                                 int threads) except -1 nogil:
    """The best min(k, N) of query . ads[i] + bias, best first, into the front of out_scores and
    out_ids (each at least that long); returns how many were written. Order as sk.topk."""
    threads = checked_threads(threads)
    check_rows(ads, b"ads", -1, query.shape[0], b"(dim from query)")
    k = checked_k(k, ads.shape[0])
    if out_scores.shape[0] < k or out_ids.shape[0] < k:
        raise ValueError(f"out_scores and out_ids have lengths {out_scores.shape[0]} and "
                         f"{out_ids.shape[0]}; need at least min(k, N) = {k}")
    if k > 0:
        with cython.boundscheck(False):
            topk_one(active_table(), &query[0], rows_of(ads), k, bias, &out_scores[0],
                     &out_ids[0], threads)
    return k


cdef inline index_t topk_cross_f32(const float[:, ::1] users, const float[:, ::1] ads, index_t k,
                                   float bias, float[:, ::1] out_scores, int64_t[:, ::1] out_ids,
                                   int threads) except -1 nogil:
    """For each user, the best min(k, N) of users[u] . ads[i] + bias, best first; out_scores and
    out_ids must be (M, min(k, N)). Returns min(k, N)."""
    threads = checked_threads(threads)
    check_rows(ads, b"ads", -1, users.shape[1], b"(dim from users)")
    k = checked_k(k, ads.shape[0])
    if (out_scores.shape[0] != users.shape[0] or out_scores.shape[1] != k
            or out_ids.shape[0] != users.shape[0] or out_ids.shape[1] != k):
        raise ValueError(f"out_scores and out_ids have shapes ({out_scores.shape[0]}, "
                         f"{out_scores.shape[1]}) and ({out_ids.shape[0]}, {out_ids.shape[1]}); "
                         f"expected ({users.shape[0]}, {k}) (users x min(k, N))")
    if k > 0 and users.shape[0] > 0:
        with cython.boundscheck(False):
            topk_cross(active_table(), rows_of(users), rows_of(ads), k, bias,
                       &out_scores[0, 0], &out_ids[0, 0], threads)
    return k
