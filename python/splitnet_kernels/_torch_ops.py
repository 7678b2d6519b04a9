"""The kernels as PyTorch custom ops (torch.library, namespace "splitnet_kernels"), so that
torch.compile, torch.export and FakeTensor tracing see ordinary ops; autograd for score; and the
route that sk.score / sk.topk (and Candidates) take for tensors.

    score(users, ads, diag, left, right, bias, threads)        users (n,) -> (N,); (M, n) -> (M, N)
    score_pairs(users, ads, diag, left, right, bias, threads)  users (B, n), ads (B, n) -> (B,)
    topk(users, ads, diag, left, right, bias, k, threads, sigmoid)  -> scores, ids: (k',) or (M, k'), k' = min(k, N)
    candidates_score(users, data, scales, allowed, diag, left, right, bias, threads)
    candidates_topk(users, data, scales, allowed, diag, left, right, bias, k, threads, sigmoid)

The metric is its canonical form S = diag(diag) + left right^T (_metric.Form); diag and left
both None mean S = I. The operands share one device, and for score one floating dtype, which the
result keeps; topk ranks in float32, in the package's order. candidates_* scan a Candidates
set's packed rows (N, stored width) of float32, float16, bfloat16 or int8 (with float32 scales
(N,)), optionally only the ascending int64 ids `allowed`. CPU float32 runs the simd kernels;
every other device or dtype runs the torch backend's arithmetic. A factor form whose fold could
leave the float32 range is refused, as Metric.check_fold_range refuses it. The top-k ops with
sigmoid=True report and rank by the probability, as sk.topk(sigmoid=True) does (its float32
bits, ties by id).

Two kernels serve the CPU. The C++ kernels (src/torch_ops.cpp, in _core, registered through
LibTorch's stable C ABI of torch >= 2.10, whose functions are looked up in the running libtorch:
nothing of torch is needed to build them) take CPU float32 calls of every storage type as they
come and make one kernel call, with no Python in between; every other call they hand, untouched,
to the Python kernels below (the specification: checks, messages, the torch path, sigmoid=True),
registered for that under the namespace splitnet_kernels_python. Where the C++ kernels cannot
register (torch older than 2.10, no compiled module, a bad SPLITNET_KERNELS_ISA) or
SPLITNET_KERNELS_TORCH_OPS=python asks, the Python kernels serve the CPU too. sk.info()["torch_ops"]
says which.

score and score_pairs are differentiable in users, ads, diag, left and right: the gradients are
bilinear products again, made with torch ops, so they differentiate once more. The selection ops
(topk, candidates_topk, candidates_score) have no autograd kernel (autograd falls through them, so
a call costs no Python): their results ask for no gradient. sk.topk, sk.score and Candidates mark
a selection's scores computed from tensors that ask for gradients with a backward that raises
(the op no_gradient, when it runs), so that a compiled function with such inputs still compiles
and serves. sk.score with objectives on such tensors forms each objective's logits with the score
op and the quantity with torch ops (score_by_objective), so its gradient flows too. Importing this
module registers the ops.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import sys
import threading
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from . import _dispatch, _info
from . import _threads as threads_
from ._checks import at_least_one, check_out
from ._conversions import constant_when_compiled, device_of, holds_values, kernel_rows, shape, wanting_gradients
from ._metric import FOLD_LIMIT, Form, Metric, dot_metric, fold_gain, refuse_fold_beyond_range
from ._objectives import ObjectiveMetrics, probability
from ._order import rank_exactly
from ._storage import BLOCK_ROWS, TYPES, Storage, is_plain
from .backends import Request
from .backends import _simd
from .backends import _torch as torch_backend
from .backends._simd import SimdBackend

NAMESPACE = "splitnet_kernels"
PYTHON_NAMESPACE = "splitnet_kernels_python"  # the Python kernels, where the C++ kernels hand calls
ENV = "SPLITNET_KERNELS_TORCH_OPS"  # "python": the Python kernels serve the CPU too
_FORM = "Tensor? diag, Tensor? left, Tensor? right, float bias"
_PACKED = "Tensor users, Tensor data, Tensor? scales, Tensor? allowed"
SCHEMAS = {
    "score": f"(Tensor users, Tensor ads, {_FORM}, int? threads=None) -> Tensor",
    "score_pairs": f"(Tensor users, Tensor ads, {_FORM}, int? threads=None) -> Tensor",
    "topk": f"(Tensor users, Tensor ads, {_FORM}, int k, int? threads=None, bool sigmoid=False) -> (Tensor, Tensor)",
    "candidates_score": f"({_PACKED}, {_FORM}, int? threads=None) -> Tensor",
    "candidates_topk": f"({_PACKED}, {_FORM}, int k, int? threads=None, bool sigmoid=False) -> (Tensor, Tensor)",
}
_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _LIBRARY.define(_name + _schema)
ops = torch.ops.splitnet_kernels
# The storage types (_storage.TYPES) by the dtype of a packed tensor, and the dtype NumPy holds each
# one's rows in (bfloat16 rows: their bits, as uint16).
STORED = {getattr(torch, t.torch): t.name for t in TYPES.values()}
_HELD_AS = {name: getattr(torch, np.dtype(t.numpy).name) for name, t in TYPES.items()}
_PACKED_AS = {name: getattr(torch, t.torch) for name, t in TYPES.items()}
_SIMD = SimdBackend()
_TENSOR = torch.Tensor
_tuple = tuple.__new__


# ---- checks, shared by the kernels and the fake implementations ---------------------------------
def _check_form(users, diag, left, right, dtype) -> None:
    n = users.shape[-1]
    for name, x in (("diag", diag), ("left", left), ("right", right)):
        if x is not None and (x.device != users.device or x.dtype != dtype):
            raise TypeError(f"{name}: expected a {dtype} tensor on {users.device} like users, got {x.dtype} on {x.device}")
    if diag is not None and shape(diag) != (n,):
        raise ValueError(f"diag: expected shape ({n},) for users {shape(users)}, got {shape(diag)}")
    if right is not None and left is None:
        raise ValueError("right: given without left")
    if left is not None and (left.ndim != 2 or left.shape[0] != n or (right is None and left.shape[1] != n)
                             or (right is not None and shape(right) != shape(left))):
        raise ValueError(f"left, right: expected left ({n}, {n}) alone, or left and right ({n}, r), for users "
                         f"{shape(users)}; got {shape(left)} and {None if right is None else shape(right)}")


def _check(users, ads, diag, left, right, pairwise: bool = False) -> None:
    """Shapes, dtypes and devices of score's operands."""
    if not users.dtype.is_floating_point or ads.dtype != users.dtype or ads.device != users.device:
        raise TypeError(f"users and ads: expected floating-point tensors of one dtype on one device, got "
                        f"{users.dtype} on {users.device} and {ads.dtype} on {ads.device}")
    if users.ndim not in ((2,) if pairwise else (1, 2)) or ads.ndim != 2 or users.shape[-1] != ads.shape[-1] \
            or users.shape[-1] == 0 or (pairwise and users.shape[0] != ads.shape[0]):
        wanted = "(B, n) each" if pairwise else "users (n,) or (M, n) and ads (N, n)"
        raise ValueError(f"users {shape(users)} and ads {shape(ads)}: expected {wanted}, n >= 1")
    _check_form(users, diag, left, right, users.dtype)


