"""Feature absorption on the first-letter task (SAEBench evals/absorption, checked against sae-bench 0.6.0).

1. Words (vocab.py get_alpha_tokens): every vocabulary token, decoded with
   convert_tokens_to_string ("\u2581"-prefixed tokens keep their leading space), kept if it is
   ASCII letters only once one leading space is dropped. The word KEEPS its leading space (" cat"
   and "cat" are two words, as in SAEBench), so each word is exactly one token in the prompt.
   Shuffled with `seed` (SAEBench: unseeded), first int(n * (1 - test_fraction)) words train,
   the rest test (probing.py create_dataset_probe_training).
2. ICL prompts (prompting.py create_icl_prompt, separator prepended):
   "\\n{ex} has the first letter: E\\n...\\n{word} has the first letter:" with n_icl_examples
   examples drawn from the word's own split, never the word itself; the answer letter is the
   first letter of the stripped example, upper-cased. Activations at the word's token.
3. Ground-truth probe (common.py/probing.py): Linear(d, 26), one-vs-rest BCE with
   pos_weight = neg/pos, Adam lr 1e-2 decayed exponentially to 1e-5, weight decay 1e-4,
   batch 64, 50 epochs, on raw float32 activations; per-letter F1 on the test words at logit > 0.
4. Per SAE, k-sparse probing (k_sparse_probing.py): an L1 probe on the latents of the train
   words, then for k = 1..max_k sklearn logistic regression (class_weight="balanced") on the k
   latents with the largest signed L1-probe weights; F1 on the test words; the split features are
   the largest k reached while F1 keeps improving by more than f1_jump_threshold.
5. Absorption (feature_absorption*.py) on test words whose own-letter probe logit is > 0, each
   with a fresh ICL prompt whose examples come from the WHOLE vocabulary: how much of the probe
   projection is carried by latents outside the split features (fraction), and whether a single
   such latent carries it while the split features are silent (full absorption). Per letter the
   sums are divided by the number of such words; the means and sample SDs run over the letters
   whose probe F1 exceeds min_probe_f1.
SAEBench writes nothing when fewer than min_letters (20) letters have probe F1 > min_probe_f1;
here the result says so (status, enough_letters) and still reports what was measured.

Deliberate deviations from SAEBench:
- Seeded shuffles and ICL draws (SAEBench uses the unseeded `random` module).
- max_words: SAEBench uses the whole vocabulary (~140k words for Gemma tokenizers); on CPU the
  default here is a random 1000 (the probe then has ~800 training words for d_model dimensions,
  which weakens it; set max_words=0 for all words).
- The word's position is found per prompt by tokenising the prefix (SAEBench hard-codes -6, and
  its probe-training step does not check prompt lengths); prompts where the tokenizer merges the
  word with the template are dropped and counted.
- Probes and activations stay float32 (SAEBench casts the probe to bf16 on GPU).
- The absorption arithmetic runs in the SAE's input units: P = (x * normalization_factor) . u,
  matching codes of the normalised input (SAEBench uses raw x with SAEs that take raw x; the two
  agree when the factor is 1).
- Full absorption needs P > 0 (SAEBench: P >= 0, then divides by P).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featsep.evals.common.context import EvalContext, encode, sae_scale
from featsep.evals.common.probes import f1_score, train_multilabel_probe
from featsep.evals.registry import EvalResult, EvalSettings, register_eval
from featsep.evals.schema import saebench_section

LETTERS = "abcdefghijklmnopqrstuvwxyz"
EPS = 1e-8


class AbsorptionSettings(EvalSettings):
    prompt_template: str = "{word} has the first letter:"
    answer_template: str = " {letter}"  # appended to ICL examples; letter upper-cased
    n_icl_examples: int = 10
    max_words: Optional[int] = None  # None: every word on a GPU, 1000 on CPU; 0: every word
    test_fraction: float = 0.2
    llm_batch_size: int = 16
    # ground-truth probe
    probe_lr: float = 1e-2
    probe_weight_decay: float = 1e-4
    probe_batch_size: int = 64
    probe_epochs: int = 50
    # k-sparse probing
    max_k_value: int = 10
    f1_jump_threshold: float = 0.03
    k_sparse_probe_l1_decay: float = 0.01
    k_sparse_probe_batch_size: int = 4096
    k_sparse_probe_num_epochs: int = 50
    # absorption (SAEBench's hard-coded values)
    min_probe_f1: float = 0.6
    min_letters: int = 20
    absorption_fraction_probe_cos_sim_threshold: float = 0.1
    full_absorption_probe_cos_sim_threshold: float = 0.025
    probe_projection_proportion_threshold: float = 0.4
    absorption_fraction_max_absorbing_latents: int = 3
    top_k_feats: int = 10
    seed: int = 42


# ---- words and prompts ---------------------------------------------------------------------------


def token_text(tokenizer, token: str) -> str:
    """SAEBench's vocab.convert_tokens_to_string: the token's text, with the leading space of a
    "\u2581"-prefixed token restored where the tokenizer's decoder drops it (Mistral)."""
    text = tokenizer.convert_tokens_to_string([token])
    if token and token[0] == "\u2581" and (not text or text[0] != " "):
        text = " " + text
    return text


