r"""The two steps of every Kalman recursion: :func:`predict` and :func:`condition`.

Every frame-by-frame filter of :mod:`mmpgm.ops.kalman.sequential` and the streaming filter
:class:`mmpgm.online.lds.LDSFilter` are loops of these two functions (the shared-covariance
recursion calls them with ``mean=None``).  The time-parallel filter
(:mod:`mmpgm.ops.kalman.parallel`) conditions every frame at once instead.

Shapes
------
``cov`` is ``(..., S, S)``; ``mean``, of the same batch shape ``...``, is a row ``(..., S)`` or
a column ``(..., S, 1)`` (told apart by ``mean.dim() == cov.dim()``), and vectors come back in
the form they were given (observations and controls too: ``(..., D)`` / ``(..., S)`` with
rows, ``(..., D, 1)`` / ``(..., S, 1)`` with columns).  Matrices broadcast against the batch
``...``: a transition or emission matrix of shape ``(S, S)`` / ``(D, S)`` is shared by the batch
(use rows: its products then run as one GEMM over the flattened batch), one of shape
``(N, S, S)`` / ``(N, D, S)`` is per sequence (use columns: its products run as fused batched
``baddbmm`` without reshapes).

Masked rows
-----------
``rows`` (``(..., D)``, bool or 0/1) selects the observed rows of the stacked observation.  An
unobserved row is removed *exactly*: its row of :math:`C P` and of the residual are zeroed and
its row and column of the innovation covariance are replaced by those of the identity.  That
decouples it (zero gain, zero whitened innovation, unit diagonal of the Cholesky factor), so the
update equals the update on the observed rows alone, at the cost of one Cholesky factorisation
of fixed size ``D``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..linalg import symmetrize
from .types import LOG_2PI, check_cholesky

__all__ = ["Conditioned", "predict", "condition", "innovation_log_prob"]


class Conditioned(NamedTuple):
    r"""Result of :func:`condition` (``L`` is the Cholesky factor of the innovation covariance
    :math:`C_o P C_o^\top + R_o`, rows of unobserved entries replaced as described above)."""

    mean: Optional[Tensor]
    r"""``(..., S)`` or ``(..., S, 1)`` as given: :math:`m^+ = m + W^\top e` (``None`` if
    ``mean`` was ``None``)."""
    cov: Tensor
    r"""``(..., S, S)``: :math:`P^+ = P - W^\top W` (symmetrised)."""
    chol: Tensor
    r"""``(..., D, D)``: :math:`L`, lower triangular."""
    gain_factor: Tensor
    r"""``(..., D, S)``: :math:`W = L^{-1} C_o P`; the Kalman gain is :math:`W^\top L^{-1}`."""
    innovation: Optional[Tensor]
    r"""``(..., D)`` (``(..., D, 1)`` for a column mean): whitened innovation
    :math:`e = L^{-1} (y - C_o m)` (``None`` without ``mean``)."""
    info: Tensor
    """``(...)``: ``info`` of :func:`torch.linalg.cholesky_ex` (non-zero: the factorisation
    failed)."""


def _addmm(M: Tensor, X: Tensor, Y: Tensor, alpha: float = 1.0) -> Tensor:
    """``M + alpha * X @ Y`` as one fused kernel where the shapes allow."""
    if X.dim() == 2 and Y.dim() == 2 and M.dim() <= 2:
        return torch.addmm(M, X, Y, alpha=alpha)
    if X.dim() == 3 and Y.dim() == 3 and X.shape[0] == Y.shape[0] and M.dim() <= 3:
        return torch.baddbmm(M, X, Y, alpha=alpha)
    XY = X @ Y
    return M + XY if alpha == 1.0 else M + alpha * XY


def _times(M: Tensor, x: Tensor, base: Optional[Tensor], col: bool) -> Tensor:
    r"""``base + M x`` for a column ``x`` ``(..., S, 1)``, or ``base + x M^T`` for rows ``x``
    ``(..., S)``; ``M`` is ``(D, S)`` or ``(..., D, S)``; ``base`` may be ``None``."""
    if col:
        if base is None:
            return torch.bmm(M, x) if M.dim() == 3 and x.dim() == 3 else M @ x
        return _addmm(base, M, x)
    if M.dim() == 2:
        out = x @ M.mT
        return out if base is None else base + out
    base = None if base is None else base.unsqueeze(-1)
    return _times(M, x.unsqueeze(-1), base, True).squeeze(-1)


def predict(
    mean: Optional[Tensor],
    cov: Tensor,
    transition_matrix: Tensor,
    transition_cov: Tensor,
    control: Optional[Tensor] = None,
) -> tuple:
    r"""Time update :math:`m \mapsto A m + B u`, :math:`P \mapsto A P A^\top + Q`.

    Parameters
    ----------
    mean : Tensor or None
        ``(..., S)`` (or a column ``(..., S, 1)``) filtered mean :math:`m_{t-1}`; ``None`` to
        propagate the covariance only.
    cov : Tensor
        ``(..., S, S)`` filtered covariance :math:`P_{t-1}` (symmetric).
    transition_matrix : Tensor
        :math:`A`, ``(S, S)`` (shared by the batch) or ``(..., S, S)``.
    transition_cov : Tensor
        :math:`Q`, ``(S, S)`` or ``(..., S, S)``, symmetric.
    control : Tensor, optional
        ``(..., S)`` (a column ``(..., S, 1)`` with a column mean) control input :math:`B u_t`
        added to the mean.

    Returns
    -------
    tuple of Tensor
        ``(mean, cov)``: the predicted moments, shaped like ``mean`` (or ``None``) and
        ``(..., S, S)`` (symmetrised).
    """
    A, Q = transition_matrix, transition_cov
    At = A.mT
    if A.dim() == 2:
        # A P A^T = (P A^T)^T A^T by the symmetry of P: two GEMMs over the flattened batch
        X = cov @ At
        P = symmetrize(X.mT @ At + Q) if X.dim() > 2 else symmetrize(_addmm(Q, A, X))
    else:
        AP = torch.bmm(A, cov) if A.dim() == 3 and cov.dim() == 3 else A @ cov
        P = symmetrize(_addmm(Q, AP, At))
    if mean is None:
        return None, P
    return _times(A, mean, control, mean.dim() == cov.dim()), P


def condition(
    mean: Optional[Tensor],
    cov: Tensor,
    emission_matrix: Tensor,
    emission_cov: Tensor,
    obs: Optional[Tensor] = None,
    rows: Optional[Tensor] = None,
    *,
    check: bool = True,
) -> Conditioned:
    r"""Measurement update in Cholesky form, with unobserved rows removed exactly.

    With :math:`S_t = C_o P C_o^\top + R_o = L L^\top`: :math:`W = L^{-1} C_o P`,
    :math:`e = L^{-1} (y - C_o m)`, :math:`m^+ = m + W^\top e`, :math:`P^+ = P - W^\top W`,
    and :math:`\log \mathcal N(y_o; C_o m, S_t) = -\tfrac12 \lVert e \rVert^2
    - \sum_i \log L_{ii} - \tfrac{D_o}{2} \log 2\pi` (:func:`innovation_log_prob`).

    Parameters
    ----------
    mean : Tensor or None
        ``(..., S)`` (or a column ``(..., S, 1)``) predicted mean :math:`m`; ``None`` for the
        covariance quantities only (``obs`` is then ignored).
    cov : Tensor
        ``(..., S, S)`` predicted covariance :math:`P` (symmetric).
    emission_matrix : Tensor
        :math:`C`, ``(D, S)`` (shared by the batch) or ``(..., D, S)``: all modalities stacked.
    emission_cov : Tensor
        :math:`R`, ``(D, D)`` or ``(..., D, D)``, symmetric (block diagonal over modalities).
    obs : Tensor, optional
        ``(..., D)`` (a column ``(..., D, 1)`` with a column mean) observation minus its
        offset, :math:`y = x - d` (required with ``mean``).
        Unobserved entries must be finite (e.g. zero).
    rows : Tensor, optional
        ``(..., D)`` bool or 0/1 float: ``True`` = observed row.  ``None``: every row is
        observed, or ``emission_matrix``/``emission_cov`` are already masked (rows of ``C``
        zeroed, ``R`` replaced by the identity on unobserved rows and columns).
    check : bool
        Raise :class:`~mmpgm.ops.kalman.NumericalError` at once if the factorisation failed
        (one host synchronisation).  The batch filters pass ``False`` and check the
        returned ``info`` of all frames at once.

    Returns
    -------
    Conditioned
        ``mean`` shaped like ``mean``, ``cov`` ``(..., S, S)``, ``chol`` ``(..., D, D)``,
        ``gain_factor`` ``(..., D, S)``, ``innovation`` ``(..., D)`` (``(..., D, 1)`` with a
        column mean), ``info`` ``(...)``.

    Raises
    ------
    NumericalError
        With ``check=True``, if the innovation covariance is not positive definite.
    """
    C, R, P = emission_matrix, emission_cov, cov
    Ct = C.mT
    batched = C.dim() == 3 and P.dim() == 3
    # C P directly (a bmm per sequence, or one mm without a batch); for a C shared by a batch
    # of P as (P C^T)^T: one GEMM over the flattened batch
    if batched:
        CP = torch.bmm(C, P)
    elif C.dim() == 2 and P.dim() == 2:
        CP = C @ P
    else:
        CP = (P @ Ct).mT
    Sm = _addmm(R, CP, Ct)
    col = mean is not None and mean.dim() == P.dim()
    resid = None  # a column (..., D, 1): y - C m
    if mean is not None:
        if col:
            resid = _addmm(obs, C, mean, alpha=-1.0)
        elif C.dim() == 2:
            resid = (obs - mean @ Ct).unsqueeze(-1)
        else:
            resid = _addmm(obs.unsqueeze(-1), C, mean.unsqueeze(-1), alpha=-1.0)
    if rows is not None:
        r = rows.to(P.dtype)
        CP = CP * r.unsqueeze(-1)
        Sm = Sm * (r.unsqueeze(-1) * r.unsqueeze(-2)) + torch.diag_embed(1.0 - r)
        if resid is not None:
            resid = resid * r.unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(Sm)
    if check:
        check_cholesky(info, "innovation covariance C P C^T + R")
    S = P.shape[-1]
    if resid is None:
        W = torch.linalg.solve_triangular(L, CP, upper=False)
        return Conditioned(None, symmetrize(_addmm(P, W.mT, W, alpha=-1.0)), L, W, None, info)
    sol = torch.linalg.solve_triangular(L, torch.cat([CP, resid], -1), upper=False)
    W, e = sol[..., :S], sol[..., S:]
    Wt = W.mT
    if col:
        m = _addmm(mean, Wt, e)
    elif batched:
        m = torch.baddbmm(mean.unsqueeze(-1), Wt, e).squeeze(-1)
    else:
        m = mean + (W * e).sum(-2)
    P = symmetrize(_addmm(P, Wt, W, alpha=-1.0))
    return Conditioned(m, P, L, W, e if col else e.squeeze(-1), info)


def innovation_log_prob(chol: Tensor, innovation: Tensor, num_observed) -> Tensor:
    r""":math:`\log p(y_o \mid \text{past}) = -\tfrac12 \lVert e \rVert^2 - \sum_i \log L_{ii}
    - \tfrac{D_o}{2} \log 2\pi` from a :class:`Conditioned` result.

    Parameters
    ----------
    chol : Tensor
        ``(..., D, D)`` :attr:`Conditioned.chol`.
    innovation : Tensor
        ``(..., D)`` :attr:`Conditioned.innovation`.
    num_observed : Tensor or int
        ``(...)`` number of observed rows :math:`D_o`.

    Returns
    -------
    Tensor
        ``(...)`` log-density of the observed rows.
    """
    return (
        -0.5 * innovation.square().sum(-1)
        - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        - 0.5 * LOG_2PI * num_observed
    )
