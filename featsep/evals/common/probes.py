"""Linear probes as SAEBench trains them, seeded (SAEBench's are not).

Binary probes (sparse_probing): a torch Linear(d, 1) with the best *test* accuracy over
epochs (SAEBench's selection, optimistic by design), and sklearn logistic regression on the
k dimensions with the largest class-mean difference (SAEBench's, on raw dims, and featsep's
standardised variant, which ranks dims after scaling each by the training set's std, so one
massive dimension, as in gemma-3's residual stream, cannot take the top-k by its scale alone).
Multi-label probes (absorption): Linear(d, C), one-vs-rest BCE with pos_weight = neg/pos,
Adam with an exponentially decaying learning rate, optional L1 on the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return ((logits > 0).long() == labels.long()).float().mean().item()


@dataclass
class LinearProbe:
    """A trained Linear(d, 1) probe, detached: logits = x . weight + bias."""

    weight: Tensor  # [d]
    bias: float

    def logits(self, x: Tensor) -> Tensor:
        return x.float() @ self.weight + self.bias

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return accuracy(self.logits(x), y)


def train_binary_probe(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    lr: float = 1e-2,
    batch_size: int = 250,
    epochs: int = 100,
    patience: int = 10,
    seed: int = 42,
    l1_penalty: float = 0.0,
) -> tuple[LinearProbe, float]:
    """SAEBench's probe training, seeded: Linear(d, 1), AdamW, BCE (+ l1_penalty * sum|w|, as its
    SCR/TPP probes use); returns the epoch with the best test accuracy and that accuracy (early
    stop after `patience` epochs without gain)."""
    gen = _generator(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Linear(x_train.shape[1], 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    x_train, x_test = x_train.float(), x_test.float()
    y_train_f = y_train.float()
    best, best_acc, since_best = None, -1.0, 0
    for _ in range(epochs):
        order = torch.randperm(x_train.shape[0], generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with torch.enable_grad():
                loss = loss_fn(net(x_train[idx]).squeeze(-1), y_train_f[idx])
                if l1_penalty:
                    loss = loss + l1_penalty * net.weight.abs().sum()
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        probe = LinearProbe(net.weight.detach()[0].clone(), float(net.bias.detach()))
        acc = probe.accuracy(x_test, y_test)
        if acc > best_acc:
            best, best_acc, since_best = probe, acc, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    return best, best_acc


def top_k_dims(x_train: Tensor, y_train: Tensor, k: int) -> Tensor:
    """The k dimensions with the largest |mean(positive) - mean(negative)| (SAEBench)."""
    pos = x_train[y_train == 1].float().mean(0)
    neg = x_train[y_train == 0].float().mean(0)
    return (pos - neg).abs().topk(min(k, x_train.shape[1])).indices


def sklearn_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int = 42) -> float:
    """Test accuracy of sklearn's L2 logistic regression (C=1, max_iter=1000)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    clf.fit(x_train.float().numpy(), y_train.numpy())
    return float((clf.predict(x_test.float().numpy()) == y_test.numpy()).mean())


def top_k_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, k: int, seed: int = 42) -> float:
    dims = top_k_dims(x_train, y_train, k)
    return sklearn_accuracy(x_train[:, dims], y_train, x_test[:, dims], y_test, seed)


def standardize(x_train: Tensor, x_test: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Both sets scaled by the training set's per-dim mean and std (a constant dim becomes 0)."""
    x_train, x_test = x_train.float(), x_test.float()
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return (x_train - mean) / std, (x_test - mean) / std


def standardized_top_k_accuracy(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, k: int, seed: int = 42) -> float:
    """top_k_accuracy on standardised dims: the k dims with the largest class-mean difference in
    units of their training std, and the logistic regression on those standardised dims."""
    z_train, z_test = standardize(x_train, x_test)
    return top_k_accuracy(z_train, y_train, z_test, y_test, k, seed)


def top_dim_share(x_train: Tensor, y_train: Tensor) -> tuple[int, float]:
    """(the top-1 dim of SAEBench's ranking, its share of the total |class-mean difference| mass):
    near 1 when one dimension's scale decides every top-k pick."""
    diff = (x_train[y_train == 1].float().mean(0) - x_train[y_train == 0].float().mean(0)).abs()
    total = float(diff.sum())
    top = int(diff.argmax())
    return top, float(diff[top]) / total if total > 0 else 0.0


def train_multilabel_probe(
    x: Tensor,
    labels: Tensor,
    n_classes: int,
    lr: float = 1e-2,
    final_lr: float = 1e-5,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    epochs: int = 50,
    l1_decay: float = 0.0,
    seed: int = 42,
) -> nn.Linear:
    """Linear(d, n_classes), one-vs-rest BCE with pos_weight = neg/pos per class; with l1_decay,
    adds l1_decay * mean over classes of sum |w| (SAEBench's k-sparse probe)."""
    x = x.float()
    targets = nn.functional.one_hot(labels.long(), n_classes).float()
    pos = targets.sum(0).clamp(min=1)
    pos_weight = (targets.shape[0] - targets.sum(0)) / pos
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    gamma = (final_lr / lr) ** (1 / max(epochs, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gen = _generator(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                loss = loss_fn(probe(x[idx]), targets[idx])
                if l1_decay:
                    loss = loss + l1_decay * probe.weight.abs().sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
    return probe.eval()


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(pred & truth))
    denom = float(np.sum(pred)) + float(np.sum(truth))
    return 2 * tp / denom if denom > 0 else 0.0
