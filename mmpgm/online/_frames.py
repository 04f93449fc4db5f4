"""The one check of a streamed frame, shared by the HMM and LDS filters."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._validation import as_real_tensor

__all__ = ["check_frame", "frame_array"]


def check_frame(frame, modalities) -> None:
    """``frame`` must be a dict whose keys are modalities of the model."""
    if not isinstance(frame, Mapping):
        raise TypeError(
            f"frame: expected a dict modality -> (N, D) array, got {type(frame).__name__}"
        )
    unknown = set(frame) - set(modalities)
    if unknown:
        raise ValueError(
            f"frame: unknown modalities {sorted(unknown, key=str)}; the model has "
            f"{list(modalities)}"
        )


def frame_array(m: str, value, N: int, D: int, dtype, device) -> torch.Tensor:
    """``frame[m]`` as an ``(N, D)`` tensor of ``dtype`` (a ``(D,)`` vector when ``N = 1``);
    NaN marks a missing row, ``+/-inf`` is refused as in :class:`~mmpgm.data.MultimodalData`."""
    x = as_real_tensor(f"frame[{m!r}]", value, dtype=dtype, device=device)
    if x.dim() == 1 and N == 1:
        x = x[None]
    if x.shape != (N, D):
        raise ValueError(
            f"frame[{m!r}]: expected shape ({N}, {D}) or ({D},) for N=1, got {tuple(x.shape)}"
        )
    if bool(torch.isinf(x).any()):
        raise ValueError(
            f"frame[{m!r}]: expected finite values or NaN (missing), got +/-inf; replace them "
            "with NaN to mark the row missing"
        )
    return x
