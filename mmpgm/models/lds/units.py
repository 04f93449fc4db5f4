r"""Units of the data for the multimodal LDS: re-express a model in the units
:math:`x'^m = S_m^{-1} (x^m - m_m)`, :math:`S_m = \mathrm{diag}(s_m)`, and back.

The latent states keep their units; each modality's emission maps as

.. math::
    C^m \to S_m^{-1} C^m, \qquad d^m \to S_m^{-1} (d^m - m_m), \qquad
    R_m \to S_m^{-1} R_m S_m^{-1},

the data variances that scale its noise prior as :math:`\mathrm{Var}[x^m] \to
\mathrm{Var}[x^m] / s_m^2`, and a sensor-fault background density (where the model has one)
like the data: centre :math:`c \to S_m^{-1}(c - m_m)`, scale :math:`\gamma \to S_m^{-1}
\gamma`. Then :math:`\log p'(x') = \log p(x) + \sum_m \sum_{t \text{ observed}} \sum_d
\log s_{md}` (exact: the Kalman filter is affine-equivariant) and the inverse-gamma /
inverse-Wishart and matrix-normal priors of :math:`C^m` and :math:`R_m` change
by a constant. The offsets' prior :math:`d^m \sim \mathcal N(0, R_m / \lambda_d)` is centred at
zero, so a nonzero shift would move it (to :math:`-m_m / s_m`): :func:`mmpgm.fit` therefore
rescales the LDS without shifting it (:data:`CENTRES` is False), which keeps the standardized MAP
problem exactly the one in the user's units.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .params import LDSParams

__all__ = [
    "CENTRES",
    "rescalable_modalities",
    "rescale_emission",
    "rescale_noise_cov",
    "rescale_params",
    "rescale_observations",
]

CENTRES = False
"""Whether :func:`mmpgm.fit` may shift the data when it standardizes them for SVI (no: the
offsets' prior is centred at zero, see the module docstring)."""


def rescale_emission(
    shared_weight: torch.Tensor,
    private_weight: torch.Tensor,
    offset: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The emission regression of one modality in the units :math:`x' = (x - m) / s`.

    Parameters
    ----------
    shared_weight : ``(D, k_s)`` :math:`C_s`.
    private_weight : ``(D, k_m)`` :math:`C_m`.
    offset : ``(D,)`` :math:`d`.
    shift, scale : ``(D,)`` :math:`m`, :math:`s > 0`.

    Returns
    -------
    ``(S^{-1} C_s, S^{-1} C_m, S^{-1} (d - m))``. The noise maps as
    :math:`R \to S^{-1} R S^{-1}` (:func:`rescale_noise_cov`), its Cholesky factor or standard
    deviations as :math:`L \to S^{-1} L`.
    """
    return shared_weight / scale[:, None], private_weight / scale[:, None], (offset - shift) / scale


def rescale_noise_cov(cov: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""``(D, D)`` :math:`S^{-1} R S^{-1}`."""
    return cov / (scale[:, None] * scale[None, :])


def _units(name, table, modalities, dims, like):
    out = {}
    for m, v in table.items():
        if m not in modalities:
            raise ValueError(f"{name}: unknown modality {m!r}; the model has {list(modalities)}")
        v = torch.as_tensor(v).to(like)
        if v.shape != (dims[m],) or not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"{name}[{m!r}]: expected {dims[m]} finite values (obs_dim), got shape "
                f"{tuple(v.shape)}"
            )
        if name == "scale" and not bool((v > 0).all()):
            raise ValueError(f"scale[{m!r}]: expected positive values, got {v.tolist()}")
        out[m] = v
    return out


def rescale_params(params: LDSParams, shift: Mapping, scale: Mapping) -> LDSParams:
    r"""Pure: ``params`` in the units :math:`x'^m = (x^m - \mathrm{shift}_m) / \mathrm{scale}_m`
    of the modalities in ``scale`` (``shift`` may omit a modality: no shift). Dynamics and
    initial state are unchanged; the emissions map as in the module docstring."""
    if not isinstance(params, LDSParams):
        raise TypeError(f"params: expected LDSParams, got {type(params).__name__}")
    mods = tuple(params.emission_offsets)
    dims = {m: params.emission_offsets[m].shape[-1] for m in mods}
    like = next(iter(params.emission_offsets.values()))
    scale = _units("scale", scale, mods, dims, like)
    shift = _units("shift", shift, mods, dims, like)
    Cs, Cm, d, R = (
        dict(params.shared_emission_matrices),
        dict(params.private_emission_matrices),
        dict(params.emission_offsets),
        dict(params.emission_covs),
    )
    for m, s in scale.items():
        Cs[m], Cm[m], d[m] = rescale_emission(Cs[m], Cm[m], d[m], shift.get(m, 0 * s), s)
        R[m] = rescale_noise_cov(R[m], s)
    extra = {}
    locs, scales = (
        getattr(params, "fault_background_locs", None),
        getattr(params, "fault_background_scales", None),
    )
    if locs is not None and scales is not None:  # the sensor-fault backgrounds, in data units
        locs, scales = dict(locs), dict(scales)
        for m, s in scale.items():
            if m in locs:
                locs[m] = (locs[m] - shift.get(m, 0 * s)) / s
                scales[m] = scales[m] / s
        extra = dict(fault_background_locs=locs, fault_background_scales=scales)
    return params._replace(
        shared_emission_matrices=Cs,
        private_emission_matrices=Cm,
        emission_offsets=d,
        emission_covs=R,
        **extra,
    )


def rescalable_modalities(model) -> tuple[str, ...]:
    """Every modality of the LDS (all are Gaussian)."""
    return tuple(model.modalities)


@torch.no_grad()
def rescale_observations(model, shift: Mapping, scale: Mapping) -> None:
    r"""Re-express ``model`` in place in the units :math:`x'^m = (x^m - \mathrm{shift}_m) /
    \mathrm{scale}_m` (modalities in ``scale``; ``shift`` may omit one: no shift), on the
    module's parameters directly (the transition parameters are not touched, so their
    parameterization and Adam's view of them stay as they are). The inverse is
    ``rescale_observations(model, {m: -shift_m / scale_m}, {m: 1 / scale_m})``.

    The noise prior's data variances follow (:math:`\mathrm{Var}[x] / s^2`), so
    ``model.log_prior()`` changes by a constant and the MAP problem is the same in both units
    as long as ``shift`` is zero (see the module docstring).
    """
    like = model._param()
    scale = _units("scale", scale, model.modalities, model.obs_dims, like)
    shift = _units("shift", shift, model.modalities, model.obs_dims, like)
    for m, s in scale.items():
        e = model.emissions[m]
        Cs, Cm, d = rescale_emission(
            e.shared_weight, e.private_weight, e.offset, shift.get(m, torch.zeros_like(s)), s
        )
        e.shared_weight.copy_(Cs)
        e.private_weight.copy_(Cm)
        e.offset.copy_(d)
        if e.noise == "diag":
            e.noise_scale = e.noise_scale / s
        else:
            e.noise_scale_tril = e.noise_scale_tril / s[:, None]
        e.data_var.copy_(e.data_var / s.square())
        faults = getattr(model, "faults", None)
        if m in getattr(model, "fault_modalities", ()) and faults is not None:
            f = faults[m]  # the sensor-fault background density g_m, in data units
            f.background_loc.copy_((f.background_loc - shift.get(m, torch.zeros_like(s))) / s)
            f.background_scale.copy_(f.background_scale / s)
