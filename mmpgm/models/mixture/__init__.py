"""The gated mixture of modality experts (paper section 4): :class:`GatedMixture`."""

from .model import GatedMixture

__all__ = ["GatedMixture"]
