"""Per-modality observation models p(x^m_t | s_t, p^m_t) for the multimodal HMM."""

from .base import ObservationModel
from .categorical import CategoricalObservation
from .gaussian import DiagonalGaussianObservation, FullGaussianObservation

__all__ = [
    "ObservationModel",
    "DiagonalGaussianObservation",
    "FullGaussianObservation",
    "CategoricalObservation",
    "make_observation",
]

_KINDS = {
    "diag": DiagonalGaussianObservation,
    "gaussian": DiagonalGaussianObservation,
    "full": FullGaussianObservation,
    "categorical": CategoricalObservation,
}


def make_observation(kind, obs_dim, num_shared_states, num_private_states):
    """Build an observation model from a name (``"diag"``, ``"full"``, ``"categorical"``)."""
    if isinstance(kind, ObservationModel):
        return kind
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(
            f"emission: unknown observation model {kind!r}; expected one of {sorted(_KINDS)}"
        )
    return _KINDS[kind](obs_dim, num_shared_states, num_private_states)