def alpha_words(tokenizer) -> list[str]:
    """SAEBench's get_alpha_tokens: the text of every vocabulary token that is ASCII letters only
    once one leading space is dropped, leading space kept; sorted, duplicates kept (SAEBench's
    list has one entry per token)."""
    words = []
    for token in tokenizer.get_vocab():
        text = token_text(tokenizer, token)
        core = text[1:] if text.startswith(" ") else text
        if core.isascii() and core.isalpha():
            words.append(text)
    return sorted(words)


def first_letter(word: str) -> str:
    """SAEBench's prompting.first_letter (without prefix/capitalisation): the first alphabetic
    character of the stripped word."""
    return next(c for c in word.strip() if c.isalpha())


def icl_prompt(word: str, examples: list[str], s: AbsorptionSettings) -> str:
    lines = [
        s.prompt_template.format(word=ex) + s.answer_template.format(letter=first_letter(ex).upper())
        for ex in examples
    ]
    return "\n" + "\n".join(lines) + "\n" + s.prompt_template.format(word=word)


def word_end_position(lm, prompt: str, word_end: int) -> Optional[int]:
    """Index (BOS included) of the last token of the text prompt[:word_end], or None when the
    tokenizer merges that token with what follows (the prefix is then not a token prefix)."""
    tok = lm.tokenizer
    full = tok(prompt, add_special_tokens=False)["input_ids"]
    prefix = tok(prompt[:word_end], add_special_tokens=False)["input_ids"]
    if full[: len(prefix)] != prefix:
        return None
    return len(prefix)  # BOS at 0 shifts every index by one


@dataclass
class PromptSet:
    words: list[str]
    prompts: list[str]
    positions: list[int]
    n_dropped: int


def build_prompts(lm, words: list[str], icl_pool: list[str], s: AbsorptionSettings, rng: random.Random) -> PromptSet:
    kept, prompts, positions, dropped = [], [], [], 0
    suffix_len = len(s.prompt_template) - s.prompt_template.index("{word}") - len("{word}")
    for word in words:
        pool = [w for w in rng.sample(icl_pool, min(len(icl_pool), s.n_icl_examples + 1)) if w != word]
        prompt = icl_prompt(word, pool[: s.n_icl_examples], s)
        pos = word_end_position(lm, prompt, len(prompt) - suffix_len)
        if pos is None:
            dropped += 1
            continue
        kept.append(word)
        prompts.append(prompt)
        positions.append(pos)
    return PromptSet(kept, prompts, positions, dropped)


@torch.no_grad()
def acts_at_positions(ctx: EvalContext, ps: PromptSet, batch_size: int) -> Tensor:
    out = []
    for start in range(0, len(ps.prompts), batch_size):
        ids, mask = ctx.lm.tokenize(ps.prompts[start : start + batch_size], max_length=4096)
        acts = ctx.lm.forward_to_hook(ids, mask, ctx.hook)
        pos = torch.tensor(ps.positions[start : start + batch_size])
        out.append(acts[torch.arange(len(pos)), pos.to(acts.device)].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, ctx.lm.d_model)


def letter_labels(words: list[str]) -> Tensor:
    return torch.tensor([LETTERS.index(first_letter(w).lower()) for w in words], dtype=torch.long)


# ---- the model-side data (shared by every SAE) ---------------------------------------------------


