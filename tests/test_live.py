"""Live candidate sets (issue 24): sk.LiveCandidates, keyed by the user's own int64 ad ids and
changed by atomic batches while it serves.

The oracle (DESIGN.md, "Contract additions (2026-12, second set)"): after any sequence of
batches, every call answers bit for bit what sk.Candidates built from the set's present rows in
ascending id order answers (same dtype, exact, objectives and bids), with row positions mapped
to those ids; equal numbers go to the lower external id. Here a Model (id -> row, objective, bid)
follows every batch in plain Python, and its Oracle is that frozen Candidates."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import splitnet_kernels as sk
from conftest import make_metric

KINDS = ("dot", "scaled", "diagonal", "low_rank", "full")
STORAGES = [("float32", False), ("float16", False), ("bfloat16", False), ("int8", False),
            ("float16", True), ("bfloat16", True), ("int8", True)]
STORAGE_IDS = [f"{d}-exact" if e else d for d, e in STORAGES]
# ids a set may be given besides small ones: large, and the largest int64
BIG_IDS = np.array([2**40 + 3, 2**62, 2**63 - 1], np.int64)
# 0.0 with its sign: the live set and the oracle give the same bits, so -0.0 must stay -0.0
_ZERO = np.float32(0.0)


# ---- comparing answers bit for bit ------------------------------------------------------------
def _bits_equal(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if got.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    got_nan, want_nan = np.isnan(got), np.isnan(want)
    np.testing.assert_array_equal(got_nan, want_nan, err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.where(got_nan, _ZERO, got).view(np.uint32),
                                  np.where(want_nan, _ZERO, want).view(np.uint32), err_msg=f"{what}: float32 bits")


def _same_topk(got, want, what: str = "topk") -> None:
    scores, ids = got
    _bits_equal(ids, want[1], f"{what} ids")
    _bits_equal(scores, want[0], f"{what} scores")


def _answers_equal(got, want) -> bool:
    try:
        _same_topk(got, want)
    except AssertionError:
        return False
    return True


# ---- the model and its oracle -----------------------------------------------------------------
class Model:
    """What a live set should hold: external id -> (row as float32, objective, bid)."""

    def __init__(self, dim: int, dtype: str, exact: bool, objectives: bool):
        self.dim, self.dtype, self.exact, self.objectives = dim, dtype, exact, objectives
        self.rows: dict[int, tuple[np.ndarray, int, float]] = {}

    def copy(self) -> "Model":
        other = Model(self.dim, self.dtype, self.exact, self.objectives)
        other.rows = dict(self.rows)
        return other

    def upsert(self, ids, ads, objectives=None, bids=None) -> None:
        ads = np.asarray(ads, np.float32)
        for j, i in enumerate(np.asarray(ids, np.int64).tolist()):
            self.rows[i] = (ads[j].copy(), 0 if objectives is None else int(objectives[j]),
                            1.0 if bids is None else float(bids[j]))

    def remove(self, ids) -> int:
        return sum(self.rows.pop(i, None) is not None for i in np.asarray(ids, np.int64).tolist())

    def set_bids(self, ids, bids) -> None:
        for i, b in zip(np.asarray(ids, np.int64).tolist(), np.asarray(bids, np.float64).tolist()):
            row, objective, _ = self.rows[i]
            self.rows[i] = (row, objective, b)

    def present(self) -> np.ndarray:
        return np.array(sorted(self.rows), np.int64)

    def arrays(self):
        """(ids ascending, rows, objectives, bids) of the present rows."""
        ids = self.present()
        rows = (np.stack([self.rows[i][0] for i in ids.tolist()]) if len(ids)
                else np.zeros((0, self.dim), np.float32))
        objectives = np.array([self.rows[i][1] for i in ids.tolist()], np.int64)
        bids = np.array([self.rows[i][2] for i in ids.tolist()], np.float64)
        return ids, rows, objectives, bids

    def oracle(self) -> "Oracle":
        return Oracle(self)

    def live(self):
        """A fresh live set of these rows (from_arrays, ids in a shuffled order)."""
        ids, rows, objectives, bids = self.arrays()
        order = np.random.default_rng(len(ids)).permutation(len(ids))
        extra = dict(objectives=objectives[order], bids=bids[order]) if self.objectives else {}
        return sk.LiveCandidates.from_arrays(ids[order], rows[order], dtype=self.dtype, exact=self.exact, **extra)


class Oracle:
    """sk.Candidates of a model's present rows in ascending id order, positions mapped to ids."""

    def __init__(self, model: Model):
        self.ids, rows, objectives, bids = model.arrays()
        extra = dict(objectives=objectives, bids=bids) if model.objectives else {}
        self.cands = sk.Candidates(rows, model.dtype, exact=model.exact, **extra)

    def topk(self, users, k, metric, allowed=None, **kwargs):
        mask = None if allowed is None else np.isin(self.ids, np.asarray(allowed, np.int64))
        scores, positions = self.cands.topk(users, k, metric, allowed=mask, **kwargs)
        return scores, self.ids[positions]

    def score(self, users, metric, ids=None, **kwargs):
        scores = self.cands.score(users, metric, **kwargs)
        if ids is None:
            return scores
        return scores[..., np.searchsorted(self.ids, np.asarray(ids, np.int64))]


def _state(live, users, metric, **kwargs):
    """Everything a failed batch must leave as it was."""
    return (len(live), live.ids().copy(), live.version, live.topk(users, 10, metric, **kwargs),
            live.score(users, metric, output=kwargs.get("output")))


def _assert_state(live, before, users, metric, **kwargs):
    now = _state(live, users, metric, **kwargs)
    assert now[0] == before[0], "len changed by a failed batch"
    np.testing.assert_array_equal(now[1], before[1], err_msg="ids() changed by a failed batch")
    assert now[2] == before[2], "version changed by a failed batch"
    _same_topk(now[3], before[3], "topk after a failed batch")
    _bits_equal(now[4], before[4], "score after a failed batch")


def _campaign_metrics(rng, dim: int, n_objectives: int, kinds=None) -> sk.ObjectiveMetrics:
    kinds = kinds or [KINDS[(t + 2) % len(KINDS)] for t in range(n_objectives)]
    return sk.ObjectiveMetrics([make_metric(kind, dim, rng, bias=-1.0 + 0.5 * t) for t, kind in enumerate(kinds)])


