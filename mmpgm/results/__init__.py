"""Immutable result types of inference, one module per model family, and their ArviZ view.

This is a ground-floor package: it imports no model, no training code and no other layer of
mmpgm (checked by the import-linter contracts in ``setup.cfg``). ``arviz.py`` holds every
conversion to :class:`arviz.InferenceData`.
"""

from .hmm import Imputation, Posterior
from .lds import LDSImputation, LDSPosterior
from .mixture import MixturePosterior
from .mvrnn import MVRNNImputation, MVRNNPosterior

__all__ = [
    "Posterior",
    "Imputation",
    "LDSPosterior",
    "LDSImputation",
    "MixturePosterior",
    "MVRNNPosterior",
    "MVRNNImputation",
]
