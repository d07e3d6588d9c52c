"""save_sae / load_sae: exact round trips for every architecture, SAELens layout, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

import featsep
from featsep.sae import architectures

D, N = 8, 48
SAELENS_NAME = {"relu_l1": "standard", "topk": "topk", "batchtopk": "jumprelu",
                "jumprelu": "jumprelu", "matryoshka": "jumprelu"}


def trained(arch):
    params = {"k": 3} if arch in ("topk", "batchtopk", "matryoshka") else {}
    sae = featsep.make_sae(arch, d_in=D, d_sae=N, hook_name="blocks.3.hook_resid_post",
                           model_name="tiny", **params)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0))
    featsep.train(sae, [x] * 3, lr=1e-2, lr_decay_fraction=0, progress=False)
    return sae.eval(), x


@pytest.mark.parametrize("arch", sorted(SAELENS_NAME))
def test_round_trip_every_architecture(arch, tmp_path):
    sae, x = trained(arch)
    featsep.save_sae(sae, tmp_path / "sae", extra={"steps": 3})
    loaded = featsep.load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae)
    assert loaded.cfg == sae.cfg
    assert torch.equal(loaded(x), sae(x))
    assert torch.equal(loaded.encode(x), sae.encode(x))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_NAME[arch] and cfg["featsep_architecture"] == arch
    assert (cfg["d_in"], cfg["d_sae"], cfg["hook_name"], cfg["model_name"]) == (D, N, "blocks.3.hook_resid_post", "tiny")
    assert cfg["meta"]["hook_name"] == "blocks.3.hook_resid_post" and cfg["apply_b_dec_to_input"] is True
    for key in ("normalize_activations", "dtype", "device", "context_size", "prepend_bos", "dataset_path"):
        assert key in cfg
    assert cfg["featsep_extra"] == {"steps": 3}
    weights = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (D, N) and weights["W_dec"].shape == (N, D)
    assert weights["b_enc"].shape == (N,) and weights["b_dec"].shape == (D,)
    if SAELENS_NAME[arch] == "jumprelu":
        assert weights["threshold"].shape == (N,)
    assert not [p for p in (tmp_path / "sae").iterdir() if p.name.startswith(".")]  # no temp files


def test_jumprelu_saves_exp_of_log_threshold(tmp_path):
    sae = featsep.make_sae("jumprelu", d_in=D, d_sae=N)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.linspace(-3, 1, N))
    featsep.save_sae(sae, tmp_path)
    torch.testing.assert_close(load_file(tmp_path / "sae_weights.safetensors")["threshold"], torch.linspace(-3, 1, N).exp())


def test_batchtopk_threshold_survives(tmp_path):
    sae, x = trained("batchtopk")
    assert sae.threshold > 0
    featsep.save_sae(sae, tmp_path)
    assert torch.equal(featsep.load_sae(tmp_path).threshold, sae.threshold)
    assert torch.all(load_file(tmp_path / "sae_weights.safetensors")["threshold"] == sae.threshold)


def test_clear_errors_for_missing_or_corrupt_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved SAE.*cfg.json"):
        featsep.load_sae(tmp_path / "nothing")
    sae, _ = trained("topk")
    featsep.save_sae(sae, tmp_path / "a")
    (tmp_path / "a" / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt.*re-save"):
        featsep.load_sae(tmp_path / "a")
    featsep.save_sae(sae, tmp_path / "b")
    (tmp_path / "b" / "sae_weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt.*re-save"):
        featsep.load_sae(tmp_path / "b")
    featsep.save_sae(sae, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "cfg.json").read_text())
    del cfg["featsep_architecture"]
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(cfg))
    # without featsep's key the dir is read as SAELens wrote it: the same TopK SAE
    loaded = featsep.load_sae(tmp_path / "c")
    x = torch.randn(16, D, generator=torch.Generator().manual_seed(1))
    assert loaded.architecture == "topk" and loaded.cfg.k == sae.cfg.k
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_every_registered_architecture_is_covered():
    # test files may register throwaway architectures (e.g. test_train's "tiny_test_relu")
    builtin = {a for a in architectures() if not a.startswith("tiny_test")}
    assert builtin == set(SAELENS_NAME)


@pytest.mark.parametrize("arch", sorted(SAELENS_NAME))
def test_folded_copy_takes_raw_activations(arch, tmp_path):
    """SAELens ignores normalization_factor: the folded copy on raw x gives the same codes as the
    SAE on x * f, and its reconstruction is the SAE's divided by f."""
    sae, x = trained(arch)
    f = 0.37
    sae.cfg.normalization_factor = f
    raw = x / f
    path = featsep.save_sae(sae, tmp_path / "folded", fold=True)
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["normalization_factor"] is None and cfg["normalize_activations"] == "none"
    folded = featsep.load_sae(path)
    torch.testing.assert_close(folded.encode(raw), sae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded(raw), sae(x) / f, rtol=1e-5, atol=1e-4)
    assert sae.cfg.normalization_factor == f  # the original is untouched


# --- integrity: checksums, cfg.json vs weights, full disk ----------------------------------------
def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's payload: the header still parses
    path.write_bytes(bytes(data))


