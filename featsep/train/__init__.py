"""Training: one stream of activation batches trains one or many SAEs, with penalties,
checkpoints that resume exactly, and run directories that hold every result.

    saes = featsep.train([sae], batches, steps=1000, penalties=[pen], out_dir="runs/x")
"""

from featsep.train.schedule import WarmupDecay
from featsep.train.trainer import NonFiniteLossError, sae_owners, train

__all__ = ["train", "NonFiniteLossError", "WarmupDecay", "sae_owners"]


def _make_package_callable() -> None:
    """`featsep.train` is both this package and the train() function: importing the package
    binds the name featsep.train to the module, so the module itself must be callable for
    `featsep.train(saes, batches, ...)` to keep working after the first import."""
    import sys
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return train(*args, **kwargs)

    sys.modules[__name__].__class__ = _CallableModule


_make_package_callable()