# ---- random histories against the oracle --------------------------------------------------------
class History:
    """A live set under random batches (hypothesis draws the structure, rng the numbers); every
    step is checked against the model, and queries against the model's oracle."""

    def __init__(self, data, dtype, exact, objectives, dim, n_objectives, rng):
        self.data, self.rng = data, rng
        self.model = Model(dim, dtype, exact, objectives)
        self.n_objectives = n_objectives
        self.nan_ok = exact or dtype == "float32"  # the types that hold NaN and infinity
        self.snapshots = []
        if data.draw(st.booleans(), label="start from_arrays"):
            count = data.draw(st.integers(1, 40), label="initial rows")
            ids = self._upsert_ids(count)
            ads, obj, bids = self._rows(len(ids))
            self.model.upsert(ids, ads, obj, bids)
            extra = dict(objectives=obj, bids=bids) if objectives else {}
            self.live = sk.LiveCandidates.from_arrays(ids, ads, dtype=dtype, exact=exact, **extra)
        else:
            self.live = sk.LiveCandidates(dim, dtype, exact=exact, objectives=objectives)
        assert (self.live.dim, self.live.dtype, self.live.exact) == (dim, dtype, exact)
        self.version = self.live.version
        assert isinstance(self.version, int)
        self.check_state()

    # -- inputs
    def _pool(self) -> np.ndarray:
        return np.union1d(np.union1d(self.model.present(), np.arange(64)), BIG_IDS)

    def _upsert_ids(self, count: int) -> np.ndarray:
        pool = self._pool()
        return self.rng.choice(pool, size=min(count, len(pool)), replace=False).astype(np.int64)

    def _rows(self, count: int):
        rng, dim = self.rng, self.model.dim
        scale = rng.choice([1.0, 1e-3, 40.0])
        ads = (rng.standard_normal((count, dim)) * scale).astype(np.float32)
        obj = rng.integers(0, self.n_objectives, count)
        bids = rng.lognormal(0.0, 1.0, count)
        bids[rng.random(count) < 0.1] = 0.0
        present = self.model.present()
        for j in range(1, count):  # row 0 stays fresh: every non-empty batch changes something
            r = rng.random()
            if r < 0.25 and len(present):  # a tie with a present row (and its objective and bid)
                row, o, b = self.model.rows[int(rng.choice(present))]
                ads[j] = row
                if rng.random() < 0.5:
                    obj[j], bids[j] = o, b
            elif r < 0.35:  # a tie within the batch
                ads[j], obj[j], bids[j] = ads[j - 1], obj[j - 1], bids[j - 1]
            elif r < 0.45 and self.nan_ok:
                if rng.random() < 0.5:
                    ads[j] = np.nan
                else:
                    ads[j, rng.integers(dim)] = rng.choice([np.inf, -np.inf])
            elif r < 0.5 and self.model.exact:  # beyond float16, far beyond an int8 step
                ads[j] *= np.float32(1e5)
        return ads, obj, bids

    def _as_given(self, ids: np.ndarray):
        """ids as an int64 array, or sometimes as a list of Python ints."""
        return ids.tolist() if len(ids) and self.rng.random() < 0.2 else ids

    # -- batches
    def step(self):
        op = self.data.draw(st.sampled_from(("upsert", "upsert", "remove", "set_bids", "compact", "query")),
                            label="op")
        getattr(self, op)()
        self.check_state()

    def upsert(self):
        count = self.data.draw(st.integers(0, 12), label="upsert rows")
        ids = self._upsert_ids(count)
        ads, obj, bids = self._rows(len(ids))
        extra = dict(objectives=obj, bids=bids) if self.model.objectives else {}
        self.live.upsert(self._as_given(ids), ads, **extra)
        self.model.upsert(ids, ads, obj, bids)
        self.version += bool(len(ids))

    def remove(self):
        present = self.model.present()
        take = self.rng.choice(present, size=self.rng.integers(0, len(present) + 1), replace=False)
        absent = np.setdiff1d(self._pool(), present)
        absent = self.rng.choice(absent, size=min(len(absent), self.rng.integers(0, 4)), replace=False)
        negative = np.array([-1, -7, -(2**63)], np.int64)[: self.rng.integers(0, 4)]
        ids = self.rng.permutation(np.concatenate([take, absent, negative]).astype(np.int64))
        removed = self.live.remove(self._as_given(ids))
        assert removed == len(take), f"remove returned {removed}, {len(take)} were present"
        assert self.model.remove(ids) == len(take)
        self.version += bool(len(take))

    def set_bids(self):
        if not self.model.objectives:
            return self.upsert()
        present = self.model.present()
        ids = self.rng.permutation(self.rng.choice(present, size=self.rng.integers(0, len(present) + 1),
                                                   replace=False))
        bids = self.rng.lognormal(0.0, 2.0, len(ids))
        current = np.array([self.model.rows[i][2] for i in ids.tolist()])
        bids[(self.rng.random(len(ids)) < 0.1) & (current != 0.0)] = 0.0  # every bid moves
        self.live.set_bids(self._as_given(ids), bids)
        self.model.set_bids(ids, bids)
        self.version += bool(len(ids))

    def compact(self):
        self.live.compact()  # the version stays; the answers are checked by later queries

    def query(self):
        oracle = self.model.oracle()
        self.check_queries(self.live, oracle)
        snap = self.live.snapshot()
        assert snap.version == self.version
        self.snapshots.append((snap, self.model.copy(), oracle))

    # -- checks
    def check_state(self):
        ids = self.model.present()
        got = self.live.ids()
        _bits_equal(got, ids, "ids()")
        assert len(self.live) == len(ids)
        assert self.live.version == self.version, f"version {self.live.version}, expected {self.version}"
        probe = np.concatenate([ids[:3], np.setdiff1d(self._pool(), ids)[:3], np.array([-1], np.int64)])
        np.testing.assert_array_equal(self.live.contains(probe), np.isin(probe, ids), err_msg="contains")

    def _allowed(self, ids: np.ndarray):
        if self.data.draw(st.booleans(), label="allowed"):
            return None
        rng = self.rng
        some = rng.choice(ids, size=rng.integers(0, len(ids) + 1), replace=False) if len(ids) else ids
        absent = np.setdiff1d(self._pool(), ids)[: rng.integers(0, 3)]
        allowed = rng.permutation(np.concatenate([some, absent, np.array([-1, -5], np.int64)[: rng.integers(0, 3)]]))
        if len(allowed) and rng.random() < 0.2:
            allowed = np.concatenate([allowed, allowed[:1]])  # a repeated id is the same filter
        return self._as_given(allowed)

    def _metric(self):
        """(metric, topk keywords, score keywords) of one query."""
        data, rng, dim = self.data, self.rng, self.model.dim
        if self.model.objectives and data.draw(st.integers(0, 4), label="objective metric") > 0:
            kinds = [data.draw(st.sampled_from(KINDS), label="kind") for _ in range(self.n_objectives)]
            om = _campaign_metrics(rng, dim, self.n_objectives, kinds)
            output = data.draw(st.sampled_from((None, "value", "probability", "logit")), label="output")
            return om, dict(output=output), dict(output=output)
        metric = make_metric(data.draw(st.sampled_from(KINDS), label="kind"), dim, rng, bias=float(rng.normal()))
        output = data.draw(st.sampled_from((None, "logit", "probability", "sigmoid")), label="output")
        if output == "sigmoid":
            return metric, dict(sigmoid=True), dict(output="probability")
        return metric, dict(output=output), dict(output=output)

    def check_queries(self, target, oracle: Oracle, where: str = "live"):
        data, rng, dim = self.data, self.rng, self.model.dim
        users = rng.standard_normal((data.draw(st.sampled_from((2, 3, 9)), label="users"), dim)).astype(np.float32)
        metric, topk_kw, score_kw = self._metric()
        n = len(oracle.ids)
        for u in (users[0], users):
            k = data.draw(st.sampled_from((1, 3, max(n, 1), n + 5)), label="k")
            allowed = self._allowed(oracle.ids)
            threads = data.draw(st.sampled_from((None, 1, 2)), label="threads")
            got = target.topk(u, k, metric, allowed=allowed, threads=threads, **topk_kw)
            want = oracle.topk(u, k, metric, allowed=allowed, threads=threads, **topk_kw)
            _same_topk(got, want, f"{where} topk (users {u.shape}, k {k}, allowed {allowed}, {topk_kw})")
        _bits_equal(target.score(users, metric, **score_kw), oracle.score(users, metric, **score_kw), f"{where} score")
        if n:
            some = rng.choice(oracle.ids, size=rng.integers(1, n + 1), replace=False)
            _bits_equal(target.score(users[0], metric, ids=some, **score_kw),
                        oracle.score(users[0], metric, ids=some, **score_kw), f"{where} score(ids=...)")

    def check_snapshots(self):
        for snap, model, oracle in self.snapshots:
            _bits_equal(snap.ids(), model.present(), "snapshot ids()")
            assert len(snap) == len(model.rows)
            self.check_queries(snap, oracle, "snapshot")


