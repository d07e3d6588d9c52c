"""Feature-separation penalties: small stateful objects returning named loss terms.

    pen = make_penalty("momentum", d_sae=8192)             # every parameter has a default
    terms = pen(codes)         # a featsep.codes.Codes (TopK form / dense) or dense [B, n]

Registered: orthogonality (co-activation-weighted baseline), momentum (per-latent momentum
competition), temporal (co-activation stability). Each has mode="specified" / "reference"
where the idea and its reference code differ; reference.py holds the dense n x n oracles.
"""

from featsep.penalties.base import Penalty, PenaltyConfigBase, get_penalty, make_penalty, penalties, register
from featsep.penalties import momentum, orthogonality, temporal  # noqa: F401  (registration)

__all__ = ["make_penalty", "penalties", "get_penalty", "Penalty", "PenaltyConfigBase", "register"]