def _check_packed(users, data, scales, allowed, diag, left, right) -> None:
    if users.dtype != torch.float32 or users.ndim not in (1, 2) or users.shape[-1] == 0:
        raise TypeError(f"users: expected a float32 tensor (n,) or (M, n), got {users.dtype} {shape(users)}")
    if data.dtype not in STORED or data.ndim != 2 or data.shape[1] < users.shape[-1] or data.device != users.device:
        raise TypeError(f"data: expected packed rows (N, >= {users.shape[-1]}) of {', '.join(STORED.values())} on "
                        f"{users.device}, got {data.dtype} {shape(data)} on {data.device}")
    if TYPES[STORED[data.dtype]].scaled != (scales is not None):
        scaled = ", ".join(name for name, t in TYPES.items() if t.scaled)
        raise TypeError(f"scales: {scaled} data needs float32 scales (N,), other data none; got {data.dtype} data and "
                        f"scales {None if scales is None else shape(scales)}")
    if scales is not None and (scales.dtype != torch.float32 or shape(scales) != (data.shape[0],)
                               or scales.device != users.device):
        raise ValueError(f"scales: expected float32 ({data.shape[0]},) on {users.device}, got {scales.dtype} "
                         f"{shape(scales)} on {scales.device}")
    if allowed is not None and (allowed.dtype != torch.int64 or allowed.ndim != 1 or allowed.device != users.device):
        raise TypeError(f"allowed: expected a 1-D int64 tensor of ids on {users.device}, got {allowed.dtype} "
                        f"{shape(allowed)} on {allowed.device}")
    _check_form(users, diag, left, right, torch.float32)


def _capped_k(k: int, count) -> int:
    """k checked (>= 1) and capped at the candidates there are."""
    at_least_one(k)
    return min(k, count)


def _norm(x) -> float:
    return float(torch.linalg.vector_norm(x.detach(), dtype=torch.float64))


