"""Whether the training step may read a data-dependent size on the host.

On an accelerator a host read (`.item()`, `int()`, `nonzero()`, boolean-mask indexing) waits
for every queued kernel, so the training step has sync-free forms of its data-dependent work
(tests/train/test_host_sync.py counts the reads). On the CPU nothing is queued and the read is
free, while a sync-free form pays for the worst case: AuxK selects over every latent at full
width even when few are dead (with 40 dead of 4096, d 256, batch 4096, 2 threads: 566 ms for a
TopK SAE's forward and backward against 111 ms selecting among the dead ones).
So the CPU reads the size and does only the work it needs; the two forms are equal (tests)."""

from __future__ import annotations

import torch

# True: every device takes the sync-free forms (tests check on the CPU the paths GPUs take)
SYNC_FREE_EVERYWHERE = False


def host_reads_are_free(device: torch.device) -> bool:
    return device.type == "cpu" and not SYNC_FREE_EVERYWHERE
