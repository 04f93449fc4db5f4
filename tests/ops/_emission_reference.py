"""The diagonal-Gaussian emission expansion the HMM used before the centred one (uncentred,
three products): a reference for ``tests/ops/test_hmm_emissions.py`` and
``tests/models/test_hmm_emission_path.py``."""

from __future__ import annotations

import math


def previous_log_prob(x, loc, scale):
    """The expansion the diagonal emission used before (uncentred, three products)."""
    D = loc.shape[-1]
    prec = scale.reshape(-1, D) ** -2
    mu = loc.reshape(-1, D)
    quad = (x**2) @ prec.T - 2 * x @ (mu * prec).T + (mu**2 * prec).sum(-1)
    const = scale.reshape(-1, D).log().sum(-1) + 0.5 * D * math.log(2 * math.pi)
    return (-0.5 * quad - const).reshape(x.shape[:-1] + loc.shape[:-1])
