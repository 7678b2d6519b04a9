"""Hostile input on the public calls (issue 9): aliasing, shard merges, casts, fold overflow,
copied metrics and arguments that must be refused by name."""

import copy
import pickle

import numpy as np
import pytest

import splitnet_kernels as sk
from conftest import make_metric, to_numpy

torch = pytest.importorskip("torch")

BACKENDS = ("simd", "numba", "torch", "numpy")


# ---- out= sharing memory with an input, whatever the array types --------------------------
def _aliased_cases():
    """(users, ads, out, expected) where out overlaps users at an offset, from numpy arrays,
    torch.from_numpy views (each a storage of its own) and tensor views of one buffer."""
    rng = np.random.default_rng(5)
    cases = []
    for make in ("numpy_users_torch_out", "two_from_numpy_views", "tensor_views"):
        buffer = rng.standard_normal(96).astype(np.float32)
        ads = rng.standard_normal((64, 64)).astype(np.float32)
        expected = ads @ buffer[8:72]  # users = buffer[8:72], out = buffer[:64]
        if make == "numpy_users_torch_out":
            users, out = buffer[8:72], torch.from_numpy(buffer[:64])
        elif make == "two_from_numpy_views":
            users, out = torch.from_numpy(buffer[8:72]), torch.from_numpy(buffer[:64])
        else:
            tensor = torch.from_numpy(buffer)
            users, out = tensor[8:72], tensor[:64]
        cases.append(pytest.param(users, torch.from_numpy(ads), out, expected, id=make))
    return cases


@pytest.mark.parametrize("users, ads, out, expected", _aliased_cases())
def test_out_overlapping_an_input_is_computed_apart(users, ads, out, expected):
    result = sk.score(users, ads, out=out)
    assert result is out
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-4)


def test_out_overlapping_ads_through_candidates_with_tensors():
    rng = np.random.default_rng(6)
    ads = rng.standard_normal((32, 32)).astype(np.float32)
    users = rng.standard_normal((32, 32)).astype(np.float32)
    expected = users @ ads.T
    memory = np.concatenate([users.reshape(-1), np.zeros(64, np.float32)])
    users_view = torch.from_numpy(memory[32:32 + 32 * 32]).view(32, 32)  # users one row in
    users_view.copy_(torch.from_numpy(users))
    out = torch.from_numpy(memory[:32 * 32]).view(32, 32)  # out starts one row before them
    for dtype in ("float32", "float16"):
        users_view.copy_(torch.from_numpy(users))
        result = sk.Candidates(ads, dtype=dtype).score(users_view, out=out)
        np.testing.assert_allclose(to_numpy(result), expected, rtol=2e-3, atol=2e-2)


def test_disjoint_halves_of_one_buffer_are_not_an_overlap():
    from splitnet_kernels._conversions import may_share_memory as _may_share_memory

    buffer = torch.zeros(128)
    assert not _may_share_memory(buffer[:64], buffer[64:])
    assert _may_share_memory(buffer[::2], buffer[1::2])  # interleaved: ranges overlap, conservative
    assert _may_share_memory(buffer.numpy()[10:20], buffer[15:16])
    assert not _may_share_memory(np.zeros(4), torch.zeros(4))


