"""Checkpoint files: safe loading (weights_only), checksums, RNG round trips, stale temp files, early deaths."""

from __future__ import annotations

import hashlib
import pickle
import random
import warnings

import numpy as np
import pytest
import torch

from featsep.rundir import RunDir
from featsep.train import train
from featsep.train.checkpoint import (
    FORMAT_VERSION,
    capture_rng,
    latest_common_step,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tests.helpers import killed_after

D_IN, D_SAE, BATCH = 8, 16, 32
RUN = dict(steps=12, lr=1e-2, lr_warmup_steps=2, lr_decay_fraction=0.25, checkpoint_every=4, log_every=1,
           progress=False, seed=5)


def topk(seed: int = 0):
    from featsep.sae import make_sae

    return make_sae("topk", d_in=D_IN, d_sae=D_SAE, k=3, seed=seed)


def batches(n: int = 12) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(BATCH, D_IN, generator=gen) for _ in range(n)]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- weights_only --------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, writer):
    payload = {"format": FORMAT_VERSION, "step": 4, "sae": CreatesMarker(tmp_path / "control")}
    pickle.loads(pickle.dumps(payload))  # the payload works when unpickled the unsafe way ...
    assert (tmp_path / "control").exists()

    run = tmp_path / "run"
    path = RunDir(run).checkpoint_path(4)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    payload["sae"] = CreatesMarker(marker)
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ValueError) as caught:
        train([topk()], batches(), out_dir=run, resume=True, **RUN)
    assert not marker.exists()  # ... and resuming from it never ran it
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "other than tensors and plain values" in message


def test_checkpoint_of_the_old_format_is_refused_in_one_line(tmp_path):
    path = RunDir(tmp_path).checkpoint_path(4)
    path.parent.mkdir(parents=True)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"format": 1, "step": 4, "rng": rng}, path)  # what format 1 wrote: numpy arrays inside
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path, 4)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "predates featsep's safe checkpoint format" in message and "release that wrote it" in message


def test_rng_states_round_trip_through_a_safe_checkpoint(tmp_path):
    random.gauss(0, 1)  # python keeps a cached gaussian: part of its state
    np.random.standard_normal()
    save_checkpoint(tmp_path, 1, {"rng": capture_rng()})
    expected = (torch.rand(3), np.random.standard_normal(3), [random.random(), random.gauss(0, 1)])
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    loaded = torch.load(RunDir(tmp_path).checkpoint_path(1), weights_only=True)
    restore_rng(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.standard_normal(3), expected[1])
    assert [random.random(), random.gauss(0, 1)] == expected[2]


def test_state_that_could_not_be_loaded_back_is_refused_when_saved(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['penalties'\]\[0\]\['rate'\] is a numpy.float64"):
        save_checkpoint(tmp_path, 1, {"penalties": [{"rate": np.float64(0.5)}]})
    assert not RunDir(tmp_path).has_checkpoints()


def test_every_resume_state_loads_with_weights_only(tmp_path):
    """A real stream (shuffling buffer) and stateful penalties: the whole checkpoint is plain."""
    from featsep.data.stream import ActivationStream
    from featsep.penalties import make_penalty

    acts = torch.randn(600, D_IN, generator=torch.Generator().manual_seed(0))
    stream = ActivationStream.from_tensor(acts, batch_size=BATCH, shuffle_buffer=4, seed=1, normalize=True)
    pens = [make_penalty("momentum", d_sae=D_SAE), make_penalty("temporal", d_sae=D_SAE)]
    train([topk()], stream, penalties=[pens], out_dir=tmp_path, **{**RUN, "steps": 4})
    state = torch.load(RunDir(tmp_path).checkpoint_path(4), map_location="cpu", weights_only=True)
    assert state["format"] == FORMAT_VERSION and state["data_state"]["buffer"]["rng"].dtype == torch.uint8
    assert len(state["penalties"]) == 2 and state["optimizer"]["state"]


# --- runs that died early ------------------------------------------------------------------------
def test_run_killed_before_its_first_checkpoint_restarts_from_step_0(tmp_path, capsys):
    kw = {**RUN, "checkpoint_every": 100}
    full = train([topk()], batches(), out_dir=tmp_path / "full", **kw)[0]
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train([topk()], killed_after(batches(), 3), out_dir=cut, **kw)
    assert RunDir(cut).config_file.is_file() and len(RunDir(cut).read_metrics()) == 3
    assert not RunDir(cut).has_checkpoints()
    with pytest.raises(FileExistsError, match="resume=True"):  # a plain start still refuses
        train([topk()], batches(), out_dir=cut, **kw)

    capsys.readouterr()
    resumed = train([topk()], batches(), out_dir=cut, resume=True, **{**kw, "progress": True})[0]
    assert f"no checkpoint in {cut} yet: starting from step 0\n" in capsys.readouterr().out
    assert same_weights(full, resumed)
    strip = lambda rows: [{k: v for k, v in r.items() if "tokens_per_s" not in k} for r in rows]  # noqa: E731
    assert strip(RunDir(cut).read_metrics()) == strip(RunDir(tmp_path / "full").read_metrics())


def test_stale_temp_files_of_killed_writes_are_removed_on_resume(tmp_path):
    full = train([topk()], batches(), out_dir=tmp_path / "full", **RUN)[0]
    cut = RunDir(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train([topk()], killed_after(batches(), 6), out_dir=cut.path, **RUN)
    cut.sae_dir.mkdir()
    stale = [cut.checkpoint_dir / ".step_000000008.pt.k2x9_a0q.tmp", cut.path / ".metrics.jsonl.0abcdefg.tmp",
             cut.path / ".final_info.json.zz1y2x3w.tmp", cut.sae_dir / ".sae_weights.safetensors.u7t6s5r4.tmp"]
    kept = [cut.path / "notes.txt", cut.checkpoint_dir / ".keep", cut.path / "scratch.tmp"]  # not ours
    for path in stale + kept:
        path.write_bytes(b"half a write")
    resumed = train([topk(seed=3)], batches(), out_dir=cut.path, resume=True, **RUN)[0]
    assert same_weights(full, resumed)
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"half a write" for p in kept)


def test_stale_temp_files_are_removed_on_a_fresh_start(tmp_path):
    tmp = RunDir(tmp_path).checkpoint_dir / ".step_000000004.pt.abcdefgh.tmp"
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"")
    train([topk()], batches(), out_dir=tmp_path, **RUN)
    assert not tmp.exists() and sorted(RunDir(tmp_path).checkpoint_steps()) == [8, 12]