@pytest.mark.parametrize("dtype,exact", STORAGES, ids=STORAGE_IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_histories_answer_as_the_oracle(dtype, exact, data):
    """Random batches (new ids, replaced ids, ties, NaN and infinite rows where the type holds
    them, removals of present, absent and negative ids, bids, compact() anywhere): after each,
    len, ids(), contains() and version follow the model, and topk/score (one user and many,
    every metric kind, allowed= by external ids, k beyond the set, outputs, threads) answer as
    the oracle, bit for bit; snapshots taken on the way still answer their version at the end."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    objectives = data.draw(st.booleans(), label="objectives")
    history = History(data, dtype, exact, objectives, data.draw(st.integers(1, 20), label="dim"),
                      data.draw(st.sampled_from((2, 3)), label="objectives used"), rng)
    for _ in range(data.draw(st.integers(1, 8), label="steps")):
        history.step()
    history.query()
    history.live.compact()
    history.check_state()
    history.check_queries(history.live, history.model.oracle(), "live after compact()")
    history.check_snapshots()


@pytest.mark.parametrize("objectives", (False, True), ids=("plain", "objectives"))
@pytest.mark.parametrize("dtype,exact", STORAGES, ids=STORAGE_IDS)
def test_sets_spanning_many_blocks(dtype, exact, objectives):
    """Thousands of rows (several 1,024-row blocks of bounds and bids), large batches: replace,
    remove, move bids up and down (a bid raised far above its block's largest, a block's largest
    lowered to 0), compact; each step answers as the oracle, by value too."""
    rng = np.random.default_rng(2024)
    dim, n = 24, 5000
    model = Model(dim, dtype, exact, objectives)
    ads = rng.standard_normal((n, dim)).astype(np.float32)
    ads[rng.integers(0, n, 300)] = ads[rng.integers(0, n, 300)]  # ties across blocks
    if exact:
        ads[rng.integers(0, n, 5)] = np.nan
    model.upsert(rng.choice(10**6, n, replace=False), ads, rng.integers(0, 3, n), rng.lognormal(0, 1, n))
    live = model.live()
    om = _campaign_metrics(rng, dim, 3)
    metric = make_metric("full", dim, rng, bias=0.5)
    users = rng.standard_normal((6, dim)).astype(np.float32)

    def check(where):
        oracle = model.oracle()
        _bits_equal(live.ids(), oracle.ids, f"{where}: ids()")
        query = (om, "value") if objectives else (metric, None)
        allowed = np.concatenate([rng.choice(oracle.ids, 700, replace=False), [-1, 10**7]])
        for u in (users[0], users):
            for k in (1, 50):
                _same_topk(live.topk(u, k, query[0], output=query[1]),
                           oracle.topk(u, k, query[0], output=query[1]), f"{where}: topk k={k}")
            _same_topk(live.topk(u, 30, query[0], output=query[1], allowed=allowed),
                       oracle.topk(u, 30, query[0], output=query[1], allowed=allowed), f"{where}: topk allowed")
        if objectives:
            _same_topk(live.topk(users, 20, om, output="logit", threads=2), oracle.topk(users, 20, om, output="logit"),
                       f"{where}: topk by logit")
        _bits_equal(live.score(users[:2], query[0], output=query[1]),
                    oracle.score(users[:2], query[0], output=query[1]), f"{where}: score")

    def upsert(count):
        present = model.present()
        ids = np.concatenate([rng.choice(present, count // 2, replace=False),
                              10**6 + rng.choice(10**6, count - count // 2, replace=False)])
        rows = rng.standard_normal((count, dim)).astype(np.float32)
        obj, bids = rng.integers(0, 3, count), rng.lognormal(0, 1, count)
        live.upsert(ids, rows, **(dict(objectives=obj, bids=bids) if objectives else {}))
        model.upsert(ids, rows, obj, bids)

    check("from_arrays")
    upsert(500)
    check("after upsert")
    gone = rng.choice(model.present(), 700, replace=False)
    assert live.remove(gone) == 700
    model.remove(gone)
    check("after remove")
    if objectives:
        present = model.present()
        moved = rng.choice(present, 1000, replace=False)
        bids = rng.lognormal(0, 1, 1000)
        bids[:10] = 1e6  # far above every block's largest bid: these ten lead by value
        live.set_bids(moved, bids)
        model.set_bids(moved, bids)
        check("after set_bids up")
        top = live.topk(users[0], 5, om)[1]
        zero = np.unique(np.concatenate([top, present[:2000:3]]))
        live.set_bids(zero, np.zeros(len(zero)))  # the leaders and a third of some blocks to 0
        model.set_bids(zero, np.zeros(len(zero)))
        check("after set_bids down")
    live.compact()
    check("after compact")
    upsert(300)
    gone = rng.choice(model.present(), 200, replace=False)
    live.remove(gone)
    model.remove(gone)
    check("after more batches")
    live.compact()
    check("after a second compact")


@pytest.mark.parametrize("dtype,exact,objectives", [("int8", True, True), ("float16", False, False),
                                                    ("bfloat16", True, False), ("float32", False, True)],
                         ids=("int8-exact-objectives", "float16", "bfloat16-exact", "float32-objectives"))
def test_long_histories_of_small_batches(dtype, exact, objectives):
    """Hundreds of small batches with no compact(): pending changes pile up in many pieces
    (and merge as they grow); the answers stay the oracle's, then after compact() too."""
    rng = np.random.default_rng(61)
    dim = 9
    model = Model(dim, dtype, exact, objectives)
    model.upsert(rng.choice(5000, 2500, replace=False), rng.standard_normal((2500, dim)).astype(np.float32),
                 rng.integers(0, 2, 2500), rng.lognormal(0, 1, 2500))
    live = model.live()
    version = live.version
    metric = _campaign_metrics(rng, dim, 2) if objectives else make_metric("full", dim, rng, bias=-0.5)
    users = rng.standard_normal((3, dim)).astype(np.float32)

    def check(where):
        oracle = model.oracle()
        assert live.version == version, where
        _bits_equal(live.ids(), oracle.ids, f"{where}: ids()")
        allowed = np.arange(0, 5000, 7)
        for u in (users[0], users):
            _same_topk(live.topk(u, 12, metric), oracle.topk(u, 12, metric), f"{where}: topk")
            _same_topk(live.topk(u, 12, metric, allowed=allowed), oracle.topk(u, 12, metric, allowed=allowed),
                       f"{where}: topk allowed")
        _bits_equal(live.score(users[1], metric), oracle.score(users[1], metric), f"{where}: score")

    for b in range(240):
        present = model.present()
        op = rng.integers(0, 3 if objectives else 2)
        count = int(rng.integers(1, 6))
        if op == 0:
            ids = rng.choice(5000, count, replace=False)
            rows = rng.standard_normal((count, dim)).astype(np.float32)
            if rng.random() < 0.3:  # equal to a present row
                rows[0] = model.rows[int(rng.choice(present))][0]
            obj, bids = rng.integers(0, 2, count), rng.lognormal(0, 1, count)
            live.upsert(ids, rows, **(dict(objectives=obj, bids=bids) if objectives else {}))
            model.upsert(ids, rows, obj, bids)
        elif op == 1:
            ids = rng.choice(present, count, replace=False)
            assert live.remove(ids) == count
            model.remove(ids)
        else:
            ids = rng.choice(present, count, replace=False)
            bids = rng.lognormal(0, 2, count)
            live.set_bids(ids, bids)
            model.set_bids(ids, bids)
        version += 1
        if b % 40 == 39:
            check(f"after batch {b}")
    live.compact()
    check("after compact")


# ---- properties, versions, ties, snapshots ------------------------------------------------------
def test_inputs_of_other_types_and_layouts():
    """Rows and users given as float64, float16 or Fortran-ordered arrays (and ids as int32 or
    uint64 below 2**63) answer as the oracle built from the same arrays."""
    rng = np.random.default_rng(71)
    dim = 7
    for dtype, exact in (("float16", False), ("int8", True), ("float32", False)):
        rows64 = rng.standard_normal((50, dim)) * 3
        ids = np.arange(50, dtype=np.int32)[::-1].copy()
        live = sk.LiveCandidates.from_arrays(ids, np.asfortranarray(rows64), dtype=dtype, exact=exact)
        more = rng.standard_normal((5, dim)).astype(np.float16)
        live.upsert(np.array([3, 60, 61, 62, 63], np.uint64), more)
        everything = np.concatenate([rows64[::-1], np.zeros((14, dim))])
        everything[3], everything[60:64] = more[0], more[1:]
        keep = np.r_[0:50, 60:64]
        oracle = sk.Candidates(everything[keep], dtype, exact=exact)
        users = np.asfortranarray(rng.standard_normal((4, dim)))  # float64, Fortran order
        metric = make_metric("diagonal", dim, rng, bias=0.125)
        for u in (users, users[1], users[:, ::1][2]):
            scores, positions = oracle.topk(u, 9, metric)
            _same_topk(live.topk(u, 9, metric), (scores, keep[positions]), f"{dtype}: topk")
        _bits_equal(live.score(users, metric), oracle.score(users, metric), f"{dtype}: score")


def test_empty_sets_and_properties():
    for dtype, exact in STORAGES:
        for objectives in (False, True):
            live = sk.LiveCandidates(5, dtype, exact=exact, objectives=objectives)
            assert (len(live), live.dim, live.dtype, live.exact) == (0, 5, dtype, exact)
            _bits_equal(live.ids(), np.zeros(0, np.int64), "ids() of an empty set")
            assert live.contains(np.array([0, 1, -1])).tolist() == [False] * 3
            metric = (sk.ObjectiveMetrics([sk.Metric.dot(5)] * 2) if objectives else sk.Metric.dot(5))
            scores, ids = live.topk(np.ones(5, np.float32), 3, metric)
            assert scores.shape == ids.shape == (0,) and ids.dtype == np.int64 and scores.dtype == np.float32
            scores, ids = live.topk(np.ones((4, 5), np.float32), 3, metric)
            assert scores.shape == ids.shape == (4, 0)
            assert live.score(np.ones((4, 5), np.float32), metric).shape == (4, 0)
    live = sk.LiveCandidates(3)
    assert live.dtype == "float32" and not live.exact
    live.upsert(np.array([9, 4, 7]), np.eye(3, dtype=np.float32))
    _bits_equal(live.ids(), np.array([4, 7, 9], np.int64), "ids() ascending")
    assert live.contains([4, 5, 9, -3]).tolist() == [True, False, True, False]
    scores, ids = live.topk(np.array([1.0, 2.0, 3.0], np.float32), 3)  # metric None: the dot product
    assert ids.tolist() == [7, 4, 9] and scores.tolist() == [3.0, 2.0, 1.0]


def test_version_counts_batches_that_change_something():
    live = sk.LiveCandidates(2, objectives=True)
    v = live.version
    empty, none = np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
    live.upsert(empty, none, objectives=empty, bids=np.zeros(0))
    assert live.version == v  # an empty batch
    live.upsert([1, 2, 3], np.ones((3, 2), np.float32), objectives=[0, 1, 0], bids=[1.0, 2.0, 3.0])
    assert live.version == v + 1
    assert live.remove([7, 8, -1]) == 0 and live.version == v + 1  # absent ids only
    assert live.remove(empty) == 0 and live.version == v + 1
    live.set_bids(empty, np.zeros(0))
    assert live.version == v + 1
    live.compact()
    assert live.version == v + 1
    live.snapshot()
    assert live.version == v + 1
    assert live.remove([2, 9]) == 1 and live.version == v + 2
    live.set_bids([1, 3], [0.5, 4.0])
    assert live.version == v + 3
    live.upsert([3, 4], np.zeros((2, 2), np.float32), objectives=[1, 1], bids=[1.0, 1.0])  # replace + insert
    assert live.version == v + 4
    assert live.ids().tolist() == [1, 3, 4] and len(live) == 3


@pytest.mark.parametrize("dtype,exact", STORAGES, ids=STORAGE_IDS)
def test_equal_scores_go_to_the_lower_external_id(dtype, exact):
    rng = np.random.default_rng(5)
    row = rng.standard_normal(6).astype(np.float32)
    ids = np.array([50, 7, 2**62, 30, 2, 11], np.int64)
    live = sk.LiveCandidates.from_arrays(ids, np.repeat(row[None], 6, 0), dtype=dtype, exact=exact)
    user = rng.standard_normal(6).astype(np.float32)
    assert live.topk(user, 6)[1].tolist() == [2, 7, 11, 30, 50, 2**62]
    live.upsert([1, 40], np.repeat(row[None], 2, 0))  # new equal rows, in the pending segment
    live.remove([7])
    assert live.topk(user, 4)[1].tolist() == [1, 2, 11, 30]
    assert live.topk(np.stack([user, user]), 3)[1].tolist() == [[1, 2, 11]] * 2
    live.compact()
    assert live.topk(user, 4, allowed=[40, 30, 2**62, -1])[1].tolist() == [30, 40, 2**62]
    # by value: equal values across objectives and bids (p * b equal) go to the lower id too
    om = sk.ObjectiveMetrics([sk.Metric.dot(6), sk.Metric.dot(6)])
    valued = sk.LiveCandidates.from_arrays(ids, np.repeat(row[None], 6, 0), dtype=dtype, exact=exact,
                                           objectives=[1, 0, 1, 0, 1, 0], bids=[2.0] * 6)
    assert valued.topk(user, 6, om)[1].tolist() == [2, 7, 11, 30, 50, 2**62]
    valued.set_bids([2**62, 50], [3.0, 3.0])
    assert valued.topk(user, 3, om)[1].tolist() == [50, 2**62, 2]


@pytest.mark.parametrize("dtype,exact", [("float32", False), ("int8", True)], ids=("float32", "int8-exact"))
def test_snapshots_keep_answering_their_version(dtype, exact):
    rng = np.random.default_rng(8)
    model = Model(12, dtype, exact, True)
    model.upsert(np.arange(0, 3000, 3), rng.standard_normal((1000, 12)).astype(np.float32),
                 rng.integers(0, 2, 1000), rng.lognormal(0, 1, 1000))
    live = model.live()
    om = _campaign_metrics(rng, 12, 2)
    users = rng.standard_normal((3, 12)).astype(np.float32)
    pinned = []
    for step in range(5):
        snap = live.snapshot()
        pinned.append((snap, snap.version, model.copy()))
        ids = rng.choice(4000, 200, replace=False)
        rows = rng.standard_normal((200, 12)).astype(np.float32)
        obj, bids = rng.integers(0, 2, 200), rng.lognormal(0, 1, 200)
        live.upsert(ids, rows, objectives=obj, bids=bids)
        model.upsert(ids, rows, obj, bids)
        gone = rng.choice(model.present(), 100, replace=False)
        live.remove(gone)
        model.remove(gone)
        moved = rng.choice(model.present(), 300, replace=False)
        bids = rng.lognormal(0, 2, 300)
        live.set_bids(moved, bids)
        model.set_bids(moved, bids)
        if step % 2:
            live.compact()
    final = live.snapshot()
    pinned.append((final, final.version, model.copy()))
    del live  # a snapshot holds what it needs
    versions = [v for _, v, _ in pinned]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for snap, version, state in pinned:
        oracle = state.oracle()
        assert snap.version == version and len(snap) == len(state.rows)
        _bits_equal(snap.ids(), state.present(), "snapshot ids()")
        probe = np.array([0, 1, 3, 3999, -1], np.int64)
        np.testing.assert_array_equal(snap.contains(probe), np.isin(probe, state.present()))
        for output in ("value", "logit"):
            _same_topk(snap.topk(users, 25, om, output=output), oracle.topk(users, 25, om, output=output), "snapshot")
            _same_topk(snap.topk(users[0], 25, om, output=output, allowed=np.arange(0, 4000, 2)),
                       oracle.topk(users[0], 25, om, output=output, allowed=np.arange(0, 4000, 2)), "snapshot")
            _bits_equal(snap.score(users, om, output=output), oracle.score(users, om, output=output), "snapshot score")


# ---- bad input: a clear error naming the argument, and nothing changed ---------------------------
def _bad_batches(dim):
    row = np.ones((1, dim), np.float32)
    two = np.ones((2, dim), np.float32)
    ok = dict(objectives=[0], bids=[1.0])
    ok2 = dict(objectives=[0, 1], bids=[1.0, 2.0])
    yield "duplicate ids in upsert", "ids", lambda s: s.upsert([500, 500], two, **ok2)
    yield "duplicate ids among new ones", "ids", lambda s: s.upsert([501, 502, 501], np.ones((3, dim), np.float32),
                                                                    objectives=[0, 0, 0], bids=[1.0] * 3)
    yield "float ids", "ids", lambda s: s.upsert(np.array([500.0]), row, **ok)
    yield "fractional ids", "ids", lambda s: s.upsert(np.array([500.5]), row, **ok)
    yield "string ids", "ids", lambda s: s.upsert(np.array(["a"]), row, **ok)
    yield "negative id in upsert", "ids", lambda s: s.upsert([503, -1], two, **ok2)
    yield "ids and rows of different lengths", "ids|ads", lambda s: s.upsert([504, 505], row, **ok)
    yield "rows of the wrong dimension", "ads", lambda s: s.upsert([506], np.ones((1, dim + 1), np.float32), **ok)
    yield "1-D rows", "ads", lambda s: s.upsert([506], np.ones(dim, np.float32), **ok)
    yield "rows that are not numbers", "ads", lambda s: s.upsert([506], np.full((1, dim), "x"), **ok)
    yield "negative bid", "bids", lambda s: s.upsert([507, 508], two, objectives=[0, 0], bids=[1.0, -1.0])
    yield "NaN bid", "bids", lambda s: s.upsert([507, 508], two, objectives=[0, 0], bids=[np.nan, 1.0])
    yield "infinite bid", "bids", lambda s: s.upsert([507, 508], two, objectives=[0, 0], bids=[1.0, np.inf])
    yield "bids of the wrong length", "bids", lambda s: s.upsert([507, 508], two, objectives=[0, 0], bids=[1.0])
    yield "negative objective", "objectives", lambda s: s.upsert([509, 510], two, objectives=[0, -1], bids=[1.0, 1.0])
    yield "objectives not integers", "objectives", lambda s: s.upsert([509], row, objectives=[0.5], bids=[1.0])
    yield "objectives missing", "objectives", lambda s: s.upsert([511], row, bids=[1.0])
    yield "bids missing", "bids", lambda s: s.upsert([511], row, objectives=[0])
    yield "duplicate ids in remove", "ids", lambda s: s.remove([0, 3, 0])
    yield "float ids in remove", "ids", lambda s: s.remove(np.array([0.0, 3.0]))
    yield "set_bids on an absent id", "ids", lambda s: s.set_bids([0, 3, 4], [9.0, 9.0, 9.0])
    yield "set_bids with duplicate ids", "ids", lambda s: s.set_bids([0, 3, 0], [9.0, 9.0, 9.0])
    yield "set_bids with a negative bid", "bids", lambda s: s.set_bids([0, 3], [9.0, -2.0])
    yield "set_bids with a NaN bid", "bids", lambda s: s.set_bids([0, 3], [9.0, np.nan])
    yield "set_bids with an infinite bid", "bids", lambda s: s.set_bids([0, 3], [np.inf, 9.0])
    yield "set_bids of the wrong length", "bids", lambda s: s.set_bids([0, 3], [9.0])


@pytest.mark.parametrize("dtype,exact", STORAGES, ids=STORAGE_IDS)
def test_failed_batches_apply_nothing(dtype, exact):
    """Each bad batch (its bad part last, after rows that alone would be fine): ValueError or
    TypeError naming the argument, and len, ids(), version and the answers as before, on a set
    with rows in both its main storage and its pending changes."""
    rng = np.random.default_rng(13)
    dim = 6
    model = Model(dim, dtype, exact, True)
    model.upsert(np.arange(0, 300, 3), rng.standard_normal((100, dim)).astype(np.float32), rng.integers(0, 2, 100),
                 rng.lognormal(0, 1, 100))
    live = model.live()
    pending = rng.standard_normal((2, dim)).astype(np.float32)
    live.upsert([1, 6], pending, objectives=[1, 0], bids=[2.0, 3.0])
    model.upsert([1, 6], pending, [1, 0], [2.0, 3.0])
    live.remove([9])
    model.remove([9])
    om = _campaign_metrics(rng, dim, 2)
    users = rng.standard_normal((2, dim)).astype(np.float32)
    for name, argument, call in _bad_batches(dim):
        before = _state(live, users, om)
        with pytest.raises((ValueError, TypeError), match=argument):
            call(live)
        _assert_state(live, before, users, om)
    # values the storage type cannot hold (1e6 in float16, NaN / infinity in float16, bfloat16
    # and int8), after a row that would be fine
    if not exact and dtype != "float32":
        for bad in ((1e6, np.nan, np.inf) if dtype == "float16" else (np.nan, np.inf, -np.inf)):
            ads = np.ones((2, dim), np.float32)
            ads[1, 2] = bad
            before = _state(live, users, om)
            with pytest.raises(ValueError, match="ads"):
                live.upsert([600, 601], ads, objectives=[0, 0], bids=[1.0, 1.0])
            _assert_state(live, before, users, om)
    # objectives with no metric in the query: a ValueError naming objectives, nothing changed
    om3 = _campaign_metrics(rng, dim, 3)
    live.upsert([700], np.ones((1, dim), np.float32), objectives=[2], bids=[1.0])
    model.upsert([700], np.ones((1, dim), np.float32), [2], [1.0])
    before = _state(live, users, om3)
    for call in (lambda: live.topk(users, 5, om), lambda: live.topk(users[0], 5, om),
                 lambda: live.score(users, om), lambda: live.snapshot().topk(users, 5, om)):
        with pytest.raises(ValueError, match="objectives"):
            call()
    _assert_state(live, before, users, om3)
    _same_topk(live.topk(users, 5, om3), model.oracle().topk(users, 5, om3), "after the failed batches")
    live.remove([700])  # then the two-metric query answers again
    model.remove([700])
    _same_topk(live.topk(users, 5, om), model.oracle().topk(users, 5, om), "two metrics again")


def test_bad_sets_and_queries():
    dim = 4
    rows = np.ones((3, dim), np.float32)
    for ids, argument in (([1, 1, 2], "ids"), ([1, -2, 3], "ids"), (np.array([1.5, 2.0, 3.0]), "ids"),
                          ([1, 2], "ids|ads")):
        with pytest.raises((ValueError, TypeError), match=argument):
            sk.LiveCandidates.from_arrays(ids, rows)
    with pytest.raises(ValueError, match="bids"):
        sk.LiveCandidates.from_arrays([1, 2, 3], rows, objectives=[0, 0, 0], bids=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="ads"):
        sk.LiveCandidates.from_arrays([1, 2, 3], rows * np.float32(1e6), dtype="float16")
    with pytest.raises(ValueError):
        sk.LiveCandidates.from_arrays([1, 2, 3], np.full((3, dim), np.nan, np.float32), dtype="int8")
    with pytest.raises(ValueError):
        sk.LiveCandidates(dim, "float32", exact=True)
    with pytest.raises((ValueError, TypeError)):
        sk.LiveCandidates(dim, "float64")
    live = sk.LiveCandidates.from_arrays([0, 1, 5], rows)
    for bad in (np.array([True, False, True]), np.ones(3, bool), np.array([0.5, 1.0])):
        with pytest.raises((ValueError, TypeError), match="allowed"):  # ids only: a mask would shift
            live.topk(np.ones(dim, np.float32), 2, allowed=bad)
    with pytest.raises(ValueError):
        live.topk(np.ones(dim + 1, np.float32), 2)


def test_allowed_is_external_ids():
    """allowed= names external ids: [0, 1] of a set of two rows is those ids (never a mask);
    absent and negative ids are ignored; none present gives an empty answer."""
    rows = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], np.float32)
    live = sk.LiveCandidates.from_arrays([1, 0, 7], rows)
    user = np.array([1.0, 0.0], np.float32)
    assert live.topk(user, 3)[1].tolist() == [7, 0, 1]
    assert live.topk(user, 3, allowed=np.array([0, 1]))[1].tolist() == [0, 1]
    assert live.topk(user, 3, allowed=np.array([1, 0, 1]))[1].tolist() == [0, 1]
    assert live.topk(user, 3, allowed=[1])[1].tolist() == [1]
    assert live.topk(user, 3, allowed=np.array([-1, 2, 7, 2**63 - 1]))[1].tolist() == [7]
    live.remove([7])
    assert live.topk(user, 3, allowed=np.array([0, 1]))[1].tolist() == [0, 1]  # two rows, ids 0 and 1
    for allowed in (np.array([-1, 7, 3], np.int64), np.zeros(0, np.int64), []):
        scores, ids = live.topk(user, 3, allowed=allowed)
        assert scores.shape == ids.shape == (0,)
        scores, ids = live.topk(np.stack([user, user]), 3, allowed=allowed)
        assert scores.shape == ids.shape == (2, 0)
    scores, ids = live.topk(user, 5)
    assert ids.tolist() == [0, 1] and scores.tolist() == [2.0, 1.0]  # k beyond the set


