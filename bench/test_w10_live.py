"""W10: a live set (sk.LiveCandidates, n = 64, a million rows) under a stream of changes, beside
the frozen Candidates of the same rows and FAISS IndexIDMap2(IndexFlatIP): queries right after
compact() and with 1 % of rows upserted and 1 % removed since, by value after 10 % of bids
changed (beside a frozen set built with the new bids and the NumPy expression), the batches
(set_bids, remove, upsert), removing 1,000 ids against FAISS remove_ids, and one user's query while
a writer thread upserts 10,000 rows every 20 ms; and filters per request (allowed=, issue 25) on
the frozen sets: one user with a random 50 % filter as a mask and as ids and with a 5 % mask, 32
users sharing the 50 % mask, each with its own in one call, and as 32 one-user calls.
`splitnet-kernels bench --workload W10` times the same with ratios taken in turns and the targets."""

import itertools
import threading
import time

import numpy as np
import pytest
from conftest import optional, scaled

import splitnet_kernels as sk
from splitnet_kernels.benchmark import driver, timing
from splitnet_kernels.benchmark import workloads as wl

N, DIM, K = scaled(wl.CANDIDATES), wl.DIM, wl.TOP_K
SETS = {f"{dtype}{'-exact' if exact else ''}": (dtype, exact) for dtype, exact in wl.LIVE_SETS}
WHO = ("one user", "many users")
ROUNDS = 9  # batches timed per rate (pedantic: each round applies a new batch)
B = min(wl.LIVE_BATCH, N // (2 * ROUNDS))  # ids per batch: LIVE_BATCH, less on a small scale


@pytest.fixture(scope="module")
def data():
    ads, user = wl.one_user(N)
    ids = wl.live_ids(N)
    changed = max(2, int(wl.LIVE_CHANGED * N))
    changes = wl.live_changes(ids, changed, changed, seed=22)
    now_ids, now_ads = wl.live_present(ids, ads, changes)
    objectives, bids, _ = wl.objectives_and_bids(N)
    moved, values, new_bids = wl.live_new_bids(ids, bids, wl.LIVE_BIDS_CHANGED)
    return {"ads": ads, "ids": ids, "who": {"one user": user, "many users": wl.many_users(N)[1]},
            "changes": changes, "now_ids": now_ids, "now_ads": now_ads, "objectives": objectives, "bids": bids,
            "moved": moved, "values": values, "new_bids": new_bids, "om": wl.objective_metrics(DIM)}


class Sets(dict):
    """Built on first use, once per module: key -> a set."""

    def get(self, key, build):
        if key not in self:
            self[key] = build()
        return self[key]


@pytest.fixture(scope="module")
def sets():
    return Sets()


def live(data, dtype, exact, changed=False):
    made = sk.LiveCandidates.from_arrays(data["ids"], data["ads"], dtype=dtype, exact=exact)
    made.compact()
    if changed:
        made.upsert(data["changes"].upsert_ids, data["changes"].upsert_rows)
        made.remove(data["changes"].remove_ids)
    return made


def by_value(data):
    made = sk.LiveCandidates.from_arrays(data["ids"], data["ads"], dtype="float32", objectives=data["objectives"],
                                         bids=data["bids"])
    made.compact()
    for i in range(0, len(data["moved"]), B):
        made.set_bids(data["moved"][i:i + B], data["values"][i:i + B])
    return made


def faiss_index(data):
    faiss = optional("faiss")
    faiss.omp_set_num_threads(sk.info()["default_threads"])  # as many threads as ours
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(data["ads"], data["ids"])
    return index


def upsert_batches(ids, count, seed):
    """count batches of B rows: half replace present ids, half add new ones."""
    stream = wl.live_changes(ids, B * count, 0, seed)
    half = B * count // 2  # the replaced ids come first (ascending), then the new ones
    for replaced, new in zip(np.array_split(np.arange(half), count),
                             np.array_split(np.arange(half, len(stream.upsert_ids)), count)):
        picked = np.concatenate([replaced, new])
        yield stream.upsert_ids[picked], stream.upsert_rows[picked]


@pytest.mark.benchmark(group="W10 after compact()")
@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("kind", ["live", "frozen"])
@pytest.mark.parametrize("name", SETS)
def test_w10_after_compact(benchmark, data, sets, name, kind, who):
    dtype, exact = SETS[name]
    if kind == "live":
        cands = sets.get((name, "compacted"), lambda: live(data, dtype, exact))
    else:
        cands = sets.get((name, "frozen"), lambda: sk.Candidates(data["ads"], dtype, exact=exact))
    benchmark(cands.topk, data["who"][who], K)


@pytest.mark.benchmark(group="W10 after compact()")
@pytest.mark.parametrize("who", WHO)
def test_w10_faiss_search(benchmark, data, sets, who):
    index = sets.get("faiss", lambda: faiss_index(data))
    benchmark(index.search, np.atleast_2d(data["who"][who]), K)


@pytest.mark.benchmark(group="W10 1% upserted, 1% removed")
@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("kind", ["live", "frozen"])
@pytest.mark.parametrize("name", SETS)
def test_w10_after_changes(benchmark, data, sets, name, kind, who):
    dtype, exact = SETS[name]
    if kind == "live":
        cands = sets.get((name, "changed"), lambda: live(data, dtype, exact, changed=True))
    else:
        cands = sets.get((name, "frozen now"), lambda: sk.Candidates(data["now_ads"], dtype, exact=exact))
    benchmark(cands.topk, data["who"][who], K)


@pytest.mark.benchmark(group="W10 by value, 10% of bids changed")
@pytest.mark.parametrize("kind", ["live", "frozen", "numpy", "numpy in place"])
def test_w10_by_value(benchmark, data, sets, kind):
    user, om = data["who"]["one user"], data["om"]
    if kind == "live":
        benchmark(sets.get("by value", lambda: by_value(data)).topk, user, K, om)
    elif kind == "frozen":
        frozen = sets.get("by value frozen", lambda: sk.Candidates(data["ads"], "float32", objectives=data["objectives"],
                                                                   bids=data["new_bids"]))
        benchmark(frozen.topk, user, K, om)
    else:
        peer = wl.NumpyObjectives(data["ads"], data["objectives"], data["new_bids"], om)
        benchmark(peer.topk if kind == "numpy" else peer.topk_in_place, user, K)


def _pedantic(benchmark, fn, batches, size):
    """Each round applies the next batch (a batch cannot be applied twice); ids or rows per second
    in extra_info."""
    batches = iter(batches)
    benchmark.pedantic(fn, setup=lambda: (next(batches), {}), rounds=ROUNDS, iterations=1)
    if benchmark.stats:  # None with --benchmark-disable
        benchmark.extra_info["per_second_median"] = size / benchmark.stats.stats.median


@pytest.mark.benchmark(group="W10 batches")
def test_w10_set_bids(benchmark, data):
    made = by_value(data)
    rng = np.random.default_rng(25)
    batches = ((np.sort(rng.choice(data["ids"], B, replace=False)), rng.lognormal(0.0, wl.BID_SIGMA, B).astype(np.float32))
               for _ in itertools.count())
    _pedantic(benchmark, made.set_bids, batches, B)


@pytest.mark.benchmark(group="W10 batches")
def test_w10_remove(benchmark, data):
    made = live(data, "float32", False)
    picked = np.random.default_rng(26).permutation(data["ids"])
    _pedantic(benchmark, made.remove, ((np.sort(picked[i * B:(i + 1) * B]),) for i in itertools.count()), B)


@pytest.mark.benchmark(group="W10 batches")
@pytest.mark.parametrize("name", SETS)
def test_w10_upsert(benchmark, data, name):
    dtype, exact = SETS[name]
    made = live(data, dtype, exact)
    _pedantic(benchmark, made.upsert, upsert_batches(data["ids"], ROUNDS, seed=27), B)


@pytest.mark.benchmark(group="W10 remove 1,000 ids")
@pytest.mark.parametrize("kind", ["live", "faiss"])
def test_w10_remove_small(benchmark, data, sets, kind):
    if kind == "live":
        target = live(data, "float32", False).remove
    else:
        target = faiss_index(data).remove_ids
    picked = np.random.default_rng(28).permutation(data["ids"])
    size = min(wl.LIVE_FAISS_REMOVE, B)
    _pedantic(benchmark, target, ((np.sort(picked[i * size:(i + 1) * size]),) for i in itertools.count()), size)


@pytest.mark.benchmark(group="W10 one user beside a writer")
@pytest.mark.parametrize("writer", ["idle", "writing"])
def test_w10_reader_beside_writer(benchmark, data, writer):
    made = live(data, "float32", False)
    user = data["who"]["one user"]
    rng = np.random.default_rng(23)
    batches = [(np.sort(rng.choice(data["ids"], B, replace=False)), rng.standard_normal((B, DIM), dtype=np.float32))
               for _ in range(4)]
    stop, applied = threading.Event(), []

    def write():
        began = time.perf_counter()
        for i in itertools.count():
            made.upsert(*batches[i % len(batches)])
            applied.append(i)
            if stop.wait(max(0.0, began + (i + 1) * wl.LIVE_WRITER_PERIOD_S - time.perf_counter())):
                return

    thread = threading.Thread(target=write, name="W10 writer")
    if writer == "writing":
        thread.start()
    try:
        benchmark(made.topk, user, K)
    finally:
        stop.set()
        if writer == "writing":
            thread.join()
    benchmark.extra_info["batches_applied"] = len(applied)


def _same(got, want, ids):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], ids[want[1]])


@pytest.mark.parametrize("name", SETS)
def test_w10_answers_and_memory(data, sets, name):
    """The live sets answer what the frozen set of their present rows answers, ids mapped, bit for
    bit; after compact() a live set holds at most the frozen set's bytes + 24 per row."""
    dtype, exact = SETS[name]
    compacted = sets.get((name, "compacted"), lambda: live(data, dtype, exact))
    frozen = sets.get((name, "frozen"), lambda: sk.Candidates(data["ads"], dtype, exact=exact))
    changed = sets.get((name, "changed"), lambda: live(data, dtype, exact, changed=True))
    frozen_now = sets.get((name, "frozen now"), lambda: sk.Candidates(data["now_ads"], dtype, exact=exact))
    for users in data["who"].values():
        _same(compacted.topk(users, K), frozen.topk(users, K), data["ids"])
        _same(changed.topk(users, K), frozen_now.topk(users, K), data["now_ids"])
    assert compacted.nbytes <= frozen.nbytes + 24 * N, (compacted.nbytes, frozen.nbytes)


def test_w10_by_value_answers(data, sets):
    made = sets.get("by value", lambda: by_value(data))
    frozen = sets.get("by value frozen", lambda: sk.Candidates(data["ads"], "float32", objectives=data["objectives"],
                                                               bids=data["new_bids"]))
    user, om = data["who"]["one user"], data["om"]
    _same(made.topk(user, K, om), frozen.topk(user, K, om), data["ids"])


