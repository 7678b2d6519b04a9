"""What must not depend on the instruction set: int8 candidates score to the same bits on every
ISA this CPU runs (their integer sums are exact, and every ISA ends them with one float epilogue,
score_i8 in order.h), in score and top-k, for one user and for many; and sk.set_isa replaces a
bad SPLITNET_KERNELS_ISA for the rest of the process.

float32 / float16 / bfloat16 are not here: their float sums are ordered differently per ISA
(and per user count), so they agree only to rounding, which the oracle tests check.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk

from conftest import KNOWN_ISAS, SUPPORTED_ISAS, allowed_form, backend_available

pytestmark = pytest.mark.skipif(not backend_available("simd"), reason="compiled kernels not available")

# Bias 0 hid the bug this file guards against: GCC fused the epilogue's multiply and add into an
# FMA on avx2 / avx512 (one rounding) but not in the baseline scalar build (two), and
# x * s + 0 rounds the same either way.
BIASES = (0.0, 0.37, -1234.5, 3.0e-5)


@pytest.fixture
def restore_isa():
    previous = sk.info()["isa_active"]
    yield
    sk.set_isa(previous)


def _bits(x) -> np.ndarray:
    x = np.asarray(x)
    assert x.dtype == np.float32
    return x.view(np.uint32)


def _assert_same_bits(got, expected, what: str) -> None:
    got, expected = _bits(got), _bits(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    differ = got != expected
    if np.any(differ):
        first = tuple(np.argwhere(differ)[0])
        pytest.fail(f"{what}: {int(differ.sum())} of {differ.size} scores differ in their bits; first at {first}: "
                    f"{got.view(np.float32)[first]!r} != {expected.view(np.float32)[first]!r}")


def _int8_case(n: int, dim: int, n_users: int, seed: int, zero_user: bool = False):
    rng = np.random.default_rng(seed)
    ads = rng.standard_normal((n, dim)).astype(np.float32) * rng.uniform(0.1, 10.0, (n, 1)).astype(np.float32)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    if zero_user:
        users[0] = 0.0  # query scale 0: every score is the bias
    return sk.Candidates(ads, dtype="int8"), users


def _everything(candidates, users, k, metric, allowed):
    """Every int8 path's scores for these users: the one-user scan (score, top-k, top-k of an
    allowed subset) user by user, and the many-user calls (the int8 cross tile where the ISA
    has one)."""
    one = np.stack([candidates.score(u, metric) for u in users])
    one_topk = [candidates.topk(u, k, metric) for u in users]
    subset = [candidates.topk(u, k, metric, allowed=allowed) for u in users]
    many = candidates.score(users, metric)
    many_topk = candidates.topk(users, k, metric)
    return one, one_topk, subset, many, many_topk


def _check_int8(candidates, users, k, bias, allowed) -> None:
    metric = sk.Metric.dot(users.shape[1], bias=bias)
    results = {}
    for isa in SUPPORTED_ISAS:
        sk.set_isa(isa)
        results[isa] = _everything(candidates, users, k, metric, allowed)
    reference = results[SUPPORTED_ISAS[0]]  # scalar, the specification
    one_ref = reference[0]
    for isa, (one, one_topk, subset, many, many_topk) in results.items():
        where = f"int8 on {isa}"
        _assert_same_bits(one, one_ref, f"{where}, one user vs scalar")
        _assert_same_bits(many, one_ref, f"{where}, many users vs one user on scalar")
        for u, (scores, ids) in enumerate(one_topk):
            np.testing.assert_array_equal(ids, reference[1][u][1], err_msg=f"{where}: top-k ids of user {u}")
            _assert_same_bits(scores, one_ref[u][ids], f"{where}, top-k of user {u} vs its scores")
        for u, (scores, ids) in enumerate(subset):
            np.testing.assert_array_equal(ids, reference[2][u][1], err_msg=f"{where}: allowed top-k ids of user {u}")
            _assert_same_bits(scores, one_ref[u][ids], f"{where}, allowed top-k of user {u} vs its scores")
        scores, ids = many_topk
        np.testing.assert_array_equal(ids, np.stack([t[1] for t in reference[1]]),
                                      err_msg=f"{where}: many-user top-k ids vs one user on scalar")
        _assert_same_bits(scores, np.take_along_axis(one_ref, ids, 1), f"{where}, many-user top-k vs the scores")


# The dims of the report (lane tails of every ISA: 16 / 32 / 64 bytes, and 4-byte groups), plus
# one past avx512bf16's stack-held query (4096), where its one-user scan takes avx512's.
@pytest.mark.parametrize("dim", (1, 3, 17, 64, 65, 130, 300, 4099))
@pytest.mark.parametrize("n_users", (5, 17))
def test_int8_same_bits_on_every_isa(restore_isa, dim, n_users):
    n = 300 if dim > 1000 else 3000
    candidates, users = _int8_case(n, dim, n_users, seed=dim * 100 + n_users)
    allowed = np.arange(0, n, 3)
    for bias in (0.0, 0.37):
        _check_int8(candidates, users, 10, bias, allowed)


@settings(max_examples=25)
@given(n=st.integers(1, 700), dim=st.integers(1, 300), n_users=st.sampled_from((2, 3, 5, 17, 33)),
       k_kind=st.sampled_from(("one", "small", "most", "all")), bias=st.sampled_from(BIASES),
       zero_user=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_int8_same_bits_on_every_isa_any_shape(restore_isa, n, dim, n_users, k_kind, bias, zero_user, seed):
    candidates, users = _int8_case(n, dim, n_users, seed, zero_user)
    k = {"one": 1, "small": min(n, 10), "most": max(1, n * 2 // 3), "all": n}[k_kind]  # heap and select paths
    allowed = np.flatnonzero(np.random.default_rng(seed).random(n) < 0.5)
    if allowed.size == 0:
        allowed = np.array([n - 1])
    _check_int8(candidates, users, min(k, allowed.size), bias, allowed_form(allowed, n))


def test_set_isa_refreshes_the_simd_status(restore_isa):
    """The cached simd status names the active ISA; set_isa must not leave it naming the old one."""
    for isa in SUPPORTED_ISAS:
        sk.set_isa(isa)
        state = sk.backends()["simd"]
        assert state["available"] and f"ISA {isa} " in state["reason"], state


# ---- SPLITNET_KERNELS_ISA, then set_isa -----------------------------------------------------
_PACKAGE_ROOT = str(pathlib.Path(sk.__file__).resolve().parents[1])

_BAD_ENV_THEN_SET_ISA = """
import numpy as np, splitnet_kernels as sk
from splitnet_kernels import _dispatch

