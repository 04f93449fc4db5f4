"""Gaussian parameter heads: a two-layer MLP whose first layer callers may split, and the
softplus scale map with a floor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MIN_SCALE", "GaussianHead", "split_loc_scale"]

MIN_SCALE = 1e-3


def _scale(raw: torch.Tensor, min_scale: float = MIN_SCALE) -> torch.Tensor:
    return F.softplus(raw) + min_scale


def _inv_scale(scale: torch.Tensor, min_scale: float = MIN_SCALE) -> torch.Tensor:
    y = (scale - min_scale).clamp_min(1e-6)
    return y + torch.log(-torch.expm1(-y))  # softplus^-1


class GaussianHead(nn.Module):
    """Two-layer MLP ``in_dim -> hidden_dim (ReLU) -> out_dim``; with ``hidden_dim = 0`` a single
    linear layer. Used for Gaussian parameters (``out_dim = 2 Z``: loc, raw scale) and decoders."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int):
        super().__init__()
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        if hidden_dim:
            self.l1 = nn.Linear(in_dim, hidden_dim)
            self.l2 = nn.Linear(hidden_dim, out_dim)
        else:
            self.l1 = nn.Linear(in_dim, out_dim)
            self.l2 = None

    def finish(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """Output given the first layer's pre-activation (lets callers split that matmul)."""
        return pre_activation if self.l2 is None else self.l2(torch.relu(pre_activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.l1(x))


def split_loc_scale(raw: torch.Tensor):
    """``(..., 2 Z)`` -> ``loc (..., Z)``, ``scale (..., Z)`` (softplus plus :data:`MIN_SCALE`)."""
    loc, s = raw.chunk(2, -1)
    return loc, _scale(s)
