"""The custom ops (issues 14 and 27), measured in turns: W6 and one user x 100,000 (top-100)
through the ops on tensors against sk.topk on NumPy arrays and torch's own eager top-k; a compiled
serving function (a tower and sk.topk) against its parts; a CPU training step of the campaign
model with MetricHead on the kernels against the pure-torch head MetricHead keeps; the first call
of a compiled serving function (the tests' and the README's).

    python bench/torch_ops.py                  # all
    python bench/torch_ops.py --only w6        # or large, serving, train, compile
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python bench/torch_ops.py --only compile   # a cold cache

The op runs on the kernels sk.info()["torch_ops"] names (SPLITNET_KERNELS_TORCH_OPS=python: the
Python ones); W6 also times the Python kernels through the dispatcher (splitnet_kernels_python,
where the C++ kernels are registered) and three floors: an op of topk's schema whose Python
kernel does nothing, the op on no candidates (the dispatcher, the argument conversion and two
empty results), and a C++ op (aten.neg). Figures and what they mean: bench/RESULTS.md, "Torch ops
overhead (issue 14)" and "Torch ops in C++ (issue 27)".
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


def _kernels() -> str:
    """Which kernels the ops run on the CPU ("python" before issue 27's C++ kernels)."""
    return sk.info().get("torch_ops", {}).get("kernels") or "python"


def _in_turns(title: str, cases: dict, rounds: int, calls: int) -> None:
    """Times the cases in turns, `calls` calls a round; prints each one's median and quartiles
    per call, and its median over the first case's."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for call in cases.values():
        _per_call(call, max(calls // 4, 1))
    for _ in range(rounds):
        for name, call in cases.items():
            times[name].append(_per_call(call, calls))
    base = float(np.median(next(iter(times.values()))))
    print(f"{title}, {_kernels()} kernels, median [quartiles] of {rounds} rounds in turns")
    for name, values in times.items():
        low, middle, high = np.percentile(values, (25, 50, 75))
        print(f"  {name:44s} {middle * 1e6:8.2f} us [{low * 1e6:7.2f}, {high * 1e6:7.2f}]  {middle / base:5.2f}x")


def _op_cases(user, ads, k: int) -> dict:
    """sk.topk on NumPy arrays (first: the base), the op, and torch's own eager top-k."""
    users, candidates = torch.from_numpy(user), torch.from_numpy(ads)
    form = sk.Metric.dot(ads.shape[1])._tensor_params(users)
    op = torch.ops.splitnet_kernels.topk.default
    return {"sk.topk, NumPy arrays": lambda: sk.topk(user, ads, k),
            "torch.ops.splitnet_kernels.topk (eager)": lambda: op(users, candidates, *form, 0.0, k),
            f"torch.topk(A @ q, {k}) (eager)": lambda: torch.topk(candidates @ users, k),
            "sk.topk, tensors": lambda: sk.topk(users, candidates, k)}


def w6(rounds: int) -> None:
    ads, user = wl.one_request()
    k = wl.REQUEST_K
    users, candidates = torch.from_numpy(user), torch.from_numpy(ads)
    form = sk.Metric.dot(wl.DIM)._tensor_params(users)
    cases = _op_cases(user, ads, k)
    if _kernels() == "c++":
        python = torch.ops.splitnet_kernels_python.topk.default
        cases["the Python kernels through the dispatcher"] = lambda: python(users, candidates, *form, 0.0, k)
    floor, op = _floor_op(k), torch.ops.splitnet_kernels.topk.default
    none = candidates[:0]
    cases.update({"floor: a Python op that does nothing": lambda: floor(users, candidates, *form, 0.0, k),
                  "floor: the op on no candidates": lambda: op(users, none, *form, 0.0, k),
                  "floor: torch.ops.aten.neg (C++)": lambda: torch.ops.aten.neg.default(users)})
    _in_turns(f"W6: one user x {len(ads):,} candidates, top-{k}", cases, rounds, 2000)


def large(rounds: int) -> None:
    """One user x 100,000 candidates, top-100: where the op's fixed cost should vanish."""
    rng = np.random.default_rng(0)
    ads = rng.standard_normal((100_000, wl.DIM)).astype(np.float32)
    user = rng.standard_normal(wl.DIM).astype(np.float32)
    _in_turns("one user x 100,000 candidates, top-100", _op_cases(user, ads, 100), rounds, 50)


def serving(rounds: int) -> None:
    """A compiled serving function (a user tower, then sk.topk over W6's candidates) against its
    parts: the compiled tower alone, and sk.topk on NumPy arrays. What the op adds over its
    kernel: serve - tower - sk.topk; the floor of any op there: the same function over no
    candidates (the op's call with no work); and the op called in the function directly (not
    through sk.topk), over the candidates and over none."""
    ads, _ = wl.one_request()
    k = wl.REQUEST_K
    torch.manual_seed(0)
    tower = torch.nn.Linear(32, wl.DIM).eval()
    features, candidates = torch.randn(32), torch.from_numpy(ads)
    user = tower(features).detach().numpy()

    none = candidates[:0]
    with torch.no_grad():
        compiled_serve = torch.compile(lambda x: sk.topk(tower(x), candidates, k), fullgraph=True)
        compiled_tower = torch.compile(lambda x: tower(x), fullgraph=True)
        compiled_floor = torch.compile(lambda x: sk.topk(tower(x), none, k), fullgraph=True)
        op = torch.ops.splitnet_kernels.topk.default
        compiled_op = torch.compile(lambda x: op(tower(x), candidates, None, None, None, 0.0, k), fullgraph=True)
        compiled_op_none = torch.compile(lambda x: op(tower(x), none, None, None, None, 0.0, k), fullgraph=True)
        for compiled in (compiled_serve, compiled_tower, compiled_floor, compiled_op, compiled_op_none):
            compiled(features)
        _in_turns(f"a compiled serving function (tower, then sk.topk over {len(ads):,}, top-{k})",
                  {"sk.topk, NumPy arrays": lambda: sk.topk(user, ads, k),
                   "compiled tower alone": lambda: compiled_tower(features),
                   "compiled tower + sk.topk (the op)": lambda: compiled_serve(features),
                   "floor: compiled tower + the op on no candidates": lambda: compiled_floor(features),
                   "compiled tower + the op called directly": lambda: compiled_op(features),
                   "compiled tower + the op called directly, no candidates": lambda: compiled_op_none(features)},
                  rounds, 2000)


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


def _readme_serving():
    """The README's compiled serving function as printed, with its names filled in as the
    tests fill them (tests/test_torch_promises.py), and its inputs."""
    torch.manual_seed(0)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## A compiled serving function (PyTorch)"):]
    block = section[section.index("```python\n") + 10:section.index("```", section.index("```python\n") + 10)]
    names = {"user_tower": torch.nn.Linear(16, 8), "ad_tower": torch.nn.Linear(12, 8),
             "m": sk.Metric.diagonal(np.random.default_rng(0).random(8) + 0.5, bias=-1.0),
             "ad_ids": torch.arange(5000, 5300)}
    exec(compile(block.replace("serve = torch.compile(serve, fullgraph=True)", ""), "README.md", "exec"), names)
    return names["serve"], (torch.randn(4, 16), torch.randn(300, 12))


def compile_first() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_torch_ops import _serving  # the tests' serving function: towers, two top-k, a gather

    for what, (serve, inputs) in (("the tests' serving function", _serving(np.random.default_rng(0))),
                                  ("the README's serving function", _readme_serving())):
        for backend in ("aot_eager", "inductor"):
            torch._dynamo.reset()
            compiled = torch.compile(copy.deepcopy(serve), fullgraph=True, backend=backend)
            start = time.perf_counter()
            with torch.no_grad():
                compiled(*inputs)
            first = time.perf_counter() - start
            print(f"first call of {what}, backend {backend}: {first:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("w6", "large", "serving", "train", "compile"))
    parser.add_argument("--rounds", type=int, default=21, help="rounds of W6, large and serving")
    parser.add_argument("--steps", type=int, default=150, help="training steps per head")
    args = parser.parse_args()
    if args.only in (None, "w6"):
        w6(args.rounds)
    if args.only in (None, "large"):
        large(args.rounds)
    if args.only in (None, "serving"):
        serving(args.rounds)
    if args.only in (None, "train"):
        train(args.steps)
    if args.only in (None, "compile"):
        compile_first()


if __name__ == "__main__":
    main()
