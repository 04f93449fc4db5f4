r"""Parameter and result types of :mod:`mmpgm.ops.kalman`, and its numerical error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "LinearGaussianParams",
    "FilterResult",
    "SmootherResult",
    "NumericalError",
    "ObsType",
    "MaskType",
]

LOG_2PI = math.log(2.0 * math.pi)

ObsType = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]
MaskType = Union[None, Tensor, Sequence[Optional[Tensor]], Mapping[str, Optional[Tensor]]]


class LinearGaussianParams(NamedTuple):
    r"""Parameters of a multimodal linear-Gaussian state-space model.

    Every tensor may carry a leading batch dimension ``N`` (one parameter set
    per sequence) or none (shared by the batch).  Per-modality entries are
    tuples (or mappings keyed like ``obs``) of length ``M``.
    """

    initial_mean: Tensor
    r""":math:`\mu_0`, ``(S,)`` or ``(N, S)``: prior mean of :math:`z_1`."""
    initial_cov: Tensor
    r""":math:`P_0`, ``(S, S)`` or ``(N, S, S)``: prior covariance of :math:`z_1` (SPD)."""
    transition_matrix: Tensor
    r""":math:`A`, ``(S, S)`` or ``(N, S, S)``: :math:`E[z_t|z_{t-1}] = A z_{t-1} + B u_t`."""
    transition_cov: Tensor
    r""":math:`Q`, ``(S, S)`` or ``(N, S, S)``: process-noise covariance (SPD)."""
    emission_matrices: Sequence[Tensor]
    r""":math:`C_m`, each ``(D_m, S)`` or ``(N, D_m, S)``."""
    emission_offsets: Optional[Sequence[Optional[Tensor]]] = None
    r""":math:`d_m`, each ``(D_m,)`` or ``(N, D_m)``; ``None`` means zero."""
    emission_covs: Sequence[Tensor] = ()
    r""":math:`R_m`, each ``(D_m, D_m)`` or ``(N, D_m, D_m)`` (SPD)."""
    control_matrix: Optional[Tensor] = None
    r""":math:`B`, ``(S, U)`` or ``(N, S, U)``; required iff ``controls`` is given."""


class FilterResult(NamedTuple):
    """Output of :func:`~mmpgm.ops.kalman.kalman_filter` (``t`` indexes frames, 1-based in
    the math)."""

    means: Tensor
    r"""``(N, T, S)``: :math:`E[z_t \mid x_{1:t}]`."""
    covs: Tensor
    r"""``(N, T, S, S)``: :math:`\mathrm{Cov}[z_t \mid x_{1:t}]`."""
    predicted_means: Tensor
    r"""``(N, T, S)``: :math:`E[z_t \mid x_{1:t-1}]` (``[:, 0]`` is :math:`\mu_0`)."""
    predicted_covs: Tensor
    r"""``(N, T, S, S)``: :math:`\mathrm{Cov}[z_t \mid x_{1:t-1}]` (``[:, 0]`` is :math:`P_0`)."""
    log_likelihood: Tensor
    r"""``(N,)``: :math:`\log p(x^{\mathrm{obs}}_{1:T})`, only observed modality blocks."""


class SmootherResult(NamedTuple):
    """Output of :func:`~mmpgm.ops.kalman.rts_smoother`."""

    means: Tensor
    r"""``(N, T, S)``: :math:`E[z_t \mid x_{1:T}]`."""
    covs: Tensor
    r"""``(N, T, S, S)``: :math:`\mathrm{Cov}[z_t \mid x_{1:T}]`."""
    cross_covs: Tensor
    r"""``(N, T-1, S, S)``: ``[:, t]`` is :math:`\mathrm{Cov}[z_{t+1}, z_t \mid x_{1:T}]`
    (rows index :math:`z_{t+1}`, columns :math:`z_t`)."""
    log_likelihood: Tensor
    r"""``(N,)``: :math:`\log p(x^{\mathrm{obs}}_{1:T})`."""


class NumericalError(ValueError):
    """A matrix that must be positive definite was not, numerically (a Cholesky factorisation
    failed).  Subclasses :class:`ValueError`."""


def numerical_error(what: str) -> NumericalError:
    """The one error of a failed Cholesky factorisation of ``what``, with what to try."""
    return NumericalError(
        f"{what} is not positive definite (Cholesky failed); check that the covariance "
        "parameters are symmetric positive definite and well conditioned for this dtype: "
        "use float64, or a larger noise floor (a larger minimum eigenvalue of Q and R_m)"
    )


def check_cholesky(infos, what: str) -> None:
    """Raise :func:`numerical_error` if any ``info`` of :func:`torch.linalg.cholesky_ex` is
    non-zero.  ``infos`` is one info tensor or a list of them (one host sync in all)."""
    if isinstance(infos, Tensor):
        bad = infos.ne(0).any()
    elif infos:
        bad = torch.cat([i.reshape(-1) for i in infos]).ne(0).any()
    else:
        return
    if bool(bad):
        raise numerical_error(what)
