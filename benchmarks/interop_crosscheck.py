"""Cross-check featsep's foreign loaders (featsep.load_sae on SAELens / sparsify /
dictionary_learning folders) and exports (featsep.sae.io.export_sae) against the REAL libraries.

Load direction: a child run with the library's own python builds small SAEs with the library's
classes, randomises every weight (biases and thresholds too), saves them with the library's own
save, and writes its own encode/decode of fixed inputs; featsep loads the folder and compares.
Export direction: featsep builds each architecture with random weights, saves and exports it to
each format that holds it; the child loads the export with the library's loader and encodes /
decodes the same inputs. Pass: max relative error < 1e-5 on codes and reconstructions, and for
TopK-like SAEs identical active sets. Results: docs/interop-crosscheck.md.

None of the libraries is a featsep dependency; each lives in its own venv (CPU torch only):

    PY=/work/main/.venv/bin/python                             # featsep's python, for both steps
    $PY benchmarks/interop_crosscheck.py --setup sae-lens      # also eai-sparsify, dictionary-learning
    $PY benchmarks/interop_crosscheck.py                       # every library whose venv exists (~40 s)

--setup makes .bench-venvs/interop-LIB, installs torch==2.13.0 first, then the library with a
constraint file pinning torch==2.13.0. The cross-check itself runs with featsep's python (the
one running this file) and calls `.bench-venvs/interop-LIB/bin/python THIS_FILE --child LIB ...`
(the child imports no featsep). Everything happens in a temporary directory. Not imported by
featsep or its tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench-venvs"
LIBS = {"sae-lens": "sae_lens", "eai-sparsify": "sparsify", "dictionary-learning": "dictionary_learning"}
D_IN, D_SAE, K, N_ROWS, TOL = 16, 64, 6, 32, 1e-5


def venv_python(lib: str) -> Path:
    return VENVS / f"interop-{lib}" / "bin" / "python"


def setup(lib: str) -> None:
    venv = VENVS / f"interop-{lib}"
    VENVS.mkdir(exist_ok=True)
    constraints = VENVS / "constraints.txt"
    constraints.write_text("torch==2.13.0\n")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["-c", str(constraints), lib], check=True)
    # dictionary-learning's nnsight pulls a torchvision built for another torch, whose failing
    # operator registration breaks `import transformers`; no child needs torchvision
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision"], check=False,
                   capture_output=True)


def inputs() -> np.ndarray:
    """Fixed activations, scaled so roughly half the pre-activations clear the thresholds."""
    return torch.randn(N_ROWS, D_IN, generator=torch.Generator().manual_seed(1)).numpy()


# ---- child side (library venv, no featsep) -----------------------------------------------------
def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every floating parameter and buffer random (thresholds small and positive, so some codes
    fall below them); integer buffers (k) kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if "threshold" in name:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.05)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def child_make(lib: str, out: Path, x: torch.Tensor) -> dict:
    """Build, randomise, save with the library's own save; write its own codes/recons."""
    made = {}
    if lib == "sae-lens":
        from sae_lens import (JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                              TopKSAEConfig)

        builds = {"standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
                  "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)),
                  "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
                  # Gemma Scope style: b_dec not subtracted before encoding (featsep folds it)
                  "standard_no_bdec_in": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE,
                                                                       apply_b_dec_to_input=False)),
                  "jumprelu_no_bdec_in": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE,
                                                                       apply_b_dec_to_input=False))}
        for i, (arch, sae) in enumerate(builds.items()):
            randomise(sae, seed=10 + i)
            sae.save_model(str(out / arch))
            with torch.no_grad():
                codes = sae.encode(x)
                made[arch] = (codes, sae.decode(codes))
    elif lib == "eai-sparsify":
        from sparsify import SparseCoder, SparseCoderConfig

        sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K), device="cpu")
        randomise(sae, seed=20)
        sae.save_to_disk(out / "topk")
        with torch.no_grad():
            enc = sae.encode(x)
            codes = torch.zeros(N_ROWS, D_SAE).scatter(1, enc.top_indices, enc.top_acts)
            made["topk"] = (codes, sae.decode(enc.top_acts, enc.top_indices))
    else:
        from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
        from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
        from dictionary_learning.trainers.top_k import AutoEncoderTopK

        builds = {"AutoEncoder": AutoEncoder(D_IN, D_SAE), "AutoEncoderTopK": AutoEncoderTopK(D_IN, D_SAE, K),
                  "BatchTopKSAE": BatchTopKSAE(D_IN, D_SAE, K),
                  "JumpReluAutoEncoder": JumpReluAutoEncoder(D_IN, D_SAE, device="cpu")}
        trainers = {"AutoEncoder": "StandardTrainer", "AutoEncoderTopK": "TopKTrainer",
                    "BatchTopKSAE": "BatchTopKTrainer", "JumpReluAutoEncoder": "JumpReluTrainer"}
        for i, (arch, ae) in enumerate(builds.items()):
            randomise(ae, seed=30 + i)
            folder = out / arch
            folder.mkdir(parents=True)
            # dictionary_learning's trainers save exactly this pair (training.py: ae.pt + config.json)
            torch.save(ae.state_dict(), folder / "ae.pt")
            trainer = {"trainer_class": trainers[arch], "dict_class": arch, "activation_dim": D_IN,
                       "dict_size": D_SAE, "layer": 0, "lm_name": "none", "submodule_name": "resid_post_layer_0"}
            if arch in ("AutoEncoderTopK", "BatchTopKSAE"):
                trainer["k"] = K
            (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D_IN}}))
            with torch.no_grad():
                codes = ae.encode(x)
                made[arch] = (codes, ae.decode(codes))
    for arch, (codes, recon) in made.items():
        np.savez(out / arch / "lib_out.npz", codes=codes.float().numpy(), recon=recon.float().numpy())
    return {"archs": list(made)}


