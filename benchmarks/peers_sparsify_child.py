"""Child of benchmarks/peers.py, run inside the eai-sparsify virtualenv (no featsep there):
trains one SAE with sparsify's own Trainer and defaults on an activation file (.npy [N, d])
and writes sparsify's folder plus {"seconds": fit wall time} as JSON on the last stdout line.

sparsify harvests activations from a model's forward hook, so the "model" here is a stand-in
whose one layer outputs the file's rows: input_ids are row numbers, 256 rows per "sequence".
Only what a precomputed-activations run needs is set (hookpoint, sizes, batch, no wandb);
everything else (signum + schedule-free, its lr rule, no AuxK) is sparsify's default.
"""

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from sparsify import SparseCoderConfig, Trainer, TrainConfig

ROWS_PER_SEQUENCE = 256


class RowsModel(nn.Module):
    def __init__(self, acts: torch.Tensor):
        super().__init__()
        self.acts = acts
        self.layers = nn.ModuleList([nn.Identity()])
        self.config = SimpleNamespace(num_hidden_layers=1)
        self.dummy_inputs = {"input_ids": torch.zeros(1, 2, dtype=torch.long)}

    @property
    def base_model(self):
        return self

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, **_):
        start, count = int(input_ids[0, 0]), input_ids.numel()
        rows = self.acts[start:start + count]  # sequences are consecutive row ranges
        return self.layers[0](rows.reshape(*input_ids.shape, -1))


class RowRanges(torch.utils.data.Dataset):
    def __init__(self, n_rows: int):
        self.n = n_rows // ROWS_PER_SEQUENCE

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"input_ids": torch.arange(i * ROWS_PER_SEQUENCE, (i + 1) * ROWS_PER_SEQUENCE)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-latents", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--batch-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    acts = torch.from_numpy(np.load(args.acts, mmap_mode="r"))  # read-only view; rows are copied per step
    cfg = TrainConfig(SparseCoderConfig(num_latents=args.num_latents, k=args.k),
                      batch_size=args.batch_tokens // ROWS_PER_SEQUENCE, hookpoints=["layers.0"],
                      log_to_wandb=False, save_dir=args.out, run_name="run")
    trainer = Trainer(cfg, RowRanges(len(acts)), RowsModel(acts))
    started = time.perf_counter()
    trainer.fit()
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
