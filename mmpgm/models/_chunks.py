"""Frames ``start .. stop-1`` of checked data: the chunks of ``log_likelihood(chunk_size=)``."""

from __future__ import annotations

from .._validation import check_int
from ..data import MultimodalData


def check_chunk_size(chunk_size) -> int | None:
    """``None`` (no chunking) or a positive int (``ValueError`` naming ``chunk_size``)."""
    return check_int("chunk_size", chunk_size, allow_none=True)


def time_slice(model, data: MultimodalData, start: int, stop: int) -> MultimodalData:
    """Frames ``start .. stop-1`` of ``data`` (checked by ``model``), marked as checked.

    Observations, masks and per-frame labels are sliced along time; ``lengths`` become the
    frames of each sequence inside the slice, ``clamp(lengths - start, 0, stop - start)`` (0 for
    a sequence that ended before ``start``); per-sequence labels and metadata are kept.
    """
    data = model._checked(data)
    new = object.__new__(MultimodalData)
    new.obs = {k: v[:, start:stop] for k, v in data.obs.items()}
    new.mask = {k: v[:, start:stop] for k, v in data.mask.items()}
    new.lengths = (data.lengths - start).clamp(0, stop - start)
    new.labels = {k: (v[:, start:stop] if v.dim() >= 2 else v) for k, v in data.labels.items()}
    new.meta = dict(data.meta)
    return model._mark_checked(new)
