"""Embedding the C++ kernels without the pybind11 module: a Cython module that cimports
splitnet_kernels/kernels.pxd, and examples/cpp/score_example.cpp built against the headers alone."""

from __future__ import annotations

import concurrent.futures
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import splitnet_kernels as sk

PXD_ROOT = pathlib.Path(sk.__file__).resolve().parent.parent  # holds splitnet_kernels/kernels.pxd
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "cpp" / "score_example.cpp"

# Each wrapper converts to memoryviews with the GIL, then calls one pxd helper without it.
EMBED_PYX = textwrap.dedent("""
    # distutils: language = c++
    from libc.stdint cimport int64_t
    from splitnet_kernels.kernels cimport (
        Isa, Rows, active_isa, index_t, isa_name, isa_supported, kernel_table, score_one, score_one_f32,
        score_cross_f32, score_pairs_f32, score_pairs_full_f32, topk_one_f32, topk_cross_f32)
    import numpy as np

    def score_one_py(const float[::1] query, const float[:, ::1] ads, float bias, int threads):
        out = np.empty(ads.shape[0], np.float32)
        cdef float[::1] view = out
        with nogil:
            score_one_f32(query, ads, bias, view, threads)
        return out

    def score_cross_py(const float[:, ::1] users, const float[:, ::1] ads, float bias, int threads):
        out = np.empty((users.shape[0], ads.shape[0]), np.float32)
        cdef float[:, ::1] view = out
        with nogil:
            score_cross_f32(users, ads, bias, view, threads)
        return out

    def score_pairs_py(const float[:, ::1] users, const float[:, ::1] ads, const float[::1] weights,
                       float bias, int threads):
        out = np.empty(users.shape[0], np.float32)
        cdef float[::1] view = out
        with nogil:
            score_pairs_f32(users, ads, weights, bias, view, threads)
        return out

    def score_pairs_full_py(const float[:, ::1] users, const float[:, ::1] ads,
                            const float[:, ::1] S, float bias, int threads):
        out = np.empty(users.shape[0], np.float32)
        cdef float[::1] view = out
        with nogil:
            score_pairs_full_f32(users, ads, S, bias, view, threads)
        return out

    def topk_one_py(const float[::1] query, const float[:, ::1] ads, index_t k, float bias, int threads):
        scores, ids = np.empty(max(k, 0), np.float32), np.empty(max(k, 0), np.int64)
        cdef float[::1] score_view = scores
        cdef int64_t[::1] id_view = ids
        cdef index_t written
        with nogil:
            written = topk_one_f32(query, ads, k, bias, score_view, id_view, threads)
        return scores[:written], ids[:written]

    def topk_cross_py(const float[:, ::1] users, const float[:, ::1] ads, index_t k, float bias,
                      int threads):
        width = max(min(k, ads.shape[0]), 0)  # the helper itself rejects a negative k
        scores = np.empty((users.shape[0], width), np.float32)
        ids = np.empty((users.shape[0], width), np.int64)
        cdef float[:, ::1] score_view = scores
        cdef int64_t[:, ::1] id_view = ids
        with nogil:
            topk_cross_f32(users, ads, k, bias, score_view, id_view, threads)
        return scores, ids

    def topk_one_short(const float[::1] query, const float[:, ::1] ads, index_t k):
        # Output one shorter than k: the helper must refuse rather than write past it.
        cdef float[::1] scores = np.empty(k - 1, np.float32)
        cdef int64_t[::1] ids = np.empty(k, np.int64)
        with nogil:
            topk_one_f32(query, ads, k, 0.0, scores, ids, 1)

    def active_isa_py():
        return active_isa().decode()

    def score_one_isa(const float[::1] query, const float[:, ::1] ads, str name):
        # The raw declarations: one chosen ISA's table, Rows filled by hand.
        cdef int isa = next(i for i in range(64) if isa_name(<Isa>i).decode() in (name, "unknown"))
        if not isa_supported(<Isa>isa):
            raise ValueError(f"unsupported ISA {name}")
        out = np.empty(ads.shape[0], np.float32)
        cdef float[::1] view = out
        cdef Rows rows
        rows.data, rows.count, rows.dim, rows.stride = &ads[0, 0], ads.shape[0], ads.shape[1], ads.shape[1]
        with nogil:
            score_one(kernel_table(<Isa>isa), &query[0], rows, 0.0, &view[0], 1)
        return isa_name(<Isa>isa).decode(), out
""")

SETUP_PY = textwrap.dedent("""
    import sys
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    include, pxd_root = sys.argv.pop(1), sys.argv.pop(1)
    extension = Extension("embed_check", ["embed_check.pyx"], language="c++", include_dirs=[include],
                          extra_compile_args=["-std=c++17", "-O1"], extra_link_args=["-pthread"])
    setup(ext_modules=cythonize([extension], include_path=[pxd_root], language_level=3, quiet=True))
""")


def _compiler() -> str:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or c++) on PATH")
    return compiler


@pytest.fixture(scope="module")
def embed(tmp_path_factory):
    pytest.importorskip("Cython", reason="Cython is not installed")
    _compiler()
    assert (PXD_ROOT / "splitnet_kernels" / "kernels.pxd").is_file(), "kernels.pxd is not shipped"
    build = tmp_path_factory.mktemp("embed")
    (build / "embed_check.pyx").write_text(EMBED_PYX)
    (build / "setup_embed.py").write_text(SETUP_PY)
    done = subprocess.run([sys.executable, "setup_embed.py", sk.get_include(), str(PXD_ROOT),
                           "build_ext", "--inplace", "-q"], cwd=build, capture_output=True, text=True)
    assert done.returncode == 0, f"building the Cython module failed:\n{done.stdout}\n{done.stderr}"
    sys.path.insert(0, str(build))
    try:
        import embed_check
    finally:
        sys.path.remove(str(build))
    return embed_check


def _data(users: int, ads: int, dim: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((users, dim)).astype(np.float32),
            rng.standard_normal((ads, dim)).astype(np.float32))


def _close(got, want, dim):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(dim, 1) ** 0.5)


@pytest.mark.parametrize(("n_ads", "dim"), [(1, 1), (300, 17), (5000, 64), (0, 8)])
def test_cython_scores_match_the_package(embed, n_ads, dim):
    users, ads = _data(4, n_ads, dim)
    for threads in (1, 2):
        _close(embed.score_one_py(users[0], ads, 0.5, threads), sk.score(users[0], ads) + 0.5, dim)
        _close(embed.score_cross_py(users, ads, -1.0, threads), sk.score(users, ads) - 1.0, dim)
    pairs = min(n_ads, 4)
    weights = np.linspace(0.5, 2.0, dim, dtype=np.float32)
    S = np.random.default_rng(3).standard_normal((dim, dim)).astype(np.float32)
    _close(embed.score_pairs_py(users[:pairs], ads[:pairs], None, 0.0, 2),
           sk.score(users[:pairs], ads[:pairs], pairwise=True), dim)
    _close(embed.score_pairs_py(users[:pairs], ads[:pairs], weights, 0.25, 2),
           sk.score(users[:pairs], ads[:pairs], sk.Metric.diagonal(weights, bias=0.25), pairwise=True), dim)
    _close(embed.score_pairs_full_py(users[:pairs], ads[:pairs], S, 0.0, 2),
           sk.score(users[:pairs], ads[:pairs], sk.Metric.full(S), pairwise=True), dim)


@pytest.mark.parametrize(("n_ads", "k"), [(3000, 10), (127, 200), (0, 5)])
def test_cython_topk_matches_the_package(embed, n_ads, k):
    users, ads = _data(5, n_ads, 33)
    ads[1::7] = ads[:1]  # exact ties: the lower index must come first
    for threads in (1, 2):
        scores, ids = embed.topk_one_py(users[0], ads, k, 0.0, threads)
        want_scores, want_ids = sk.topk(users[0], ads, k)
        np.testing.assert_array_equal(ids, want_ids)
        _close(scores, want_scores, 33)
        scores, ids = embed.topk_cross_py(users, ads, k, 1.0, threads)
        want_scores, want_ids = sk.topk(users, ads, k)
        np.testing.assert_array_equal(ids, want_ids)
        _close(scores, want_scores + 1.0, 33)


def test_cython_helpers_run_from_many_threads_at_once(embed):
    users, ads = _data(8, 20000, 64)
    want = [sk.topk(user, ads, 50)[1] for user in users]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # the helpers run without the GIL
        got = list(pool.map(lambda user: embed.topk_one_py(user, ads, 50, 0.0, 2)[1], users))
    for got_ids, want_ids in zip(got, want):
        np.testing.assert_array_equal(got_ids, want_ids)


def test_cython_raw_declarations_on_every_isa(embed):
    users, ads = _data(1, 257, 19)
    for name in sk.info()["isa_supported"]:
        got_name, scores = embed.score_one_isa(users[0], ads, name)
        assert got_name == name
        _close(scores, ads.astype(np.float64) @ users[0].astype(np.float64), 19)


