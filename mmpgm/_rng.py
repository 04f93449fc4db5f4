"""Seeding without side effects: the one way library code makes its randomness reproducible.

Only :func:`mmpgm.fit` seeds the global generators (and says so in its docstring). Everything
else that takes a ``seed`` runs its block under :func:`seeded`, which forks torch's random state,
seeds it, and restores the caller's state afterwards.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None):
    """Run the block with torch's generator (CPU, and ``device`` when it is a CUDA device) seeded
    by ``seed``; the caller's random state is restored on exit. ``seed=None``: no change."""
    if seed is None:
        yield
        return
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
