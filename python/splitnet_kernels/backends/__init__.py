"""The backends behind score and topk, and the one request the route hands each of them.

Every backend takes a Request of checked operands and gives float32 results, bias included:

    score(request, out)        request.users (n,) or (M, n) against request.store -> (N,) or (M, N)
    score_pairs(request, out)  request.users (B, n) against the rows request.store (B, n) -> (B,)
    topk(request)              request.users (M, n), request.k <= N -> (scores (M, k), ids (M, k))
    native                     what the backend computes on: "kernels" (NumPy float32 rows that are
                               contiguous and float-aligned), "numpy" or "torch"
    topk_value                 a capability: the scan by value inside the backend's own kernels,
                               or None where the route runs it (see _objectives.scan_by_value)

The request's users and plain store come as `native` says (the route converts them); a packed
Storage comes as it is. Every backend scores through the metric's canonical form and ranks in
the order of _order.py. Nothing asks for a backend by name: what one can do, it says.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Request(NamedTuple):
    """One call on the route, as a backend receives it: the users, the candidate store (plain
    float rows (N, n), or packed Storage), what scores them (a Metric, or anything with its `form`
    and `bias`), the allowed candidate ids (ascending int64, None: all), k (0: scores), the
    quantity asked for ("logit" or "probability": the route forms it, a backend computes logits)
    and the thread bound (None: the process-wide count)."""

    users: Any
    store: Any
    metric: Any
    ids: Any = None
    k: int = 0
    output: str = "logit"
    threads: int | None = None
