"""Pyro programs (``PyroModule`` s with ``model`` and ``guide``)."""

from .hmm import HMMParams, MarkovChain, MultimodalHMM

__all__ = ["MultimodalHMM", "HMMParams", "MarkovChain"]