# ---- concurrency ------------------------------------------------------------------------------
def _writer_batch(live, model, rng, b, id_base=0, objectives=True):
    """One batch that always changes something: upsert (new and replaced), remove, or set_bids,
    and compact() now and then (not a batch)."""
    dim = model.dim
    present = model.present()
    kind = b % 3 if objectives else b % 2
    if kind == 0 or len(present) < 50:
        count = 60
        ids = np.concatenate([rng.choice(present, min(30, len(present)), replace=False),
                              id_base + rng.choice(100_000, count, replace=False)])
        ids = np.unique(ids)
        rows = rng.standard_normal((len(ids), dim)).astype(np.float32)
        obj, bids = rng.integers(0, 2, len(ids)), rng.lognormal(0, 1, len(ids))
        live.upsert(ids, rows, **(dict(objectives=obj, bids=bids) if objectives else {}))
        model.upsert(ids, rows, obj, bids)
    elif kind == 1:
        ids = rng.choice(present, min(40, len(present) // 2), replace=False)
        assert live.remove(ids) == len(ids)
        model.remove(ids)
    else:
        ids = rng.choice(present, min(150, len(present)), replace=False)
        bids = rng.lognormal(0, 2, len(ids))
        live.set_bids(ids, bids)
        model.set_bids(ids, bids)
    if b % 7 == 6:
        live.compact()


@pytest.mark.parametrize("dtype,exact,objectives", [("float32", False, False), ("int8", True, True),
                                                    ("bfloat16", False, True)],
                         ids=("float32", "int8-exact-objectives", "bfloat16-objectives"))
def test_readers_racing_a_writer_each_see_one_version(dtype, exact, objectives):
    """Readers call topk (live, and on a fresh snapshot) while a writer applies batches: each
    answer is the oracle's at one version between the versions read before and after the call;
    a snapshot's answer is the oracle's at its own version."""
    rng = np.random.default_rng(31)
    dim = 16
    model = Model(dim, dtype, exact, objectives)
    model.upsert(rng.choice(100_000, 1500, replace=False), rng.standard_normal((1500, dim)).astype(np.float32),
                 rng.integers(0, 2, 1500), rng.lognormal(0, 1, 1500))
    live = model.live()
    metric = _campaign_metrics(rng, dim, 2) if objectives else make_metric("diagonal", dim, rng, bias=0.25)
    users = rng.standard_normal((4, dim)).astype(np.float32)
    queries = [(users[0], 10, dict(allowed=np.arange(0, 100_000, 3))), (users, 20, {}), (users[1], 5, {})]
    states = {live.version: model.copy()}
    done = threading.Event()
    answers, pinned, errors = [], [], []

    def reader(q):
        user, k, kwargs = queries[q]
        try:
            calls = 0
            while not done.is_set() or calls < 5:
                before = live.version
                got = live.topk(user, k, metric, **kwargs)
                after = live.version
                answers.append((q, before, after, got))
                snap = live.snapshot()
                pinned.append((q, snap.version, snap.topk(user, k, metric, **kwargs)))
                calls += 1
        except BaseException as error:  # reported below, with the thread's traceback
            errors.append(error)

    def writer():
        try:
            for b in range(45):
                version = live.version
                _writer_batch(live, model, rng, b, objectives=objectives)
                assert live.version == version + 1, "a batch that changed something: +1"
                states[live.version] = model.copy()
        except BaseException as error:
            errors.append(error)
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(q % len(queries),)) for q in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]
    cache = {}

    def expected(q, version):
        if (q, version) not in cache:
            user, k, kwargs = queries[q]
            cache[(q, version)] = states[version].oracle().topk(user, k, metric, **kwargs)
        return cache[(q, version)]

    assert len(states) == 46
    for q, before, after, got in answers:
        assert before <= after
        if not any(_answers_equal(got, expected(q, v)) for v in range(before, after + 1)):
            pytest.fail(f"query {q} between versions {before} and {after}: the answer is no version's")
    for q, version, got in pinned:
        _same_topk(got, expected(q, version), f"snapshot at version {version}")
    _same_topk(live.topk(users, 20, metric), states[max(states)].oracle().topk(users, 20, metric), "final")


