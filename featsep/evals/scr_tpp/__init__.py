"""SCR and TPP (SAEBench evals/scr_and_tpp): do SAE latents isolate one concept from another?

Both train linear probes on mean-pooled model activations, rank latents by their effect on a
probe, remove the top N (N in n_values) from the activations and re-test probes:

SCR (spurious correlation removal). Data with two binary attributes (bias_in_bios: profession
pair x gender; Amazon: category pair x rating 1/5; offline: BBC topic pair x byline gender, see
featsep.data.offline). Three probes: `class` (attribute 1, balanced over attribute 2),
`spurious` (attribute 2, balanced over attribute 1) and `biased` (trained where the two are
perfectly confounded). dir1 removes the spurious probe's latents and scores the biased probe on
class data; dir2 removes the class probe's latents and scores it on spurious data:
    S = (A_ablated - A_biased) / (A_clean - A_biased), 0 when the denominator < 0.001,
A_biased = biased probe's clean accuracy on that data, A_clean = the matching probe's.
scr_metric_threshold_N takes dir1 when the biased probe is no better on class data than on
spurious data (it leans on the spurious attribute), else dir2. Averaged over the pairs.
TPP (targeted probe perturbation). One one-vs-rest probe per class; for class i, remove its
latents: intended = acc_i(clean) - acc_i(ablated), unintended = mean_{j != i} acc_j(clean) -
acc_j(ablated), total = intended - unintended; mean over classes, then datasets.

Latent effects (train data): e_f = (mean pooled code of positives - of negatives)_f *
(w_probe . W_dec[f]) / normalisation factor; SCR ranks |e|, TPP clamps the mean difference at 0
first. The top N non-zero effects are removed: x' = dec(f with them zeroed) + (x - dec(f)). With
a linear decoder that is x - sum_{f in S} f W_dec[f] (scaled), and mean pooling is linear, so the
pooled ablated activation is pooled(x) - pooled(f)[S] W_dec[S]: exact and cheap, checked per SAE.

Where we differ from SAEBench (on purpose, recorded in the result):
- pooling over kept positions only (SAEBench also encodes and ablates pad positions, whose
  zero inputs can make the ablation leak into the pooled mean);
- probes and negative samples seeded, and clean and ablated accuracies measured on the same
  test items (SAEBench redraws TPP's negatives each time);
- cells of the two-attribute data are shuffled with the seed before taking the first rows.
"""

from featsep.evals.scr_tpp import scr, tpp  # noqa: F401  (importing the package registers both evals)
