"""Calls every entry of splitnet_kernels._core (score, topk, score_pairs) on every storage type
and metric form, one user and many, with and without an allowed subset, against a float64
NumPy reference. Run it directly (python tests/cpp/check_binding.py) or through
tests/test_kernel_spec.py."""

from __future__ import annotations

import numpy as np

from splitnet_kernels import _core

DTYPES = ("float32", "float16", "bfloat16", "int8")


def forms(n: int, rng) -> dict:
    """name -> (diag, left, right, S as float64)."""
    s = rng.uniform(0.5, 2.0, n).astype(np.float32)
    S = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    P, Q = (rng.standard_normal((n, 3)).astype(np.float32) for _ in range(2))
    d = rng.uniform(-1.0, 1.0, n).astype(np.float32)
    f64 = lambda x: x.astype(np.float64)
    return {
        "dot": (np.ones(n, np.float32), None, None, np.eye(n)),
        "scaled": (np.full(n, 0.75, np.float32), None, None, 0.75 * np.eye(n)),
        "diagonal": (s, None, None, np.diag(f64(s))),
        "full": (None, S, None, f64(S)),
        "full+diag": (d, S, None, f64(S) + np.diag(f64(d))),
        "low_rank": (d, P, Q, f64(P) @ f64(Q).T + np.diag(f64(d))),
        "low_rank, no d": (None, P, Q, f64(P) @ f64(Q).T),
    }


def storage(ads: np.ndarray, dtype: str, stored: int):
    """(data, scales, the rows it stands for as float64 (N, n))."""
    N, n = ads.shape
    padded = np.zeros((N, stored), np.float32)
    padded[:, :n] = ads
    if dtype == "float32":
        return padded, None, ads.astype(np.float64)
    if dtype == "float16":
        data = padded.astype(np.float16)
        return data, None, data[:, :n].astype(np.float64)
    if dtype == "bfloat16":
        bits = padded.view(np.uint32)
        data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        widened = (data.astype(np.uint32) << 16).view(np.float32)
        return data, None, widened[:, :n].astype(np.float64)
    scales = np.maximum(np.abs(padded).max(axis=1), 1e-30).astype(np.float32) / 127
    data = np.clip(np.rint(padded / scales[:, None]), -127, 127).astype(np.int8)
    return data, scales, data[:, :n].astype(np.float64) * scales[:, None]


def topk_reference(scores: np.ndarray, ids: np.ndarray, k: int):
    """The top k of one row of scores (float32), ties to the lower id, NaN last."""
    key = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    order = np.lexsort((ids, np.isnan(scores), -key))[:k]
    return scores[order], ids[order]


