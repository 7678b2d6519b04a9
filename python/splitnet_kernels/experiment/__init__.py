"""The blog's experiment end to end (`splitnet-kernels experiment`): train two-tower models with
every metric kind and normalisation on campaign data whose ground truth is known, then report
quality per objective, the light ranker's value captured from a mixed pool, and that value under
a per-request serving budget measured through the kernels.

Quality is measured through the serving path: the learned embeddings scored by sk.score / sk.topk
with each model's exported sk.ObjectiveMetrics. Torch is imported only when the experiment runs.

campaign.py holds the data (synthetic or logged), variants.py the variants (kind, norm, head),
model.py the model, training.py its training loop, run.py the protocol and the run, measures.py
the quality measures, serving.py the cost under a budget and report.py the tables and the plot;
embeddings.py trains one model for the benchmarks' campaign rows.
"""

from . import campaign
from .campaign import CampaignData, load, make_campaign
from .measures import auc, calibration, interval, light_ranker, normalized_entropy, true_values
from .report import plot, render
from .run import GROUND_TRUTH, Settings, run_experiment
from .variants import HEADS, NORMS, VARIANTS, Variant

__all__ = ["GROUND_TRUTH", "HEADS", "NORMS", "VARIANTS", "CampaignData", "Settings", "Variant", "auc", "calibration",
           "campaign", "interval", "light_ranker", "load", "make_campaign", "normalized_entropy", "plot", "render",
           "run_experiment", "true_values"]
