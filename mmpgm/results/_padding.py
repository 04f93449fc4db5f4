"""The one "mark padding frames" helper of the result types."""

from __future__ import annotations

import numpy as np
import torch


def mask_padding(x: torch.Tensor, lengths: torch.Tensor, *, time_dim: int, fill) -> np.ndarray:
    """``x`` as numpy with every frame ``t >= lengths[n]`` set to ``fill``.

    Parameters
    ----------
    x : Tensor
        ``(..., N, T)`` when ``time_dim=-1`` (state paths), or ``(..., N, T, D)`` when
        ``time_dim=-2`` (continuous values).
    lengths : Tensor
        ``(N,)`` sequence lengths.
    time_dim : int
        Position of the time axis, ``-1`` or ``-2``.
    fill : scalar
        ``-1`` for integer state paths, ``nan`` for continuous values.
    """
    assert time_dim in (-1, -2), time_dim
    x = x.detach()
    T = x.shape[time_dim]
    inside = torch.arange(T, device=x.device) < lengths.to(x.device)[:, None]  # (N, T)
    if time_dim == -2:
        inside = inside[..., None]
    return torch.where(inside, x, torch.full_like(x, fill)).cpu().numpy()
