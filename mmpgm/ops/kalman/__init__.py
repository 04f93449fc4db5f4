r"""Exact, batched, differentiable inference in multimodal linear-Gaussian
state-space models (torch only).

Model
-----
For a batch of ``N`` sequences of length ``T`` with latent dimension ``S``
and ``M`` observation modalities of dimensions ``D_1 .. D_M``:

.. math::

    z_1 &\sim \mathcal N(\mu_0, P_0), \\
    z_t &= A z_{t-1} + B u_t + w_t, \quad w_t \sim \mathcal N(0, Q),
        \quad t = 2..T, \\
    x^m_t &= C_m z_t + d_m + v^m_t, \quad v^m_t \sim \mathcal N(0, R_m),

with noises independent across time and modalities.  The control ``u_1`` is
unused (the first state has its own prior); ``controls[:, 0]`` is ignored.

Conventions
-----------
* Batch first: sequences are ``(N, T, D)``.
* ``obs`` is a list/tuple (or mapping) of tensors ``obs[m]`` of shape
  ``(N, T, D_m)``; ``mask[m]`` is a bool tensor ``(N, T)`` (``True`` =
  observed).  A single ``(N, T)`` mask may be given for all modalities.
  Masked entries may hold anything, including NaN: they are replaced by 0
  before use and receive zero (finite) gradient.
* ``lengths`` (``(N,)`` integers) is converted to masks that are ``False``
  at ``t >= lengths[n]``.  Past the end of a sequence the filter performs
  pure prediction steps.
* Parameters are time-homogeneous, either shared (``A`` of shape ``(S, S)``)
  or per sequence (``(N, S, S)``); see :class:`LinearGaussianParams`.

Implementation
--------------
Every frame is one :func:`~mmpgm.ops.kalman.steps.predict` and one joint
:func:`~mmpgm.ops.kalman.steps.condition` over all modalities, in Cholesky
form; rows of modalities masked at that frame are removed *exactly* (see
:mod:`mmpgm.ops.kalman.steps`), and the :math:`\log 2\pi` constant only counts
observed dimensions.  The RTS smoother uses the sum-of-PSD form
:math:`P^s_t = (P_t - G_t P^p_{t+1} G_t^\top) + G_t P^s_{t+1} G_t^\top`.

Which implementation runs is chosen by keywords shared by :func:`kalman_filter`,
:func:`kalman_log_likelihood`, :func:`rts_smoother` and :func:`ffbs_sample`
(validated in one place, :func:`mmpgm.ops.kalman.method.resolve`):

* ``method="auto" | "sequential" | "parallel" | "information"``: the frame-by-frame
  recursion (:mod:`~mmpgm.ops.kalman.sequential`), the associative scan over frames
  (:mod:`~mmpgm.ops.kalman.parallel`), or the frame-by-frame recursion in information form
  (:mod:`~mmpgm.ops.kalman.information`: a missing modality adds zero precision, so no rows are
  selected; the log-likelihood's gradient comes from the smoothed moments by Fisher's identity,
  first order only); ``"auto"`` follows :func:`choose_method` (``"information"`` for a
  covariance recursion that differs between sequences, e.g. masks at random per sequence,
  unless the parallel scan's rule applies).
* ``share="auto" | "covariance" | "matrices" | "none"``: what the sequential
  recursion shares across the batch.  ``"covariance"`` (shared parameters and the
  same mask pattern in every sequence) runs the covariance recursion once without
  a batch dimension, the means as one associative scan, and the smoother's two
  backward recursions as one more; its covariances are returned as expanded views
  of one ``(T, S, S)`` stack (read-only; ``.clone()`` before writing in place).
  ``"matrices"`` (shared ``A`` and ``C``) runs the products as one GEMM over the
  flattened batch; ``"none"`` as batched ``bmm``.  ``"auto"`` takes the first that
  applies.
* ``steady_state=True``, ``steady_state_rtol=None``: over the final run of fully
  observed frames the shared-covariance Riccati recursion stops once converged
  (relative change below :data:`STEADY_STATE_RTOL` for the dtype) and reuses its
  last values.  Its effect on values and gradients is measured by the
  ``mmpgm_exact`` row of ``benchmarks/lds_speed.py``
  (``benchmarks/results/lds_speed_B.jsonl``).

Numerical failures (a covariance that is not positive definite for the dtype)
raise :class:`NumericalError`, a :class:`ValueError`.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .chunked import (
    ChunkKalmanResult,
    KalmanCarry,
    kalman_filter_chunk,
    predict_carry,
    rts_smoother_chunked,
)
from .method import (
    AUTO_PARALLEL_MAX_STEP_WORK,
    AUTO_PARALLEL_MIN_T,
    STEADY_STATE_RTOL,
    Method,
    Share,
    choose_method,
    forward,
    resolve,
)
from .parallel import parallel_kalman_filter
from .prepare import prepare
from .sequential import expand_batch
from .smoother import ffbs_sample, rts_smoother
from .types import (
    FilterResult,
    LinearGaussianParams,
    MaskType,
    NumericalError,
    ObsType,
    SmootherResult,
)

__all__ = [
    "LinearGaussianParams",
    "FilterResult",
    "SmootherResult",
    "NumericalError",
    "kalman_filter",
    "rts_smoother",
    "ffbs_sample",
    "kalman_log_likelihood",
    "parallel_kalman_filter",
    "choose_method",
    "AUTO_PARALLEL_MIN_T",
    "AUTO_PARALLEL_MAX_STEP_WORK",
    "STEADY_STATE_RTOL",
    "KalmanCarry",
    "ChunkKalmanResult",
    "kalman_filter_chunk",
    "predict_carry",
    "rts_smoother_chunked",
]


def kalman_filter(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    *,
    method: Method = "auto",
    share: Share = "auto",
    steady_state: bool = True,
    steady_state_rtol: Optional[float] = None,
) -> FilterResult:
    r"""Kalman filter with per-modality missing data.

    Computes :math:`p(z_t \mid x^{obs}_{1:t}) = \mathcal N(m_t, P_t)`, the
    one-step predictions :math:`p(z_t \mid x^{obs}_{1:t-1})` and the
    marginal log-likelihood
    :math:`\log p(x^{obs}_{1:T}) = \sum_t \log \mathcal N(x^{obs}_t;
    C^{o}_t m^p_t + d^o_t, C^o_t P^p_t C^{o\top}_t + R^o_t)`, where
    :math:`o` selects the modality blocks observed at frame ``t``.

    Parameters
    ----------
    params : LinearGaussianParams
        Model parameters, each shared by the batch (e.g. ``A`` of shape ``(S, S)``) or per
        sequence (``(N, S, S)``).
    obs : Tensor or sequence or mapping of Tensor
        ``obs[m]`` of shape ``(N, T, D_m)``.  Masked entries may hold anything, NaN included.
    mask : Tensor or sequence or mapping of Tensor, optional
        ``mask[m]`` bool ``(N, T)``, ``True`` = observed; one ``(N, T)`` tensor applies to
        every modality; ``None``: everything observed.
    controls : Tensor, optional
        ``(N, T, U)`` controls :math:`u_t`; ``controls[:, 0]`` is unused.
    lengths : Tensor, optional
        ``(N,)`` integer sequence lengths; frames ``t >= lengths[n]`` are unobserved.
    method : {"auto", "sequential", "parallel", "information"}
        ``"sequential"``: the Cholesky-form recursion (``T`` Python steps, most accurate).
        ``"parallel"``: the associative scan of :func:`parallel_kalman_filter`
        (``O(log T)`` depth, ``O(N T S^2)`` memory).  ``"information"``: the recursion in
        information form of :mod:`mmpgm.ops.kalman.information` (``S x S`` factorisations
        only; :func:`kalman_log_likelihood` gets its gradient by Fisher's identity, first
        order only).  ``"auto"``: :func:`choose_method`, i.e. ``"sequential"`` when the
        covariance recursion is shared by the batch and may reach its steady state, else
        ``"parallel"`` for long sequences with little work per frame (``T >=
        AUTO_PARALLEL_MIN_T`` and ``N (S + D)^2 <= AUTO_PARALLEL_MAX_STEP_WORK``, ``D = sum_m
        D_m``), else ``"sequential"`` for a shared covariance recursion and ``"information"``
        for one that differs between sequences (masks differing between sequences,
        per-sequence parameters); ``"sequential"`` whenever ``share`` is ``"covariance"`` or
        ``"matrices"``.  Timings: ``benchmarks/lds_speed.py``.
    share : {"auto", "covariance", "matrices", "none"}
        What the sequential recursion shares across the batch: ``"covariance"`` one
        covariance recursion for the batch (needs ``P_0``, ``A``, ``Q``, ``C_m``, ``R_m``
        shared and the same mask pattern in every sequence); ``"matrices"`` products with a
        shared ``A`` and ``C`` as one GEMM; ``"none"`` batched ``bmm``.  ``"auto"``: the
        first that applies.  An explicit choice that does not apply raises ``ValueError``;
        with ``method="parallel"`` or ``"information"`` only ``"auto"`` and ``"none"`` are
        allowed.
    steady_state : bool
        With ``share="covariance"``: stop the Riccati recursion once converged over the
        final fully observed frames and reuse its last values.  No effect otherwise.
    steady_state_rtol : float, optional
        Relative change of the predicted covariance under which it counts as converged;
        ``None``: ``STEADY_STATE_RTOL[dtype]`` (``1e-12`` in float64, ``1e-7`` in float32,
        no steady state for other dtypes).

    Returns
    -------
    FilterResult
        ``means`` ``(N, T, S)``, ``covs`` ``(N, T, S, S)``,
        ``predicted_means`` ``(N, T, S)``, ``predicted_covs`` ``(N, T, S, S)``,
        ``log_likelihood`` ``(N,)``.  Differentiable w.r.t. all tensors.  With
        ``share="covariance"`` the covariances are expanded views (read-only).

    Raises
    ------
    ValueError
        On malformed shapes or options (naming the argument, the allowed values and the
        value received).
    NumericalError
        If a covariance is not positive definite for the dtype.
    """
    p = prepare(params, obs, mask, controls, lengths)
    plan = resolve(p, method, share, steady_state, steady_state_rtol)
    pm, pP, fm, fP, ll = forward(p, plan, store=True)
    return FilterResult(fm, expand_batch(fP, p.N), pm, expand_batch(pP, p.N), ll)


def kalman_log_likelihood(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    *,
    method: Method = "auto",
    share: Share = "auto",
    steady_state: bool = True,
    steady_state_rtol: Optional[float] = None,
) -> Tensor:
    r"""Marginal log-likelihood :math:`\log p(x^{obs}_{1:T})` per sequence.

    Same computation as :func:`kalman_filter` without storing the moments.

    Parameters
    ----------
    params : LinearGaussianParams
        Model parameters, each shared by the batch (e.g. ``A`` of shape ``(S, S)``) or per
        sequence (``(N, S, S)``).
    obs : Tensor or sequence or mapping of Tensor
        ``obs[m]`` of shape ``(N, T, D_m)``.  Masked entries may hold anything, NaN included.
    mask : Tensor or sequence or mapping of Tensor, optional
        ``mask[m]`` bool ``(N, T)``, ``True`` = observed; one ``(N, T)`` tensor applies to
        every modality; ``None``: everything observed.
    controls : Tensor, optional
        ``(N, T, U)`` controls :math:`u_t`; ``controls[:, 0]`` is unused.
    lengths : Tensor, optional
        ``(N,)`` integer sequence lengths; frames ``t >= lengths[n]`` are unobserved.
    method, share, steady_state, steady_state_rtol
        The implementation, as in :func:`kalman_filter`.

    Returns
    -------
    Tensor
        ``(N,)`` log-likelihoods, differentiable w.r.t. parameters and
        observed entries (masked entries get zero gradient).

    Raises
    ------
    ValueError
        On malformed shapes or options.
    NumericalError
        If a covariance is not positive definite for the dtype.
    """
    p = prepare(params, obs, mask, controls, lengths)
    plan = resolve(p, method, share, steady_state, steady_state_rtol)
    return forward(p, plan, store=False)[-1]