users, ads = np.ones(4, np.float32), np.ones((3, 4), np.float32)
candidates = sk.Candidates(ads, dtype="int8")

def attempt(call):
    try:
        call()
    except Exception as error:
        return type(error).__name__ + ": " + str(error)
    return "ok"

def state():
    return [attempt(lambda: sk.score(users, ads)), attempt(lambda: candidates.topk(users, 2)),
            sk.info()["isa_error"], sk.backends()["simd"]["available"], _dispatch.FAST is not None]

print(repr(state()))
print(repr(attempt(lambda: sk.set_isa("bogus"))))  # a failed set_isa replaces nothing
print(repr(state()))
sk.set_isa({isa!r})
print(repr(state()))
print(repr([sk.info()["isa_active"], sk.backends()["simd"]["reason"], sk.score(users, ads).tolist()]))
"""


def _run_python(code: str, **env_overrides) -> list:
    env = dict(os.environ)
    for name in ("SPLITNET_KERNELS_ISA", "SPLITNET_KERNELS_BACKEND"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    env.update(env_overrides)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [ast.literal_eval(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("isa", (SUPPORTED_ISAS[0], SUPPORTED_ISAS[-1]))
@pytest.mark.parametrize("bad", ("sse", "neon_or_other"))
def test_set_isa_clears_a_bad_isa_environment(isa, bad):
    if bad == "neon_or_other":  # a known name this CPU cannot run, if there is one
        missing = [name for name in KNOWN_ISAS if name not in SUPPORTED_ISAS]
        if not missing:
            pytest.skip("this CPU runs every known ISA")
        bad = missing[0]
    before, failed, still, after, final = _run_python(_BAD_ENV_THEN_SET_ISA.format(isa=isa),
                                                      SPLITNET_KERNELS_ISA=bad)
    # Until then, the bad value is an error at every call that depends on it, never a fallback.
    for name, current in (("before set_isa", before), ("after a failed set_isa", still)):
        score, topk, error, available, fast = current
        for result in (score, topk):
            assert result.startswith("ValueError") and "SPLITNET_KERNELS_ISA" in result and bad in result, (name, result)
        assert error and bad in error and available is False and fast is False, (name, current)
    assert failed.startswith("ValueError"), failed
    # A successful set_isa: auto runs the kernels again, fast path included, and says so.
    assert after == ["ok", "ok", None, True, True], after
    active, reason, scores = final
    assert active == isa and f"ISA {isa} " in reason and scores == [4.0, 4.0, 4.0], final


def test_set_isa_keeps_the_backend_environment():
    """set_isa clears only the ISA error: SPLITNET_KERNELS_BACKEND=numpy still keeps auto (and
    the fast path) off the kernels."""
    before, failed, still, after, final = _run_python(_BAD_ENV_THEN_SET_ISA.format(isa=SUPPORTED_ISAS[0]),
                                                      SPLITNET_KERNELS_ISA="sse", SPLITNET_KERNELS_BACKEND="numpy")
    assert before[0] == "ok" and before[2] and before[4] is False, before  # numpy never needed the ISA
    assert after == ["ok", "ok", None, True, False], after


# ---- avx512vnni, once named avx512bf16 --------------------------------------------------------
def test_the_levels_are_reported_once_by_their_names():
    assert KNOWN_ISAS[0] == "scalar" and len(set(KNOWN_ISAS)) == len(KNOWN_ISAS)
    assert "avx512vnni" in KNOWN_ISAS and "avx512bf16" not in KNOWN_ISAS  # an old name is never reported
    assert set(SUPPORTED_ISAS) <= set(KNOWN_ISAS)


@pytest.mark.parametrize("old", ("avx512bf16", "AVX512BF16"))
def test_set_isa_accepts_the_old_name_avx512bf16(restore_isa, old):
    if "avx512vnni" not in SUPPORTED_ISAS:
        with pytest.raises(ValueError, match="not supported"):  # a known name, not an unknown one
            sk.set_isa(old)
        return
    sk.set_isa("scalar")
    assert sk.set_isa(old) == "scalar"
    assert sk.info()["isa_active"] == "avx512vnni"


def test_isa_environment_accepts_the_old_name_avx512bf16():
    code = "import splitnet_kernels as sk; i = sk.info(); print(repr([i['isa_active'], i['isa_error']]))"
    [[active, error]] = _run_python(code, SPLITNET_KERNELS_ISA="avx512bf16")
    if "avx512vnni" in SUPPORTED_ISAS:
        assert [active, error] == ["avx512vnni", None]
    else:
        assert error and "avx512bf16" in error and "not supported" in error, error
