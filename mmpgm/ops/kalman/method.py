r"""Which implementation runs: the implementation keywords of the public functions, validated in
one place (:func:`resolve`), and the rule ``"auto"`` follows (:func:`choose_method`).

Keywords (the same for :func:`~mmpgm.ops.kalman.kalman_filter`,
:func:`~mmpgm.ops.kalman.kalman_log_likelihood`, :func:`~mmpgm.ops.kalman.rts_smoother` and
:func:`~mmpgm.ops.kalman.ffbs_sample`):

``method`` : ``"auto"`` | ``"sequential"`` | ``"parallel"`` | ``"information"``
    The frame-by-frame Cholesky recursion, the time-parallel associative scan, or the
    frame-by-frame recursion in information form (:mod:`mmpgm.ops.kalman.information`).
``share`` : ``"auto"`` | ``"covariance"`` | ``"matrices"`` | ``"none"``
    What the sequential recursion shares across the batch (see
    :mod:`mmpgm.ops.kalman.sequential`).  ``"auto"`` takes the first of ``"covariance"``,
    ``"matrices"``, ``"none"`` that applies to the inputs; an explicit choice that does not
    apply raises.  The parallel and information methods share nothing (``"auto"`` or
    ``"none"`` only).
``steady_state`` : bool
    Let the shared-covariance recursion stop once the Riccati recursion has converged over
    the final fully observed frames (no effect on the other recursions).
``steady_state_rtol`` : float or None
    Its relative tolerance; ``None``: :data:`STEADY_STATE_RTOL` for the dtype (no steady state
    for dtypes not listed there).

The thresholds below are read by ``"auto"`` and the ``None`` default only; nothing mutates them.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Literal, NamedTuple, Optional

import torch

from .information import information_forward
from .parallel import parallel_forward
from .prepare import Prepared, join_sequences, split_sequences
from .sequential import sequential_forward, shares_covariance, shares_matrices

__all__ = [
    "AUTO_PARALLEL_MIN_T",
    "AUTO_PARALLEL_MAX_STEP_WORK",
    "STEADY_STATE_RTOL",
    "METHODS",
    "SHARES",
    "Method",
    "Share",
    "choose_method",
    "resolve",
    "run_plan",
    "forward",
]

Method = Literal["auto", "sequential", "parallel", "information"]
Share = Literal["auto", "covariance", "matrices", "none"]
METHODS = ("auto", "sequential", "parallel", "information")
SHARES = ("auto", "covariance", "matrices", "none")

AUTO_PARALLEL_MIN_T = 256
"""Shortest ``T`` for which ``method="auto"`` runs the parallel scan (with
:data:`AUTO_PARALLEL_MAX_STEP_WORK`)."""
AUTO_PARALLEL_MAX_STEP_WORK = 4096
"""Largest per-frame work ``N (S + D)^2`` (``D = sum_m D_m``) for which ``method="auto"`` runs
the parallel scan when the steady state cannot apply: long sequences with little work per
frame, where the sequential loop is bound by per-step overhead. Both thresholds were measured
with ``benchmarks/lds_speed.py`` on a 2-core CPU (configs B, B10k and L; see
:func:`choose_method`)."""

STEADY_STATE_RTOL = {torch.float64: 1e-12, torch.float32: 1e-7}
"""Default ``steady_state_rtol`` per dtype: the recursion stops when the predicted covariance
changes by at most this much relative to its largest entry.  Its effect on log-likelihood and
gradients is measured by the ``mmpgm_exact`` row of ``benchmarks/lds_speed.py``."""


class Plan(NamedTuple):
    """A resolved choice: ``method`` in {"sequential", "parallel"}, ``share`` in
    {"covariance", "matrices", "none"}, ``steady_rtol`` a float or ``None`` (off)."""

    method: str
    share: str
    steady_rtol: Optional[float]


def choose_method(
    num_sequences: int,
    num_timesteps: int,
    state_dim: int,
    obs_dim: int,
    steady_state: bool = False,
    *,
    shared_covariance: bool = True,
) -> str:
    """The method ``method="auto"`` runs for these sizes.

    ``"sequential"`` when the covariance recursion is shared by the batch
    (``shared_covariance``) and may reach its steady state (``steady_state``: every frame fully
    observed; then the sequential filter stops the Riccati recursion early and is the fastest
    at every size measured by ``benchmarks/lds_speed.py``); otherwise ``"parallel"`` if
    ``num_timesteps >= AUTO_PARALLEL_MIN_T`` and ``num_sequences * (state_dim + obs_dim) ** 2
    <= AUTO_PARALLEL_MAX_STEP_WORK`` (long sequences with little work per frame, where a
    sequential loop is bound by per-step overhead), else ``"sequential"`` for a shared
    covariance recursion and ``"information"`` for one that differs between sequences (masks
    that differ between sequences, per-sequence parameters: the information form is several
    times faster than the sequential recursions there, e.g. 5x at config B with 20% of each
    modality missing; ``obs_dim`` = the total dimension ``D`` of all modalities).
    """
    if steady_state and shared_covariance:
        return "sequential"
    work = num_sequences * (state_dim + obs_dim) ** 2
    if num_timesteps >= AUTO_PARALLEL_MIN_T and work <= AUTO_PARALLEL_MAX_STEP_WORK:
        return "parallel"
    return "sequential" if shared_covariance else "information"


def _choice_error(name: str, allowed, value) -> ValueError:
    opts = ", ".join(repr(a) for a in allowed)
    return ValueError(f"{name}: expected one of {opts}, got {value!r}")


def check_options(method, share, steady_state, steady_state_rtol) -> None:
    """Validate the implementation keywords (types and values, not yet the inputs)."""
    if not isinstance(method, str) or method not in METHODS:
        raise _choice_error("method", METHODS, method)
    if not isinstance(share, str) or share not in SHARES:
        raise _choice_error("share", SHARES, share)
    if not isinstance(steady_state, bool):
        raise _choice_error("steady_state", (True, False), steady_state)
    if steady_state_rtol is not None and (
        isinstance(steady_state_rtol, bool)
        or not isinstance(steady_state_rtol, Real)
        or not math.isfinite(steady_state_rtol)
        or steady_state_rtol <= 0
    ):
        raise ValueError(
            f"steady_state_rtol: expected None or a finite float > 0, got {steady_state_rtol!r}"
        )
    if method in ("parallel", "information") and share not in ("auto", "none"):
        raise ValueError(
            f"share: expected 'auto' or 'none' with method={method!r} (the {method} filter "
            f"shares nothing across the batch), got {share!r}"
        )


def resolve(
    p: Prepared,
    method: str = "auto",
    share: str = "auto",
    steady_state: bool = True,
    steady_state_rtol: Optional[float] = None,
) -> Plan:
    """Validate the implementation keywords against the inputs ``p`` and resolve ``"auto"``.

    Raises
    ------
    ValueError
        Naming the argument, the allowed values and the value received; or, for an explicit
        ``share`` the inputs do not allow, what it needs.
    """
    check_options(method, share, steady_state, steady_state_rtol)
    if method == "auto":
        if share in ("covariance", "matrices"):
            method = "sequential"
        else:
            # the steady state can cut the recursion short only if every frame is observed alike
            shared = shares_covariance(p)
            steady = steady_state and share == "auto" and all(p.frame_full) and shared
            method = choose_method(
                p.N, p.T, p.S, p.C.shape[-2], steady, shared_covariance=shared or share == "none"
            )
    if method in ("parallel", "information"):
        return Plan(method, "none", None)
    if share == "covariance" and not shares_covariance(p):
        raise ValueError(
            "share: 'covariance' needs P_0, A, Q, C and R shared by the batch and the same "
            "mask pattern (and length) in every sequence; got inputs without; use 'auto'"
        )
    if share == "matrices" and not shares_matrices(p):
        raise ValueError(
            "share: 'matrices' needs A and every C_m and R_m shared by the batch; got "
            "per-sequence ones; use 'auto'"
        )
    if share == "auto":
        if shares_covariance(p):
            share = "covariance"
        elif shares_matrices(p):
            share = "matrices"
        else:
            share = "none"
    rtol = None
    if share == "covariance" and steady_state:
        rtol = steady_state_rtol
        if rtol is None:
            rtol = STEADY_STATE_RTOL.get(p.y.dtype)
    return Plan("sequential", share, None if rtol is None else float(rtol))


def run_plan(p: Prepared, plan: Plan, store: bool = True):
    """Run ``plan`` on ``p`` as one part (the information filter still splits itself over CPU
    threads: see ``information._run``); the outputs of :func:`forward`."""
    if plan.method == "parallel":
        return parallel_forward(p)
    if plan.method == "information":
        return information_forward(p, store)
    return sequential_forward(p, store, plan.share, plan.steady_rtol)


def forward(p: Prepared, plan: Plan, store: bool = True):
    """Run ``plan``: ``(pred_means (N, T, S), pred_covs (b, T, S, S), filt_means,
    filt_covs, log_lik (N,))``, ``b`` in ``{1, N}`` (1 only for ``share="covariance"``).

    The sequential recursions run split by sequences over CPU threads when autograd records
    nothing (:func:`~mmpgm.ops.kalman.prepare.split_sequences`)."""
    if plan.method != "sequential":
        return run_plan(p, plan, store)
    parts = split_sequences(p, lambda q: run_plan(q, plan, store))
    return join_sequences(parts, p.N, plan.share == "covariance")
