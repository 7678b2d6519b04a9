"""Shared fixtures and the float64 oracle: every backend x ISA, metrics of every kind, tolerances.

The oracle here is written independently of the package's algebra (no Metric.fold): it uses only
Metric.dense() and plain float64 matrix products.
"""

from __future__ import annotations

import contextlib
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import splitnet_kernels as sk
from splitnet_kernels._metric import KINDS as METRIC_KINDS

# No example database on disk (the suite writes nothing outside tests/), and the backend
# fixture is function scoped but idempotent per example (it only sets the active ISA). The
# default profile is derandomized, so CI sees the same examples every run; to search further,
# run with --hypothesis-profile=explore: new random examples on every run.
_common = dict(database=None, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("splitnet", derandomize=True, **_common)
settings.register_profile("explore", derandomize=False, **_common)
settings.load_profile("splitnet")

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
SIZES = (1, 3, 7, 15, 17, 33, 65, 127, 300)  # not lane multiples, on purpose
KINDS = (*METRIC_KINDS, "low_rank_no_d")  # every metric kind (the package's one list), and low_rank without d
BACKEND_NAMES = ("simd", "numba", "torch", "numpy")

_STATUS = sk.backends()
_INFO = sk.info()
SUPPORTED_ISAS = list(_INFO["isa_supported"])
KNOWN_ISAS = list(_INFO["isa_known"])  # the C++ list of levels, supported here or not


def backend_available(name: str) -> bool:
    return bool(_STATUS.get(name, {}).get("available", False))


def _backend_params(include_auto: bool = False):
    params = []
    for name in BACKEND_NAMES:
        state = _STATUS.get(name, {"available": False, "reason": "not listed by sk.backends()"})
        if name == "simd" and state["available"]:
            for isa in SUPPORTED_ISAS:
                params.append(pytest.param(("simd", isa), id=f"simd-{isa}"))
            continue
        marks = () if state["available"] else pytest.mark.skip(reason=f"backend {name}: {state['reason']}")
        params.append(pytest.param((name, None), id=name, marks=marks))
    if include_auto:
        params.append(pytest.param(("auto", None), id="auto"))
    return params


@contextlib.contextmanager
def using_isa(isa: str):
    """The kernels run on `isa` inside the block and on the previous ISA after it."""
    previous = sk.set_isa(isa)
    try:
        yield
    finally:
        sk.set_isa(previous)


def _select(request):
    name, isa = request.param
    if isa is None:
        yield name
        return
    with using_isa(isa):
        assert sk.info()["isa_active"] == isa
        yield name


@pytest.fixture(params=_backend_params())
def backend(request):
    """Every available backend; the simd backend once per ISA this CPU runs."""
    yield from _select(request)


@pytest.fixture(params=_backend_params(include_auto=True))
def any_backend(request):
    """`backend` plus "auto"."""
    yield from _select(request)


@pytest.fixture
def rng(request):
    # A seed per test id: reproducible, and different tests see different data.
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


# ---- metrics --------------------------------------------------------------------------------
def allowed_form(ids: np.ndarray, count: int):
    """ids as allowed= takes them: as a boolean mask where `count` integers of 0 and 1 would be
    ambiguous (a set of one or two rows; Candidates refuses them)."""
    if len(ids) == count and count <= 2:
        mask = np.zeros(count, bool)
        mask[ids] = True
        return mask
    return ids


def make_metric(kind: str, n: int, rng, bias: float = 0.0, rank: int = 3) -> sk.Metric:
    if kind == "dot":
        return sk.Metric.dot(n, bias=bias)
    if kind == "scaled":
        return sk.Metric.scaled(n, 0.75, bias=bias)
    if kind == "diagonal":
        return sk.Metric.diagonal(rng.standard_normal(n), bias=bias)
    if kind == "full":
        return sk.Metric.full(rng.standard_normal((n, n)) / np.sqrt(n), bias=bias)
    r = min(rank, n)
    P = rng.standard_normal((n, r))
    Q = rng.standard_normal((n, r))
    if kind == "low_rank":
        return sk.Metric.low_rank(P, Q, d=rng.standard_normal(n), bias=bias)
    if kind == "low_rank_no_d":
        return sk.Metric.low_rank(P, Q, bias=bias)
    raise ValueError(kind)


def _abs_metric(metric: sk.Metric) -> np.ndarray:
    """|S| for the error bound: |diag| + |L| |R|^T, which bounds the fold's rounding (for
    low_rank, u P then (u P) Q^T, |P| |Q|^T can exceed |P Q^T| when the product cancels)."""
    return metric.magnitude()[0]


def _as64(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().to(dtype=__import__("torch").float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _bilinear(users, ads, S, pairwise):
    folded = users @ S
    if pairwise:
        return np.einsum("ij,ij->i", folded, ads)
    return folded @ ads.T  # (N,) for one user, (M, N) for many


def reference_scores(users, ads, metric=None, pairwise=False, sigmoid=False) -> np.ndarray:
    """The float64 oracle: users64 @ S64 @ ads64.T + bias (or its sigmoid), S from metric.dense()."""
    users64, ads64 = _as64(users), _as64(ads)
    if metric is None:
        metric = sk.Metric.dot(ads64.shape[-1])
    result = _bilinear(users64, ads64, metric.dense().astype(np.float64), pairwise) + metric.bias
    if sigmoid:
        result = stable_sigmoid(result)
    return result


def stable_sigmoid(x):
    """1 / (1 + exp(-x)) in float64 without overflow for any x."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tolerance(users, ads, metric=None, pairwise=False, c: float = 4.0) -> np.ndarray:
    """Per-entry error bound of a float32 backend against the float64 oracle.

    Justification: the fold (u S) and the dot product each accumulate n float32 products, and the
    folded user plus the inputs (float64/float16 -> float32) are rounded once each, so the
    standard bound gives |error| <= c (n + 2) eps32 (|u|^T |S| |a|), with c = 4 covering the fold
    and the dot product together with slack for reassociated (SIMD / blocked) sums. The bias is
    added and the total rounded in float32 after accumulation: 2 eps32 |bias|. The tiny absolute
    1e-30 keeps all-zero rows from demanding bit-exact zeros of denormal noise.
    """
    users64, ads64 = np.abs(_as64(users)), np.abs(_as64(ads))
    if metric is None:
        metric = sk.Metric.dot(ads64.shape[-1])
    magnitude = _bilinear(users64, ads64, _abs_metric(metric), pairwise)
    return c * (metric.dim + 2) * EPS32 * magnitude + 2 * EPS32 * abs(metric.bias) + 1e-30


def sigmoid_tolerance(score_tol, reference_probability):
    """sigmoid' <= 1/4 carries the score error; the float32 sigmoid itself adds a few ulps."""
    return 0.25 * score_tol + 4 * EPS32 * np.abs(reference_probability) + 1e-30


def to_numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_same(got, want):
    """Each array of got equal to want's, element for element (scores: bit for bit, NaN in place)."""
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def assert_within(got, expected, tol, what: str = "scores"):
    got = to_numpy(got)
    assert got.dtype == np.float32, f"{what}: expected float32, got {got.dtype}"
    assert got.shape == np.shape(expected), f"{what}: shape {got.shape} != {np.shape(expected)}"
    got64 = got.astype(np.float64)
    error = np.abs(got64 - expected)
    tol = np.broadcast_to(tol, error.shape)
    bad = ~(error <= tol)  # NaN anywhere is a failure
    if np.any(bad):
        where = np.argwhere(bad)[0]
        index = tuple(where)
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.size} entries out of tolerance; first at {index}: "
                    f"got {got64[index]!r}, expected {expected[index]!r}, tol {tol[index]!r}")


def expected_order(scores_row: np.ndarray) -> np.ndarray:
    """The contract's order for one row: descending, NaN last, equal scores by lower index."""
    s = np.asarray(scores_row, dtype=np.float64)
    nan = np.isnan(s)
    key = np.where(nan, 0.0, -s)
    return np.lexsort((np.arange(s.size), key, nan))


# ---- crash isolation ---------------------------------------------------------------------------
_PROBE = """
import sys
import numpy as np
import splitnet_kernels as sk
backend, isa, path = sys.argv[1], sys.argv[2], sys.argv[3]
if isa != "-":
    sk.set_isa(isa)
data = np.load(path)
for k in data["ks"].tolist():
    sk.topk(data["users"], data["ads"], int(k), backend=backend)
print("survived")
"""


def assert_topk_does_not_crash(tmp_path, backend: str, users, ads, ks) -> None:
    """Runs sk.topk(users, ads, k) for each k in a child process first, so that a crash in the
    compiled kernels (e.g. on NaN / inf input) fails this one test instead of ending the run."""
    import os
    import pathlib
    import subprocess
    import sys

    if backend not in ("simd", "numba"):  # only compiled code can take the process down
        return
    path = tmp_path / "probe.npz"
    np.savez(path, users=np.asarray(users), ads=np.asarray(ads), ks=np.asarray(list(ks)))
    isa = sk.info()["isa_active"] if backend == "simd" else "-"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(sk.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _PROBE, backend, isa or "-", str(path)], env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or done.stdout.strip() != "survived":
        pytest.fail(f"sk.topk crashed or failed in a child process (exit {done.returncode}, backend {backend}, "
                    f"ISA {isa}, users {np.shape(users)}, ads {np.shape(ads)}, k in {list(ks)}): "
                    f"{done.stderr.strip()[-1500:]}")
