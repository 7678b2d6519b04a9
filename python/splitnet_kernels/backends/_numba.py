"""The Numba backend: float32 parallel kernels for score and a fused top-k, compiled on first use."""

from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace

import numpy as np

from ._arrays import ArrayBackend
from .. import _threads

_INT32_MIN = -(2**31)
_INT64_MIN = -(2**63)
_LOW32 = 0xFFFFFFFF
# Tasks per thread: prange hands each thread an equal run of tasks, so several smaller tasks
# per thread even out tasks of unequal cost.
_TASKS_PER_THREAD = 4
# Below this many candidates per chunk, splitting the candidates costs more than it saves.
_MIN_CHUNK = 1024
# Top-k over several chunks keeps a (users, k) heap per chunk: at most this many entries in all.
_HEAP_ENTRIES = 1 << 22
# A transposed candidate tile: about this many bytes, so it stays in the L2 cache while every
# user of a block reads it; rows padded so that their stride is not a power of two (such rows
# share cache sets and evict each other).
_TILE_BYTES = 64 * 1024
_TILE_PAD = 16

# The kernels below are plain functions until _kernels() compiles them. Numba resolves a
# function's globals when it compiles it, so _kernels() first rebinds prange and the helpers
# here to numba's; that way this module imports without numba.
prange = range


# ---- helpers (compiled into the kernels) -----------------------------------------------------
def _order_key(score):
    """An int32 that sorts as the package's order: bigger ranks first, NaN below everything."""
    if score != score:
        return np.int32(_INT32_MIN)
    bits = np.float32(score + np.float32(0.0)).view(np.int32)  # + 0 turns -0 into +0: they tie
    return np.int32(bits ^ ((bits >> 31) & 0x7FFFFFFF))


def _rank_key(score, cand):
    """An int64 that orders (score, candidate) pairs, bigger first: the score's order key above
    the complement of the candidate index, so equal scores put the lower index first. One integer
    compare then decides the whole order. Needs 0 <= cand <= 0xFFFFFFFF."""
    return (np.int64(_order_key(score)) << 32) | (_LOW32 - cand)


def _sift_down(ranks, scores, i, size):
    """Restores the heap below i; the heap's root is its worst entry (the smallest rank key)."""
    while True:
        worst, left = i, 2 * i + 1
        if left < size and ranks[left] < ranks[worst]:
            worst = left
        if left + 1 < size and ranks[left + 1] < ranks[worst]:
            worst = left + 1
        if worst == i:
            return
        ranks[i], ranks[worst] = ranks[worst], ranks[i]
        scores[i], scores[worst] = scores[worst], scores[i]
        i = worst


def _part(total, parts, index):
    """[begin, end) of part `index` when `total` items are split into `parts` near-equal parts."""
    return total * index // parts, total * (index + 1) // parts


def _dot(x, y):
    """x . y in float32, the products added in dimension order: the order of every kernel."""
    acc = np.float32(0.0)
    for d in range(x.shape[0]):
        acc += x[d] * y[d]
    return acc


def _biased(acc, bias):
    """acc + bias, any NaN made the one quiet NaN: which NaN an add passes on depends on operand
    order, which the compiler may swap, and every path must give the same bits."""
    score = acc + bias
    return score if score == score else np.float32(np.nan)


def _transpose_tile(ads, begin, width, tile_t):
    """tile_t[:, j] = ads[begin + j] for j < width, so that _score_user can vectorize."""
    for j in range(width):
        row = ads[begin + j]
        for d in range(row.shape[0]):
            tile_t[d, j] = row[d]


def _score_user(folded_user, ads, begin, width, tile_t, transposed, bias, out):
    """out[j] = _biased(folded_user . ads[begin + j], bias) for j < width, bitwise alike either way.

    transposed: read the candidates from tile_t (made by _transpose_tile), where each dot still
    adds its products in dimension order and the loop across candidates vectorizes; worth its
    transpose only when several users share the tile. Otherwise read the rows of ads directly.
    """
    if not transposed:
        for j in range(width):
            out[j] = _biased(_dot(folded_user, ads[begin + j]), bias)
        return
    for j in range(width):
        out[j] = 0.0
    for d in range(folded_user.shape[0]):
        weight, row = folded_user[d], tile_t[d]
        for j in range(width):
            out[j] += weight * row[j]
    for j in range(width):
        out[j] = _biased(out[j], bias)


_HELPERS = (_order_key, _rank_key, _sift_down, _part, _dot, _biased, _transpose_tile, _score_user)


