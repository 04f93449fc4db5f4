"""Per-modality observation models p(x^m_t | s_t, p^m_t) for the multimodal HMM."""

from .base import ObservationModel
from .categorical import CategoricalObservation
from .embedding import (
    DiagonalEmbeddingObservation,
    EmbeddingObservation,
    FullEmbeddingObservation,
    build_embedding_observation,
)
from .gaussian import DiagonalGaussianObservation, FullGaussianObservation

__all__ = [
    "ObservationModel",
    "DiagonalGaussianObservation",
    "FullGaussianObservation",
    "CategoricalObservation",
    "EmbeddingObservation",
    "DiagonalEmbeddingObservation",
    "FullEmbeddingObservation",
    "make_observation",
]

_KINDS = {
    "diag": DiagonalGaussianObservation,
    "gaussian": DiagonalGaussianObservation,
    "full": FullGaussianObservation,
    "categorical": CategoricalObservation,
}


def make_observation(kind, obs_dim, num_shared_states, num_private_states):
    """Build an observation model from a name (``"diag"``, ``"full"``, ``"categorical"``), or
    an embedding emission from its ``kind`` dict (:func:`build_embedding_observation`)."""
    if isinstance(kind, ObservationModel):
        return kind
    if isinstance(kind, dict) and kind.get("kind") == EmbeddingObservation.kind_name:
        return build_embedding_observation(kind, obs_dim, num_shared_states, num_private_states)
    if kind == EmbeddingObservation.kind_name:
        raise ValueError(
            "emission: 'embedding' needs its encoder; pass EmbeddingObservation(encoder, "
            "num_shared_states, num_private_states) as the emission"
        )
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(
            f"emission: unknown observation model {kind!r}; expected one of {sorted(_KINDS)}"
        )
    return _KINDS[kind](obs_dim, num_shared_states, num_private_states)