def test_cython_helpers_follow_set_isa(embed):
    # the helpers run the package's active ISA, not the detected one: set_isa reaches them
    users, ads = _data(3, 257, 19)
    previous = sk.set_isa("scalar")
    try:
        assert embed.active_isa_py() == "scalar"
        _, want = embed.score_one_isa(users[0], ads, "scalar")
        np.testing.assert_array_equal(embed.score_one_py(users[0], ads, 0.0, 1), want)
        for name in sk.info()["isa_supported"]:
            sk.set_isa(name)
            assert embed.active_isa_py() == name
            np.testing.assert_array_equal(embed.score_one_py(users[0], ads, 0.0, 1),
                                          embed.score_one_isa(users[0], ads, name)[1])
    finally:
        sk.set_isa(previous)
    assert embed.active_isa_py() == previous


def test_cython_helpers_reject_bad_shapes(embed):
    users, ads = _data(3, 50, 8)
    with pytest.raises(ValueError, match=r"ads has shape \(50, 8\); expected \(any, 7\)"):
        embed.score_one_py(users[0, :7].copy(), ads, 0.0, 1)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        embed.score_one_py(users[0], ads, 0.0, 0)
    with pytest.raises(ValueError, match="k must be >= 0"):
        embed.topk_cross_py(users, ads, -1, 0.0, 1)
    with pytest.raises(ValueError, match=r"need at least min\(k, N\) = 4"):
        embed.topk_one_short(users[0], ads, 4)
    with pytest.raises(ValueError, match=r"ads has shape \(50, 8\); expected \(3, 8\)"):
        embed.score_pairs_py(users, ads, None, 0.0, 1)
    with pytest.raises(ValueError, match="weights has length 3; expected 8"):
        embed.score_pairs_py(users, ads[:3], np.ones(3, np.float32), 0.0, 1)
    with pytest.raises(ValueError, match=r"S has shape \(8, 7\)"):
        embed.score_pairs_full_py(users, ads[:3], np.ones((8, 7), np.float32), 0.0, 1)


def _build_example(tmp_path, *flags):
    if not EXAMPLE.is_file():
        pytest.skip(f"{EXAMPLE} is not here (an installed package ships no examples)")
    binary = tmp_path / "score_example"
    command = [_compiler(), "-std=c++17", "-O2", *flags, f"-I{sk.get_include()}", str(EXAMPLE),
               "-pthread", "-o", str(binary)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
    return binary


def test_cpp_example_builds_runs_and_agrees(tmp_path):
    done = subprocess.run([str(_build_example(tmp_path))], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"isa {sk.info()['isa_detected']}," in done.stdout
    assert done.stdout.rstrip().endswith("OK")


def test_cpp_headers_are_warning_clean(tmp_path):
    _build_example(tmp_path, "-Wall", "-Wextra", "-Werror")


_NO_ALLOCATION = r"""
#include <splitnet_kernels/ops.h>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>

static std::atomic<long> allocations{0};
void* operator new(std::size_t size) {
  ++allocations;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

int main() {
  using namespace splitnet;
  const index_t n = 64, count = 1000;
  std::vector<float> rows(count * n), query(n), out(count), scores(32), ones(n, 1.0f);
  std::vector<index_t> ids(32);
  for (index_t i = 0; i < count * n; ++i) rows[i] = static_cast<float>((i * 7919) % 1001) / 1001.0f - 0.5f;
  for (index_t d = 0; d < n; ++d) query[d] = static_cast<float>(d % 13) - 6.0f;
  const Rows r{rows.data(), count, n, n}, user{query.data(), 1, n, n};
  MetricForm dot;  // the package's dot metric: diag = ones
  dot.dim = n;
  dot.diag = ones.data();
  for (const IsaLevel& level : kIsaLevels) {
    const Isa isa = level.isa;
    if (!isa_supported(isa)) continue;
    const KernelTable& table = kernel_table(isa);
    const long before = allocations.load();
    for (index_t k : {1, 10, 32}) {
      score_one(table, query.data(), r, 0.5f, out.data(), 2);
      topk_one(table, query.data(), r, k, 0.5f, scores.data(), ids.data(), 2);
      score(table, user, stored(r), dot, 0.5f, nullptr, 0, out.data(), 2);  // folding inside the call
      topk(table, user, stored(r), dot, 0.5f, nullptr, 0, k, scores.data(), ids.data(), 2);
    }
    std::printf("%s %ld\n", isa_name(isa), allocations.load() - before);
  }
}
"""


def test_small_calls_allocate_nothing(tmp_path):
    # a serving call (1,000 candidates, k <= 32) runs on the calling thread and never calls new,
    # folding included (the binding's score and topk entries)
    source, binary = tmp_path / "no_allocation.cpp", tmp_path / "no_allocation"
    source.write_text(_NO_ALLOCATION)
    command = [_compiler(), "-std=c++17", "-O2", f"-I{sk.get_include()}", str(source), "-pthread", "-o", str(binary)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = dict(line.split() for line in done.stdout.splitlines())
    assert set(counts) == set(sk.info()["isa_supported"])
    assert all(value == "0" for value in counts.values()), counts
