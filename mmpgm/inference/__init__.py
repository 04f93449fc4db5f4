"""Training loops: SVI on a Pyro ELBO (``svi.py``), closed-form EM (``em.py``), Appendix-A EM for
the gated mixture (``em_mixture.py``), cross-fitted gate training (``cross_fit.py``) and
data-parallel training over ``torch.distributed`` processes (``distributed.py``)."""

from .cross_fit import CrossFitResult, fit_cross_fitted
from .result import FitResult

__all__ = ["CrossFitResult", "FitResult", "fit_cross_fitted"]
