r"""SVI in standardized units: the data's units do not reach Adam.

Adam moves every parameter by about ``lr`` per step whatever its size, so SVI on data measured
in tiny or huge units (``x * 1e-8``, ``x * 1e8``) either crawls or diverges. :func:`fit_svi`
therefore fits the HMM and the LDS on standardized data and maps the result back:

1. per modality and feature, a shift :math:`m` (the mean of the observed frames; zero for a
   model whose priors are centred at zero, the LDS) and a scale :math:`s` (their standard
   deviation; a feature that is constant to within a few ulps of its magnitude gets its root
   mean square, an all-zero one 1), from the observed frames of the training data
   (:func:`data_units`; deterministic, so a checkpointed fit resumes in the same units);
2. the data :math:`x' = (x - m) / s` (:func:`standardize_data`) and the model re-expressed in
   those units (parameters *and* prior hyper-parameters) by the model's one rescaling function,
   :func:`mmpgm.models.hmm.units.rescale_observations` /
   :func:`mmpgm.models.lds.units.rescale_observations`;
3. the data-driven start and SVI run there; the fitted model is mapped back (also when the fit
   raises), so users only ever see their own units.

The map is exact: :math:`\log p'(x') = \log p(x) + J_x` with
:math:`J_x = \sum_m n_m \sum_d \log s_{md}` (:math:`n_m` observed frames of modality m), and the
priors change by a constant :math:`J_\theta`; so the standardized MAP problem is the problem in
the user's units, and the reported losses are converted back:
``loss = loss' + (J_x + J_theta) / frames`` (negative log joint per observed frame in the user's
units). Categorical emissions are unit-free and not touched; models without a rescaling
function (MVRNN, GatedMixture: they standardize their own inputs) are fitted as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..data import MultimodalData

__all__ = ["Units", "data_units", "standardize_data", "unit_maps"]


class UnitMaps(NamedTuple):
    """How a model family is standardized: ``modalities`` that have units, whether the data may
    be ``centred`` (shifted), and ``rescale(model, shift, scale)``."""

    modalities: tuple
    centred: bool
    rescale: Callable


class Units(NamedTuple):
    """Standardization of one data set: ``shift``, ``scale`` (modality -> ``(D,)``) and
    ``log_jacobian`` :math:`J_x = \\sum_m n_m \\sum_d \\log s_{md}` (float)."""

    shift: dict
    scale: dict
    log_jacobian: float

    def inverse(self) -> tuple[dict, dict]:
        """``(shift, scale)`` of the inverse map :math:`x = (x' + m / s) / (1 / s)`."""
        return (
            {m: -self.shift[m] / self.scale[m] for m in self.scale},
            {m: 1.0 / self.scale[m] for m in self.scale},
        )


def unit_maps(model) -> UnitMaps | None:
    """The rescaling of ``model``'s family, or None (fitted in the data's own units)."""
    from ..models.hmm import MultimodalHMM
    from ..models.hmm import units as hmm_units
    from ..models.lds import MultimodalLDS
    from ..models.lds import units as lds_units

    if isinstance(model, MultimodalHMM):
        mods = hmm_units.rescalable_modalities(model)
        return UnitMaps(mods, True, hmm_units.rescale_observations) if mods else None
    if isinstance(model, MultimodalLDS):
        mods = lds_units.rescalable_modalities(model)
        return UnitMaps(mods, lds_units.CENTRES, lds_units.rescale_observations)
    return None


@torch.no_grad()
def data_units(data: MultimodalData, modalities, centred: bool = True) -> Units:
    r"""Shift and scale per feature of each of ``modalities`` from the observed frames of checked
    ``data`` (computed in float64, returned in the data's dtype).

    ``shift`` is the mean (zero unless ``centred``), ``scale`` the standard deviation
    :math:`\sigma_d`; where :math:`\sigma_d \le \sqrt{16 \epsilon}\, \mathrm{rms}_d` (a feature
    constant to rounding, or a single frame) the scale is :math:`\mathrm{rms}_d`, and 1 where
    that is 0. Every choice is equivariant: data ``x * c`` give ``shift * c``, ``scale * c``.
    """
    shift, scale, logj = {}, {}, 0.0
    inside = data.time_mask
    for m in modalities:
        x = data.obs[m]
        obs = data.mask[m] & inside
        xo = x[obs].double()  # (F, D)
        D = x.shape[-1]
        if xo.shape[0] == 0:
            mean = sd = rms = torch.zeros(D, dtype=torch.float64, device=x.device)
        else:
            mean = xo.mean(0)
            sd = xo.std(0, unbiased=False) if xo.shape[0] > 1 else torch.zeros_like(mean)
            rms = xo.square().mean(0).sqrt()
        floor = math.sqrt(16 * torch.finfo(x.dtype).eps) * rms
        s = torch.where(sd > floor, sd, torch.where(rms > 0, rms, torch.ones_like(rms)))
        if not centred:
            mean = torch.zeros_like(mean)
        shift[m] = mean.to(x.dtype)
        scale[m] = s.to(x.dtype)
        logj += float(obs.sum()) * float(scale[m].double().log().sum())
    return Units(shift, scale, logj)


def standardize_data(model, data: MultimodalData, units: Units) -> MultimodalData:
    """``data`` (checked by ``model``) with ``(x - shift) / scale`` for every modality of
    ``units``, marked as checked by ``model`` (masks, lengths, labels shared)."""
    return model.checked_affine(data, units.shift, units.scale)