def check_fold_range(users, diag, left, right) -> None:
    """Metric.check_fold_range for a form given as tensors. Each user's norm against the
    Frobenius norms of the form's magnitudes (which bound every column's) clears nearly every
    call; only a user that fails it has the exact bound |u|^T |S| formed, from _metric's
    magnitudes, and refused past the same limit."""
    if left is None:
        return  # a diagonal form overflows as IEEE does, on every backend
    left_norm = _norm(left)
    factors = left_norm * (1.0 if right is None else _norm(right))
    gain = max(factors + (0.0 if diag is None else _norm(diag)), left_norm)  # |S| and, with right, |L| (u L)
    if bool(torch.all(torch.linalg.vector_norm(users.detach(), dim=-1, dtype=torch.float64) * gain <= FOLD_LIMIT)):
        return
    form = Form(*(None if x is None else x.detach().cpu().double().numpy() for x in (diag, left, right)))
    refuse_fold_beyond_range(users.detach().cpu().double().numpy().reshape(-1, users.shape[-1]),
                             fold_gain(form, always=True)[1], "the metric's factors")


# ---- the kernels: simd on CPU float32, the torch backend's arithmetic elsewhere ----------------------
# Each op's kernel checks, then runs SIMD[name] or TORCH[name] on the same arguments (tests call
# both on the CPU). The operands here are checked and non-empty.
def _simd_runs(*tensors) -> bool:
    """Whether the simd kernels take the call: CPU float32 operands and the kernels loaded (a bad
    SPLITNET_KERNELS_ISA is the error it is for backend='auto')."""
    if any(x.device.type != "cpu" or x.dtype != torch.float32 for x in tensors):
        return False
    if _dispatch.ISA_ERROR:
        raise ValueError(_dispatch.ISA_ERROR)
    return _dispatch.status("simd")[0]


def _numpy(x):
    return None if x is None else x.detach().numpy()


class _Scoring(NamedTuple):
    """What the simd backend reads of a Metric: the form (numpy views of the tensors) and the bias."""

    form: Form
    bias: float


def _for_simd(users, diag, left, right, bias) -> _Scoring:
    if diag is None and left is None:  # S = I: the kernels take it as dot's ones
        return _Scoring(dot_metric(users.shape[-1]).form, bias)
    return _Scoring(Form(*(None if x is None else kernel_rows(_numpy(x)) for x in (diag, left, right))), bias)


def _storage(users, data, scales) -> Storage:
    """A packed tensor as the Storage the simd backend reads (numpy views, no copy)."""
    name = STORED[data.dtype]
    return Storage(name, users.shape[-1], data.detach().view(_HELD_AS[name]).numpy(), _numpy(scales))


def _widened(data, scales, dim: int, allowed, begin: int, end: int):
    """Packed rows [begin, end) (of the allowed ids, if given) as float32 (m, dim), as Storage.rows widens them."""
    rows = data[begin:end] if allowed is None else data[allowed[begin:end]]
    rows = rows[:, :dim].float()
    if scales is not None:
        rows = rows * (scales[begin:end] if allowed is None else scales[allowed[begin:end]])[:, None]
    return rows


def _tensors(result):
    return tuple(torch.from_numpy(x) for x in result) if isinstance(result, tuple) else torch.from_numpy(result)


def _one_or_many(users, result):
    """Top-k results of users (M, n) as the users came: (k,) for one user given as (n,)."""
    return tuple(x[0] for x in result) if users.ndim == 1 else result


def _simd_request(users, store, diag, left, right, bias, allowed=None, k=0, threads=None) -> Request:
    """The simd backend's request for an op's operands: NumPy views, kernel rows where a copy is needed."""
    return Request(kernel_rows(_numpy(users)), store if isinstance(store, Storage) else kernel_rows(_numpy(store)),
                   _for_simd(users, diag, left, right, bias), _numpy(allowed), k, "logit", threads)


SIMD = {
    "score": lambda users, ads, diag, left, right, bias, threads=None: _tensors(_SIMD.score(
        _simd_request(users, ads, diag, left, right, bias, threads=threads), None)),
    "score_pairs": lambda users, ads, diag, left, right, bias, threads=None: _tensors(_SIMD.score_pairs(
        _simd_request(users, ads, diag, left, right, bias, threads=threads), None)),
    "topk": lambda users, ads, diag, left, right, bias, k, threads=None: _tensors(_SIMD.topk(
        _simd_request(users, ads, diag, left, right, bias, k=k, threads=threads))),
    "candidates_score": lambda users, data, scales, allowed, diag, left, right, bias, threads=None: _tensors(
        _SIMD.score(_simd_request(users, _storage(users, data, scales), diag, left, right, bias, allowed,
                                  threads=threads), None)),
    "candidates_topk": lambda users, data, scales, allowed, diag, left, right, bias, k, threads=None: _tensors(
        _SIMD.topk(_simd_request(users, _storage(users, data, scales), diag, left, right, bias, allowed, k,
                                 threads))),
}


