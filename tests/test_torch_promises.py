"""What the README promises for tensors, on every path: gradients through score with objectives,
the compiled serving example as printed, whole graphs for Candidates and the default metric,
tensors out whenever a tensor goes in, and unusual tensors (meta, sparse, bfloat16, another
device) named rather than crashing."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import splitnet_kernels as sk
from conftest import make_metric

torch = pytest.importorskip("torch")
from splitnet_kernels.nn import MetricHead  # noqa: E402

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
OUTPUTS = ("logit", "probability", "value")


def _objective_problem(rng, n=6, count=40):
    """users (3, n), ads (count, n), objectives over three metrics of different kinds, bids."""
    om = sk.ObjectiveMetrics([make_metric(kind, n, rng, bias=b) for kind, b in
                              (("diagonal", -0.5), ("full", 0.25), ("low_rank", 0.0))])
    users = rng.standard_normal((3, n)).astype(np.float32)
    ads = rng.standard_normal((count, n)).astype(np.float32)
    objectives = rng.integers(0, 3, count)
    bids = rng.random(count).astype(np.float32) * 3
    return om, users, ads, objectives, bids


def _reference(om, users, ads, objectives, bids, output):
    """The quantity in float64 torch ops from each objective's dense S: the gradient's oracle."""
    dense = torch.from_numpy(np.stack([m.dense() for m in om])).double()[objectives]  # (N, n, n)
    bias = torch.tensor([m.bias for m in om], dtype=torch.float64)[objectives]
    logits = torch.einsum("mi,nij,nj->mn", users, dense, ads) + bias
    if output == "logit":
        return logits
    p = torch.sigmoid(logits)
    return p if output == "probability" else p * bids


# ---- 6: score with objectives carries the gradient ------------------------------------------------
@pytest.mark.parametrize("output", OUTPUTS)
def test_score_with_objectives_carries_the_gradient(output, rng):
    om, users, ads, objectives, bids = _objective_problem(rng)
    leaves = [torch.from_numpy(x).requires_grad_() for x in (users, ads, bids)]
    scored = sk.score(leaves[0], leaves[1], om, objectives=torch.from_numpy(objectives), bids=leaves[2],
                      output=output)
    assert scored.requires_grad and scored.dtype == torch.float32
    expected = sk.score(users, ads, om, objectives=objectives, bids=bids, output=output)  # no gradient asked
    torch.testing.assert_close(scored.detach(), torch.from_numpy(expected), rtol=2**-22, atol=0)
    wide = [torch.from_numpy(x).double().requires_grad_() for x in (users, ads, bids)]
    weights = torch.from_numpy(rng.standard_normal(scored.shape))
    got = torch.autograd.grad((scored * weights.float()).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((_reference(om, *wide[:2], objectives, wide[2], output) * weights).sum(), wide,
                               allow_unused=True)
    for g, w in zip(got, want):
        if w is None or not w.any():  # bids only matter for the value
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def test_score_with_bids_and_a_plain_metric_carries_the_gradient(rng):
    metric = make_metric("full", 5, rng, bias=0.5)
    users = torch.from_numpy(rng.standard_normal(5).astype(np.float32)).requires_grad_()
    ads, bids = torch.from_numpy(rng.standard_normal((9, 5)).astype(np.float32)), torch.rand(9)
    values = sk.score(users, ads, metric, bids=bids, output="value")  # one user
    assert values.shape == (9,) and values.requires_grad
    (grad,) = torch.autograd.grad(values.sum(), users)
    p = torch.sigmoid(sk.score(users.detach().double(), ads.double(), metric, backend="numpy").double())
    expected = torch.from_numpy(metric.dense()).double() @ ads.double().T @ (bids.double() * p * (1 - p))
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-5)


def test_topk_with_objectives_says_it_has_no_gradient(rng):
    om, users, ads, objectives, bids = _objective_problem(rng)
    leaf = torch.from_numpy(users).requires_grad_()
    values, ids = sk.topk(leaf, torch.from_numpy(ads), 4, om, objectives=objectives, bids=bids)
    np.testing.assert_array_equal(values.detach().numpy(), sk.topk(users, ads, 4, om, objectives=objectives,
                                                                   bids=bids)[0])
    assert values.requires_grad and not ids.requires_grad
    with pytest.raises(RuntimeError, match="splitnet_kernels::topk is not differentiable"):
        values.sum().backward()


def test_candidates_with_objectives_say_they_have_no_gradient(rng):
    """A prepared set holds no tensors to differentiate: its score and topk by objective on users
    that ask for a gradient say so on backward, as its ops do, rather than drop the gradient."""
    om, users, ads, objectives, bids = _objective_problem(rng)
    cands = sk.Candidates(ads, objectives=objectives, bids=bids)
    leaf = torch.from_numpy(users).requires_grad_()
    for name, result in (("candidates_score", cands.score(leaf, om)), ("candidates_topk", cands.topk(leaf, 4, om)[0])):
        assert result.requires_grad
        with pytest.raises(RuntimeError, match=f"splitnet_kernels::{name} is not differentiable"):
            result.sum().backward()
    with torch.no_grad():
        assert not cands.score(leaf, om).requires_grad


# ---- 9: the README's compiled serving function, as printed -----------------------------------------
def _readme_block(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# inductor's first import meets torch.jit.script_method in torch itself, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_the_readme_compiled_serving_example_runs_as_printed(rng):
    """Towers with parameters (which ask for gradients), no torch.no_grad(): the function compiles
    whole, serves the eager answer, and only a backward through the selection raises."""
    torch.manual_seed(0)
    names = {"user_tower": torch.nn.Linear(16, 8), "ad_tower": torch.nn.Linear(12, 8),
             "m": sk.Metric.diagonal(rng.random(8) + 0.5, bias=-1.0), "ad_ids": torch.arange(5000, 5300)}
    exec(compile(_readme_block("## A compiled serving function (PyTorch)"), str(README), "exec"), names)
    user_features, ad_features = torch.randn(4, 16), torch.randn(300, 12)
    scores, ids = names["serve"](user_features, ad_features)
    expected = sk.topk(names["user_tower"](user_features), names["ad_tower"](ad_features), 100, names["m"])
    torch.testing.assert_close(scores, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(ids, names["ad_ids"][expected[1]], rtol=0, atol=0)
    assert scores.requires_grad
    with pytest.raises(RuntimeError, match="splitnet_kernels::topk is not differentiable"):
        scores.sum().backward()


# ---- 10: every call the README runs as an op traces whole ------------------------------------------
@pytest.mark.parametrize("dynamic", (False, True))
@pytest.mark.parametrize("dtype, exact", (("float32", False), ("int8", True), ("bfloat16", False)))
def test_candidate_sets_trace_whole(dtype, exact, dynamic, rng):
    ads = rng.standard_normal((60, 8)).astype(np.float32)
    cands, metric = sk.Candidates(ads, dtype=dtype, exact=exact), make_metric("low_rank", 8, rng, bias=0.5)
    calls = (lambda u: cands.topk(u, 5, metric), lambda u: cands.score(u, metric), lambda u: cands.topk(u, 5),
             lambda u: cands.score(u, sigmoid=True))
    for call in calls:
        torch._dynamo.reset()
        compiled = torch.compile(call, fullgraph=True, dynamic=dynamic, backend="eager")
        for users in (torch.from_numpy(rng.standard_normal((3, 8)).astype(np.float32)),
                      torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))):
            for got, expected in zip(*(x if isinstance(x, tuple) else (x,) for x in (compiled(users), call(users)))):
                torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dynamic", (False, True))
def test_the_default_metric_traces_whole(dynamic, rng):
    calls = (lambda u, a: sk.topk(u, a, 4), lambda u, a: sk.score(u, a), lambda u, a: sk.topk(u, a, 4, sigmoid=True),
             lambda u, a: sk.score(u, a[:3], pairwise=True))
    users, ads = (torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for shape in ((3, 7), (30, 7)))
    for call in calls:
        torch._dynamo.reset()
        got = torch.compile(call, fullgraph=True, dynamic=dynamic, backend="eager")(users, ads)
        for g, e in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, call(users, ads)))):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


# ---- 11: a tensor among the arguments gives tensors out --------------------------------------------
@pytest.mark.parametrize("as_tensor", ("users", "ads", "objectives", "bids"))
def test_any_tensor_argument_gives_tensors(as_tensor, rng):
    om, users, ads, objectives, bids = _objective_problem(rng)
    arrays = {"users": users, "ads": ads, "objectives": objectives, "bids": bids}
    mixed = {name: torch.from_numpy(x) if name == as_tensor else x for name, x in arrays.items()}
    calls = {
        "score by value": lambda a: sk.score(a["users"], a["ads"], om, objectives=a["objectives"], bids=a["bids"]),
        "score by probability": lambda a: sk.score(a["users"], a["ads"], om, objectives=a["objectives"],
                                                   bids=a["bids"], output="probability"),
        "topk by value": lambda a: sk.topk(a["users"], a["ads"], 5, om, objectives=a["objectives"], bids=a["bids"]),
    }
    if as_tensor != "objectives":  # calls without objectives
        calls["plain metric, bids"] = lambda a: sk.score(a["users"][0], a["ads"], om[1], bids=a["bids"])
        calls["output=value"] = lambda a: sk.score(a["users"], a["ads"], om[0], output="value", bids=a["bids"])
        calls["topk, output=value"] = lambda a: sk.topk(a["users"], a["ads"], 5, om[2], output="value", bids=a["bids"])
    for name, call in calls.items():
        got, expected = call(mixed), call(arrays)
        for g, e in zip(*(x if isinstance(x, tuple) else (x,) for x in (got, expected))):
            assert isinstance(g, torch.Tensor), (name, type(g))
            np.testing.assert_array_equal(g.numpy(), e, err_msg=name)


# ---- 12: unusual tensors are named ------------------------------------------------------------------
def test_meta_sparse_and_mixed_device_arguments_are_named(rng):
    om, users, ads, objectives, bids = _objective_problem(rng)
    u, a, obj, b = (torch.from_numpy(x) for x in (users, ads, objectives, bids))
    meta = {name: x.to("meta") for name, x in (("objectives", obj), ("bids", b))}
    for name, wrong in meta.items():
        arguments = {"objectives": obj, "bids": b, name: wrong}
        with pytest.raises(TypeError, match=f"users and {name}: expected tensors on one device"):
            sk.score(u, a, om, **arguments)
        with pytest.raises(TypeError, match=f"users and {name}: expected tensors on one device"):
            sk.topk(u, a, 3, om, **arguments)
        arguments = {"objectives": objectives, "bids": bids, name: wrong}  # the only tensor
        with pytest.raises(ValueError, match=f"{name}: a meta tensor holds no values"):
            sk.score(users, ads, om, **arguments)
    with pytest.raises(TypeError, match="objectives: expected a dense tensor"):
        sk.score(u, a, om, objectives=obj.to_sparse(), bids=b)
    for call in (lambda: sk.score(u, a.to("meta")), lambda: sk.topk(u, a.to("meta"), 3),
                 lambda: sk.score(u, a.to("meta"), pairwise=True)):
        with pytest.raises(TypeError, match="users and ads: expected tensors on one device, got users on cpu "
                                            "and ads on meta"):
            call()
    cands = sk.Candidates(ads)
    mask = torch.ones(len(ads), dtype=torch.bool)
    with pytest.raises(TypeError, match="users and allowed: expected tensors on one device"):
        cands.topk(u, 3, allowed=mask.to("meta"))
    with pytest.raises(ValueError, match="allowed: a meta tensor holds no values"):
        cands.topk(users, 3, allowed=mask.to("meta"))
    np.testing.assert_array_equal(cands.topk(u, 3, allowed=mask)[1].numpy(), cands.topk(users, 3)[1])
    for call in (lambda out: sk.score(u, a, out=out), lambda out: cands.score(u, out=out),
                 lambda out: sk.score(u, a, om, objectives=obj, bids=b, out=out)):
        with pytest.raises(TypeError, match="out: expected a tensor on cpu like the inputs, got one on meta"):
            call(torch.empty(3, len(ads), device="meta"))
    # all on meta: the fake kernels' results, as before
    scores = sk.score(u.to("meta"), a.to("meta"), out=torch.empty(3, len(ads), device="meta"))
    assert scores.device.type == "meta" and scores.shape == (3, len(ads))


def test_bfloat16_bids_and_parameters_convert_to_float32(rng):
    om, users, ads, objectives, bids = _objective_problem(rng)
    half = torch.from_numpy(bids).bfloat16()
    expected = sk.score(users, ads, om, objectives=objectives, bids=half.float().numpy())
    np.testing.assert_array_equal(sk.score(users, ads, om, objectives=objectives, bids=half).numpy(), expected)
    s, S, P, Q = (torch.from_numpy(rng.standard_normal(shape)).bfloat16() for shape in ((6,), (6, 6), (6, 2), (6, 2)))
    wide = [x.float().numpy() for x in (s, S, P, Q)]
    pairs = ((sk.Metric.diagonal(s), sk.Metric.diagonal(wide[0])), (sk.Metric.full(S), sk.Metric.full(wide[1])),
             (sk.Metric.low_rank(P, Q, d=s), sk.Metric.low_rank(wide[2], wide[3], wide[0])))
    for got, expected_metric in pairs:
        np.testing.assert_array_equal(got.dense(), expected_metric.dense())
    with pytest.raises(ValueError, match="S: a meta tensor holds no values"):
        sk.Metric.full(torch.eye(6, device="meta"))
    with pytest.raises(TypeError, match="s: expected a dense tensor"):
        sk.Metric.diagonal(s.float().to_sparse())


@pytest.mark.parametrize("kind", ("diagonal", "low_rank", "full"))
def test_a_bfloat16_head_exports(kind):
    torch.manual_seed(0)
    rank = 2 if kind == "low_rank" else None
    half = MetricHead(kind, 6, rank=rank).to(torch.bfloat16)
    with torch.no_grad():
        for parameter in half.parameters():
            parameter.add_(torch.randn(parameter.shape).bfloat16() * 0.3)
    head = MetricHead(kind, 6, rank=rank)
    head.load_state_dict({name: value.float() for name, value in half.state_dict().items()})  # the same values
    got, expected = half.to_metric(), head.to_metric()
    assert got.kind == expected.kind and got.bias == expected.bias
    np.testing.assert_array_equal(got.dense(), expected.dense())
