"""Cross-check featsep's `core` eval against SAELens's own evals code (sae_lens.evals.run_evals).

Both sides evaluate the SAME SAE weights on the SAME token rows at the same hook of the SAME
model (a tiny GPT-2 built and briefly trained offline on a synthetic bigram language, run by HF
for featsep and by TransformerLens for SAELens), and the script prints
metric | featsep | SAELens | abs diff | note. Results: docs/saelens-crosscheck.md.

SAELens is not a featsep dependency: run this from a separate virtualenv (CPU torch only).

    python3 -m venv /work/saelens-venv
    . /work/saelens-venv/bin/activate
    echo "torch==2.13.0" > /tmp/constraints.txt          # never let pip swap torch
    pip install torch==2.13.0
    pip install -c /tmp/constraints.txt sae-lens            # brings transformer-lens, transformers
    pip install -c /tmp/constraints.txt gguf scikit-learn   # featsep deps sae-lens lacks
    pip install -c /tmp/constraints.txt --no-deps -e /work/main

Run from /work/main (about 30 CPU-seconds, under a minute wall on 2 cores, mostly training the tiny
model and the SAEs; it writes nothing, everything happens in a temporary directory):

    python benchmarks/saelens_crosscheck.py

Not imported by featsep or its tests.
"""

from __future__ import annotations

import argparse
import tempfile
from importlib.metadata import version

import torch

HOOK_LAYER = 0  # not the last block: what the splice does at BOS reaches later positions
HOOK = f"blocks.{HOOK_LAYER}.hook_resid_post"
VOCAB, CTX, D_MODEL, LM_STEPS, SAE_STEPS = 512, 64, 64, 200, 300
BOS = VOCAB - 1  # GPT-2 style: bos == eos, no pad
BATCH, N_RECON, N_SPARSE = 8, 4, 4  # prompts per batch, reconstruction / sparsity batches


# ---- the model, twice --------------------------------------------------------------------------


