"""Training loops: SVI on a Pyro ELBO (``svi.py``) and closed-form EM (``em.py``)."""

from .result import FitResult

__all__ = ["FitResult"]