def _model_side(ctx: EvalContext, s: AbsorptionSettings) -> dict:
    """Words, prompt activations, the ground-truth probe and the fresh absorption prompts."""
    max_words = ctx.budget(s.max_words, gpu=None, cpu=1000)
    max_words = max_words or None  # 0: every word

    def compute():
        rng = random.Random(s.seed)
        vocab = alpha_words(ctx.lm.tokenizer)
        if len(vocab) < 2 * len(LETTERS):
            raise ValueError(
                f"the tokenizer of {ctx.lm.name} has only {len(vocab)} all-letter tokens; the first-letter task "
                "needs a vocabulary of words"
            )
        rng.shuffle(vocab)
        words = vocab[:max_words] if max_words else vocab
        split = min(len(words) - 1, int(len(words) * (1 - s.test_fraction)))  # SAEBench: int(n * 0.8)
        train_words, test_words = words[:split], words[split:]
        train = build_prompts(ctx.lm, train_words, train_words, s, rng)
        test = build_prompts(ctx.lm, test_words, test_words, s, rng)
        x_train = acts_at_positions(ctx, train, s.llm_batch_size)
        x_test = acts_at_positions(ctx, test, s.llm_batch_size)
        y_train, y_test = letter_labels(train.words), letter_labels(test.words)
        probe = train_multilabel_probe(
            x_train, y_train, len(LETTERS), lr=s.probe_lr, weight_decay=s.probe_weight_decay,
            batch_size=s.probe_batch_size, epochs=s.probe_epochs, seed=s.seed,
        )
        with torch.no_grad():
            test_logits = probe(x_test)
        probe_f1 = [
            f1_score((test_logits[:, i] > 0).numpy(), (y_test == i).numpy()) for i in range(len(LETTERS))
        ]
        # absorption candidates: test words whose own letter's probe logit is positive; their fresh
        # prompts draw ICL examples from the whole vocabulary (SAEBench's icl_word_list)
        candidates = [w for j, w in enumerate(test.words) if test_logits[j, y_test[j]] > 0]
        fresh = build_prompts(ctx.lm, candidates, vocab, s, rng)
        return {
            "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "probe_weight": probe.weight.detach().clone(),
            "probe_f1": probe_f1, "fresh_words": fresh.words, "x_fresh": acts_at_positions(ctx, fresh, s.llm_batch_size),
            "n_words": len(words), "n_train": len(train.words), "n_test": len(test.words),
            "n_dropped_prompts": train.n_dropped + test.n_dropped + fresh.n_dropped,
            "positions_from_end": _positions_from_end(ctx.lm, train),
        }

    key = s.model_dump(include=_MODEL_SIDE_FIELDS)
    # "words": the word pipeline's version (2: SAEBench's leading-space words, 80/20 split, ICL
    # pool of the fresh prompts = whole vocabulary); entries of older pipelines are not reused
    return ctx.cached("absorption_model_side", {**key, "max_words": max_words, "words": 2}, compute)


_MODEL_SIDE_FIELDS = {
    "prompt_template", "answer_template", "n_icl_examples", "test_fraction", "probe_lr", "probe_weight_decay",
    "probe_batch_size", "probe_epochs", "seed",
}


def _positions_from_end(lm, ps: PromptSet) -> dict[str, int]:
    """How far from the prompt's end the word's last token sits (SAEBench assumes 6)."""
    counts: dict[str, int] = {}
    for prompt, pos in zip(ps.prompts[:200], ps.positions[:200]):
        n = len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
        key = str(n - pos)
        counts[key] = counts.get(key, 0) + 1
    return counts


# ---- k-sparse probing ----------------------------------------------------------------------------


def split_features(f1_by_k: list[float], feats_by_k: list[list[int]], jump: float) -> list[int]:
    """SAEBench's rule: start at k=1; move to k+1 while its F1 beats the best so far by > jump."""
    best, chosen = f1_by_k[0], feats_by_k[0]
    for f1, feats in zip(f1_by_k[1:], feats_by_k[1:]):
        if f1 > best + jump:
            best, chosen = f1, feats
        else:
            break
    return chosen


