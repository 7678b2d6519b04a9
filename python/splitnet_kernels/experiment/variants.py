"""The experiment's variants: a metric kind, a normalisation of the embeddings and a head. Read by
the run (run.py) and the model (model.py); imports neither torch nor the rest of the experiment."""

from __future__ import annotations

import dataclasses

from .._metric import KINDS

__all__ = ["HEADS", "NORMS", "VARIANTS", "Variant"]

# unit: both embeddings on the unit sphere. free: as the towers make them. cosine: on the unit
# sphere, the user's then times one learned temperature (so dot is the blog's scaled dot).
NORMS = ("unit", "free", "cosine")
# per_objective: one S_t and b_t per objective on the shared towers (nn.ObjectiveHead); the ad
# tower sees the objective only with Settings.ads_see_objective. shared: the blog's SplitNet,
# one S for every objective and a bias per objective; its ad tower sees the objective (the only
# way one S can tell objectives apart) and it learns from each ad's own objective's outcome.
HEADS = ("per_objective", "shared")


@dataclasses.dataclass(frozen=True)
class Variant:
    kind: str
    norm: str = "unit"
    head: str = "per_objective"

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.norm}" + (":shared" if self.head == "shared" else "")


VARIANTS = tuple(Variant(kind, norm) for norm in NORMS for kind in KINDS) + (
    Variant("scaled", "unit", "shared"), Variant("diagonal", "unit", "shared"))
