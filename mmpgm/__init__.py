"""mmpgm: multimodal probabilistic graphical models on Pyro and PyTorch.

Models keep their Pyro parameters locally (``pyro.settings.set(module_local_params=True)``), like
ordinary ``torch.nn.Module`` s, so two models never share parameters through Pyro's global
parameter store; :func:`fit` is a plain PyTorch loop around a Pyro ELBO.
"""

import pyro

pyro.settings.set(module_local_params=True)

from . import observations, ops  # noqa: E402
from .api import fit, infer  # noqa: E402
from .data import MultimodalData  # noqa: E402
from .inference.result import FitResult  # noqa: E402
from .io import load_model, save_model  # noqa: E402
from .models import HMMParams, MultimodalHMM  # noqa: E402
from .posterior import Imputation, Posterior  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "fit",
    "infer",
    "load_model",
    "save_model",
    "MultimodalData",
    "MultimodalHMM",
    "HMMParams",
    "FitResult",
    "Posterior",
    "Imputation",
    "observations",
    "ops",
]