# ---- sharding with sigmoid=True gives one call's answer ------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ("float32", "int8"))
def test_shard_merge_with_sigmoid_equals_one_call(backend, dtype):
    # Scores 17..40 all round to probability 1.0: distinct scores, one probability.
    rng = np.random.default_rng(7)
    ads = np.concatenate([rng.uniform(17, 40, (200, 1)), rng.uniform(-3, 3, (200, 1))]).astype(np.float32)
    rng.shuffle(ads)
    user = np.ones(1, np.float32)
    whole = sk.Candidates(ads, dtype=dtype).topk(user, 50, sigmoid=True, backend=backend)
    parts = []
    for begin in range(0, 400, 130):
        s, ids = sk.Candidates(ads[begin:begin + 130], dtype=dtype).topk(user, 50, sigmoid=True, backend=backend)
        parts.append((s, ids + begin))
    merged = sk.merge_topk(parts, 50)
    np.testing.assert_array_equal(to_numpy(merged[1]), to_numpy(whole[1]))
    np.testing.assert_array_equal(to_numpy(merged[0]), to_numpy(whole[0]))
    assert to_numpy(whole[1]).tolist() == sorted(to_numpy(whole[1]).tolist())  # all 1.0: by index


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_topk_many_users_and_allowed(backend, rng):
    ads = (rng.standard_normal((300, 8)) * 4).astype(np.float32)
    users = (rng.standard_normal((5, 8)) * 4).astype(np.float32)
    allowed = np.arange(0, 300, 3)
    probs, ids = sk.Candidates(ads).topk(users, 20, allowed=allowed, sigmoid=True, backend=backend)
    every = to_numpy(sk.score(users, ads[allowed], sigmoid=True, backend=backend))
    order = np.lexsort((np.broadcast_to(allowed, every.shape), -every))[:, :20]
    np.testing.assert_array_equal(to_numpy(ids), allowed[order])


# ---- merge_topk keeps ids and scores exact ------------------------------------------------
def test_merge_topk_keeps_uint64_ids_beyond_int64():
    big = np.uint64(2**63)
    scores, ids = sk.merge_topk([(np.array([1.0, 0.5], np.float32), np.array([big, big + np.uint64(5)])),
                                 (np.array([0.7], np.float32), np.array([3], np.uint64))], 3)
    assert ids.dtype == np.uint64 and ids.tolist() == [2**63, 3, 2**63 + 5]
    with pytest.raises(ValueError, match="negative"):
        sk.merge_topk([(np.ones(1, np.float32), np.array([big])), (np.ones(1, np.float32), np.array([-1]))], 2)


def test_merge_topk_compares_float64_scores_in_float64():
    a, b = 1.0, 1.0 + 2**-40  # one float32 value, two float64 values
    scores, ids = sk.merge_topk([(np.array([a]), np.array([0])), (np.array([b]), np.array([1]))], 2)
    assert ids.tolist() == [1, 0] and scores.dtype == np.float64 and scores[0] == b


