"""Seeded data where one stream is unreliable on known segments (gated-mixture checks)."""

from __future__ import annotations

import torch

from .._validation import check_int
from ..data import MultimodalData

__all__ = ["unreliable_stream_data"]


def unreliable_stream_data(
    num_sequences: int,
    num_timesteps: int,
    seed: int = 0,
    *,
    num_groups: int | None = None,
) -> tuple[MultimodalData, torch.Tensor]:
    r"""Two streams of one sticky bit, one of them pure noise on a known segment per sequence.

    .. math::
        b_1 \sim \mathrm{Bernoulli}(1/2), \quad
        b_t = b_{t-1} \text{ w.p. } 0.9, \qquad
        \mathtt{steady}_t \sim \mathcal N((2 b_t - 1) \mathbf 1_3, 2^2 I), \quad
        \mathtt{sharp}_t \sim \mathcal N((2 b_t - 1) \mathbf 1_3, 0.5^2 I)

    except on a segment of :math:`\min(15, T/3)` frames per sequence (random start), where
    ``sharp`` is replaced by :math:`\mathcal N(0, 3^2 I)` noise (its magnitude tells a gate).
    The target is ``labels["speech"] = b`` ``(N, T)``.

    Parameters
    ----------
    num_sequences, num_timesteps : int
        ``N`` and ``T`` (``T >= 3``).
    seed : int
    num_groups : int, optional
        Adds a per-sequence label ``labels["group"] = n mod num_groups`` (e.g. for
        :func:`mmpgm.inference.cross_fit.fit_cross_fitted`).

    Returns
    -------
    data : MultimodalData
        Streams ``steady`` and ``sharp`` (3-d each).
    unreliable : bool tensor ``(N, T)``
        True where ``sharp`` is noise.
    """
    check_int("num_timesteps", num_timesteps, minimum=3)
    check_int("num_sequences", num_sequences)
    N, T = num_sequences, num_timesteps
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(N, T, dtype=torch.long)
    b[:, 0] = torch.randint(0, 2, (N,), generator=g)
    for t in range(1, T):
        flip = torch.rand(N, generator=g) < 0.1
        b[:, t] = torch.where(flip, 1 - b[:, t - 1], b[:, t - 1])
    s = (2.0 * b - 1.0)[..., None]
    steady = s + 2.0 * torch.randn(N, T, 3, generator=g)
    sharp = s + 0.5 * torch.randn(N, T, 3, generator=g)
    seg = min(15, T // 3)
    start = torch.randint(0, T - seg + 1, (N,), generator=g)
    t = torch.arange(T)
    bad = (t >= start[:, None]) & (t < start[:, None] + seg)
    sharp = torch.where(bad[..., None], 3.0 * torch.randn(N, T, 3, generator=g), sharp)
    labels = {"speech": b}
    if num_groups is not None:
        labels["group"] = torch.arange(N) % num_groups
    return MultimodalData({"steady": steady, "sharp": sharp}, labels=labels), bad