def child_load(lib: str, folders: list[Path], x: torch.Tensor) -> dict:
    """Load featsep's exports with the library's own loader; write its codes/recons beside them."""
    for folder in folders:
        with torch.no_grad():
            if lib == "sae-lens":
                from sae_lens import SAE

                sae = SAE.load_from_disk(str(folder), device="cpu")
                codes = sae.encode(x)
                recon = sae.decode(codes)
            elif lib == "eai-sparsify":
                from sparsify import SparseCoder

                sae = SparseCoder.load_from_disk(folder, device="cpu")
                enc = sae.encode(x)
                codes = torch.zeros(N_ROWS, sae.num_latents).scatter(1, enc.top_indices, enc.top_acts)
                recon = sae.decode(enc.top_acts, enc.top_indices)
            else:
                from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
                from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
                from dictionary_learning.trainers.top_k import AutoEncoderTopK

                cls = json.loads((folder / "config.json").read_text())["trainer"]["dict_class"]
                classes = {"AutoEncoder": AutoEncoder, "AutoEncoderTopK": AutoEncoderTopK,
                           "BatchTopKSAE": BatchTopKSAE, "JumpReluAutoEncoder": JumpReluAutoEncoder}
                ae = classes[cls].from_pretrained(str(folder / "ae.pt"), device="cpu")
                codes = ae.encode(x)
                recon = ae.decode(codes)
        np.savez(folder / "lib_out.npz", codes=codes.float().numpy(), recon=recon.float().numpy())
    return {}


def child_main(args: argparse.Namespace) -> None:
    from importlib.metadata import version

    x = torch.from_numpy(np.load(args.inputs, allow_pickle=False))
    result = child_make(args.child, Path(args.dir), x) if args.mode == "make" else \
        child_load(args.child, [Path(p) for p in args.folders], x)
    result["version"] = version(args.child)
    print(json.dumps(result))


