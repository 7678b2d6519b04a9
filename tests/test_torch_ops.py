"""The custom ops (torch.ops.splitnet_kernels.*): opcheck on every op, gradients checked in float64
on the torch path and the simd path against them, the route sk.score / sk.topk / Candidates take
for tensors (meta included), a serving function under torch.compile and torch.export, grad modes,
layouts, and a head trained through the ops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import splitnet_kernels as sk
from conftest import make_metric

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from splitnet_kernels import _torch_ops  # noqa: E402
from splitnet_kernels.nn import MetricHead  # noqa: E402

ops = torch.ops.splitnet_kernels
FORM_KINDS = ("identity", "dot", "scaled", "diagonal", "low_rank", "low_rank_no_d", "full")
DTYPES = ("float32", "float16", "bfloat16", "int8")


def form(kind: str, n: int, rng, dtype=torch.float32) -> tuple:
    """(diag, left, right) tensors of a metric kind; identity is (None, None, None)."""
    if kind == "identity":
        return None, None, None
    return tuple(None if x is None else torch.tensor(np.asarray(x), dtype=dtype)
                 for x in make_metric(kind, n, rng).form)


def tensor(rng, *shape, dtype=torch.float32):
    return torch.from_numpy(rng.standard_normal(shape)).to(dtype)


def packed(ads: np.ndarray, dtype: str, **kwargs):
    """A Candidates set of ads and its packed (data, scales) tensors."""
    cands = sk.Candidates(ads, dtype, **kwargs)
    return cands, _torch_ops._packed_tensors(cands._store, torch.device("cpu"))


class Recorder(TorchDispatchMode):
    """Names the ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


# ---- opcheck ------------------------------------------------------------------------------------
def _samples(rng):
    n, M, N = 7, 3, 9
    users, ads = tensor(rng, M, n), tensor(rng, N, n)
    diag, left, right = form("low_rank", n, rng)
    S = form("full", n, rng)[1]

    def leaf(x, dtype=torch.float32):  # a copy that asks for gradients
        return x.detach().to(dtype).requires_grad_()

    yield "score", (users[0], ads, diag, left, right, 0.5)
    yield "score", tuple(leaf(x, torch.float64) for x in (users, ads, diag, left, right)) + (0.0, 1)  # torch path
    yield "score", (leaf(users), ads, None, leaf(S), None, 0.0)  # simd, with gradients
    yield "score_pairs", (leaf(users), leaf(ads[:M]), leaf(diag), left, right, 0.25)
    yield "topk", (users, ads, None, S, None, 1.0, 20)  # k > N: N results
    yield "topk", (users[1], ads, diag, left, right, -0.5, 4, None, True)  # ranked by the probability
    _, (data, scales) = packed(ads.numpy(), "int8")
    yield "candidates_score", (users, data, scales, None, diag, left, right, 0.5)
    _, (data, scales) = packed(ads.numpy(), "bfloat16")
    yield "candidates_topk", (users[2], data, scales, torch.tensor([0, 2, 3, 8]), None, S, None, -0.5, 3)
    yield "candidates_topk", (users, data, scales, None, diag, None, None, 0.0, 5, 1, True)


def test_opcheck_every_op(rng):
    seen = set()
    for name, args in _samples(rng):
        torch.library.opcheck(getattr(ops, name).default, args)
        seen.add(name)
    assert seen == set(_torch_ops.SCHEMAS)


# ---- gradients ----------------------------------------------------------------------------------
def _operands(kind, shape, rng, dtype):
    """users, ads and the form for one user ("one"), cross or pairs, leaves requiring grad."""
    n, M, N = 5, 3, 4
    users = tensor(rng, n, dtype=dtype) if shape == "one" else tensor(rng, M, n, dtype=dtype)
    ads = tensor(rng, M if shape == "pairs" else N, n, dtype=dtype)
    return [None if x is None else x.requires_grad_() for x in (users, ads, *form(kind, n, rng, dtype))]


def _scored(shape):
    op = ops.score_pairs if shape == "pairs" else ops.score
    return lambda *operands: op(*operands, 0.25)


@pytest.mark.parametrize("shape", ("one", "cross", "pairs"))
@pytest.mark.parametrize("kind", FORM_KINDS)
def test_score_gradients_in_float64_on_the_torch_path(kind, shape, rng):
    operands = _operands(kind, shape, rng, torch.float64)
    assert torch.autograd.gradcheck(_scored(shape), tuple(operands))


def test_score_gradients_differentiate_again(rng):
    for kind, shape in (("full", "cross"), ("low_rank", "pairs")):
        assert torch.autograd.gradgradcheck(_scored(shape), tuple(_operands(kind, shape, rng, torch.float64)))


@pytest.mark.parametrize("shape", ("one", "cross", "pairs"))
@pytest.mark.parametrize("kind", FORM_KINDS)
def test_simd_gradients_match_the_float64_torch_path(kind, shape, rng):
    operands = _operands(kind, shape, rng, torch.float64)
    singles = [None if x is None else x.detach().float().requires_grad_() for x in operands]
    leaves = [x for x in operands if x is not None]
    single_leaves = [x for x in singles if x is not None]
    weights = torch.from_numpy(rng.standard_normal(_scored(shape)(*operands).shape))
    expected = torch.autograd.grad((_scored(shape)(*operands) * weights).sum(), leaves)
    got = torch.autograd.grad((_scored(shape)(*singles) * weights.float()).sum(), single_leaves)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)


