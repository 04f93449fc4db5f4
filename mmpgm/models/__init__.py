"""Pyro programs (``PyroModule`` s with ``model`` and ``guide``)."""

from .hmm import HMMParams, MarkovChain, MultimodalHMM
from .lds import LDSParams, MultimodalLDS
from .mixture import GatedMixture
from .mvrnn import MVRNN

__all__ = ["MultimodalHMM", "HMMParams", "MarkovChain", "MultimodalLDS", "LDSParams", "GatedMixture", "MVRNN"]
