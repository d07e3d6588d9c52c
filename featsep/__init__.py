"""featsep: train and judge sparse autoencoders with feature-separation penalties.

Public API (stable; see README):
    make_sae, save_sae, load_sae, make_penalty, train, evaluate; Codes (what SAEs hand penalties)
"""

from __future__ import annotations

from featsep.version import __version__

__all__ = ["make_sae", "save_sae", "load_sae", "make_penalty", "train", "evaluate", "Codes", "__version__"]


def __getattr__(name: str):
    # Imported lazily so `import featsep` stays fast and the CLI starts quickly.
    if name in ("make_sae", "save_sae", "load_sae"):
        from featsep import sae

        return getattr(sae, name)
    if name == "Codes":
        from featsep.codes import Codes

        return Codes
    if name == "make_penalty":
        from featsep.penalties import make_penalty

        return make_penalty
    if name == "train":
        from featsep.train import train

        return train
    if name == "evaluate":
        from featsep.evals import evaluate

        return evaluate
    raise AttributeError(f"module 'featsep' has no attribute {name!r}")
