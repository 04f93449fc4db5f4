"""The parameters of the multimodal LDS as a named tuple: read and (validated) write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from ..._validation import check_positive_definite
from ...ops.linalg import symmetrize

__all__ = ["LDSParams", "get_params", "set_params"]


class LDSParams(NamedTuple):
    r"""Parameters of a :class:`MultimodalLDS` (constrained values, detached).

    transition_matrices, transition_covs, initial_means, initial_covs : dict block -> :math:`A_b`
        ``(k_b, k_b)``, :math:`Q_b`, :math:`\mu^b_0` ``(k_b,)``, :math:`P^b_0` (blocks: ``"shared"``
        and every modality with a private block).
    shared_emission_matrices : dict modality -> :math:`C^m_s` ``(D_m, k_s)``.
    private_emission_matrices : dict modality -> :math:`C^m_m` ``(D_m, k_m)``.
    emission_offsets : dict modality -> :math:`d^m` ``(D_m,)``.
    emission_covs : dict modality -> :math:`R_m` ``(D_m, D_m)``.
    fault_rates : dict modality -> :math:`\rho_m` (scalar tensor) for the modalities with
        ``sensor_faults``, or None (no sensor faults; in :meth:`MultimodalLDS.set_params`: leave
        the fault model unchanged).
    fault_background_locs, fault_background_scales : dict modality -> ``(D_m,)`` centre and
        (inflated) scale of the Cauchy background :math:`g_m`, or None.
    """

    transition_matrices: dict
    transition_covs: dict
    initial_means: dict
    initial_covs: dict
    shared_emission_matrices: dict
    private_emission_matrices: dict
    emission_offsets: dict
    emission_covs: dict
    fault_rates: dict | None = None
    fault_background_locs: dict | None = None
    fault_background_scales: dict | None = None


def get_params(model) -> LDSParams:
    """The constrained parameter values (detached copies)."""

    def det(x):
        return x.detach().clone()

    dyn = model.dynamics
    return LDSParams(
        transition_matrices={b: det(dyn[b].transition_matrix) for b in model.block_names},
        transition_covs={b: det(dyn[b].transition_cov) for b in model.block_names},
        initial_means={b: det(dyn[b].init_loc) for b in model.block_names},
        initial_covs={b: det(dyn[b].initial_cov) for b in model.block_names},
        shared_emission_matrices={
            m: det(model.emissions[m].shared_weight) for m in model.modalities
        },
        private_emission_matrices={
            m: det(model.emissions[m].private_weight) for m in model.modalities
        },
        emission_offsets={m: det(model.emissions[m].offset) for m in model.modalities},
        emission_covs={m: det(model.emissions[m].noise_cov) for m in model.modalities},
        **_fault_fields(model, det),
    )


def _fault_fields(model, det) -> dict:
    fm = getattr(model, "fault_modalities", ())
    if not fm:
        return {}
    f = model.faults
    return dict(
        fault_rates={m: det(f[m].rate) for m in fm},
        fault_background_locs={m: det(f[m].background_loc) for m in fm},
        fault_background_scales={m: det(f[m].background_scale) for m in fm},
    )


def set_params(model, params: LDSParams):
    """Overwrite the parameters with ``params`` (validated: shapes, finite values, SPD
    covariances, stability, diagonal ``R`` for ``noise="diag"``)."""
    if not isinstance(params, LDSParams):
        raise TypeError(f"params: expected LDSParams, got {type(params).__name__}")
    p = model._param()
    conv = dict(device=p.device, dtype=p.dtype)

    def get(field, key, shape):
        table = getattr(params, field)
        if not isinstance(table, Mapping) or key not in table:
            raise ValueError(f"params.{field}: expected an entry for {key!r}")
        v = table[key]
        if not isinstance(v, torch.Tensor) or v.is_complex() or v.dtype == torch.bool:
            raise TypeError(
                f"params.{field}[{key!r}]: expected a real tensor, got {type(v).__name__}"
                + (f" of dtype {v.dtype}" if isinstance(v, torch.Tensor) else "")
            )
        v = v.to(**conv)
        if tuple(v.shape) != tuple(shape):
            raise ValueError(
                f"params.{field}[{key!r}]: expected shape {tuple(shape)}, got {tuple(v.shape)}"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"params.{field}[{key!r}]: expected finite values")
        return v

    spd = check_positive_definite

    # validate everything first, so that a refused params leaves the model unchanged
    blocks, emissions = {}, {}
    for b in model.block_names:
        d = model.dynamics[b]
        k = d.dim
        A = get("transition_matrices", b, (k, k))
        if d.stable:
            norm = float(torch.linalg.matrix_norm(A, ord=2))
            if norm > d.max_spectral_norm * (1 + 1e-12):
                raise ValueError(
                    f"params.transition_matrices[{b!r}]: expected spectral norm <= "
                    f"{d.max_spectral_norm} (stable=True), got {norm:.6g}"
                )
        LQ = spd(f"params.transition_covs[{b!r}]", get("transition_covs", b, (k, k)))
        L0 = spd(f"params.initial_covs[{b!r}]", get("initial_covs", b, (k, k)))
        mu = get("initial_means", b, (k,))
        blocks[b] = (A, LQ, L0, mu)
    for m in model.modalities:
        e = model.emissions[m]
        D = e.obs_dim
        Cs = get("shared_emission_matrices", m, (D, e.shared_dim))
        Cm = get("private_emission_matrices", m, (D, e.private_dim))
        dm = get("emission_offsets", m, (D,))
        R = get("emission_covs", m, (D, D))
        spd(f"params.emission_covs[{m!r}]", R)
        if e.noise == "diag" and bool((R - torch.diag(R.diagonal())).abs().max() > 0):
            raise ValueError(
                f"params.emission_covs[{m!r}]: expected a diagonal matrix (noise='diag')"
            )
        emissions[m] = (Cs, Cm, dm, R)
    fault_values = {}
    fm = getattr(model, "fault_modalities", ())
    if fm and params.fault_rates is not None:
        for m in fm:
            f = model.faults[m]
            rate = get("fault_rates", m, ())
            if not f.floor <= float(rate) <= 0.5:
                raise ValueError(
                    f"params.fault_rates[{m!r}]: expected a value in [{f.floor}, 0.5] "
                    f"(fault_rate_floor, 1/2), got {float(rate):.6g}"
                )
            loc = get("fault_background_locs", m, (f.obs_dim,))
            scale = get("fault_background_scales", m, (f.obs_dim,))
            if not bool((scale > 0).all()):
                raise ValueError(f"params.fault_background_scales[{m!r}]: expected positive values")
            fault_values[m] = (rate, loc, scale)
    with torch.no_grad():
        for m, (rate, loc, scale) in fault_values.items():
            f = model.faults[m]
            f.set_rate(rate)
            f.background_loc.copy_(loc)
            f.background_scale.copy_(scale)
        for b, (A, LQ, L0, mu) in blocks.items():
            d = model.dynamics[b]
            d.set_transition_matrix(A)
            d.transition_scale_tril = LQ
            d.init_scale_tril = L0
            d.init_loc.copy_(mu)
        for m, (Cs, Cm, dm, R) in emissions.items():
            e = model.emissions[m]
            e.shared_weight.copy_(Cs)
            e.private_weight.copy_(Cm)
            e.offset.copy_(dm)
            e.set_noise_cov(symmetrize(R))
    model._mmpgm_fitted = True  # the user's parameters: init="auto" keeps them
    return model