def _torch_topk(users, ads, diag, left, right, bias, k, threads=None):
    form = Form(*(None if x is None else x.float() for x in (diag, left, right)))
    folded, ads = Metric._fold(users.float().reshape(-1, users.shape[-1]), form), ads.float()
    return _one_or_many(users, torch_backend.topk_blocks(folded, lambda begin, end: ads[begin:end], ads.shape[0],
                                                         bias, k))


def _torch_candidates_score(users, data, scales, allowed, diag, left, right, bias, threads=None):
    folded, count = Metric._fold(users, Form(diag, left, right)), _count(data, allowed)
    return torch.cat([torch_backend.scores(folded, _widened(data, scales, users.shape[-1], allowed, begin,
                                                            begin + BLOCK_ROWS), bias, pairwise=False)
                      for begin in range(0, count, BLOCK_ROWS)], -1)


def _torch_candidates_topk(users, data, scales, allowed, diag, left, right, bias, k, threads=None):
    folded = Metric._fold(users.reshape(-1, users.shape[-1]), Form(diag, left, right))
    scores, ids = torch_backend.topk_blocks(
        folded, lambda begin, end: _widened(data, scales, users.shape[-1], allowed, begin, end), _count(data, allowed),
        bias, k)
    return _one_or_many(users, (scores, ids if allowed is None else allowed[ids]))


TORCH = {
    "score": lambda users, ads, diag, left, right, bias, threads=None: torch_backend.scores(
        Metric._fold(users, Form(diag, left, right)), ads, bias, pairwise=False),
    "score_pairs": lambda users, ads, diag, left, right, bias, threads=None: torch_backend.scores(
        Metric._fold(users, Form(diag, left, right)), ads, bias, pairwise=True),
    "topk": _torch_topk,
    "candidates_score": _torch_candidates_score,
    "candidates_topk": _torch_candidates_topk,
}


def _count(data, allowed) -> int:
    return data.shape[0] if allowed is None else allowed.shape[0]


def _score(users, ads, diag, left, right, bias, threads=None):
    _check(users, ads, diag, left, right)
    check_fold_range(users, diag, left, right)
    if 0 in _scoreshape(users, ads.shape[0]):
        return users.new_empty(_scoreshape(users, ads.shape[0]))
    return (SIMD if _simd_runs(users, ads) else TORCH)["score"](users, ads, diag, left, right, bias, threads)


def _score_pairs(users, ads, diag, left, right, bias, threads=None):
    _check(users, ads, diag, left, right, pairwise=True)
    check_fold_range(users, diag, left, right)
    if ads.shape[0] == 0:
        return users.new_empty((0,))
    return (SIMD if _simd_runs(users, ads) else TORCH)["score_pairs"](users, ads, diag, left, right, bias, threads)


def _topk_one(users, ads, diag, left, right, bias, k, threads):
    """The topk kernel for one CPU float32 user whose operands NumPy can view (W6 through the
    op): the simd backend with the arrays as they are, as the route's fast path takes them (the
    binding checks their layout). None where the call is not one of these (or the binding
    refuses a layout): then the general kernel runs and reports."""
    if _dispatch.FAST is None or users.ndim != 1 or k < 1:
        return None
    try:  # numpy() refuses tensors off the CPU and tensors that ask for a gradient (written out: W6)
        user, rows = users.numpy(), ads.numpy()
        d, l, r = (None if diag is None else diag.numpy(), None if left is None else left.numpy(),
                   None if right is None else right.numpy())
    except (RuntimeError, TypeError):
        return None
    if user.dtype is not _F32_NUMPY or rows.dtype is not _F32_NUMPY or rows.ndim != 2 or not rows.shape[0] \
            or user.shape[0] != rows.shape[1] or (d is not None and d.dtype is not _F32_NUMPY) \
            or (l is not None and l.dtype is not _F32_NUMPY) or (r is not None and r.dtype is not _F32_NUMPY):
        return None
    # S = I (diag and left None): the kernels take it as dot's ones
    form = dot_metric(user.shape[0]).form if diag is None and left is None else (d, l, r)
    if left is not None:
        check_fold_range(users, diag, left, right)
    try:  # the request and the metric made without NamedTuple's Python-level __new__ (W6)
        scores, ids = _SIMD.topk(_tuple(Request, (user, rows, _tuple(_Scoring, (form, bias)), None,
                                                  min(k, rows.shape[0]), "logit", threads)))
    except ValueError:
        return None
    return torch.from_numpy(scores), torch.from_numpy(ids)


