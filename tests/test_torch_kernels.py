"""The custom ops' two CPU kernels (issue 27): the C++ kernels (src/torch_ops.cpp) give the bits
of the Python kernels, which stay registered under splitnet_kernels_python, for every op, storage
type, form, layout and size, and hand every call they do not take to them (errors keep their
type); the forced fallback passes the ops' tests; the package imports and scores without torch."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import splitnet_kernels as sk
from conftest import make_metric

torch = pytest.importorskip("torch")
from splitnet_kernels import _torch_ops  # noqa: E402

ops, python_ops = torch.ops.splitnet_kernels, torch.ops.splitnet_kernels_python
ROOT = pathlib.Path(__file__).resolve().parent.parent
KINDS = ("identity", "dot", "diagonal", "low_rank", "low_rank_no_d", "full")
STORED = ("float32", "float16", "bfloat16", "int8")


def _compiled_expected() -> bool:
    """Whether this process should have the C++ kernels: torch >= 2.10, the compiled module, and
    neither SPLITNET_KERNELS_TORCH_OPS=python nor a bad SPLITNET_KERNELS_ISA."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return ((major, minor) >= (2, 10) and sk.backends()["simd"]["available"]
            and os.environ.get(_torch_ops.ENV, "auto").strip().lower() in ("", "auto"))


compiled = pytest.mark.skipif(not _compiled_expected(), reason="the C++ kernels are not registered here")


def test_info_says_which_kernels_serve():
    state = sk.info()["torch_ops"]
    assert state["kernels"] == ("c++" if _compiled_expected() else "python"), state
    assert state["reason"]


def _form(kind: str, n: int, rng) -> tuple:
    if kind == "identity":
        return None, None, None
    return tuple(None if x is None else torch.from_numpy(np.array(x)) for x in make_metric(kind, n, rng).form)


def _same(got, expected) -> None:
    for g, e in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, expected))):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g.numpy(), e.numpy())


def _layout(x, how: str):
    """x as given, as a strided view of a wider tensor, or (for 2-D x) with rows apart by more."""
    if how == "strided" and x.ndim == 2:
        return torch.cat([x, x], 1)[:, ::2]  # elements apart: the Python kernel copies
    if how == "padded" and x.ndim == 2:
        return torch.cat([x, torch.zeros_like(x)], 1)[:, : x.shape[1]]  # rows apart by 2n: read in place
    return x


@compiled
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), users=st.integers(0, 4), count=st.integers(0, 90), k=st.integers(1, 100),
       kind=st.sampled_from(KINDS), one=st.booleans(), layout=st.sampled_from(("as given", "strided", "padded")),
       threads=st.sampled_from((None, 1, 2)), bias=st.floats(-2, 2), seed=st.integers(0, 2**32 - 1))
def test_cpp_kernels_give_the_python_kernels_bits(n, users, count, k, kind, one, layout, threads, bias, seed):
    rng = np.random.default_rng(seed)
    u = torch.from_numpy(rng.standard_normal(n if one else (users, n)).astype(np.float32))
    ads = _layout(torch.from_numpy(rng.standard_normal((count, n)).astype(np.float32)), layout)
    form = _form(kind, n, rng)
    pairs = _layout(torch.from_numpy(rng.standard_normal((min(count, 3), n)).astype(np.float32)), layout)
    for name, args in (("score", (u, ads, *form, bias, threads)), ("topk", (u, ads, *form, bias, k, threads)),
                       ("score_pairs", (pairs, ads[: len(pairs)], *form, bias, threads))):
        _same(getattr(ops, name).default(*args), getattr(python_ops, name).default(*args))


@compiled
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), users=st.integers(0, 4), count=st.integers(0, 90), k=st.integers(1, 100),
       kind=st.sampled_from(KINDS), dtype=st.sampled_from(STORED), one=st.booleans(), some=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_cpp_kernels_read_every_storage_type_as_the_python_kernels(n, users, count, k, kind, dtype, one, some, seed):
    rng = np.random.default_rng(seed)
    cands = sk.Candidates(rng.standard_normal((count, n)).astype(np.float32), dtype)
    data, scales = _torch_ops._packed_tensors(cands._store, torch.device("cpu"))
    allowed = torch.from_numpy(np.flatnonzero(rng.random(count) < 0.5)) if some else None
    u = torch.from_numpy(rng.standard_normal(n if one else (users, n)).astype(np.float32))
    form = _form(kind, n, rng)
    for name, args in (("candidates_score", (u, data, scales, allowed, *form, 0.25)),
                       ("candidates_topk", (u, data, scales, allowed, *form, 0.25, k))):
        _same(getattr(ops, name).default(*args), getattr(python_ops, name).default(*args))


