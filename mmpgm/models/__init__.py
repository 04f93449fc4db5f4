"""Pyro programs (``PyroModule`` s with ``model`` and ``guide``), all following the
:class:`MultimodalModel` protocol (:mod:`mmpgm.models._base`)."""

from ._base import MultimodalModel
from .denoising import DenoisingExpert, GatedDenoisers
from .hmm import HMMParams, MarkovChain, MultimodalHMM
from .lds import LDSParams, MultimodalLDS
from .mixture import GatedMixture
from .mvrnn import MVRNN
from .siamese import KNNMemory, SiameseEmbedding, SiameseEncoder

__all__ = [
    "MultimodalModel",
    "MultimodalHMM",
    "HMMParams",
    "MarkovChain",
    "MultimodalLDS",
    "LDSParams",
    "GatedMixture",
    "MVRNN",
    "SiameseEncoder",
    "SiameseEmbedding",
    "KNNMemory",
    "DenoisingExpert",
    "GatedDenoisers",
]