def _by_probability(users, k: int, count: int, allowed, top, score_all):
    """The best k of each user by the reported probability, as sk.topk(sigmoid=True) ranks
    (_order.rank_exactly): top(users (M, n), c) gives the best c by score, score_all(user) one
    user's scores over the `count` eligible candidates (the ids `allowed`, or all)."""
    many = users.reshape(-1, users.shape[-1])

    def raw_topk(how_many):
        return tuple(x.cpu().numpy() for x in top(many, how_many))

    def every_probability(u):
        ids = np.arange(count) if allowed is None else allowed.cpu().numpy()
        return probability(score_all(many[u]).float().cpu().numpy()), ids

    scores, ids = rank_exactly(count, k, raw_topk, every_probability, lambda scores, _: probability(scores))
    return _one_or_many(users, (torch.from_numpy(scores).to(users.device), torch.from_numpy(ids).to(users.device)))


def _topk(users, ads, diag, left, right, bias, k, threads=None, sigmoid=False):
    if users.ndim == 1 and (threads is None or threads >= 1) and not sigmoid:
        plain = _topk_one(users, ads, diag, left, right, bias, k, threads)
        if plain is not None:
            return plain
    _check(users, ads, diag, left, right)
    check_fold_range(users, diag, left, right)
    k = _capped_k(k, ads.shape[0])
    if 0 in _scoreshape(users, k):
        return _empty_topk(users, k)
    if sigmoid:
        return _by_probability(users, k, ads.shape[0], None,
                               lambda u, c: _topk(u, ads, diag, left, right, bias, c, threads),
                               lambda u: _score(u, ads, diag, left, right, bias, threads))
    return (SIMD if _simd_runs(users, ads) else TORCH)["topk"](users, ads, diag, left, right, bias, k, threads)


def _candidates_score(users, data, scales, allowed, diag, left, right, bias, threads=None):
    _check_packed(users, data, scales, allowed, diag, left, right)
    check_fold_range(users, diag, left, right)
    if 0 in _scoreshape(users, _count(data, allowed)):
        return users.new_empty(_scoreshape(users, _count(data, allowed)))
    return (SIMD if _simd_runs(users) else TORCH)["candidates_score"](users, data, scales, allowed, diag, left, right,
                                                                     bias, threads)


def _candidates_topk(users, data, scales, allowed, diag, left, right, bias, k, threads=None, sigmoid=False):
    _check_packed(users, data, scales, allowed, diag, left, right)
    check_fold_range(users, diag, left, right)
    k = _capped_k(k, _count(data, allowed))
    if 0 in _scoreshape(users, k):
        return _empty_topk(users, k)
    if sigmoid:
        return _by_probability(
            users, k, _count(data, allowed), allowed,
            lambda u, c: _candidates_topk(u, data, scales, allowed, diag, left, right, bias, c, threads),
            lambda u: _candidates_score(u, data, scales, allowed, diag, left, right, bias, threads))
    return (SIMD if _simd_runs(users) else TORCH)["candidates_topk"](users, data, scales, allowed, diag, left, right,
                                                                    bias, k, threads)


# ---- the fake (meta) implementations: shapes and dtypes --------------------------------------------
def _scoreshape(users, count) -> tuple:
    return (count,) if users.ndim == 1 else (users.shape[0], count)


def _empty_topk(users, k):
    shape = _scoreshape(users, k)
    return users.new_empty(shape, dtype=torch.float32), users.new_empty(shape, dtype=torch.int64)


def _score_fake(users, ads, diag, left, right, bias, threads=None):
    _check(users, ads, diag, left, right)
    return users.new_empty(_scoreshape(users, ads.shape[0]))


def _score_pairs_fake(users, ads, diag, left, right, bias, threads=None):
    _check(users, ads, diag, left, right, pairwise=True)
    return users.new_empty((ads.shape[0],))


def _topk_fake(users, ads, diag, left, right, bias, k, threads=None, sigmoid=False):
    _check(users, ads, diag, left, right)
    return _empty_topk(users, _capped_k(k, ads.shape[0]))


def _candidates_score_fake(users, data, scales, allowed, diag, left, right, bias, threads=None):
    _check_packed(users, data, scales, allowed, diag, left, right)
    return users.new_empty(_scoreshape(users, _count(data, allowed)))


def _candidates_topk_fake(users, data, scales, allowed, diag, left, right, bias, k, threads=None, sigmoid=False):
    _check_packed(users, data, scales, allowed, diag, left, right)
    return _empty_topk(users, _capped_k(k, _count(data, allowed)))