def test_checksum_recorded_is_the_weights_sha256(tmp_path):
    import hashlib

    sae, _ = trained("topk")
    featsep.save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["featsep_weights_sha256"] == hashlib.sha256((tmp_path / "sae" / "sae_weights.safetensors").read_bytes()).hexdigest()


def test_flipped_weight_byte_is_refused_in_one_line(tmp_path):
    sae, x = trained("topk")
    featsep.save_sae(sae, tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    flip_last_byte(weights)
    load_file(weights)  # safetensors alone does not notice ...
    before = snapshot(tmp_path / "sae")
    with pytest.raises(ValueError) as caught:
        featsep.load_sae(tmp_path / "sae")
    message = str(caught.value)
    assert "\n" not in message and str(weights) in message and "corrupted" in message and "re-save" in message
    assert snapshot(tmp_path / "sae") == before


def test_sae_without_checksum_still_loads(tmp_path):
    """SAEs saved before checksums (or edited by hand) load unchecked."""
    sae, x = trained("relu_l1")
    featsep.save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    del cfg["featsep_weights_sha256"]
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    assert torch.equal(featsep.load_sae(tmp_path / "sae")(x), sae(x))


@pytest.mark.parametrize("key,value,named", [("d_sae", 32, "d_sae=32"), ("d_in", 6, "d_in=6")])
def test_cfg_disagreeing_with_weights_names_both(tmp_path, key, value, named):
    sae, _ = trained("topk")
    featsep.save_sae(sae, tmp_path / "sae")
    cfg_file = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg[key] = value
    cfg_file.write_text(json.dumps(cfg))
    before = snapshot(tmp_path / "sae")
    with pytest.raises(ValueError) as caught:
        featsep.load_sae(tmp_path / "sae")
    message = str(caught.value)
    assert "\n" not in message and named in message and str(cfg_file) in message
    assert f"holds W_enc of shape {(D, N)}" in message and "do not belong together" in message
    assert snapshot(tmp_path / "sae") == before


def test_invalid_cfg_values_are_one_line(tmp_path):
    sae, _ = trained("topk")
    featsep.save_sae(sae, tmp_path / "sae")
    cfg_file = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["k"] = -1
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as caught:
        featsep.load_sae(tmp_path / "sae")
    assert "\n" not in str(caught.value) and "not a valid topk config" in str(caught.value) and "k:" in str(caught.value)
    cfg_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="corrupt .a JSON list, not an object.; re-save"):
        featsep.load_sae(tmp_path / "sae")


def disk_fills_up(monkeypatch, after_bytes=10):
    import errno

    import featsep.sae.io as sae_io

    def save_file(tensors, filename):
        with open(filename, "wb") as f:
            f.write(b"x" * after_bytes)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(sae_io, "save_file", save_file)


def test_disk_full_leaves_no_new_dir(tmp_path, monkeypatch):
    sae, _ = trained("topk")
    disk_fills_up(monkeypatch)
    target = tmp_path / "new" / "deeper" / "sae"
    with pytest.raises(ValueError) as caught:
        featsep.save_sae(sae, target)
    assert str(caught.value) == f"no space left on device while writing {target}; free space or save the SAE elsewhere"
    assert list(tmp_path.iterdir()) == []  # not even the parents it created


def test_disk_full_leaves_an_earlier_save_untouched(tmp_path, monkeypatch):
    sae, x = trained("topk")
    featsep.save_sae(sae, tmp_path / "sae")
    before = snapshot(tmp_path / "sae")
    disk_fills_up(monkeypatch)
    with torch.no_grad():
        sae.W_dec.mul_(2)
    with pytest.raises(ValueError, match="no space left on device"):
        featsep.save_sae(sae, tmp_path / "sae")
    assert snapshot(tmp_path / "sae") == before  # no temp files either
    monkeypatch.undo()
    featsep.load_sae(tmp_path / "sae")


def test_export_over_an_earlier_export_of_another_format_leaves_one_sae(tmp_path):
    from featsep.sae.foreign import foreign_format
    from featsep.sae.io import export_sae

    sae, x = trained("topk")
    src = featsep.save_sae(sae, tmp_path / "sae")
    out = tmp_path / "out"
    expected = {"saelens": {"cfg.json", "sae_weights.safetensors"}, "sparsify": {"cfg.json", "sae.safetensors"},
                "dictionary_learning": {"config.json", "ae.pt"}}
    for i, fmt in enumerate(("saelens", "sparsify", "dictionary_learning", "saelens")):
        export_sae(src, out, force=i > 0, fmt=fmt)
        assert {p.name for p in out.iterdir()} == expected[fmt] and foreign_format(out) == fmt
        assert torch.allclose(featsep.load_sae(out)(x), sae(x), rtol=0, atol=1e-6)
    # an export of a foreign SAE: the dictionary_learning copy exported again to SAELens
    export_sae(src, tmp_path / "dl", fmt="dictionary_learning")
    export_sae(tmp_path / "dl", tmp_path / "again")
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["featsep_extra"] == {
        "exported_from": str((tmp_path / "dl").resolve())}
    assert torch.allclose(featsep.load_sae(tmp_path / "again")(x), sae(x), rtol=0, atol=1e-6)