def test_several_writers_lose_no_batch():
    """Four threads apply 30 batches each (own ids; upserts, removals, bids, compact) at once:
    every batch counts once in version, and the final set is every batch applied."""
    rng = np.random.default_rng(41)
    dim, writers, batches = 8, 4, 30
    live = sk.LiveCandidates(dim, "int8", exact=True, objectives=True)
    v0 = live.version
    models = [Model(dim, "int8", True, True) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    errors = []

    def write(t):
        local = np.random.default_rng(100 + t)
        try:
            barrier.wait()
            for b in range(batches):
                _writer_batch(live, models[t], local, b, id_base=t * 1_000_000)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    merged = Model(dim, "int8", True, True)
    for m in models:
        merged.rows.update(m.rows)
    assert live.version == v0 + writers * batches
    assert len(merged.rows) == sum(len(m.rows) for m in models)  # disjoint ids
    _bits_equal(live.ids(), merged.present(), "ids() after concurrent writers")
    om = _campaign_metrics(rng, dim, 2)
    users = rng.standard_normal((3, dim)).astype(np.float32)
    oracle = merged.oracle()
    for output in ("value", "logit"):
        _same_topk(live.topk(users, 40, om, output=output), oracle.topk(users, 40, om, output=output))
        _bits_equal(live.score(users, om, output=output), oracle.score(users, om, output=output), "score")
    live.compact()
    _same_topk(live.topk(users, 40, om), oracle.topk(users, 40, om), "after compact")


# ---- files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("objectives", (False, True), ids=("plain", "objectives"))
@pytest.mark.parametrize("dtype,exact", STORAGES, ids=STORAGE_IDS)
def test_save_and_load(tmp_path, dtype, exact, objectives):
    """A set with pending changes saves one version; loaded (mapped or read) it answers as the
    oracle, takes further batches and compact() (the file unchanged by them); saving over the
    path a mapped set was loaded from leaves that set answering its own version."""
    rng = np.random.default_rng(55)
    dim = 10
    model = Model(dim, dtype, exact, objectives)
    ads = rng.standard_normal((400, dim)).astype(np.float32)
    if exact:
        ads[3] = np.nan
    model.upsert(rng.choice(10**9, 400, replace=False), ads, rng.integers(0, 3, 400), rng.lognormal(0, 1, 400))
    live = model.live()
    _writer_batch(live, model, rng, 0, objectives=objectives)
    _writer_batch(live, model, rng, 1, objectives=objectives)
    _writer_batch(live, model, rng, 2, objectives=objectives)
    metric = _campaign_metrics(rng, dim, 3) if objectives else make_metric("low_rank", dim, rng, bias=0.5)
    users = rng.standard_normal((3, dim)).astype(np.float32)
    allowed = np.concatenate([model.present()[::4], [-1, 5]])

    def check(target, state, where):
        oracle = state.oracle()
        assert (len(target), target.dim, target.dtype, target.exact) == (len(state.rows), dim, dtype, exact)
        _bits_equal(target.ids(), state.present(), f"{where}: ids()")
        for u in (users[0], users):
            _same_topk(target.topk(u, 15, metric), oracle.topk(u, 15, metric), f"{where}: topk")
            _same_topk(target.topk(u, 15, metric, allowed=allowed), oracle.topk(u, 15, metric, allowed=allowed),
                       f"{where}: topk allowed")
        _bits_equal(target.score(users, metric), oracle.score(users, metric), f"{where}: score")

    path = tmp_path / "live.skl"
    saved = model.copy()
    live.save(path)
    check(live, saved, "after save")
    for mmap in (True, False):
        loaded = sk.LiveCandidates.load(path, mmap=mmap)
        check(loaded, saved, f"loaded (mmap={mmap})")
        more = saved.copy()
        for b in range(3, 7):
            _writer_batch(loaded, more, rng, b, objectives=objectives)
        check(loaded, more, f"loaded (mmap={mmap}) after batches")
        loaded.compact()
        check(loaded, more, f"loaded (mmap={mmap}) after compact")
        check(sk.LiveCandidates.load(path, mmap=mmap), saved, "the file after batches on a loaded set")
    mapped = sk.LiveCandidates.load(path, mmap=True)
    _writer_batch(live, model, rng, 7, objectives=objectives)
    live.save(path)  # over the file `mapped` maps
    check(mapped, saved, "a mapped set after its file was saved over")
    check(sk.LiveCandidates.load(path), model, "the new file")
    check(live, model, "the saved set itself")
    empty = sk.LiveCandidates(dim, dtype, exact=exact, objectives=objectives)
    empty.save(tmp_path / "empty.skl")
    again = sk.LiveCandidates.load(tmp_path / "empty.skl")
    assert len(again) == 0 and again.ids().shape == (0,)
    again.upsert([4], np.ones((1, dim), np.float32), **(dict(objectives=[0], bids=[1.0]) if objectives else {}))
    assert again.ids().tolist() == [4]


def _flip(raw: bytes, at: int) -> bytes:
    damaged = bytearray(raw)
    damaged[at] ^= 0x10
    return bytes(damaged)


@pytest.mark.parametrize("objectives", (False, True), ids=("plain", "objectives"))
def test_damaged_files_are_refused(tmp_path, objectives):
    """One flipped byte in a stored row, id or bid, or in the header; a truncated, empty or
    foreign file: ValueError, mapped or read. A flipped byte anywhere else, or a byte or eight
    cut from the end (maybe padding only), is refused or harmless (the loaded set answers
    exactly as the saved one)."""
    rng = np.random.default_rng(77)
    dim, n = 8, 300
    ads = rng.standard_normal((n, dim)).astype(np.float32)
    ads[:, 0] = np.float32(1234.5)  # a value to find in the file
    ids = 10**12 + 7919 * np.arange(n, dtype=np.int64)
    extra = {}
    if objectives:
        bids = rng.lognormal(0, 1, n)
        bids[n // 2] = 4242.5
        extra = dict(objectives=rng.integers(0, 2, n), bids=bids)
    live = sk.LiveCandidates.from_arrays(ids, ads, **extra)
    live.upsert([5], np.full((1, dim), 2.0, np.float32), **(dict(objectives=[1], bids=[3.0]) if objectives else {}))
    path = tmp_path / "good.skl"
    live.save(path)
    raw = path.read_bytes()
    metric = sk.ObjectiveMetrics([sk.Metric.dot(dim)] * 2) if objectives else sk.Metric.dot(dim)
    users = rng.standard_normal((2, dim)).astype(np.float32)
    want = live.topk(users, n + 1, metric), live.score(users, metric)

    def must_refuse(name, content):
        bad = tmp_path / f"{name.replace(' ', '_')}.skl"
        bad.write_bytes(content)
        for mmap in (True, False):
            with pytest.raises(ValueError):
                sk.LiveCandidates.load(bad, mmap=mmap)
                pytest.fail(f"{name}: loaded (mmap={mmap})")

    def find(value: bytes) -> int:
        at = raw.find(value)
        assert at >= 0, f"{value!r} is not in the file"
        return at

    def flip_if_stored(name: str, value: bytes, offset: int) -> None:
        at = raw.find(value)  # ids and bids may be stored in another form: then skipped
        if at >= 0:
            must_refuse(name, _flip(raw, at + offset))

    must_refuse("empty", b"")
    must_refuse("foreign", b"PK\x03\x04" + raw[4:])
    must_refuse("truncated header", raw[:30])
    must_refuse("truncated", raw[: len(raw) // 2])
    must_refuse("the last array cut short", raw[:-200])  # the file ends in ids or bids, a few KiB
    must_refuse("header", _flip(raw, 40))
    sentinel = np.float32(1234.5).tobytes()
    must_refuse("a stored row", _flip(raw, find(sentinel) + 2))
    middle = raw.find(sentinel, len(raw) // 3)
    if middle >= 0:
        must_refuse("a stored row further in", _flip(raw, middle + 3))
    flip_if_stored("an id", np.int64(ids[n // 2]).tobytes(), 1)
    if objectives:
        flip_if_stored("a bid", np.float32(4242.5).tobytes(), 2)
    damaged = [(f"a byte flipped at {at} of {len(raw)}", _flip(raw, at))
               for at in np.linspace(0, len(raw) - 1, 40).astype(int).tolist()]
    damaged += [(f"{cut} bytes cut of {len(raw)}", raw[:-cut]) for cut in (1, 8)]  # perhaps only padding
    for what, content in damaged:
        bad = tmp_path / "anywhere.skl"
        bad.write_bytes(content)
        try:
            loaded = sk.LiveCandidates.load(bad, mmap=False)
        except ValueError:
            continue
        _same_topk(loaded.topk(users, n + 1, metric), want[0], f"{what}, accepted")
        _bits_equal(loaded.score(users, metric), want[1], f"{what}, accepted")
        _bits_equal(loaded.ids(), live.ids(), f"{what}, accepted")


def test_save_while_a_writer_keeps_going(tmp_path):
    """save() writes one consistent version while another thread applies batches."""
    rng = np.random.default_rng(91)
    dim = 12
    model = Model(dim, "bfloat16", True, True)
    model.upsert(rng.choice(10**6, 20_000, replace=False), rng.standard_normal((20_000, dim)).astype(np.float32),
                 rng.integers(0, 2, 20_000), rng.lognormal(0, 1, 20_000))
    live = model.live()
    states = {live.version: model.copy()}
    done, errors = threading.Event(), []

    def writer():
        try:
            b = 0
            while not done.is_set():
                _writer_batch(live, model, rng, b)
                states[live.version] = model.copy()
                b += 1
                time.sleep(0.001)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    saved = []
    try:
        for i in range(6):
            path = tmp_path / f"s{i}.skl"
            before = live.version
            live.save(path)
            saved.append((path, before, live.version))
    finally:
        done.set()
        thread.join(60)
    if errors:
        raise errors[0]
    om = _campaign_metrics(rng, dim, 2)
    users = rng.standard_normal((2, dim)).astype(np.float32)
    for path, before, after in saved:
        loaded = sk.LiveCandidates.load(path)
        matches = [v for v in range(before, after + 1)
                   if np.array_equal(loaded.ids(), states[v].present())
                   and _answers_equal(loaded.topk(users, 30, om), states[v].oracle().topk(users, 30, om))]
        assert matches, f"{path.name}: saved between versions {before} and {after}, it holds none of them"


_SAVER = """
import sys
import numpy as np
import splitnet_kernels as sk
path, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ads = np.random.default_rng(5).standard_normal((n, dim)).astype(np.float32)
live = sk.LiveCandidates.from_arrays(np.arange(n, dtype=np.int64), ads)
i = 0
while True:
    live.upsert([n + i], np.full((1, dim), i + 1, np.float32))
    if i:
        live.remove([n + i - 1])
    live.save(path)
    print(i, flush=True)
    i += 1
"""


def test_a_process_killed_during_save_leaves_the_previous_file(tmp_path):
    """A child saves a changing set over one path again and again and is killed (SIGKILL) at
    some moment: the path then holds, intact and loadable, the last save that returned or the
    one after it (a save is atomic), never a mix or a broken file."""
    n, dim = 120_000, 32
    ads = np.random.default_rng(5).standard_normal((n, dim)).astype(np.float32)
    path = tmp_path / "served.skl"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(sk.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    user = np.random.default_rng(6).standard_normal(dim).astype(np.float32)
    delays = (0.0, 0.013, 0.037, 0.071, 0.12, 0.23)
    for trial, delay in enumerate(delays):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), str(n), str(dim)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = child.stdout.readline()
            assert first.strip() == "0", f"the saving child failed: {child.stderr.read()[-2000:]}"
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        printed = [int(first)] + [int(x) for x in child.stdout.read().split()]
        child.stdout.close()
        child.stderr.close()
        last = printed[-1]
        for mmap in (True, False):
            loaded = sk.LiveCandidates.load(path, mmap=mmap)
            ids = loaded.ids()
            assert len(ids) == n + 1 and np.array_equal(ids[:n], np.arange(n)), f"trial {trial}: ids"
            i = int(ids[-1]) - n
            assert i in (last, last + 1), f"trial {trial}: the file holds save {i}; the last returned was {last}"
            rows = np.concatenate([ads, np.full((1, dim), i + 1, np.float32)])
            scores, positions = sk.Candidates(rows).topk(user, 20)
            _same_topk(loaded.topk(user, 20), (scores, np.append(np.arange(n), n + i)[positions]), f"trial {trial}")
            scores = loaded.score(user)
            _bits_equal(scores, sk.Candidates(rows).score(user), f"trial {trial}: every row")
            del loaded