# ---- featsep side ------------------------------------------------------------------------------
def run_child(lib: str, *argv: str) -> dict:
    proc = subprocess.run([str(venv_python(lib)), __file__, "--child", lib, *argv],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def compare(sae, lib_out: Path, x: torch.Tensor, topk_like: bool) -> tuple[float, float, str, float]:
    """(enc rel err, dec rel err, active sets equal, the library's mean L0) of featsep's `sae`
    against the library's outputs; featsep decodes its own codes. The L0 shows the check is not
    vacuous (neither all codes zero nor all active)."""
    with torch.no_grad():
        codes = sae.encode(x)
        recon = sae.decode(codes)
    ref = np.load(lib_out, allow_pickle=False)
    same = bool(((codes.numpy() != 0) == (ref["codes"] != 0)).all())
    return rel_err(codes.numpy(), ref["codes"]), rel_err(recon.numpy(), ref["recon"]), \
        ("yes" if same else "NO") if topk_like else ("yes" if same else "no"), \
        float((ref["codes"] != 0).sum(1).mean())


def random_featsep(arch: str, seed: int):
    import featsep

    params = {"k": K} if arch in ("topk", "batchtopk", "matryoshka") else {}
    if arch == "matryoshka":
        params["prefix_sizes"] = [D_SAE // 4, D_SAE // 2, D_SAE]
    sae = featsep.make_sae(arch, D_IN, D_SAE, **params)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3
                    if name != "log_threshold" else (torch.rand(p.shape, generator=g) * 0.5 + 0.05).log())
        # unit-norm decoder rows, as featsep trains them (dictionary_learning's AutoEncoder loader
        # renormalises other rows, rescaling the codes)
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.3)
    return sae.eval()


def crosscheck(libs: list[str]) -> list[tuple]:
    sys.path.insert(0, str(ROOT))  # the checkout this file belongs to, not another editable install
    import featsep
    from featsep.sae.io import export_sae

    x_np = inputs()
    x = torch.from_numpy(x_np)
    rows = []
    export_targets = {"sae-lens": ("saelens", ["relu_l1", "topk", "jumprelu", "batchtopk", "matryoshka"]),
                      "eai-sparsify": ("sparsify", ["topk"]),
                      "dictionary-learning": ("dictionary_learning",
                                              ["relu_l1", "topk", "jumprelu", "batchtopk", "matryoshka"])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x_np)
        for lib in libs:
            if not venv_python(lib).exists():
                rows.append((lib, "-", "-", "-", "-", "-", "-", "-", f"SKIPPED: no venv (--setup {lib})"))
                continue
            # load direction
            out = tmp / lib / "made"
            out.mkdir(parents=True)
            made = run_child(lib, "--mode", "make", "--inputs", str(tmp / "x.npy"), "--dir", str(out))
            ver = made["version"]
            for arch in made["archs"]:
                try:
                    sae = featsep.load_sae(out / arch)
                except ValueError as e:
                    rows.append((lib, ver, arch, "load", "-", "-", "-", "-", f"FAIL: {e}"))
                    continue
                enc, dec, same, l0 = compare(sae, out / arch / "lib_out.npz", x, sae.topk_like)
                ok = enc < TOL and dec < TOL and same != "NO"
                rows.append((lib, ver, f"{arch} -> {sae.architecture}", "load", enc, dec, same, f"{l0:.1f}",
                             "PASS" if ok else "FAIL"))
            # export direction
            fmt, archs = export_targets[lib]
            folders, saes = [], {}
            for i, arch in enumerate(archs):
                src, dst = tmp / lib / "featsep" / arch, tmp / lib / "export" / arch
                featsep.save_sae(random_featsep(arch, seed=40 + i), src)
                saes[arch] = export_sae(src, dst, fmt=fmt)
                folders.append(dst)
            run_child(lib, "--mode", "load", "--inputs", str(tmp / "x.npy"), "--folders", *map(str, folders))
            for arch, dst in zip(archs, folders):
                sae = featsep.load_sae(tmp / lib / "featsep" / arch)
                enc, dec, same, l0 = compare(sae, dst / "lib_out.npz", x, sae.topk_like)
                ok = enc < TOL and dec < TOL and same != "NO"
                rows.append((lib, ver, arch, f"export {fmt}", enc, dec, same, f"{l0:.1f}", "PASS" if ok else "FAIL"))
    return rows


def print_table(rows: list[tuple]) -> None:
    head = ("library", "version", "architecture", "direction", "max rel err enc", "max rel err dec",
            "active sets equal", "lib L0 / 64", "result")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [f"{c:.2e}" if isinstance(c, float) else str(c) for c in r]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", choices=list(LIBS), help="create .bench-venvs/interop-LIB and install LIB")
    ap.add_argument("--libs", nargs="*", default=list(LIBS), choices=list(LIBS))
    ap.add_argument("--child", choices=list(LIBS), help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["make", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--folders", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
    elif args.setup:
        setup(args.setup)
    else:
        torch.set_num_threads(1)
        print_table(crosscheck(args.libs))


if __name__ == "__main__":
    main()
