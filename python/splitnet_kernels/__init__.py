"""splitnet_kernels: score and top-k for ads light ranking with a learned bilinear similarity.

    import splitnet_kernels as sk
    m = sk.Metric.diagonal(s)
    scores, ids = sk.topk(user, ads, 100, m)
"""

from ._api import merge_topk, score, topk
from ._candidates import Candidates
from ._info import backends, get_include, info, set_isa
from ._live import LiveCandidates, LiveSnapshot
from ._metric import Metric
from ._objectives import ObjectiveMetrics
from ._threads import set_threads
from ._version import __version__

__all__ = ["Candidates", "LiveCandidates", "LiveSnapshot", "Metric", "ObjectiveMetrics", "__version__", "backends",
           "get_include", "info", "merge_topk", "score", "set_isa", "set_threads", "topk"]