def k_sparse_probing(codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor, letters: list[int],
                     s: AbsorptionSettings) -> dict[int, dict]:
    from sklearn.linear_model import LogisticRegression

    l1_probe = train_multilabel_probe(
        codes_train, y_train, len(LETTERS), lr=1e-2, weight_decay=1e-6, batch_size=s.k_sparse_probe_batch_size,
        epochs=s.k_sparse_probe_num_epochs, l1_decay=s.k_sparse_probe_l1_decay, seed=s.seed,
    )
    out = {}
    for letter in letters:
        weights = l1_probe.weight[letter].detach()
        target = (y_train == letter).numpy()
        f1s, feats_by_k = [], []
        for k in range(1, min(s.max_k_value, codes_train.shape[1]) + 1):
            feats = weights.topk(k).indices.tolist()
            if target.all() or not target.any():
                f1s.append(0.0)
            else:
                clf = LogisticRegression(max_iter=500, class_weight="balanced", random_state=s.seed)
                clf.fit(codes_train[:, feats].numpy(), target)
                pred = clf.decision_function(codes_test[:, feats].numpy()) > 0
                f1s.append(f1_score(pred, (y_test == letter).numpy()))
            feats_by_k.append(feats)
        out[letter] = {"f1_by_k": f1s, "split_feats": split_features(f1s, feats_by_k, s.f1_jump_threshold)}
    return out


# ---- absorption arithmetic -----------------------------------------------------------------------


def absorption_scores(
    codes: Tensor, x: Tensor, probe_direction: Tensor, W_dec: Tensor, split_feats: list[int], s: AbsorptionSettings
) -> tuple[list[float], list[bool]]:
    """Per word (rows of codes [n, F] and SAE-input activations x [n, d]): the absorption fraction
    and whether it is full absorption, by SAEBench's feature_absorption_calculator rules. All
    words at once; the scalar arithmetic in float64, as SAEBench's per-word Python floats."""
    u = probe_direction.float() / probe_direction.float().norm()
    cos = torch.nn.functional.cosine_similarity(u[None, :], W_dec.float(), dim=-1)  # [F]
    P = (x.float() @ u).double()  # [n] probe projection
    contrib = codes.float() * cos[None, :]  # [n, F]
    M = contrib[:, split_feats].sum(1).double()  # carried by the split features
    not_split = torch.ones(W_dec.shape[0], dtype=torch.bool)
    not_split[split_feats] = False
    # T: the top few positive contributions of aligned latents outside the split features (the
    # others are zeroed, which leaves the top values' sum unchanged)
    absorbing = not_split & (cos >= s.absorption_fraction_probe_cos_sim_threshold)
    candidates = torch.where(absorbing[None, :] & (contrib > 0), contrib, 0.0)
    T = candidates.topk(min(s.absorption_fraction_max_absorbing_latents, candidates.shape[1]), dim=1).values
    T = T.sum(1).double()
    ratio = torch.where(P != 0, T / P, 0.0)
    A = torch.minimum(T, P - M)
    partial = (A / (A + M)).clamp(0.0, 1.0)
    none = (M >= P) | (ratio < s.probe_projection_proportion_threshold)
    fractions = torch.where(none, 0.0, torch.where(M <= 0, 1.0, partial))
    top = contrib.topk(min(s.top_k_feats, contrib.shape[1]), dim=1).indices[:, 0]
    full = (
        (codes[:, split_feats] < EPS).all(1)  # SAEBench: signed activation < 1e-8
        & (cos.double()[top] >= s.full_absorption_probe_cos_sim_threshold)
        & (P > 0)
        & (contrib.gather(1, top[:, None])[:, 0].double() / P >= s.probe_projection_proportion_threshold)
    )
    return fractions.tolist(), full.tolist()


# ---- the eval ------------------------------------------------------------------------------------


def _codes(sae, x: Tensor, batch: int = 4096) -> Tensor:
    return torch.cat([encode(sae, x[i : i + batch]).float().cpu() for i in range(0, x.shape[0], batch)]) if len(x) else \
        torch.zeros(0, int(sae.cfg.d_sae))


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


# ---- final_info.json: the reference runs' absorption layout ---------------------------------------

# The reference runs' SAEBench (early 2025) named full absorption as these (final_info name ->
# this eval's name); its mean absorption score is the mean full-absorption rate over letters.
FINAL_INFO_MEAN = {"mean_absorption_score": "mean_full_absorption_score",
                   "mean_num_split_features": "mean_num_split_features"}
FINAL_INFO_LETTER = {"first_letter": "first_letter", "absorption_rate": "full_absorption_rate",
                     "num_absorption": "num_full_absorption", "num_probe_true_positives": "num_probe_true_positives",
                     "num_split_features": "num_split_features"}