@compiled
def test_calls_the_cpp_kernels_hand_on_keep_their_answers_and_errors(rng):
    """Other dtypes, sigmoid=True, a doubtful fold range, unusual ids and bad operands go to the
    Python kernels, whose TypeError / ValueError reach the caller as they are."""
    users, ads = torch.randn(3, 8), torch.randn(40, 8)
    diag = torch.rand(8)
    _same(ops.topk(users.double(), ads.double(), diag.double(), None, None, 0.5, 4),
          python_ops.topk(users.double(), ads.double(), diag.double(), None, None, 0.5, 4))
    _same(ops.topk(users, ads, diag, None, None, 0.5, 4, None, True),
          python_ops.topk(users, ads, diag, None, None, 0.5, 4, None, True))
    ops.score(torch.full((2, 8), 1e18), ads, None, torch.eye(8) * 1e19, None, 0.0)  # doubtful, then in range
    _same(ops.topk(users, ads, diag, None, None, 0.5, 4, 0), python_ops.topk(users, ads, diag, None, None, 0.5, 4, 0))
    data, scales = _torch_ops._packed_tensors(sk.Candidates(ads.numpy(), "int8")._store, torch.device("cpu"))
    cases = [
        (ValueError, "users: folding through the metric's factors",
         lambda: ops.score(torch.full((2, 8), 1e19), ads, None, torch.eye(8) * 1e20, None, 0.0)),
        (ValueError, "k: must be >= 1", lambda: ops.topk(users, ads, diag, None, None, 0.0, 0)),
        (TypeError, "users and ads", lambda: ops.score(users, ads.double(), None, None, None, 0.0)),
        (ValueError, "right: given without left", lambda: ops.score(users, ads, diag, None, diag[:, None], 0.0)),
        (TypeError, "scales: int8 data needs", lambda: ops.candidates_topk(users, data, None, None, diag, None, None,
                                                                           0.0, 3)),
        (ValueError, "allowed", lambda: ops.candidates_topk(users, data, scales, torch.tensor([3, 1]), diag, None,
                                                            None, 0.0, 2)),
        (ValueError, "allowed", lambda: ops.candidates_score(users, data, scales, torch.tensor([0, 40]), diag, None,
                                                             None, 0.0)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


@compiled
def test_results_are_new_tensors_and_inputs_are_left_alone(rng):
    users, ads = torch.randn(64), torch.randn(1000, 64)
    kept = users.clone(), ads.clone()
    first, second = ops.topk(users, ads, None, None, None, 0.0, 10), ops.topk(users, ads, None, None, None, 0.0, 10)
    assert first[0].data_ptr() != second[0].data_ptr() and first[0].is_contiguous() and first[1].dtype == torch.int64
    _same((users, ads), kept)
    sk.set_threads(1)  # the C++ kernels follow threads=None's count
    try:
        _same(ops.topk(users, ads, None, None, None, 0.0, 10), first)
    finally:
        sk.set_threads(None)


# ---- the forced fallback, and no torch at all: fresh processes --------------------------------------
def _run(code: str, **env) -> str:
    """Runs code in a fresh Python that imports this package (installed or a source tree's)."""
    package = str(pathlib.Path(sk.__file__).resolve().parents[1])
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")])),
                   **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_forced_fallback_passes_the_ops_tests():
    """SPLITNET_KERNELS_TORCH_OPS=python: the Python kernels serve the CPU, opcheck passes on every op
    and the ops' own tests pass (tests/test_torch_ops.py, in a process of their own)."""
    out = _run("import sys, pytest, splitnet_kernels as sk, torch\n"
               "from splitnet_kernels import _torch_ops\n"
               "assert sk.info()['torch_ops']['kernels'] == 'python', sk.info()['torch_ops']\n"
               "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_torch_ops.py',"
               " '-k', 'opcheck or bad_operands or backends_answer or grad_modes or directly or sigmoid']))",
               SPLITNET_KERNELS_TORCH_OPS="python")
    assert " passed" in out and "failed" not in out, out


def test_the_package_imports_and_scores_without_torch():
    out = _run("import importlib.abc, sys\n"
               "class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.partition('.')[0] == 'torch':\n"
               "            raise ModuleNotFoundError(name)\n"
               "sys.meta_path.insert(0, NoTorch())\n"
               "import numpy as np, splitnet_kernels as sk\n"
               "ads, user = np.random.default_rng(0).standard_normal((2, 100, 8)).astype(np.float32)\n"
               "scores, ids = sk.topk(user[0], ads, 5)\n"
               "assert np.array_equal(scores, sk.score(user[0], ads)[ids])\n"
               "print(sk.info()['torch_ops']['kernels'], len(ids))")
    assert out.split() == ["None", "5"]