def check(seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    checks = 0
    for n, N, stored in ((19, 300, 19), (19, 300, 64), (64, 1000, 64), (7, 33, 64)):
        ads = rng.standard_normal((N, n)).astype(np.float32)
        users = rng.standard_normal((5, n)).astype(np.float32)
        allowed = np.flatnonzero(rng.random(N) < 0.3).astype(np.int64)
        for form_name, (diag, left, right, S) in forms(n, rng).items():
            for dtype in DTYPES:
                if dtype == "float32" and stored != n and stored % 64:
                    continue
                data, scales, rows = storage(ads, dtype, stored)
                for shape in ("one", "many", "one as (1, n)"):
                    u = users[0] if shape == "one" else users[:1] if shape.startswith("one as") else users
                    for ids in (None, allowed):
                        cand = np.arange(N) if ids is None else ids
                        want = (np.atleast_2d(u).astype(np.float64) @ S) @ rows[cand].T + 0.5
                        out = np.empty(want.shape if u.ndim == 2 else want.shape[1:], np.float32)
                        _core.score(u, data, dtype, scales, ids, diag, left, right, 0.5, out, 2)
                        got = np.atleast_2d(out)
                        scale = np.abs(np.atleast_2d(u) @ S).max() * np.abs(rows).max() * n
                        tol = (0.02 if dtype == "int8" else 1e-5) * scale + 1e-5
                        err = np.abs(got - want).max() if want.size else 0.0
                        assert err <= tol, (form_name, dtype, shape, ids is None, stored, err, tol)
                        for k in sorted({0, min(1, len(cand)), min(10, len(cand)), len(cand)}):
                            s = np.empty((k,) if u.ndim == 1 else (len(got), k), np.float32)
                            i = np.empty(s.shape, np.int64)
                            _core.topk(u, data, dtype, scales, ids, diag, left, right, 0.5, k, s, i, 2)
                            for row in range(len(got)):
                                ws, wi = topk_reference(got[row], cand, k)
                                np.testing.assert_array_equal(np.atleast_2d(i)[row], wi)
                                np.testing.assert_array_equal(np.atleast_2d(s)[row], ws)
                        checks += 1
        # pairs: users (B, n) against ads (B, n), float32 only
        B = min(37, N)
        pu, pa = users[rng.integers(0, 5, B)], ads[:B]
        for form_name, (diag, left, right, S) in forms(n, rng).items():
            out = np.empty(B, np.float32)
            _core.score_pairs(pu, pa, diag, left, right, -1.0, out, 2)
            want = np.einsum("bi,ij,bj->b", pu.astype(np.float64), S, pa.astype(np.float64)) - 1.0
            scale = np.abs(pu @ S).max() * np.abs(pa).max() * n
            assert np.abs(out - want).max() <= 1e-5 * scale + 1e-5, (form_name, "pairs")
            checks += 1
    return checks


def check_errors() -> int:
    users, ads = np.ones(4, np.float32), np.ones((10, 4), np.float32)
    ones, out = np.ones(4, np.float32), np.empty(10, np.float32)
    cases = [
        (lambda: _core.score(users, ads, "float32", None, None, None, None, None, 0.0, out, 1), "both None"),
        (lambda: _core.score(users, ads, "float64", None, None, ones, None, None, 0.0, out, 1), "unknown candidate dtype"),
        (lambda: _core.score(users, ads, "int8", None, None, ones, None, None, 0.0, out, 1), "does not hold int8"),
        (lambda: _core.score(users, ads, "float32", None, None, np.ones(3, np.float32), None, None, 0.0, out, 1), "diag"),
        (lambda: _core.score(users, ads, "float32", None, None, None, np.ones((4, 3), np.float32), None, 0.0, out, 1),
         "without right"),
        (lambda: _core.score(users, ads, "float32", None, None, None, None, np.ones((4, 4), np.float32), 0.0, out, 1),
         "right: given without left"),
        (lambda: _core.score(users, ads, "float32", None, np.array([3, 2], np.int64), ones, None, None, 0.0,
                             np.empty(2, np.float32), 1), "ascending"),
        (lambda: _core.score(users, ads, "float32", None, None, ones, None, None, 0.0, np.empty(9, np.float32), 1),
         "wrong shape"),
        (lambda: _core.score(np.ones(5, np.float32), ads, "float32", None, None, np.ones(5, np.float32), None, None,
                             0.0, out, 1), "shorter than"),
        (lambda: _core.score(users, ads, "float32", None, None, ones, None, None, 0.0, out, 0), "threads"),
        (lambda: _core.topk(users, ads, "float32", None, None, ones, None, None, 0.0, 11, np.empty(11, np.float32),
                            np.empty(11, np.int64), 1), "k must be in"),
        (lambda: _core.score_pairs(np.ones((3, 4), np.float32), ads, ones, None, None, 0.0, np.empty(3, np.float32),
                                   1), "same shape"),
        (lambda: _core.score(users, ads, 32, None, None, ones, None, None, 0.0, out, 1), "dtype: expected a str"),
    ]
    for call, message in cases:
        try:
            call()
        except (ValueError, TypeError) as error:
            assert message in str(error), (message, str(error))
        else:
            raise AssertionError(f"no error for {message}")
    return len(cases)


if __name__ == "__main__":
    print(f"{check()} value checks, {check_errors()} error checks: OK ({_core.active_isa()})")
    for isa in _core.supported_isas():
        _core.set_isa(isa)
        print(f"{isa}: {check(1)} value checks OK")
