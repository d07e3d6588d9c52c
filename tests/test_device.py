"""featsep.device: which devices read data-dependent sizes on the host."""

import torch

import featsep.device
from featsep.device import host_reads_are_free


def test_only_the_cpu_reads_sizes_on_the_host(monkeypatch):
    assert host_reads_are_free(torch.device("cpu"))
    for accelerator in ("cuda", "cuda:1", "mps", "xpu"):
        assert not host_reads_are_free(torch.device(accelerator))
    monkeypatch.setattr(featsep.device, "SYNC_FREE_EVERYWHERE", True)  # the accelerators' paths, on the CPU
    assert not host_reads_are_free(torch.device("cpu"))
