"""The blog's experiment end to end (`splitnet-kernels experiment`): train a SplitNet with every
metric kind on the same campaign data, then report quality per objective and serving cost per kind.

Quality is measured through the serving path: the learned embeddings scored by sk.score / sk.topk
with each head's exported sk.Metric. Torch is imported only when the experiment runs.

campaign.py holds the data (synthetic or logged), run.py the run, measures.py the quality
measures and report.py the table and the plot.
"""

from . import campaign
from .campaign import CampaignData, load, make_campaign
from .measures import auc, calibration, normalized_entropy, recall_at_k
from .report import plot, render
from .run import BASELINES, GROUND_TRUTH, VARIANTS, Settings, Variant, run_experiment

__all__ = ["BASELINES", "GROUND_TRUTH", "VARIANTS", "CampaignData", "Settings", "Variant", "auc", "calibration",
           "campaign", "load", "make_campaign", "normalized_entropy", "plot", "recall_at_k", "render",
           "run_experiment"]
