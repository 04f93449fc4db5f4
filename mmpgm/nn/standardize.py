"""Per-feature input standardization with buffers set once from data."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Standardizer"]


class Standardizer(nn.Module):
    """Per-feature ``(x - loc) / scale`` with buffers set once from data (:meth:`fit_to`).

    Buffers: ``loc (D,)``, ``scale (D,)`` and ``initialized ()`` bool (False until
    :meth:`fit_to`); ``forward(x (..., D)) -> (..., D)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit_to(self, x: torch.Tensor) -> None:
        """Set ``loc`` and ``scale`` to the mean and std of ``x (F, D)``, the observed frames
        (std clamped to ``>= 1e-6``; scale 1 from a single frame)."""
        self.loc.copy_(x.mean(0))
        self.scale.copy_(
            x.std(0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(self.scale)
        )
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale
