"""TopK batches and dense/gradient helpers the penalty tests share."""

import torch

N, B, K = 24, 12, 4
DT = torch.float64


def topk_batch(seed: int, n: int = N, b: int = B, k: int = K):
    """TopK values/indices with dead latents (the last 4 never fire), a tie, a zero row and a
    zero value inside the top-k."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(b, n, generator=g, dtype=DT)
    pre[:, -4:] = -10.0
    values, indices = torch.topk(pre, k, dim=1)
    values = torch.relu(values)
    values[0, 1] = values[0, 0]  # tie
    values[1] = 0.0  # zero row
    values[2, -1] = 0.0  # zero inside the top-k
    return values, indices


def dense(values, indices, n=N):
    return torch.zeros(values.shape[0], n, dtype=values.dtype).scatter(1, indices, values)


def grad_of(fn, x):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g