def markov_rows(n: int, seed: int) -> torch.Tensor:
    """[n, CTX] ids from a fixed sparse bigram language (8 successors per token), BOS-led like
    featsep's packed rows, with BOS/EOS document breaks inside rows so the special-token masks
    matter."""
    table = torch.randint(0, VOCAB - 1, (VOCAB, 8), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    rows = torch.empty(n, CTX, dtype=torch.long)
    rows[:, 0] = BOS
    for t in range(1, CTX):
        prev = rows[:, t - 1]
        nxt = table[prev, torch.randint(0, 8, (n,), generator=g)]
        brk = torch.rand(n, generator=g) < 0.02  # a document break
        rows[:, t] = torch.where(prev == BOS, torch.randint(0, VOCAB - 1, (n,), generator=g), nxt)
        rows[:, t] = torch.where(brk & (prev != BOS), BOS, rows[:, t])
    return rows


def build_models(tmp: str):
    """A GPT-2 trained briefly on the bigram language (so clean CE < zero-ablation CE), saved
    with save_pretrained and reloaded (HF side), and the same weights in a HookedTransformer
    with NO weight processing: fold_ln / centering would change hook_resid_post, so the SAE
    would see different activations on the two sides."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=CTX, n_embd=D_MODEL, n_layer=2, n_head=4,
                        bos_token_id=BOS, eos_token_id=BOS)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(LM_STEPS):
        ids = markov_rows(16, seed=100 + step)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(tmp)
    hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="eager").eval()
    cfg = HookedTransformerConfig(
        d_model=D_MODEL, d_head=D_MODEL // 4, n_heads=4, d_mlp=4 * D_MODEL, n_layers=2, n_ctx=CTX,
        d_vocab=VOCAB, act_fn=config.activation_function, eps=config.layer_norm_epsilon,
        normalization_type="LN", original_architecture="GPT2LMHeadModel", default_prepend_bos=False,
    )
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )
    return hf, tl.eval()


# ---- SAEs: briefly trained in featsep, saved in its SAELens layout --------------------------------


def train_saes(lm, tmp: str):
    """(name, featsep SAE, saved dir): a ReLU-L1 SAE on raw activations, and a TopK SAE
    trained on activations scaled by featsep's constant normalization_factor, both by featsep.train."""
    import featsep
    from featsep.data import estimate_normalization_factor
    from featsep.sae import make_sae, save_sae

    ids = markov_rows(128, seed=1)
    acts = lm.forward_to_hook(ids, None, HOOK)[ids != BOS].float()  # [tokens, d]
    saes = [
        ("relu_l1", make_sae("relu_l1", d_in=D_MODEL, d_sae=256, l1_coefficient=1.0, l1_warmup_steps=50,
                             hook_name=HOOK, hook_layer=HOOK_LAYER, context_size=CTX)),
        ("topk (normalised)", make_sae("topk", d_in=D_MODEL, d_sae=256, k=12, hook_name=HOOK, hook_layer=HOOK_LAYER,
                                       context_size=CTX, normalization_factor=estimate_normalization_factor(acts))),
    ]
    out = []
    for i, (name, sae) in enumerate(saes):
        x_all = acts * (sae.cfg.normalization_factor or 1.0)
        g = torch.Generator().manual_seed(2)
        batches = (x_all[torch.randint(0, x_all.shape[0], (512,), generator=g)] for _ in range(SAE_STEPS))
        featsep.train(sae, batches, steps=SAE_STEPS, lr=1e-3, lr_decay_fraction=0, progress=False)
        sae.eval()
        out.append((name, sae, save_sae(sae, f"{tmp}/sae{i}")))
    return out


# ---- the two evals --------------------------------------------------------------------------------


def run_featsep(lm, saes, rows, exclude_special=True):
    """featsep's registered `core` eval, its token source pinned to `rows`."""
    from featsep.evals import core
    from featsep.evals.common.context import EvalContext

    core.token_rows = lambda ctx, s, n: rows[:n]  # the only thing swapped: the corpus
    s = core.CoreSettings(context_size=CTX, batch_size_prompts=BATCH, lm_batch_size=BATCH,
                          n_eval_reconstruction_batches=N_RECON, n_eval_sparsity_variance_batches=N_SPARSE,
                          exclude_special_tokens_from_reconstruction=exclude_special)
    ctx = EvalContext(lm, HOOK, cache_dir=None, verbose=False)
    return core.run_core(saes, ctx, s)


class FixedTokens:
    """Stands in for SAELens's ActivationsStore: serves the reconstruction rows, then (after
    run_evals' reset_input_dataset) the sparsity rows. A real store restarts from the first
    rows on reset; featsep uses the next rows, so this keeps both sides on the same tokens."""

    context_size, store_batch_size_prompts = CTX, BATCH

    def __init__(self, rows):
        self.parts, self.pos = [rows[: N_RECON * BATCH], rows[N_RECON * BATCH :]], 0
        self.part = 0

    def get_batch_tokens(self, n):
        batch = self.parts[self.part][self.pos : self.pos + n]
        self.pos += n
        return batch

    def reset_input_dataset(self):
        self.part, self.pos = 1, 0


def run_saelens(tl, sae_dir, factor, rows, exclude_special=(BOS,)):
    from sae_lens import SAE
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = SAE.load_from_disk(str(sae_dir))
    cfg = get_eval_everything_config(BATCH, N_RECON, N_SPARSE)
    # SAELens ignores featsep's cfg.json "normalization_factor": pass it as the scaler
    scaler = ActivationScaler(scaling_factor=factor)
    # [BOS] is what exclude_special_tokens=True yields for a GPT-2 tokenizer (bos = eos = pad)
    metrics, per_latent = run_evals(sae, FixedTokens(rows), tl, scaler, cfg,
                                    exclude_special_tokens=list(exclude_special))
    return sae, metrics, per_latent


# ---- comparison -----------------------------------------------------------------------------------

NOTES = {
    "explained_variance": "R^2 over all tokens, float64 sums on both sides",
    "explained_variance_legacy": "per-token 1 - norm(r)^2 / norm(x - batch mean)^2, averaged",
    "explained_variance_saebench": "featsep only: SAEBench 8042bb38 formula (buggy)",
    "mse": "featsep `mse` = SAEBench per-batch convention (~ mse_per_token / tokens per batch)",
    "mse_per_token": "vs SAELens `mse` (per-token since PR #711)",
    "l1": "featsep: signed sum; SAELens: sum of abs (same for codes >= 0)",
    "kl_div_with_sae": "KL(clean, spliced); special positions not spliced",
    "ce_loss_with_sae": "predictions made at BOS positions excluded",
    "mean_consistent_activation_heuristic": "nanmean over latents (dead latents give 0/0)",
    "mean_encoder_norm": "abs diff: max over latents",
    "mean_encoder_decoder_cosine_sim": "abs diff: max over latents",
    "mean_encoder_bias": "abs diff: max over latents",
}

GROUPS = {
    "model_behavior_preservation": ["kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"],
    "model_performance_preservation": ["ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                                       "ce_loss_without_sae"],
    "reconstruction_quality": ["explained_variance", "explained_variance_legacy", "explained_variance_saebench",
                               "mse_per_token", "mse", "cossim"],
    "shrinkage": ["l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"],
    "sparsity": ["l0", "l1"],
}
SAELENS_NAME = {"mse_per_token": "mse", "mse": None, "explained_variance_saebench": None}


def compare(fs_result, sl_metrics, sl_latent):
    """Rows (metric, featsep, SAELens or None, abs diff or None = |featsep - SAELens|)."""
    rows = []
    for group, names in GROUPS.items():
        for name in names:
            sl_name = SAELENS_NAME.get(name, name)
            sl = sl_metrics[group].get(sl_name) if sl_name else None
            rows.append((name, fs_result.metrics[group][name], sl, None))
    fs_latent = {k: torch.tensor([d[k] for d in fs_result.details]) for k in fs_result.details[0] if k != "index"}
    sl_latent = {k: torch.tensor(v, dtype=torch.float64) for k, v in sl_latent.items()}
    for key in ("feature_density", "consistent_activation_heuristic"):
        fs, sl = fs_latent[key].double(), sl_latent[key]
        rows.append((f"mean_{key}", fs.nanmean().item(), sl.nanmean().item(), None))
    rows.append(("frac_alive", fs_result.metrics["misc_metrics"]["frac_alive"],
                 (sl_latent["feature_density"] > 0).double().mean().item(), None))
    for key in ("encoder_norm", "encoder_decoder_cosine_sim", "encoder_bias"):
        fs, sl = fs_latent[key].double(), sl_latent[key]
        rows.append((f"mean_{key}", fs.mean().item(), sl.mean().item(), (fs - sl).abs().max().item()))
    return rows


def knobs(lm, tl, saes, rows, fs_topk) -> list[str]:
    """What the two settings aligned above are worth: SAELens without featsep's scaling factor
    (on the saved SAE, and on the copy `featsep export` / save_sae(fold=True) writes, which
    should need none), and both sides with special tokens reconstructed (no SAELens setting
    masks them only from the means, as featsep's exclude_special_tokens_from_reconstruction=False does)."""
    from featsep.sae import save_sae

    (_, relu, relu_dir), (_, topk, topk_dir) = saes
    keys = [("model_behavior_preservation", "kl_div_score"), ("model_performance_preservation", "ce_loss_score"),
            ("reconstruction_quality", "explained_variance"), ("sparsity", "l0")]
    lines = ["| setting | metric | featsep | SAELens |", "|---|---|---|---|"]
    for setting, sae_dir in (("topk, SAELens given no ActivationScaler", topk_dir),
                             ("topk folded (`featsep export`), no ActivationScaler",
                              save_sae(topk, f"{topk_dir}_folded", fold=True))):
        _, raw, _ = run_saelens(tl, sae_dir, None, rows)
        lines += [f"| {setting} | {k} | {fmt(fs_topk[g][k])} | {fmt(raw[g][k])} |" for g, k in keys]
    fs = run_featsep(lm, [relu], rows, exclude_special=False)[0].metrics
    _, sl, _ = run_saelens(tl, relu_dir, None, rows, exclude_special=())
    lines += [f"| relu_l1, special tokens reconstructed | {k} | {fmt(fs[g][k])} | {fmt(sl[g][k])} |" for g, k in keys]
    return lines


def fmt(v):
    return "n/a" if v is None else f"{v:.6g}"


def table(rows) -> list[str]:
    lines = ["| metric | featsep | SAELens | abs diff | note |", "|---|---|---|---|---|"]
    for name, fs, sl, diff in rows:
        diff = diff if diff is not None or sl is None else abs(fs - sl)
        lines.append(f"| {name} | {fmt(fs)} | {fmt(sl)} | {'' if diff is None else f'{diff:.2e}'} | "
                     f"{NOTES.get(name, '')} |")
    return lines


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help only
    torch.set_num_threads(2)

    import featsep
    from featsep.lm import LanguageModel

    out = [f"versions: sae-lens {version('sae-lens')}, transformer-lens {version('transformer-lens')}, "
           f"transformers {version('transformers')}, torch {torch.__version__}, featsep {featsep.__version__}"]
    with tempfile.TemporaryDirectory() as tmp:
        hf, tl = build_models(tmp)
        rows = markov_rows((N_RECON + N_SPARSE) * BATCH, seed=3)
        with torch.no_grad():
            logit_diff = (hf(rows).logits - tl(rows)).abs().max().item()
            _, cache = tl.run_with_cache(rows, names_filter=[HOOK])
        lm = LanguageModel.from_hf(hf, None, name="tiny-gpt2")
        act_diff = (lm.forward_to_hook(rows, None, HOOK) - cache[HOOK]).abs().max().item()
        out.append(f"model: GPT-2, 2 layers, d_model {D_MODEL}, vocab {VOCAB}, trained {LM_STEPS} steps; hook {HOOK}; "
                   f"{rows.shape[0]} rows x {CTX} tokens ({N_RECON}+{N_SPARSE} batches of {BATCH} prompts)")
        out.append(f"HF vs TransformerLens: max |logit diff| {logit_diff:.2e}, max |{HOOK} diff| {act_diff:.2e}")
        saes = train_saes(lm, tmp)
        fs_results = run_featsep(lm, [sae for _, sae, _ in saes], rows)
        for (name, sae, path), fs in zip(saes, fs_results):
            factor = sae.cfg.normalization_factor
            sl_sae, sl_metrics, sl_latent = run_saelens(tl, path, factor, rows)
            weight_diff = max((getattr(sae, k) - getattr(sl_sae, k)).abs().max().item()
                              for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
            with torch.no_grad():
                x = cache[HOOK] * (factor or 1.0)
                code_diff = (sae.encode(x) - sl_sae.encode(x)).abs().max().item()
            out += ["", f"### {name}: SAELens loaded it as {type(sl_sae).__name__}; max |weight diff| "
                    f"{weight_diff:.1e}, max |code diff| {code_diff:.1e}", ""]
            out += table(compare(fs, sl_metrics, sl_latent))
        out += ["", "### Settings aligned above, left at their defaults", ""]
        out += knobs(lm, tl, saes, rows, fs_results[1].metrics)
    print("\n".join(out))


if __name__ == "__main__":
    main()