# ---- autograd ------------------------------------------------------------------------------------
def _transposed(form: Form) -> Form:
    """S^T in the canonical form: diag + right left^T, or left^T alone."""
    diag, left, right = form
    if left is None:
        return form
    return Form(diag, left.T, None) if right is None else Form(diag, right, left)


def gradients(needed, grad, users, ads, form: Form, pairwise: bool) -> tuple:
    """The gradients of score (or score_pairs) for (users, ads, diag, left, right), each None
    where `needed` (five bools) says it is not wanted, from the output's gradient `grad`.

    With q = fold(u) = u diag + (u L) R^T and s = q . a: dq = ds a, da = ds q, du = dq S^T,
    d diag = sum u * dq, dL = u^T (dq R), dR = dq^T (u L), and dS = u^T dq for a lone left S.
    """
    diag, left, right = form
    many, g = (users, grad) if users.ndim == 2 else (users[None], grad[None])
    grad_folded = g[:, None] * ads if pairwise else g @ ads
    grad_users = grad_ads = grad_diag = grad_left = grad_right = None
    if needed[0]:
        grad_users = Metric._fold(grad_folded, _transposed(form)).reshape(users.shape)
    if needed[1]:
        folded = Metric._fold(many, form)
        grad_ads = g[:, None] * folded if pairwise else g.T @ folded
    if needed[2] and diag is not None:
        grad_diag = (many * grad_folded).sum(0)
    if needed[3] and left is not None:
        grad_left = many.T @ (grad_folded if right is None else grad_folded @ right)
    if needed[4] and right is not None:
        grad_right = grad_folded.T @ (many @ left)
    return grad_users, grad_ads, grad_diag, grad_left, grad_right


def _setup_score(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:5])


def _score_backward(ctx, grad):
    users, ads, diag, left, right = ctx.saved_tensors
    return gradients(ctx.needs_input_grad, grad, users, ads, Form(diag, left, right), False) + (None, None)


def _score_pairs_backward(ctx, grad):
    users, ads, diag, left, right = ctx.saved_tensors
    return gradients(ctx.needs_input_grad, grad, users, ads, Form(diag, left, right), True) + (None, None)


# The backward of a selection is this op, which raises when it runs, not when it is traced: so a
# compiled function whose inputs ask for gradients (a tower's parameters) compiles and serves, and
# only running its backward raises, as in eager mode. It takes the output's gradient, which keeps
# it in the backward graph, and gives a tensor like `like`, an input's gradient.
_LIBRARY.define("no_gradient(Tensor grad, Tensor like, str op) -> Tensor")


def _no_gradient(grad, like, op):
    what = "a selection" if op.endswith("topk") else "a prepared set's packed rows hold no gradient"
    raise RuntimeError(f"{NAMESPACE}::{op} is not differentiable ({what}); to train through the "
                       f"candidates, score them with sk.score on their embeddings or {NAMESPACE}::score_pairs")


_LIBRARY.impl("no_gradient", _no_gradient, "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::no_gradient", lambda grad, like, op: torch.empty_like(like),
                            lib=_LIBRARY)


# A selection's scores computed from tensors that ask for gradients (the route's calls): the
# scores again, whose backward to those tensors says why there is none (no_gradient, in their
# shapes). An op, not an autograd.Function, so that dynamo sees one call in a compiled function.
_LIBRARY.define("refuse_gradient(Tensor scores, Tensor[] inputs, str op) -> Tensor")
_LIBRARY.impl("refuse_gradient", lambda scores, inputs, op: scores.clone(), "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::refuse_gradient", lambda scores, inputs, op: torch.empty_like(scores),
                            lib=_LIBRARY)


def _setup_refusal(ctx, inputs, output) -> None:
    ctx.op, ctx.inputs = inputs[2], [(x.shape, x.dtype) for x in inputs[1]]


def _refusal_backward(ctx, grad):
    return None, [ops.no_gradient(grad, grad.new_empty(shape, dtype=dtype), ctx.op) for shape, dtype in ctx.inputs], None


torch.library.register_autograd(f"{NAMESPACE}::refuse_gradient", _refusal_backward, setup_context=_setup_refusal,
                                lib=_LIBRARY)


# Each op's kernel (checks, then the simd or the torch path) and its fake.
KERNELS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "score": (_score, _score_fake), "score_pairs": (_score_pairs, _score_pairs_fake), "topk": (_topk, _topk_fake),
    "candidates_score": (_candidates_score, _candidates_score_fake),
    "candidates_topk": (_candidates_topk, _candidates_topk_fake)}