# --- checksums -----------------------------------------------------------------------------------
def flip_a_byte(path, at=-100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_checkpoint_has_its_sha256_and_loses_it_with_it(tmp_path):
    train([topk()], batches(), out_dir=tmp_path, **RUN)  # checkpoints at 4, 8, 12; the last 2 kept
    folder = RunDir(tmp_path).checkpoint_dir
    assert sorted(p.name for p in folder.iterdir()) == ["step_000000008.pt", "step_000000008.pt.sha256",
                                                        "step_000000012.pt", "step_000000012.pt.sha256"]
    for step in (8, 12):
        path = RunDir(tmp_path).checkpoint_path(step)
        assert (folder / f"{path.name}.sha256").read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"


def test_corrupted_checkpoint_is_refused_in_one_line(tmp_path):
    save_checkpoint(tmp_path, 4, {"w": torch.arange(1000.0)})
    path = RunDir(tmp_path).checkpoint_path(4)
    flip_a_byte(path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path, 4)
    message = str(caught.value)
    assert message == (f"checkpoint {path} is corrupted (its sha256 differs from step_000000004.pt.sha256); "
                       "delete it to resume from the one before")
    assert snapshot(tmp_path) == before


def test_checkpoint_without_a_checksum_still_loads(tmp_path):
    """Checkpoints written before checksums load as before."""
    save_checkpoint(tmp_path, 4, {"w": torch.arange(5.0)})
    (RunDir(tmp_path).checkpoint_dir / "step_000000004.pt.sha256").unlink()
    assert torch.equal(load_checkpoint(tmp_path, 4)["w"], torch.arange(5.0))
    assert latest_common_step([tmp_path]) == 4


def test_a_sweep_resumes_from_the_latest_step_intact_in_every_run_dir(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        for step in (4, 8):
            save_checkpoint(d, step, {"w": torch.arange(1000.0) + step})
    flip_a_byte(RunDir(b).checkpoint_path(8))
    with pytest.warns(UserWarning) as caught:
        assert latest_common_step([a, b]) == 4
    assert [str(w.message) for w in caught] == [
        f"checkpoint {RunDir(b).checkpoint_path(8)} is corrupted (its sha256 differs from step_000000008.pt.sha256); "
        "resuming from the previous good checkpoint, step 4"]


def test_resume_passes_over_a_corrupted_checkpoint(tmp_path):
    full = train([topk()], batches(), out_dir=tmp_path / "full", **RUN)[0]
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train([topk()], killed_after(batches(), 10), out_dir=cut, **RUN)  # checkpoints 4 and 8
    flip_a_byte(RunDir(cut).checkpoint_path(8))
    with pytest.warns(UserWarning, match="step_000000008.pt is corrupted .*previous good checkpoint, step 4$"):
        resumed = train([topk(seed=3)], batches(), out_dir=cut, resume=True, **RUN)[0]
    assert same_weights(full, resumed)
    assert sorted(RunDir(cut).checkpoint_steps()) == [8, 12]  # the corrupted step 8 was written again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_common_step([cut]) == 12


def test_resume_with_no_intact_checkpoint_left_is_one_line(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train([topk()], killed_after(batches(), 10), out_dir=tmp_path, **RUN)
    for step in (4, 8):
        flip_a_byte(RunDir(tmp_path).checkpoint_path(step))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as caught:
        train([topk()], batches(), out_dir=tmp_path, resume=True, **RUN)
    folder = RunDir(tmp_path).checkpoint_dir
    assert str(caught.value) == (f"checkpoint {folder / 'step_000000008.pt'} is corrupted (its sha256 differs from "
                                 f"step_000000008.pt.sha256) and no earlier intact checkpoint is left; delete {folder} "
                                 "to restart from step 0")
    assert snapshot(tmp_path) == before