ONE_USER_FILTERS = ("unfiltered", "50% mask", "50% ids", "5% mask")
MANY_USER_FILTERS = ("unfiltered", "shared 50% mask", "own 50% masks", "own 50% masks, a loop")


@pytest.fixture(scope="module")
def filters():
    return wl.filters(N)


def frozen(data, sets, name):
    dtype, exact = SETS[name]
    return sets.get((name, "frozen"), lambda: sk.Candidates(data["ads"], dtype, exact=exact))


@pytest.mark.benchmark(group="W10 filters, one user")
@pytest.mark.parametrize("allowed", ONE_USER_FILTERS)
@pytest.mark.parametrize("name", SETS)
def test_w10_filters_one_user(benchmark, data, sets, filters, name, allowed):
    form = {"unfiltered": None, "50% mask": filters.dense, "50% ids": filters.dense_ids, "5% mask": filters.sparse}
    benchmark(frozen(data, sets, name).topk, data["who"]["one user"], K, allowed=form[allowed])


@pytest.mark.benchmark(group=f"W10 filters, {wl.FILTER_USERS} users")
@pytest.mark.parametrize("allowed", MANY_USER_FILTERS)
@pytest.mark.parametrize("name", SETS)
def test_w10_filters_many_users(benchmark, data, sets, filters, name, allowed):
    cands, users = frozen(data, sets, name), data["who"]["many users"][:wl.FILTER_USERS]
    if allowed == "own 50% masks, a loop":
        benchmark(lambda: [cands.topk(user, K, allowed=mask) for user, mask in zip(users, filters.per_user)])
    else:
        form = {"unfiltered": None, "shared 50% mask": filters.dense, "own 50% masks": filters.per_user}
        benchmark(cands.topk, users, K, allowed=form[allowed])


def test_w10_filter_table_through_the_driver(monkeypatch):
    """The driver's filter table on a small set (no pauses between calls): its answers checked (the
    driver asserts them), every row of both sets, the issue's six targets on float32 only."""
    monkeypatch.setattr(timing, "PAUSE_S", 0.0)
    ads, user = wl.one_user(2000)
    users = wl.many_users(2000)[1]
    names = {key: f"{key[0]}{', exact' if key[1] else ''}" for key in wl.LIVE_SETS}
    sets = {key: sk.Candidates(ads, key[0], exact=key[1]) for key in wl.LIVE_SETS}
    table = driver._filter_table(sets, names, ads, user, users, K, 2)
    assert len(table.rows) == 8 * len(wl.LIVE_SETS)
    assert all(len(table.extras[name]) == 3 for name, _ in table.rows)
    assert len(table.targets) == 6 and all(text.startswith("float32, ") for text, _ in table.targets)
    assert "int8, exact: no target: the issue's targets are on float32" in table.notes
    assert "filters per request" in table.render()