for _name, (_kernel, _fake) in KERNELS.items():  # one kernel for every device: it picks simd or torch itself
    _LIBRARY.impl(_name, _kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{_name}", _fake, lib=_LIBRARY)
torch.library.register_autograd(f"{NAMESPACE}::score", _score_backward, setup_context=_setup_score, lib=_LIBRARY)
torch.library.register_autograd(f"{NAMESPACE}::score_pairs", _score_pairs_backward, setup_context=_setup_score,
                                lib=_LIBRARY)
SELECTIONS = ("topk", "candidates_topk", "candidates_score")
for _name in SELECTIONS:  # no autograd kernel: a call costs no Python (the route marks gradients asked)
    _LIBRARY.impl(_name, torch.library.fallthrough_kernel, "Autograd")


# ---- the C++ kernels --------------------------------------------------------------------------------
_handed = threading.local()  # the last error of a Python kernel called by a C++ kernel, per thread


def _handing(kernel):
    """kernel, noting its error for the C++ kernel that called it (the dispatcher's C ABI keeps
    only a failure code; _take_error gives the C++ kernel the error's type and message)."""

    def run(*args):
        try:
            return kernel(*args)
        except Exception as error:
            _handed.error = error
            raise

    return run


def _take_error():
    error, _handed.error = getattr(_handed, "error", None), None
    return None if error is None else (type(error).__name__, str(error))


def _compiled_threads() -> int:
    """threads=None's count for the C++ kernels; 0 while a bad SPLITNET_KERNELS_THREADS stands
    (then the Python kernels raise it)."""
    try:
        return threads_.default()
    except ValueError:
        return 0


_LIBTORCH = {"darwin": "libtorch_cpu.dylib", "win32": "torch_cpu.dll"}


def _register_compiled() -> str:
    """Registers the C++ kernels for the CPU; returns "" or why they are not."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "python"):
        return f"{ENV}={choice!r} is not 'auto' or 'python': the Python kernels serve"
    if choice == "python":
        return f"{ENV}=python"
    if _dispatch.ISA_ERROR:
        return _dispatch.ISA_ERROR
    if not _simd.compiled():
        return _dispatch.status("simd")[1]
    global _PYTHON_LIBRARY
    _PYTHON_LIBRARY = torch.library.Library(PYTHON_NAMESPACE, "DEF")
    for name, schema in SCHEMAS.items():
        _PYTHON_LIBRARY.define(name + schema)
        _PYTHON_LIBRARY.impl(name, _handing(KERNELS[name][0]), "CompositeExplicitAutograd")
        _PYTHON_LIBRARY.impl(name, torch.library.fallthrough_kernel, "Autograd")
    try:
        libtorch = ctypes.CDLL(str(pathlib.Path(torch.__file__).parent / "lib" / _LIBTORCH.get(sys.platform,
                                                                                             "libtorch_cpu.so")))
        _simd.register_torch_ops(lambda name: ctypes.cast(getattr(libtorch, name), ctypes.c_void_p).value,
                                 _take_error, FOLD_LIMIT, _compiled_threads())
    except (OSError, AttributeError, ValueError, RuntimeError) as error:  # torch < 2.10: no stable ABI
        return f"the C++ kernels need LibTorch's stable ABI of torch >= 2.10: {error}"
    threads_.watch(lambda: _simd.set_torch_threads(_compiled_threads()))
    return ""


_PYTHON_LIBRARY = None
_WHY_NOT = _register_compiled()
_info.torch_ops.update(kernels="python" if _WHY_NOT else "c++", reason=_WHY_NOT or
                       "CPU float32 calls on the C++ kernels, the rest on the Python kernels")


# ---- the route of sk.score / sk.topk / Candidates for tensors -------------------------------------
_F32_NUMPY = np.dtype(np.float32)


def _as_tensor(x, device):
    """x as a float32 tensor on device: a tensor moved or cast only when it must be, a numpy
    array viewed (read-only ones too, through DLPack) and moved."""
    if not torch.is_tensor(x):
        x = torch.from_dlpack(np.asarray(x, np.float32))
    return x if x.dtype == torch.float32 and x.device == device else x.to(device=device, dtype=torch.float32)


# A set's rows are constants of a compiled graph, as a metric's form is (_constant_form below):
# dynamo cannot trace from_dlpack.
@constant_when_compiled
def _packed_tensors(store, device):
    """(data, scales) of a Storage as tensors on device, viewed without copying on the CPU."""
    data = torch.from_dlpack(store.data).view(_PACKED_AS[store.dtype])  # bfloat16 rows: from their bits
    scales = None if store.scales is None else torch.from_dlpack(store.scales).to(device)
    return data.to(device), scales


def _cached_form(metric: Metric, like) -> Form:
    """The metric's form as tensors like `like`, cached by the metric: made outside inference
    mode, since an inference tensor could not be saved for a gradient later."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return metric._tensor_params(like)
    return metric._tensor_params(like)


@constant_when_compiled
def _constant_form(metric: Metric, device, dtype) -> tuple:
    """_cached_form for dynamo, which runs it once while tracing and keeps the tensors as
    constants of the graph (it cannot read the metric's immutable numpy arrays itself)."""
    return tuple(_cached_form(metric, torch.empty(0, device=device, dtype=dtype)))


def _form_of(metric: Metric, users) -> Form:
    """The metric's form as tensors like users: cached for eager calls, constants under dynamo,
    and made afresh under other tracing (a fake tensor cached would poison later calls)."""
    if holds_values(users):
        return _cached_form(metric, users)
    if torch.compiler.is_dynamo_compiling():
        return Form(*_constant_form(metric, users.device, users.dtype))
    return Form(*(None if x is None else torch.tensor(x, device=users.device, dtype=users.dtype) for x in metric.form))


def score(request: Request, out, pairwise: bool):
    """The route's score for tensors under backend='auto' (_route.score): one op call."""
    users, store, metric = request.users, request.store, request.metric
    device = device_of(users, store)
    users = _as_tensor(users, device)
    form = _form_of(metric, users)
    if not is_plain(store):
        data, scales = _packed_tensors(store, device)
        allowed = None if request.ids is None else torch.from_numpy(request.ids).to(device)
        result = ops.candidates_score.default(users, data, scales, allowed, *form, metric.bias, request.threads)
        wanting = wanting_gradients(users)
        if wanting:
            result = refused("candidates_score", result, wanting)
    else:
        op = ops.score_pairs if pairwise else ops.score
        result = op.default(users, _as_tensor(store, device), *form, metric.bias, request.threads)
    if request.output == "probability":
        result = probability(result, in_place=True)
    if out is None:
        return result
    return out.copy_(result)


def topk(request: Request):
    """The route's topk for tensors under backend='auto' (_route.topk): one op call."""
    users, store, metric, k = request.users, request.store, request.metric, request.k
    device = device_of(users, store)
    users = _as_tensor(users, device)
    form = _form_of(metric, users)
    sigmoid = request.output == "probability"
    if not is_plain(store):
        data, scales = _packed_tensors(store, device)
        allowed = None if request.ids is None else torch.from_numpy(request.ids).to(device)
        name, inputs = "candidates_topk", [users]
        scores, ids = ops.candidates_topk.default(users, data, scales, allowed, *form, metric.bias, k,
                                                  request.threads, sigmoid)
    else:
        ads = _as_tensor(store, device)
        name, inputs = "topk", [users, ads]
        scores, ids = ops.topk.default(users, ads, *form, metric.bias, k, request.threads, sigmoid)
    wanting = wanting_gradients(*inputs)
    return (refused(name, scores, wanting), ids) if wanting else (scores, ids)


# ---- objectives with tensors that ask for gradients -----------------------------------------------
def refused(name: str, scores, wanting: list):
    """A selection's scores, whose backward to the tensors `wanting` a gradient says why there is none."""
    return ops.refuse_gradient.default(scores, wanting, name)


def score_by_objective(cands, users, ads, bids, metric, *, output, sigmoid: bool, threads, out):
    """sk.score with objectives (or bids) on tensors that ask for a gradient: each objective's
    logits from the score op, which has gradients, and the quantity from them with torch ops, so
    that the gradient reaches the users, the ads and the bids. cands is the set of the ads, with
    their objectives and bids checked (cands.score answers the same without gradients)."""
    users, metric, threads, output = cands._operands(users, metric, threads, output, sigmoid)
    device = users.device
    users, ads = _as_tensor(users, device), _as_tensor(ads, device)
    shape = _scoreshape(users, ads.shape[0])
    out = check_out(out, shape, True, device)
    objectives = np.zeros(len(cands), np.int64) if cands.objectives is None else cands.objectives
    groups = [(int(t), np.flatnonzero(objectives == t)) for t in np.unique(objectives)]
    result = users.new_zeros(shape)  # no candidates
    if groups:
        logits = torch.cat([score(Request(users, ads[torch.from_numpy(rows).to(device)],
                                          metric[t] if isinstance(metric, ObjectiveMetrics) else metric,
                                          threads=threads), None, False)
                            for t, rows in groups], -1)
        order = np.concatenate([rows for _, rows in groups])
        result = logits.index_select(-1, torch.from_numpy(np.argsort(order)).to(device))  # in the ads' order
    if output != "logit":
        result = probability(result, in_place=True)
    if output == "value" and bids is not None:
        weights = bids if isinstance(bids, _TENSOR) else torch.from_numpy(cands.bids)  # checked by the set
        result = result * weights.to(device=device, dtype=torch.float32)
    return result if out is None else out.copy_(result)