# ---- kernels -----------------------------------------------------------------------------
def _cross(folded, ads, bias, n_blocks, n_chunks, tile, out):
    """out[u, c] = folded[u] . ads[c] + bias. A task is (user block, candidate chunk): it walks
    its chunk a tile at a time and scores every user of its block against the tile. One user
    alone (one block) is the one-vs-many case: its candidates are split across threads."""
    n_users, n_cands, dim = folded.shape[0], ads.shape[0], ads.shape[1]
    for task in prange(n_blocks * n_chunks):
        u0, u1 = _part(n_users, n_blocks, task // n_chunks)
        c0, c1 = _part(n_cands, n_chunks, task % n_chunks)
        shared = u1 - u0 > 1
        tile_t = np.empty((dim, tile + _TILE_PAD), np.float32)
        for t0 in range(c0, c1, tile):
            width = min(tile, c1 - t0)
            if shared:
                _transpose_tile(ads, t0, width, tile_t)
            for u in range(u0, u1):
                _score_user(folded[u], ads, t0, width, tile_t, shared, bias, out[u, t0:t0 + width])


def _pairwise(folded, ads, bias, out):
    """out[i] = folded[i] . ads[i] + bias; the rows are split across threads."""
    for i in prange(folded.shape[0]):
        out[i] = _biased(_dot(folded[i], ads[i]), bias)


def _topk(folded, ads, bias, n_blocks, tile, heap_scores, heap_ids):
    """Fused top-k: heap_*[c, u] becomes the best k of chunk c for user u, sorted best first.

    Tasks and tiles as in _cross, and every chunk holds >= k candidates. Scores go to a tile-sized
    buffer, never to an (M, N) matrix. The first k candidates of a chunk fill a heap whose root
    is the worst kept entry; every later candidate is one compare against that root (the gate),
    and only the few that pass cost a sift. While scanning, heap_ids holds rank keys.
    """
    n_chunks, n_users, k = heap_scores.shape
    n_cands, dim = ads.shape
    for task in prange(n_blocks * n_chunks):
        chunk = task % n_chunks
        u0, u1 = _part(n_users, n_blocks, task // n_chunks)
        c0, c1 = _part(n_cands, n_chunks, chunk)
        shared = u1 - u0 > 1
        tile_t = np.empty((dim, tile + _TILE_PAD), np.float32)
        scores = np.empty(tile, np.float32)
        full = c0 + k  # the candidate at which the heaps are full
        for t0 in range(c0, c1, tile):
            width = min(tile, c1 - t0)
            filling = min(width, max(0, full - t0))  # leading tile entries taken unconditionally
            if shared:
                _transpose_tile(ads, t0, width, tile_t)
            for u in range(u0, u1):
                heap_s, heap_r = heap_scores[chunk, u], heap_ids[chunk, u]
                _score_user(folded[u], ads, t0, width, tile_t, shared, bias, scores)
                for j in range(filling):
                    heap_s[t0 + j - c0], heap_r[t0 + j - c0] = scores[j], _rank_key(scores[j], t0 + j)
                if t0 < full <= t0 + width:  # the heap just filled up
                    for i in range(k // 2 - 1, -1, -1):
                        _sift_down(heap_r, heap_s, i, k)
                for j in range(filling, width):
                    rank = _rank_key(scores[j], t0 + j)
                    if rank > heap_r[0]:
                        heap_s[0], heap_r[0] = scores[j], rank
                        _sift_down(heap_r, heap_s, 0, k)
        for u in range(u0, u1):  # heapsort (the worst goes to the back), then rank keys -> ids
            heap_s, heap_r = heap_scores[chunk, u], heap_ids[chunk, u]
            for end in range(k - 1, 0, -1):
                heap_s[0], heap_s[end] = heap_s[end], heap_s[0]
                heap_r[0], heap_r[end] = heap_r[end], heap_r[0]
                _sift_down(heap_r, heap_s, 0, end)
            for i in range(k):
                heap_r[i] = _LOW32 - (heap_r[i] & _LOW32)


def _merge(heap_scores, heap_ids, out_scores, out_ids):
    """out_*[u] = the best k of the sorted lists heap_*[:, u]: a k-way merge per user."""
    n_chunks, n_users, k = heap_scores.shape
    for u in prange(n_users):
        heads = np.zeros(n_chunks, np.int64)
        for r in range(k):
            best, best_rank = 0, np.int64(_INT64_MIN)  # below every rank key
            for c in range(n_chunks):
                if heads[c] < k:
                    rank = _rank_key(heap_scores[c, u, heads[c]], heap_ids[c, u, heads[c]])
                    if rank > best_rank:
                        best, best_rank = c, rank
            out_scores[u, r] = heap_scores[best, u, heads[best]]
            out_ids[u, r] = heap_ids[best, u, heads[best]]
            heads[best] += 1


@functools.cache
def _kernels():
    """(numba, the compiled kernels); compiles them, or loads them from numba's cache, once."""
    import numba

    namespace = globals()
    namespace["prange"] = numba.prange
    helper = numba.njit(fastmath=False, cache=True, nogil=True)
    for function in _HELPERS:  # the plain functions, so that a second build compiles them afresh
        namespace[function.__name__] = helper(function)
    kernel = numba.njit(parallel=True, fastmath=False, cache=True, nogil=True)
    return numba, SimpleNamespace(cross=kernel(_cross), pairwise=kernel(_pairwise),
                                  topk=kernel(_topk), merge=kernel(_merge))


# ---- the backend -------------------------------------------------------------------------
@contextlib.contextmanager
def _thread_count(numba, threads):
    """Sets numba's (thread-local) thread count for the call and yields it; restores it after.
    None: the package's default (_threads.default())."""
    limit = numba.config.NUMBA_NUM_THREADS
    count = max(1, min(int(_threads.default() if threads is None else threads), limit))
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield count
    finally:
        numba.set_num_threads(previous)


def _grid(n_users, n_cands, threads, min_chunk, max_chunks):
    """(user blocks, candidate chunks) for about _TASKS_PER_THREAD tasks per thread. Candidate
    chunks come first: a block transposes each tile once for all its users, so the fewer the
    blocks the less transposing. Chunks hold >= min_chunk candidates, and at most max_chunks."""
    tasks = threads * _TASKS_PER_THREAD if threads > 1 else 1
    chunks = max(1, min(tasks, n_cands // min_chunk, max_chunks))
    return min(n_users, -(-tasks // chunks)), chunks


def _tile(dim):
    return max(32, min(512, _TILE_BYTES // (4 * dim)))


def _prepare(users, ads, metric):
    """Folded users (always 2-D) and ads as C-contiguous float32, converted once; the bias.

    One user is folded as a (1, n) batch, as top-k folds it, so that both see the same bits.
    """
    users = np.asarray(users, np.float32)
    folded = metric.fold(users.reshape(-1, users.shape[-1]))
    return (np.ascontiguousarray(folded, dtype=np.float32),
            np.ascontiguousarray(ads, dtype=np.float32), np.float32(metric.bias))


class NumbaBackend(ArrayBackend):
    name = "numba"
    native = "numpy"

    def status(self):
        try:
            import numba
        except ImportError as error:
            return False, f"numba not importable: {error}"
        return True, f"numba {numba.__version__}"

    def score_rows(self, users, ads, metric, *, pairwise, threads, out):
        numba, kernels = _kernels()
        folded, ads, bias = _prepare(users, ads, metric)
        shape = np.shape(users)[:-1] + (() if pairwise else ads.shape[:1])
        # The kernels write C-contiguous arrays: `out` itself when it is one, else a new array.
        target = out if out is not None and out.flags.c_contiguous else np.empty(shape, np.float32)
        with _thread_count(numba, threads) as count:
            if pairwise:
                kernels.pairwise(folded, ads, bias, target)
            else:
                blocks, chunks = _grid(folded.shape[0], ads.shape[0], count, _MIN_CHUNK, ads.shape[0])
                kernels.cross(folded, ads, bias, blocks, chunks, _tile(ads.shape[1]),
                              target.reshape(folded.shape[0], ads.shape[0]))
        if out is not None and target is not out:
            out[...] = target
            return out
        return target

    def topk_rows(self, users, ads, k, metric, *, threads):
        if ads.shape[0] > _LOW32 + 1:
            raise ValueError(f"at most 2**32 candidates per call on this backend, got {ads.shape[0]}")
        numba, kernels = _kernels()
        folded, ads, bias = _prepare(users, ads, metric)
        scores = np.empty((folded.shape[0], k), np.float32)
        ids = np.empty((folded.shape[0], k), np.int64)
        with _thread_count(numba, threads) as count:
            # Chunks of >= k candidates, so that each fills its heaps; per-chunk heaps within budget.
            blocks, chunks = _grid(folded.shape[0], ads.shape[0], count, max(k, _MIN_CHUNK),
                                   max(1, _HEAP_ENTRIES // scores.size))
            if chunks == 1:  # one chunk: its heaps are the result
                kernels.topk(folded, ads, bias, blocks, _tile(ads.shape[1]), scores[None], ids[None])
            else:
                heap_scores = np.empty((chunks,) + scores.shape, np.float32)
                heap_ids = np.empty((chunks,) + ids.shape, np.int64)
                kernels.topk(folded, ads, bias, blocks, _tile(ads.shape[1]), heap_scores, heap_ids)
                kernels.merge(heap_scores, heap_ids, scores, ids)
        return scores, ids