# ---- fold overflow: one policy on every backend -------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", ("score", "topk", "pairs", "cross", "candidates"))
def test_diagonal_fold_overflow_is_ieee_on_every_backend(backend, call):
    # a diagonal fold is one product per entry: beyond float32 it is +-inf on every backend (the
    # float64 reference rounds its fold's overflow as float32 does), so u = [1e20, 1e20, 0, 0]
    # against diag(1e20, -1e20, 1, 1) scores inf - inf = NaN everywhere
    metric = sk.Metric.diagonal([1e20, -1e20, 1, 1])
    user = np.array([1e20, 1e20, 0, 0], np.float32)
    ads = np.ones((3, 4), np.float32)
    if call == "score":
        got = sk.score(user, ads, metric, backend=backend)
    elif call == "topk":
        got = sk.topk(user, ads, 2, metric, backend=backend)[0]
    elif call == "pairs":
        got = sk.score(np.stack([user] * 3), ads, metric, pairwise=True, backend=backend)
    elif call == "cross":
        got = sk.score(np.stack([np.ones(4, np.float32), user]), ads, metric, backend=backend)[1]
    else:
        got = sk.Candidates(ads, dtype="bfloat16").topk(user, 2, metric, backend=backend)[0]
    assert np.all(np.isnan(to_numpy(got)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ("full", "low_rank"))
@pytest.mark.parametrize("call", ("score", "topk", "pairs", "cross", "candidates"))
def test_factor_fold_beyond_float32_is_refused_on_every_backend(backend, kind, call, rng):
    # float32 partial sums of a factor form can overflow where the exact fold does not: refused
    metric = make_metric(kind, 6, rng)
    user = np.full(6, 3e38, np.float32)
    ads = np.ones((3, 6), np.float32)
    with pytest.raises(ValueError, match="users: folding .* float32 range"):
        if call == "score":
            sk.score(user, ads, metric, backend=backend)
        elif call == "topk":
            sk.topk(user, ads, 2, metric, backend=backend)
        elif call == "pairs":
            sk.score(np.stack([user] * 3), ads, metric, pairwise=True, backend=backend)
        elif call == "cross":
            sk.score(np.stack([np.ones(6, np.float32), user]), ads, metric, backend=backend)
        else:
            sk.Candidates(ads, dtype="bfloat16").topk(user, 2, metric, backend=backend)
    sk.score(rng.standard_normal(6).astype(np.float32), ads, metric, backend=backend)  # ordinary users pass


# ---- copies of a Metric stay immutable ----------------------------------------------------
@pytest.mark.parametrize("kind", ("diagonal", "full", "low_rank"))
@pytest.mark.parametrize("how", ("deepcopy", "copy", "pickle"))
def test_copied_metric_is_immutable_and_agrees(kind, how, rng):
    metric = make_metric(kind, 8, rng, bias=0.5)
    clone = {"deepcopy": copy.deepcopy, "copy": copy.copy,
             "pickle": lambda m: pickle.loads(pickle.dumps(m))}[how](metric)
    for value in clone.params.values():
        if isinstance(value, np.ndarray):
            with pytest.raises(ValueError):
                value.flags.writeable = True
            with pytest.raises(ValueError):
                value[...] = 0
    users, ads = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    for backend in BACKENDS:
        np.testing.assert_allclose(sk.score(users, ads, clone, backend=backend),
                                   sk.score(users, ads, metric, backend="numpy"), rtol=1e-4, atol=1e-4)
    assert clone.kind == metric.kind and clone.bias == metric.bias


def test_original_metric_parameters_cannot_be_made_writeable(rng):
    metric = make_metric("low_rank", 8, rng)
    with pytest.raises(ValueError):
        metric.params["Q"].flags.writeable = True


# ---- arguments refused (or accepted) by name ----------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_threads_means_all_cores(backend):
    users, ads = np.ones(4, np.float32), np.ones((5, 4), np.float32)
    np.testing.assert_array_equal(to_numpy(sk.score(users, ads, backend=backend, threads=2**31)), np.full(5, 4.0))
    sk.topk(users, ads, 2, backend=backend, threads=2**63)
    sk.Candidates(ads, dtype="float16").topk(users, 2, backend=backend, threads=2**40)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_and_sparse_tensors_are_refused_by_name(backend):
    ads = torch.ones(5, 4)
    with pytest.raises(ValueError, match="users: a meta tensor"):
        sk.score(torch.ones(4, device="meta"), ads, backend=backend)
    with pytest.raises(ValueError, match="ads: a meta tensor"):
        sk.topk(torch.ones(4), torch.ones(5, 4, device="meta"), 2, backend=backend)
    with pytest.raises(TypeError, match="ads: expected a dense tensor"):
        sk.score(torch.ones(4), ads.to_sparse(), backend=backend)
    with pytest.raises(TypeError, match="users: expected a dense tensor"):
        sk.Candidates(np.ones((5, 4), np.float32)).topk(torch.ones(1, 4).to_sparse(), 2, backend=backend)


# ---- fork: the simd backend works in a child (the README's serving note) --------------------
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_simd_scores_in_a_forked_child():
    import os

    rng = np.random.default_rng(9)
    ads, user = rng.standard_normal((50_000, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    expected = sk.topk(user, ads, 10, backend="simd")  # the worker pool exists before the fork
    pid = os.fork()
    if pid == 0:  # the child: the same answer from a pool made afresh
        got = sk.topk(user, ads, 10, backend="simd")
        os._exit(0 if np.array_equal(got[1], expected[1]) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
