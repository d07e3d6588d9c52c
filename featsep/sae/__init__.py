"""SAE architectures behind one base class and a registry, plus save/load.

    sae = make_sae("topk", d_in=640, d_sae=8192, k=32)
    save_sae(sae, "out/sae"); sae = load_sae("out/sae")
"""

from featsep.sae.base import SAE, SAEConfigBase, SAEOutput, architectures, get_architecture, make_sae, register

# importing an architecture module registers it
from featsep.sae import batchtopk, jumprelu, matryoshka, relu_l1, topk  # noqa: F401  (isort: skip)
from featsep.sae.io import load_sae, save_sae

__all__ = [
    "make_sae",
    "save_sae",
    "load_sae",
    "architectures",
    "get_architecture",
    "SAE",
    "SAEOutput",
    "SAEConfigBase",
    "register",
]
