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
        """Set ``loc`` and ``scale`` to the mean and std of ``x (F, D)``, the observed frames.

        A feature whose std is within a few ulps of its root mean square (constant, or a single
        frame) gets its root mean square as scale, an all-zero one 1: relative to the data, so
        the standardized inputs do not depend on the data's units (an absolute floor of 1e-6
        squashed data measured in tiny units, e.g. ``x * 1e-8``)."""
        sd = x.std(0) if x.shape[0] > 1 else torch.zeros_like(self.scale)
        rms = x.square().mean(0).sqrt()
        floor = (16 * torch.finfo(x.dtype).eps) ** 0.5 * rms
        scale = torch.where(sd > floor, sd, torch.where(rms > 0, rms, torch.ones_like(rms)))
        self.loc.copy_(x.mean(0))
        self.scale.copy_(scale)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale
