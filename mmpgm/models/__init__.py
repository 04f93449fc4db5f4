"""Pyro programs (``PyroModule`` s with ``model`` and ``guide``)."""

from .hmm import HMMParams, MarkovChain, MultimodalHMM
from .mixture import GatedMixture
from .mvrnn import MVRNN

__all__ = ["MultimodalHMM", "HMMParams", "MarkovChain", "GatedMixture", "MVRNN"]