def _reference_names_first(block: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The reference's keys (values looked up under this eval's names), then this eval's own keys."""
    return {**{ref: block[own] for ref, own in names.items() if own in block}, **block}


def final_info_section(result: dict[str, Any], results_file: Optional[Path]) -> dict[str, Any]:
    """The result with the reference runs' key names added (mean_absorption_score; per letter
    absorption_rate, num_absorption), beside this eval's own (the fraction metrics)."""
    section = saebench_section(result, results_file)
    metrics = dict(section["eval_result_metrics"])
    if "mean" in metrics:
        metrics["mean"] = _reference_names_first(metrics["mean"], FINAL_INFO_MEAN)
    section["eval_result_metrics"] = metrics
    section["eval_result_details"] = [_reference_names_first(d, FINAL_INFO_LETTER)
                                      for d in section.get("eval_result_details", [])]
    return section


@register_eval(
    "absorption",
    eval_type_id="absorption_first_letter",
    final_info_key="absorption evaluation results",
    settings=AbsorptionSettings,
    final_info_section=final_info_section,
)
def run_absorption(saes: list, ctx: EvalContext, s: AbsorptionSettings) -> list[EvalResult]:
    side = _model_side(ctx, s)
    letters = [i for i, f1 in enumerate(side["probe_f1"]) if f1 > s.min_probe_f1]
    fresh_labels = letter_labels(side["fresh_words"])
    enough = len(letters) >= s.min_letters  # SAEBench counts letters by probe F1 alone
    status = "ok" if enough else (
        f"too few letters: {len(letters)} have probe F1 > {s.min_probe_f1}, {s.min_letters} required; "
        "SAEBench would write no result, these means are over the qualifying letters only (raise max_words, "
        "use a larger model or lower min_letters / min_probe_f1)"
    )
    results = []
    for sae in tqdm(saes, desc="absorption", disable=not ctx.verbose or len(saes) < 2):
        scale = sae_scale(sae)
        codes_train, codes_test = _codes(sae, side["x_train"]), _codes(sae, side["x_test"])
        ksp = k_sparse_probing(codes_train, side["y_train"], codes_test, side["y_test"], letters, s)
        codes_fresh = _codes(sae, side["x_fresh"])
        W_dec = sae.W_dec.detach().float().cpu()
        details = []
        for letter in letters:
            rows = (fresh_labels == letter).nonzero().flatten()
            if len(rows) == 0:
                continue
            fractions, full = absorption_scores(
                codes_fresh[rows], side["x_fresh"][rows] * scale, side["probe_weight"][letter], W_dec,
                ksp[letter]["split_feats"], s,
            )
            n = len(rows)
            details.append({
                "first_letter": LETTERS[letter],
                "mean_absorption_fraction": sum(fractions) / n,
                "full_absorption_rate": sum(full) / n,
                "num_full_absorption": int(sum(full)),
                "num_probe_true_positives": n,
                "num_split_features": len(ksp[letter]["split_feats"]),
                "split_features": ksp[letter]["split_feats"],
                "k_sparse_f1_by_k": ksp[letter]["f1_by_k"],
                "probe_f1": side["probe_f1"][letter],
            })
        fr = [d["mean_absorption_fraction"] for d in details]
        fu = [d["full_absorption_rate"] for d in details]
        ns = [d["num_split_features"] for d in details]
        mean = lambda v: sum(v) / len(v) if v else float("nan")
        metrics = {"mean": {
            "mean_absorption_fraction_score": mean(fr),
            "mean_full_absorption_score": mean(fu),
            "mean_num_split_features": mean(ns),
            "std_dev_absorption_fraction_score": _sd(fr),
            "std_dev_full_absorption_score": _sd(fu),
            "std_dev_num_split_features": _sd(ns),
            "num_letters": len(details),
        }}
        unstructured = {
            "status": status,
            "enough_letters": enough,
            "probe_f1_by_letter": dict(zip(LETTERS, side["probe_f1"])),
            "n_words": side["n_words"], "n_train_words": side["n_train"], "n_test_words": side["n_test"],
            "n_dropped_prompts": side["n_dropped_prompts"],
            "word_position_from_end_counts": side["positions_from_end"],
            "seeded": f"yes (seed {s.seed}); SAEBench shuffles words and ICL examples unseeded",
        }
        results.append(EvalResult(metrics, details, unstructured, s.model_dump()))
    return results
