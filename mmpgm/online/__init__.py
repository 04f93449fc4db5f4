"""Streaming filters: one frame in, filtered posterior and one-step prediction out.

Memory is constant in the number of frames seen; after ``t`` frames the state equals the batch
filter's (``mmpgm.infer(model, data, causal=True)``) at frame ``t``. Any subset of a model's
modalities may be present in a frame.
"""

from __future__ import annotations

from ..models.hmm import MultimodalHMM
from ..models.lds import MultimodalLDS
from .hmm import FilterState, HMMFilter
from .lds import LDSFilter, LDSFilterState

__all__ = ["Filter", "FilterState", "HMMFilter", "LDSFilter", "LDSFilterState"]


def Filter(model, num_sequences: int = 1):  # noqa: N802  (a factory, named as DESIGN's API)
    """The streaming filter of ``model``: an :class:`HMMFilter` or an :class:`LDSFilter`.

    Parameters
    ----------
    model : MultimodalHMM or MultimodalLDS
    num_sequences : int
        Number of streams filtered in parallel (``N``).
    """
    if isinstance(model, MultimodalHMM):
        return HMMFilter(model, num_sequences)
    if isinstance(model, MultimodalLDS):
        return LDSFilter(model, num_sequences)
    raise TypeError(
        f"model: no streaming filter for {type(model).__name__}; "
        "expected a MultimodalHMM or a MultimodalLDS"
    )
