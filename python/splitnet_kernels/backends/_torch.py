"""The PyTorch backend: torch ops end to end, on whatever device the tensors live on. scores and
topk_blocks are its arithmetic on folded users, which the custom ops (_torch_ops) run off the CPU."""

from __future__ import annotations

import contextlib
import threading

from ._arrays import ArrayBackend
from .. import _threads
from .._order import chunked_topk, topk_torch

_THREADS_LOCK = threading.Lock()  # torch's thread count is process-wide


def scores(folded, ads, bias, pairwise: bool):
    """folded users (n,) or (M, n) against float rows ads (N, n) -> (N,) or (M, N), + bias;
    pairwise: row i against row i -> (B,)."""
    if pairwise:
        raw = (folded * ads).sum(-1)
    else:
        raw = ads @ folded if folded.dim() == 1 else folded @ ads.T
    return raw + bias


def topk_blocks(folded, rows, count: int, bias, k: int):
    """The best k of `count` candidates for folded users (M, n), float32, in the package's order;
    rows(begin, end) gives candidates [begin, end) as float rows, a block at a time."""
    return chunked_topk(lambda begin, end: scores(folded, rows(begin, end), bias, False), folded.shape[0], count, k,
                        topk=topk_torch)


@contextlib.contextmanager
def _torch_threads(torch, threads, device):
    """torch's thread count for a CPU call: threads, or the package's default for None."""
    if device.type != "cpu":
        yield
        return
    threads = _threads.default() if threads is None else threads
    if torch.get_num_threads() == threads:  # nothing to change (and no lock to wait for)
        yield
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


class TorchBackend(ArrayBackend):
    name = "torch"
    native = "torch"

    def status(self):
        try:
            import torch
        except ImportError as error:
            return False, f"torch not importable: {error}"
        devices = "cpu" + (", cuda" if torch.cuda.is_available() else "")
        return True, f"torch {torch.__version__} ({devices})"

    def as_rows(self, rows, like):
        import torch

        return torch.from_numpy(rows if rows.flags.writeable else rows.copy()).to(like.device)

    @staticmethod
    def concatenate(parts):
        import torch

        return torch.cat(parts, -1)

    def score_rows(self, users, ads, metric, *, pairwise, threads, out):
        import torch

        with _torch_threads(torch, threads, ads.device), torch.no_grad():
            folded = metric.fold(users.to(torch.float32))
            result = scores(folded, ads.to(torch.float32), metric.bias, pairwise)
        if out is None:
            return result
        out.copy_(result)
        return out

    def topk_rows(self, users, ads, k, metric, *, threads):
        import torch

        with _torch_threads(torch, threads, ads.device), torch.no_grad():
            folded = metric.fold(users.to(torch.float32))
            ads = ads.to(torch.float32)
            return topk_blocks(folded, lambda begin, end: ads[begin:end], ads.shape[0], metric.bias, k)
