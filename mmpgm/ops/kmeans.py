"""Lloyd's k-means with k-means++ seeding (torch only), for data-driven initialization.

Hand-written because torch has none and scikit-learn would add a NumPy round trip and a
dependency to the core; it is used only to start EM/SVI from a sensible point.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._validation import check_int


class KMeansResult(NamedTuple):
    """centers : ``(k, D)``; assignments : ``(F,)`` int64; inertia : sum of squared distances."""

    centers: torch.Tensor
    assignments: torch.Tensor
    inertia: torch.Tensor


def kmeans_plus_plus(
    x: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``k`` seeds from ``x (F, D)`` drawn with probability proportional to squared distance."""
    xc = x.detach().cpu()
    F = xc.shape[0]
    if F == 0:
        raise ValueError("x: expected at least one point, got none")
    idx = [int(torch.randint(F, (1,), generator=generator))]
    d2 = ((xc - xc[idx[0]]) ** 2).sum(-1)
    for _ in range(1, k):
        total = float(d2.sum())
        p = d2 / total if total > 0 else torch.full_like(d2, 1.0 / F)
        i = int(torch.multinomial(p, 1, generator=generator))
        idx.append(i)
        d2 = torch.minimum(d2, ((xc - xc[i]) ** 2).sum(-1))
    return x[torch.tensor(idx, device=x.device)]


def kmeans(
    x: torch.Tensor, k: int, num_iters: int = 25, generator: torch.Generator | None = None
) -> KMeansResult:
    """Cluster ``x (F, D)`` into ``k`` groups (empty clusters keep their previous center)."""
    check_int("k", k)
    centers = kmeans_plus_plus(x, k, generator).clone()
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(num_iters):
        d2 = torch.cdist(x, centers) ** 2
        new = d2.argmin(-1)
        if torch.equal(new, assign) and _ > 0:
            break
        assign = new
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        nonempty = counts > 0
        centers[nonempty] = sums[nonempty] / counts[nonempty, None]
    d2 = (torch.cdist(x, centers) ** 2).gather(1, assign[:, None]).squeeze(1)
    return KMeansResult(centers, assign, d2.sum())
