"""featsep.evals.baselines: a released SAE's identity, the run dir it becomes, and its reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featsep.evals.baselines import describe, load_baseline, read_baseline, sae_format, weights_file, write_baseline
from featsep.io import file_sha256
from featsep.rundir import RunDir
from featsep.sae import make_sae, save_sae


def _gemma_scope(root, d=8, n=16):
    """params.npz in Gemma Scope's layout, under its release's folder names (they give model and hook)."""
    folder = root / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_9"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    np.savez(folder / "params.npz", W_enc=torch.randn(d, n, generator=g).numpy(),
             W_dec=torch.randn(n, d, generator=g).numpy(), b_enc=np.zeros(n, np.float32),
             b_dec=np.zeros(d, np.float32), threshold=np.full(n, 0.1, np.float32))
    return folder


def test_identity_of_a_gemma_scope_file_and_of_a_featsep_dir(tmp_path):
    folder = _gemma_scope(tmp_path)
    for source in (folder, folder / "params.npz"):
        record, sae = describe(str(source))
        assert (record.format, record.architecture, record.d_in, record.d_sae) == ("gemma_scope", "jumprelu", 8, 16)
        assert (record.model_name, record.hook_name) == ("google/gemma-2-2b", "blocks.3.hook_resid_post")
        assert record.sha256 == file_sha256(folder / "params.npz") and record.name == "average_l0_9"
    own = save_sae(make_sae("topk", d_in=8, d_sae=16, k=2, model_name="m", hook_name="blocks.0.hook_resid_post"),
                   tmp_path / "own")
    assert sae_format(own) == "featsep" and weights_file(own, "featsep") == own / "sae_weights.safetensors"
    record, _ = describe(str(own), model="other", hook="blocks.1.hook_resid_post")  # asked for wins over recorded
    assert (record.model_name, record.hook_name) == ("other", "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="holds no SAE featsep can load"):
        sae_format(tmp_path)


def test_baseline_run_dir_round_trip_and_refusals(tmp_path):
    folder = _gemma_scope(tmp_path)
    record, sae = describe(str(folder))
    run = write_baseline(tmp_path / "b", record)
    assert read_baseline(run) == record and read_baseline(RunDir(tmp_path)) is None
    again = load_baseline(run)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again(x), sae(x)) and again.cfg.hook_name == record.hook_name
    write_baseline(tmp_path / "b", record)  # the same SAE again: kept
    other = record.model_copy(update={"sha256": "0" * 64, "source": "elsewhere"})
    with pytest.raises(FileExistsError, match="baseline run dir of another SAE"):
        write_baseline(tmp_path / "b", other)
    (tmp_path / "trained" / "sae").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="holds a trained run"):
        write_baseline(tmp_path / "trained", record)