def test_topk_asks_no_gradient_and_says_so(rng):
    users, ads = tensor(rng, 2, 6).requires_grad_(), tensor(rng, 10, 6)
    scores, ids = sk.topk(users, ads, 3)  # a forward with grad-requiring users is fine
    assert ids.dtype == torch.int64 and not ids.requires_grad
    torch.testing.assert_close(scores, sk.topk(users.detach(), ads, 3)[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="splitnet_kernels::topk is not differentiable"):
        scores.sum().backward()
    cands = sk.Candidates(ads.numpy(), "float16")
    scores, _ = cands.topk(users, 3)
    with pytest.raises(RuntimeError, match="splitnet_kernels::candidates_topk is not differentiable"):
        scores.sum().backward()


def test_selection_ops_called_directly_in_every_grad_mode(rng):
    """The selection ops have no autograd kernel (autograd falls through them: no Python per
    call): every grad mode gives the same results, which ask for no gradient, and a dispatch mode
    still sees the op."""
    users, ads = tensor(rng, 8), tensor(rng, 30, 8)
    diag = torch.from_numpy(rng.random(8).astype(np.float32))
    expected = sk.topk(users.numpy(), ads.numpy(), 5, sk.Metric.diagonal(diag.numpy(), bias=0.5))
    leaf = users.clone().requires_grad_()
    with Recorder() as recorder:
        traced = ops.topk.default(users, ads, diag, None, None, 0.5, 5)
    assert "splitnet_kernels.topk.default" in recorder.names
    with torch.no_grad():
        quiet = ops.topk.default(leaf, ads, diag, None, None, 0.5, 5)
    asked = ops.topk.default(leaf, ads, diag, None, None, 0.5, 5)
    for scores, ids in (ops.topk.default(users, ads, diag, None, None, 0.5, 5), traced, quiet, asked):
        np.testing.assert_array_equal(scores.numpy(), expected[0])
        np.testing.assert_array_equal(ids.numpy(), expected[1])
        assert scores.grad_fn is None and not scores.requires_grad and not ids.requires_grad


# ---- the route for tensors -----------------------------------------------------------------------
def test_sk_calls_on_tensors_are_op_calls(rng):
    users, ads, metric = tensor(rng, 3, 8), tensor(rng, 20, 8), make_metric("full", 8, rng)
    cands = sk.Candidates(ads.numpy(), "bfloat16")
    with Recorder() as recorder:
        sk.score(users[0], ads, metric)
        sk.score(users, ads[:3], metric, pairwise=True)
        sk.topk(users, ads, 4, metric)
        cands.score(users, metric)
        cands.topk(users[0], 4, metric, allowed=np.arange(0, 20, 3))
    called = [name.split(".")[1] for name in recorder.names if name.startswith("splitnet_kernels.")]
    assert called == ["score", "score_pairs", "topk", "candidates_score", "candidates_topk"]
    with Recorder() as recorder:  # an explicit backend keeps its own route
        sk.topk(users, ads, 4, metric, backend="numpy")
    assert not any(name.startswith("splitnet_kernels.") for name in recorder.names)


def test_meta_tensors_give_meta_results_under_auto(rng):
    users, ads = torch.empty(3, 8, device="meta"), torch.empty(20, 8, device="meta")
    metric = make_metric("low_rank", 8, rng)
    scores = sk.score(users, ads, metric, sigmoid=True)
    assert scores.device.type == "meta" and scores.shape == (3, 20) and scores.dtype == torch.float32
    assert sk.score(users, ads[:3], metric, pairwise=True).shape == (3,)
    top, ids = sk.topk(users[0], ads, 30, metric)
    assert top.device.type == "meta" and top.shape == ids.shape == (20,) and ids.dtype == torch.int64
    _, (data, scales) = packed(np.ones((20, 8), np.float32), "int8")
    top, ids = ops.candidates_topk(users, data.to("meta"), scales.to("meta"), None, None, None, None, 0.0, 5)
    assert top.shape == ids.shape == (3, 5) and top.device.type == "meta"
    with pytest.raises(ValueError, match="users: a meta tensor"):  # explicit backends still need values
        sk.score(users, ads, backend="torch")


@pytest.mark.parametrize("kind", ("dot", "diagonal", "full", "low_rank"))
def test_each_path_gives_its_backends_answer(kind, rng):
    """An op's simd path gives the simd backend's bits; its torch path (every other device) the
    torch backend's numbers, on the CPU here, for every op and storage type."""
    n = 9
    metric = make_metric(kind, n, rng, bias=0.5)
    users, ads = tensor(rng, 4, n), tensor(rng, 300, n)
    formed, bias = metric._tensor_params(users), metric.bias
    allowed = np.sort(rng.choice(300, 40, replace=False))
    for path, backend in ((_torch_ops.SIMD, "simd"), (_torch_ops.TORCH, "torch")):
        exact = backend == "simd"
        pairs = [(path["score"](users, ads, *formed, bias), sk.score(users, ads, metric, backend=backend)),
                 (path["score"](users[0], ads, *formed, bias), sk.score(users[0], ads, metric, backend=backend)),
                 (path["score_pairs"](users, ads[:4], *formed, bias),
                  sk.score(users, ads[:4], metric, pairwise=True, backend=backend)),
                 (path["topk"](users, ads, *formed, bias, 7), sk.topk(users, ads, 7, metric, backend=backend)),
                 (path["topk"](users[1], ads, *formed, bias, 300), sk.topk(users[1], ads, 300, metric, backend=backend))]
        for dtype in DTYPES:
            cands, (data, scales) = packed(ads.numpy(), dtype)
            ids = torch.from_numpy(allowed)
            pairs += [(path["candidates_score"](users, data, scales, None, *formed, bias),
                       cands.score(users, metric, backend=backend)),
                      (path["candidates_topk"](users, data, scales, None, *formed, bias, 11),
                       cands.topk(users, 11, metric, backend=backend)),
                      (path["candidates_topk"](users[3], data, scales, ids, *formed, bias, 11),
                       cands.topk(users[3], 11, metric, allowed=allowed, backend=backend))]
        for got, expected in pairs:
            for g, e in zip(got, expected) if isinstance(got, tuple) else ((got, expected),):
                torch.testing.assert_close(g, e, rtol=0 if exact or g.dtype == torch.int64 else 1e-6,
                                           atol=0 if exact or g.dtype == torch.int64 else 1e-6)


@given(n=st.integers(1, 70), users=st.integers(0, 5), count=st.integers(0, 70), k=st.integers(1, 80),
       kind=st.sampled_from(FORM_KINDS[1:]), one=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_tensors_give_the_numpy_answer(n, users, count, k, kind, one, seed):
    rng = np.random.default_rng(seed)
    metric = make_metric(kind, n, rng)
    u = rng.standard_normal(n if one else (users, n)).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    for got, expected in ((sk.score(torch.from_numpy(u), torch.from_numpy(ads), metric), sk.score(u, ads, metric)),
                          *zip(sk.topk(torch.from_numpy(u), torch.from_numpy(ads), k, metric), sk.topk(u, ads, k, metric))):
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("where", ("plain", "candidates", "allowed"))
def test_sigmoid_topk_on_tensors_is_the_numpy_answer(where, rng):
    """sk.topk(sigmoid=True) on tensors goes through the ops and ranks by the reported probability
    as NumPy's call does: the same float32 bits, and probabilities that round equal tie by id
    (large logits all round to 1.0, which sends every user through the full ranking)."""
    ads = rng.standard_normal((300, 8)).astype(np.float32)
    ads[:40] *= 30  # logits near +-100: probability 1.0 (or 0) in float32
    users, metric = rng.standard_normal((4, 8)).astype(np.float32), make_metric("diagonal", 8, rng, bias=0.5)
    allowed = np.flatnonzero(rng.random(300) < 0.5)
    for u in (users, users[1]):
        if where == "plain":
            got, expected = sk.topk(torch.from_numpy(u), torch.from_numpy(ads), 12, metric, sigmoid=True), \
                sk.topk(u, ads, 12, metric, sigmoid=True)
        else:
            cands, ids = sk.Candidates(ads, "int8"), allowed if where == "allowed" else None
            got = cands.topk(torch.from_numpy(u), 12, metric, allowed=ids, output="probability")
            expected = cands.topk(u, 12, metric, allowed=ids, output="probability")
        for g, e in zip(got, expected):
            assert isinstance(g, torch.Tensor)
            np.testing.assert_array_equal(g.numpy(), e)


def test_layouts_and_from_numpy_views(rng):
    base = rng.standard_normal((40, 24)).astype(np.float32)
    metric = make_metric("full", 12, rng)
    users, ads = torch.from_numpy(base)[:6, ::2], torch.from_numpy(base).T.contiguous().T[10:, 1::2]
    assert not users.is_contiguous() and not ads.is_contiguous()
    expected = sk.score(np.ascontiguousarray(users.numpy()), np.ascontiguousarray(ads.numpy()), metric)
    np.testing.assert_array_equal(sk.score(users, ads, metric).numpy(), expected)
    top, ids = sk.topk(users, ads, 5, metric)
    np.testing.assert_array_equal(ids.numpy(), sk.topk(np.ascontiguousarray(users.numpy()),
                                                       np.ascontiguousarray(ads.numpy()), 5, metric)[1])
    read_only = base.copy()
    read_only.flags.writeable = False  # tensor users against read-only numpy ads, viewed through DLPack
    np.testing.assert_array_equal(sk.score(torch.from_numpy(base[0, :12].copy()), read_only[:, :12], metric).numpy(),
                                  sk.score(base[0, :12], read_only[:, :12], metric))
    out = torch.full((6, 30), np.nan)
    assert sk.score(users, ads, metric, out=out) is out
    np.testing.assert_array_equal(out.numpy(), expected)


def test_grad_modes(rng):
    users, ads, metric = tensor(rng, 3, 8), tensor(rng, 20, 8), make_metric("low_rank", 8, rng)
    expected = sk.score(users.numpy(), ads.numpy(), metric)
    expected_top = sk.topk(users.numpy(), ads.numpy(), 4, metric)
    with torch.inference_mode():
        np.testing.assert_array_equal(sk.score(users, ads, metric).numpy(), expected)
        np.testing.assert_array_equal(sk.topk(users, ads, 4, metric)[1].numpy(), expected_top[1])
    with torch.no_grad():
        np.testing.assert_array_equal(sk.score(users.requires_grad_(), ads, metric).numpy(), expected)
    scores = sk.score(users, ads, metric)
    assert scores.requires_grad
    np.testing.assert_array_equal(scores.detach().numpy(), expected)
    scores.sum().backward()
    torch.testing.assert_close(users.grad, (torch.ones(3, 20) @ ads) @ torch.from_numpy(metric.dense()).T)
    top, ids = sk.topk(users, ads, 4, metric)
    np.testing.assert_array_equal(ids.numpy(), expected_top[1])


def test_bad_operands_are_named_by_the_ops(rng):
    users, ads = tensor(rng, 3, 8), tensor(rng, 20, 8)
    diag = torch.ones(8)
    for device in ("cpu", "meta"):
        u, a, d = users.to(device), ads.to(device), diag.to(device)
        with pytest.raises(ValueError, match=r"users \(3, 7\) and ads \(20, 8\)"):
            ops.score(u[:, :7], a, d, None, None, 0.0)
        with pytest.raises(ValueError, match="diag: expected shape"):
            ops.score(u, a, d[:5], None, None, 0.0)
        with pytest.raises(TypeError, match="ads: |users and ads"):
            ops.score_pairs(u, a[:3].double(), d, None, None, 0.0)
        with pytest.raises(ValueError, match="k: must be >= 1"):
            ops.topk(u, a, d, None, None, 0.0, 0)
        with pytest.raises(ValueError, match="right: given without left"):
            ops.topk(u, a, d, None, d[:, None], 0.0, 2)
        with pytest.raises(TypeError, match="data: expected packed rows"):
            ops.candidates_topk(u, a.double(), None, None, d, None, None, 0.0, 2)
        with pytest.raises(TypeError, match="scales: int8 data needs"):
            ops.candidates_score(u, a.to(torch.int8), None, None, d, None, None, 0.0)


def test_fold_range_is_refused_by_the_ops_as_by_metric(rng):
    metric = sk.Metric.full(np.eye(8) * 1e20)
    users, ads = torch.full((2, 8), 1e19), tensor(rng, 5, 8)
    with pytest.raises(ValueError, match="users: folding through"):
        sk.topk(users.numpy(), ads.numpy(), 2, metric)
    with pytest.raises(ValueError, match="users: folding through"):
        sk.topk(users, ads, 2, metric)
    with pytest.raises(ValueError, match="users: folding through the metric's factors"):
        ops.score(users, ads, None, torch.eye(8) * 1e20, None, 0.0)
    ops.score(users / 1e19, ads, None, torch.eye(8) * 1e20, None, 0.0)  # within range: scored
    ops.score(users, ads, torch.full((8,), 1e20), None, None, 0.0)  # a diagonal: IEEE overflow, no refusal


@given(scale=st.floats(1e36, 1e38), kind=st.sampled_from(("full", "low_rank", "low_rank_no_d")),
       seed=st.integers(0, 2**32 - 1))
def test_the_ops_refuse_exactly_what_metric_refuses(scale, kind, seed):
    rng = np.random.default_rng(seed)
    metric = make_metric(kind, 6, rng)
    users = (rng.standard_normal((3, 6)) * scale / 4).astype(np.float32)

    def refused(check, *args) -> bool:
        try:
            check(*args)
        except ValueError:
            return True
        return False

    assert refused(metric.check_fold_range, users) == refused(
        _torch_ops.check_fold_range, torch.from_numpy(users), *metric._tensor_params(torch.from_numpy(users)))


# ---- compiled and exported serving ---------------------------------------------------------------
def _serving(rng):
    """A serving function (towers, sk.topk with a diagonal and a full metric, a gather) and its inputs."""
    torch.manual_seed(0)
    user_tower, ad_tower = torch.nn.Linear(16, 8), torch.nn.Linear(12, 8)
    diagonal = sk.Metric.diagonal(rng.random(8) + 0.5, bias=-1.0)
    full = sk.Metric.full(rng.standard_normal((8, 8)) / 3, bias=0.5)
    ad_ids = torch.arange(1000, 1300)

    class Serve(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.user_tower, self.ad_tower = user_tower, ad_tower

        def forward(self, user_features, ad_features):
            users, ads = self.user_tower(user_features), self.ad_tower(ad_features)
            scores, ids = sk.topk(users, ads, 7, diagonal)
            rescored, reranked = sk.topk(users, ads[ids[0]], 3, full)  # the first user's 7, again
            likely, chosen = sk.topk(users, ads, 5, diagonal, sigmoid=True)  # ranked by the probability
            probabilities = sk.score(users, ads[ids[0]], full, sigmoid=True)
            return scores, ad_ids[ids], rescored, torch.gather(ids[0].expand(len(users), -1), 1, reranked), \
                likely, chosen, probabilities

    return Serve().eval(), (torch.randn(4, 16), torch.randn(300, 12))


# inductor's first import meets torch.jit.script_method in torch itself, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_serving_function_compiles_whole_and_gives_eager_results(rng):
    serve, inputs = _serving(rng)
    with torch.no_grad():
        got = torch.compile(serve, fullgraph=True)(*inputs)  # traced first, then run eagerly
        expected = serve(*inputs)
    for g, e in zip(got[:-1], expected[:-1]):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    # traced, sigmoid is torch's in float64 (eager: NumPy's), each rounded to float32
    torch.testing.assert_close(got[-1], expected[-1], rtol=2**-23, atol=0)


def test_serving_function_exports(rng):
    serve, inputs = _serving(rng)  # exported before any eager call: the traced metrics cache nothing fake
    exported = torch.export.export(serve, inputs)
    called = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert {"splitnet_kernels.topk.default", "splitnet_kernels.score.default"} <= called
    got, expected = exported.module()(*inputs), serve(*inputs)
    for g, e in zip(got[:-1], expected[:-1]):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    torch.testing.assert_close(got[-1], expected[-1], rtol=2**-23, atol=0)


def test_training_step_compiles_with_gradients(rng):
    head = MetricHead("low_rank", 8, rank=2)
    users, ads, labels = tensor(rng, 32, 8), tensor(rng, 32, 8), torch.from_numpy(rng.random(32) < 0.3).float()

    def loss(users, ads):
        return torch.nn.functional.binary_cross_entropy_with_logits(head(users, ads), labels)

    expected = torch.autograd.grad(loss(users, ads), list(head.parameters()))
    got = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(users, ads),
                              list(head.parameters()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


# ---- a head training through the ops ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ("dot", "scaled", "diagonal", "low_rank", "full"))
def test_a_head_trains_through_the_ops_as_through_torch(kind, rng):
    """MetricHead's own (pure torch) forward and cross in float64 against the same head's form
    through the kernels' ops, forward and backward (bench/torch_ops.py times the two ways)."""
    head = MetricHead(kind, 6, rank=2 if kind == "low_rank" else None, n_objectives=2)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.from_numpy(rng.standard_normal(parameter.shape)).float() * 0.3)
    wide = MetricHead(kind, 6, rank=2 if kind == "low_rank" else None, n_objectives=2).double()
    wide.load_state_dict(head.state_dict())
    users, ads = tensor(rng, 5, 6), tensor(rng, 5, 6)
    diag, left, right = head.form()
    diag = diag.expand(6) if diag is not None and diag.ndim == 0 else diag
    for method, op in (("forward", "score_pairs"), ("cross", "score")):
        with Recorder() as recorder:
            logits = head._finish(getattr(ops, op)(users, ads, diag, left, right, 0.0))
        assert f"splitnet_kernels.{op}.default" in recorder.names
        reference = getattr(wide, method)(users.double(), ads.double())
        torch.testing.assert_close(logits.double(), reference, rtol=1e-5, atol=1e-5)
        got = torch.autograd.grad(logits.sum(), list(head.parameters()))
        expected = torch.autograd.grad(reference.sum(), list(wide.parameters()))
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)
