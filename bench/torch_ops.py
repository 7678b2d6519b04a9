"""The custom ops (issue 14), measured in turns: W6 through the ops on tensors against sk.topk on
NumPy arrays; a CPU training step of the campaign model with MetricHead on the kernels against the
pure-torch head MetricHead keeps; the first call of a compiled serving function.

    python bench/torch_ops.py                  # all three
    python bench/torch_ops.py --only w6        # or train, compile
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python bench/torch_ops.py --only compile   # a cold cache

W6 also times two floors: an op of topk's schema whose Python kernel does nothing, and a C++ op
(aten.neg), i.e. what the torch.ops round trip costs before any work. Figures and what they mean:
bench/RESULTS.md, "Torch ops overhead (issue 14)".
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

import splitnet_kernels as sk
from splitnet_kernels.benchmark import workloads as wl
from splitnet_kernels.nn import MetricHead, SplitNet


def _per_call(call, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


_FLOOR_LIBRARY = None


def _floor_op(k: int):
    """An op with topk's schema whose Python kernel returns two ready tensors: what the
    dispatcher's round trip into Python costs with no work in it."""
    global _FLOOR_LIBRARY
    scores, ids = torch.empty(k), torch.empty(k, dtype=torch.int64)
    _FLOOR_LIBRARY = torch.library.Library("splitnet_kernels_floor", "DEF")
    _FLOOR_LIBRARY.define("topk" + sk._torch_ops.SCHEMAS["topk"])
    _FLOOR_LIBRARY.impl("topk", lambda *args: (scores, ids), "CompositeExplicitAutograd")
    return torch.ops.splitnet_kernels_floor.topk.default


def w6(rounds: int) -> None:
    ads, user = wl.one_request()
    k = wl.REQUEST_K
    users, candidates = torch.from_numpy(user), torch.from_numpy(ads)
    form = sk.Metric.dot(wl.DIM)._tensor_params(users)
    op = torch.ops.splitnet_kernels.topk.default
    floor = _floor_op(k)
    cases = {"sk.topk, NumPy arrays": lambda: sk.topk(user, ads, k),
             "sk.topk, tensors": lambda: sk.topk(users, candidates, k),
             "torch.ops.splitnet_kernels.topk": lambda: op(users, candidates, *form, 0.0, k),
             "floor: a Python op that does nothing": lambda: floor(users, candidates, *form, 0.0, k),
             "floor: torch.ops.aten.neg (C++)": lambda: torch.ops.aten.neg.default(users)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for call in cases.values():
        _per_call(call, 500)
    for _ in range(rounds):
        for name, call in cases.items():
            times[name].append(_per_call(call, 2000))
    base = float(np.median(times["sk.topk, NumPy arrays"]))
    print(f"W6: one user x {len(ads):,} candidates, top-{k}, median of {rounds} rounds in turns")
    for name, values in times.items():
        print(f"  {name:34s} {np.median(values) * 1e6:7.2f} us  {np.median(values) / base:5.2f}x")


def _kernel_forward(self, users, ads):
    """MetricHead.forward on the package's custom ops (simd forward and backward on CPU)."""
    self._check(users, ads, pairwise=True)
    diag, left, right = self.form()
    diag = diag.expand(self.dim) if diag is not None and diag.ndim == 0 else diag  # scaled: a vector
    return self._finish(torch.ops.splitnet_kernels.score_pairs(users, ads, diag, left, right, 0.0))


class _KernelHead(MetricHead):
    forward = _kernel_forward


def train(steps: int) -> None:
    """splitnet-kernels experiment's model and step: 32 user and 32 ad features, dim 32, rank 4,
    hidden (64,), batch 1024, Adam, BCE with logits; one torch thread."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    batch = 1024
    user_x, ad_x = (torch.from_numpy(rng.standard_normal((batch, 32)).astype(np.float32)) for _ in range(2))
    labels = torch.from_numpy((rng.random(batch) < 0.1).astype(np.float32))
    objective = torch.from_numpy(rng.integers(0, 3, batch))
    print(f"training step, batch {batch}, median of {steps} steps in turns (ms)")
    for kind, objectives in (("dot", None), ("diagonal", None), ("low_rank", None), ("full", None), ("full", 3)):
        plain = SplitNet(32, 32, 32, kind=kind, rank=4 if kind == "low_rank" else None, n_objectives=objectives)
        kernels = copy.deepcopy(plain)
        kernels.head.__class__ = _KernelHead
        steppers = []
        for model in (kernels, plain):
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

            def step(model=model, optimizer=optimizer):
                logits = model(user_x, ad_x)
                if logits.ndim == 2:
                    logits = logits.gather(1, objective[:, None]).squeeze(1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                return loss.item()

            steppers.append(step)
        first = [step() for step in steppers]
        assert abs(first[0] - first[1]) < 1e-5, first  # one model, two heads
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(steps):
            for step, spent in zip(steppers, times):
                start = time.perf_counter()
                step()
                spent.append(time.perf_counter() - start)
        ours, theirs = (float(np.median(t)) * 1e3 for t in times)
        name = kind + ("+obj" if objectives else "")
        print(f"  {name:10s} kernels {ours:7.3f}  torch {theirs:7.3f}  {ours / theirs:5.2f}x")


def compile_first() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_torch_ops import _serving  # the tests' serving function: towers, two top-k, a gather

    serve, inputs = _serving(np.random.default_rng(0))
    with torch.no_grad():
        for backend in ("aot_eager", "inductor"):
            compiled = torch.compile(copy.deepcopy(serve), fullgraph=True, backend=backend)
            start = time.perf_counter()
            compiled(*inputs)
            first = time.perf_counter() - start
            print(f"first call of the compiled serving function, backend {backend}: {first:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("w6", "train", "compile"))
    parser.add_argument("--rounds", type=int, default=21, help="W6 rounds")
    parser.add_argument("--steps", type=int, default=150, help="training steps per head")
    args = parser.parse_args()
    if args.only in (None, "w6"):
        w6(args.rounds)
    if args.only in (None, "train"):
        train(args.steps)
    if args.only in (None, "compile"):
        compile_first()


if __name__ == "__main__":
    main()
