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
Each frame uses one joint measurement update over all modalities.  Rows of
modalities that are masked at that frame are removed *exactly*: their rows
of :math:`C` and residual are zeroed and their block of the innovation
covariance is replaced by the identity, which decouples them (zero gain,
zero innovation, unit determinant); the :math:`\log 2\pi` constant only
counts observed dimensions.  This equals the sequential per-modality update
selected by the mask, but costs a single batched Cholesky factorisation
per time step.  Updates use the Cholesky factor :math:`L` of the innovation
covariance :math:`S_t = C P C^\top + R`:
:math:`W = L^{-1} C P`, :math:`e = L^{-1} r`,
:math:`m^+ = m + W^\top e`, :math:`P^+ = P - W^\top W` (symmetrised).
The RTS smoother uses the sum-of-PSD form
:math:`P^s_t = (P_t - G_t P^p_{t+1} G_t^\top) + G_t P^s_{t+1} G_t^\top`.

Shared covariance recursion
---------------------------
Covariances, Cholesky factors and gains depend only on the parameters and
on which modalities are observed at each frame, not on the observations.
When ``P_0``, ``A``, ``Q``, ``C_m`` and ``R_m`` are shared by the batch
(the prior mean, offsets and controls may still be per sequence) and every
sequence has the same mask pattern at every frame (no missing data, or
aligned dropouts, equal lengths), the sequential filter runs the covariance
recursion once without a batch dimension and the means as one ``(N, S)``
GEMM per frame (:func:`_forward_shared_cov`); the smoother then runs both
backward recursions (affine in the later smoothed value) as one associative
scan over their compositions.  Covariances shared by the batch are returned
as expanded views of one ``(T, S, S)`` stack (read-only; ``.clone()`` before
writing in place).
Over runs of fully observed frames the Riccati recursion is stopped once
it has converged (relative change below ``1e-12`` in float64, ``1e-7`` in
float32) and its last values are reused (``_USE_STEADY_STATE``; measured
log-likelihood change ``< 1e-14`` relative, gradient ``~1e-10`` relative on
``benchmarks/lds_speed.py`` config B).  Other cases (per-sequence
parameters, mask patterns that differ between sequences) use the batched
per-sequence recursion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional, Union

import torch

from .._threads import cpu_single_thread
from torch import Tensor

from mmpgm.ops.linalg import symmetrize

__all__ = [
    "LinearGaussianParams",
    "FilterResult",
    "SmootherResult",
    "kalman_filter",
    "rts_smoother",
    "ffbs_sample",
    "kalman_log_likelihood",
    "parallel_kalman_filter",
]

_LOG_2PI = math.log(2.0 * math.pi)

ObsType = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]
MaskType = Union[None, Tensor, Sequence[Optional[Tensor]], Mapping[str, Optional[Tensor]]]


class LinearGaussianParams(NamedTuple):
    r"""Parameters of a multimodal linear-Gaussian state-space model.

    Every tensor may carry a leading batch dimension ``N`` (one parameter set
    per sequence) or none (shared by the batch).  Per-modality entries are
    tuples (or mappings keyed like ``obs``) of length ``M``.
    """

    init_mean: Tensor
    r""":math:`\mu_0`, ``(S,)`` or ``(N, S)``: prior mean of :math:`z_1`."""
    init_cov: Tensor
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
    """Output of :func:`kalman_filter` (``t`` indexes frames, 1-based in the math)."""

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
    """Output of :func:`rts_smoother`."""

    means: Tensor
    r"""``(N, T, S)``: :math:`E[z_t \mid x_{1:T}]`."""
    covs: Tensor
    r"""``(N, T, S, S)``: :math:`\mathrm{Cov}[z_t \mid x_{1:T}]`."""
    cross_covs: Tensor
    r"""``(N, T-1, S, S)``: ``[:, t]`` is :math:`\mathrm{Cov}[z_{t+1}, z_t \mid x_{1:T}]`
    (rows index :math:`z_{t+1}`, columns :math:`z_t`)."""
    log_likelihood: Tensor
    r"""``(N,)``: :math:`\log p(x^{\mathrm{obs}}_{1:T})`."""


# --------------------------------------------------------------------------
# input preparation
# --------------------------------------------------------------------------


class _Prepared(NamedTuple):
    N: int
    T: int
    S: int
    m0: Tensor  # (N, S, 1)
    P0: Tensor  # (N, S, S)
    A: Tensor  # (b, S, S), b in {1, N}
    Q: Tensor  # (b, S, S)
    C: Tensor  # (b, D, S)  (all modalities stacked)
    R: Tensor  # (b, D, D)  (block diagonal)
    y: Tensor  # (N, T, D, 1)  masked (x - d)
    rm: Tensor  # (N, T, D, 1)  row mask as 0/1 floats
    Bu: Optional[Tensor]  # (N, T, S, 1) or None
    frame_full: list  # per t: every row of every sequence observed
    frame_empty: list  # per t: nothing observed in the whole batch
    num_obs: Tensor  # (N,) number of observed scalar entries


def _shape_error(name: str, expected: str, got) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {tuple(got)}")


def _as_batched(x: Tensor, name: str, core: tuple, core_desc: str, N: Optional[int]) -> Tensor:
    """Return ``x`` with a leading batch dim of size 1 or N; validate shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    k = len(core)
    if x.dim() == k:
        ok = all(c is None or s == c for s, c in zip(x.shape, core))
        if ok:
            return x.unsqueeze(0)
    elif x.dim() == k + 1:
        ok = all(c is None or s == c for s, c in zip(x.shape[1:], core))
        if ok and (N is None or x.shape[0] in (1, N)):
            return x
    dims = ", ".join("?" if c is None else str(c) for c in core)
    exp = f"({dims}{',' if k == 1 else ''}) or ({N}, {dims})"
    raise _shape_error(name, exp, x.shape)


def _modalities(obj, keys, name: str, allow_none: bool = False) -> list:
    """Turn a tensor / sequence / mapping of per-modality items into a list ordered by ``keys``."""
    if obj is None:
        if allow_none:
            return [None] * len(keys)
        raise ValueError(f"{name}: expected one entry per modality, got None")
    if isinstance(obj, Tensor):
        obj = [obj]
    if isinstance(obj, Mapping):
        if set(obj.keys()) != set(keys):
            raise ValueError(f"{name}: expected keys {list(keys)}, got {list(obj.keys())}")
        return [obj[k] for k in keys]
    obj = list(obj)
    if len(obj) != len(keys):
        raise ValueError(f"{name}: expected {len(keys)} modalities, got {len(obj)}")
    return obj


def _prepare(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> _Prepared:
    if not isinstance(params, LinearGaussianParams):
        raise ValueError(
            f"params: expected LinearGaussianParams, got {type(params).__name__}"
        )
    # modality keys / ordering: keys of a mapping of emission matrices, else
    # keys of a mapping of observations, else positions.
    emis = params.emission_matrices
    if isinstance(emis, Tensor):
        emis = [emis]
    if isinstance(emis, Mapping):
        keys = list(emis.keys())
    elif isinstance(obs, Mapping):
        keys = list(obs.keys())
    else:
        keys = list(range(len(emis)))
    M = len(keys)
    if M == 0:
        raise ValueError("params.emission_matrices: expected at least one modality, got 0")
    C_list = _modalities(emis, keys, "params.emission_matrices")
    obs_list = _modalities(obs, keys, "obs")
    d_list = _modalities(params.emission_offsets, keys, "params.emission_offsets", allow_none=True)
    R_list = _modalities(params.emission_covs, keys, "params.emission_covs")
    if mask is None or isinstance(mask, Tensor):
        mask_list = [mask] * M
    else:
        mask_list = _modalities(mask, keys, "mask", allow_none=True)

    # batch / time sizes from observations
    for m, x in enumerate(obs_list):
        if not isinstance(x, Tensor) or x.dim() != 3:
            got = x.shape if isinstance(x, Tensor) else (type(x).__name__,)
            raise _shape_error(f"obs[{keys[m]!r}]", "(N, T, D_m)", got)
    N, T = obs_list[0].shape[:2]
    if T < 1:
        raise _shape_error("obs", "(N, T>=1, D_m)", obs_list[0].shape)
    for m, x in enumerate(obs_list):
        if x.shape[:2] != (N, T):
            raise _shape_error(f"obs[{keys[m]!r}]", f"({N}, {T}, D_m)", x.shape)

    # dtype / device
    tensors = [params.init_mean, params.init_cov, params.transition_matrix, params.transition_cov]
    tensors += list(C_list) + list(R_list) + [d for d in d_list if d is not None]
    for name, tns in zip(["params.init_mean", "params.init_cov", "params.transition_matrix", "params.transition_cov"], tensors[:4]):
        if not isinstance(tns, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(tns).__name__}")
    dtype = torch.get_default_dtype()
    float_tensors = [t for t in tensors + obs_list if isinstance(t, Tensor) and t.is_floating_point()]
    if float_tensors:
        dtype = float_tensors[0].dtype
        for tns in float_tensors[1:]:
            dtype = torch.promote_types(dtype, tns.dtype)
    device = obs_list[0].device

    def cast(x):
        return x.to(dtype=dtype, device=device)

    S = params.init_mean.shape[-1] if params.init_mean.dim() > 0 else -1
    if S < 1:
        raise _shape_error("params.init_mean", "(S,) or (N, S)", params.init_mean.shape)
    m0 = cast(_as_batched(params.init_mean, "params.init_mean", (S,), "(S,)", N))
    P0 = cast(_as_batched(params.init_cov, "params.init_cov", (S, S), f"({S}, {S})", N))
    A = cast(_as_batched(params.transition_matrix, "params.transition_matrix", (S, S), f"({S}, {S})", N))
    Q = cast(_as_batched(params.transition_cov, "params.transition_cov", (S, S), f"({S}, {S})", N))

    Cs, Rs, ds, dims = [], [], [], []
    for m in range(M):
        Dm = obs_list[m].shape[-1]
        dims.append(Dm)
        k = keys[m]
        Cs.append(cast(_as_batched(C_list[m], f"params.emission_matrices[{k!r}]", (Dm, S), f"({Dm}, {S})", N)))
        Rs.append(cast(_as_batched(R_list[m], f"params.emission_covs[{k!r}]", (Dm, Dm), f"({Dm}, {Dm})", N)))
        if d_list[m] is None:
            ds.append(None)
        else:
            ds.append(cast(_as_batched(d_list[m], f"params.emission_offsets[{k!r}]", (Dm,), f"({Dm},)", N)))
    D = sum(dims)

    # parameter batch size
    pb = Cs + Rs  # batch of the stacked C and R (m0, P0, A, Q, d are handled apart)
    b = max(x.shape[0] for x in pb)

    C = torch.cat([c.expand(b, -1, -1) for c in Cs], dim=1) if M > 1 else Cs[0]
    if M > 1:
        R = torch.zeros(b, D, D, dtype=dtype, device=device)
        o = 0
        for Rm, Dm in zip(Rs, dims):
            R[:, o : o + Dm, o : o + Dm] = Rm.expand(b, -1, -1)
            o += Dm
    else:
        R = Rs[0]
    # covariance parameters enter only through their symmetric part, so that
    # gradients w.r.t. them are symmetric
    R = symmetrize(R)

    # masks
    t_idx = torch.arange(T, device=device)
    len_mask = None
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.shape != (N,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError(
                f"lengths: expected integer tensor of shape ({N},), got {tuple(lengths.shape)} {lengths.dtype}"
            )
        if bool((lengths < 0).any()) or bool((lengths > T).any()):
            raise ValueError(f"lengths: expected values in [0, {T}], got min {int(lengths.min())}, max {int(lengths.max())}")
        len_mask = t_idx.unsqueeze(0) < lengths.unsqueeze(1)

    rows, ys = [], []
    for m in range(M):
        mk = mask_list[m]
        if mk is None:
            mk = torch.ones(N, T, dtype=torch.bool, device=device)
        else:
            if not isinstance(mk, Tensor) or mk.shape != (N, T):
                got = mk.shape if isinstance(mk, Tensor) else (type(mk).__name__,)
                raise _shape_error(f"mask[{keys[m]!r}]", f"({N}, {T}) bool", got)
            if mk.dtype != torch.bool:
                raise ValueError(f"mask[{keys[m]!r}]: expected dtype torch.bool, got {mk.dtype}")
            mk = mk.to(device)
        if len_mask is not None:
            mk = mk & len_mask
        x = cast(obs_list[m])
        mk3 = mk.unsqueeze(-1)
        x = torch.where(mk3, x, torch.zeros((), dtype=dtype, device=device))
        if ds[m] is not None:
            x = x - ds[m].unsqueeze(1)
        x = x * mk3.to(dtype)
        ys.append(x)
        rows.append(mk3.expand(N, T, dims[m]))
    y = torch.cat(ys, dim=-1).unsqueeze(-1) if M > 1 else ys[0].unsqueeze(-1)
    rowmask = torch.cat(rows, dim=-1) if M > 1 else rows[0]
    frame_full = rowmask.all(dim=-1).all(dim=0).tolist()
    frame_empty = (~rowmask.any(dim=-1).any(dim=0)).tolist()
    rm = rowmask.to(dtype).unsqueeze(-1)
    num_obs = rowmask.sum(dim=(1, 2)).to(dtype)

    Bu = None
    if controls is not None:
        if params.control_matrix is None:
            raise ValueError("controls: given but params.control_matrix is None")
        if not isinstance(controls, Tensor) or controls.dim() != 3 or controls.shape[:2] != (N, T):
            got = controls.shape if isinstance(controls, Tensor) else (type(controls).__name__,)
            raise _shape_error("controls", f"({N}, {T}, U)", got)
        U = controls.shape[-1]
        Bm = cast(_as_batched(params.control_matrix, "params.control_matrix", (S, U), f"({S}, {U})", N))
        Bu = (Bm.unsqueeze(1) @ cast(controls).unsqueeze(-1))  # (N, T, S, 1)
        Bu = Bu.expand(N, T, S, 1)

    return _Prepared(
        N=N,
        T=T,
        S=S,
        m0=m0.unsqueeze(-1).expand(N, S, 1),
        P0=symmetrize(P0).expand(N, S, S),
        A=A,
        Q=symmetrize(Q),
        C=C,
        R=R,
        y=y,
        rm=rm,
        Bu=Bu,
        frame_full=frame_full,
        frame_empty=frame_empty,
        num_obs=num_obs,
    )


# --------------------------------------------------------------------------
# core recursions
# --------------------------------------------------------------------------


def _raise_if_failed(infos: list, what: str) -> None:
    if infos:
        bad = torch.stack(infos).ne(0).any()
        if bool(bad):
            raise ValueError(
                f"{what} is not positive definite (Cholesky failed); check that the "
                "covariance parameters are SPD and well conditioned for this dtype"
            )


_USE_SHARED_PATH = True  # GEMM fast path when A and C are shared by the batch
_USE_SHARED_COV_PATH = True  # covariance recursion once for the batch (see _shared_covariance)
_CHUNK = 128  # frames whose masked emission matrices are materialised at once
# Small sequential loops run with one intra-op thread (see ops/_threads.py).
_cpu_single_thread = cpu_single_thread


def _forward(p: _Prepared, store: bool = True, steady: bool = True):
    """Run the filter. Returns (pred_m, pred_P, filt_m, filt_P, log_lik).

    All per-step work is done with batched ``bmm``/``baddbmm`` on
    ``(N, ., .)`` tensors; masked emission matrices / noise covariances are
    built per chunk of frames, vectorised, outside the time loop.
    """
    with _cpu_single_thread(p.y.device, p.N * (p.S + p.C.shape[-2]) ** 2):
        if _USE_SHARED_COV_PATH and _shared_covariance(p):
            return _forward_shared_cov(p, store, steady=steady)
        if _USE_SHARED_PATH and p.A.shape[0] == 1 and p.C.shape[0] == 1:
            return _forward_shared(p, store)
        return _forward_impl(p, store)


_STEADY_RTOL = {torch.float64: 1e-12, torch.float32: 1e-7}
"""Relative tolerance of the steady-state test of :func:`_forward_shared_cov`
(``None`` for a dtype, or :data:`_USE_STEADY_STATE` ``False``, disables it)."""
_USE_STEADY_STATE = True


def _shared_covariance(p: _Prepared) -> bool:
    """True when the covariance recursion is the same for every sequence.

    That holds when ``P_0``, ``A``, ``Q``, ``C`` and ``R`` are shared by the
    batch and, at every frame, all sequences observe the same modalities.
    """
    if p.N == 1:
        return True
    if p.A.shape[0] != 1 or p.Q.shape[0] != 1 or p.C.shape[0] != 1 or p.R.shape[0] != 1:
        return False
    if p.P0.stride(0) != 0:
        return False
    if all(p.frame_full) or all(f or e for f, e in zip(p.frame_full, p.frame_empty)):
        return True
    return bool((p.rm == p.rm[:1]).all())


def _forward_shared_cov(p: _Prepared, store: bool, steady: bool = True):
    r"""Filter whose covariance recursion is shared by the batch.

    The predicted/filtered covariances, innovation Cholesky factors and
    gains depend only on the parameters and on the frame's mask pattern, so
    they are computed once (no batch dimension).  With the gain
    :math:`K_t^\top = L_t^{-\top} W_t` (``(D, S)``), the predicted means obey
    the linear recursion

    .. math::

        m^p_{t+1} = m^p_t F_t + g_t, \quad
        F_t = (I - C_t^\top K_t^\top) A^\top, \quad
        g_t = y_t K_t^\top A^\top + (B u_{t+1})^\top

    (rows are sequences), one GEMM per frame; innovations, filtered means
    and the log-likelihood are then computed for all frames at once.

    Steady state (``steady``): over a run of fully observed frames of a
    time-homogeneous model the Riccati recursion converges.  Once the
    predicted covariance of a fully observed frame differs from the previous
    one by at most ``_STEADY_RTOL[dtype]`` (``1e-12`` in float64, ``1e-7``
    in float32) relative to its largest entry, and every remaining frame is
    fully observed, the remaining frames reuse that frame's covariance
    quantities.  The induced log-likelihood error is of that relative order
    (measured ``< 1e-13`` relative on config B).
    """
    T, S = p.T, p.S
    dtype, device = p.y.dtype, p.y.device
    D = p.C.shape[-2]
    A, Q, C, R = p.A[0], p.Q[0], p.C[0], p.R[0]
    At = A.mT
    r_all = p.rm[0, :, :, 0]  # (T, D) shared pattern
    full, empty = p.frame_full, p.frame_empty
    # patterns are uniform over the batch here, so per-frame full/empty are exact
    suffix_full = [False] * (T + 1)
    suffix_full[T] = True
    for t in range(T - 1, -1, -1):
        suffix_full[t] = suffix_full[t + 1] and full[t]
    tol = _STEADY_RTOL.get(dtype) if (steady and _USE_STEADY_STATE) else None

    # ---- covariance recursion (batch-free) ----
    P = symmetrize(p.P0[0])
    Pp_l, Pf_l, L_l, W_l, C_l = [], [], [], [], []
    infos = []
    prev_full_P = None
    t_stop = T
    for t in range(T):
        if t > 0:
            P = symmetrize(torch.addmm(Q, A @ P, At))
        if tol is not None and full[t] and suffix_full[t]:
            Pd = P.detach()
            if prev_full_P is not None:
                if float((Pd - prev_full_P).abs().max()) <= tol * float(Pd.abs().max()):
                    t_stop = t
                    break
            prev_full_P = Pd
        else:
            prev_full_P = None
        Pp_l.append(P)
        if full[t]:
            Cc, Rc = C, R
        elif empty[t]:
            Pf_l.append(P)
            L_l.append(None)
            W_l.append(None)
            C_l.append(None)
            continue
        else:
            r = r_all[t]
            Cc = C * r.unsqueeze(-1)
            Rc = R * (r.unsqueeze(-1) * r) + torch.diag(1.0 - r)
        CP = Cc @ P
        L, info = torch.linalg.cholesky_ex(torch.addmm(Rc, CP, Cc.mT))
        W = torch.linalg.solve_triangular(L, CP, upper=False)
        P = symmetrize(torch.addmm(P, W.mT, W, alpha=-1.0))
        infos.append(info)
        Pf_l.append(P)
        L_l.append(L)
        W_l.append(W)
        C_l.append(Cc)
    _raise_if_failed(infos, "innovation covariance C P C^T + R")
    n_rep = T - t_stop
    # empty frames: identity factor, zero gain, zero rows
    eye_D = torch.eye(D, dtype=dtype, device=device)
    zDS = torch.zeros(D, S, dtype=dtype, device=device)
    L_l = [eye_D if x is None else x for x in L_l]
    W_l = [zDS if x is None else x for x in W_l]
    C_l = [zDS if x is None else x for x in C_l]

    def stack(xs):
        out = torch.stack(xs)
        if n_rep:
            out = torch.cat([out, xs[-1].expand(n_rep, *xs[-1].shape)])
        return out

    Ls, Ws, Cs = stack(L_l), stack(W_l), stack(C_l)  # (T, D, D), (T, D, S), (T, D, S)
    Kt = torch.linalg.solve_triangular(Ls.mT, Ws, upper=True)  # (T, D, S) = K_t^T
    KtAt = Kt @ At
    y = p.y[..., 0].transpose(0, 1)  # (T, N, D)
    g = torch.bmm(y, KtAt)  # (T, N, S)
    if p.Bu is not None:
        g = g[:-1] + p.Bu[:, 1:, :, 0].transpose(0, 1)
    F = At - Cs.mT @ KtAt  # (T, S, S)

    # ---- mean recursion m_{t+1} = m_t F_t + g_t: an associative scan over the affine maps
    # (depth O(log T), differentiable, no per-frame Python loop) ----
    m0 = p.m0[..., 0].unsqueeze(0)  # (1, N, S)
    if T > 1:
        Fc, gc = _associative_scan(_affine_combine, (F[: T - 1], g[: T - 1]), dim=0)
        pm = torch.cat([m0, m0 @ Fc + gc], dim=0)  # (T, N, S)
    else:
        pm = m0
    resid = y - torch.bmm(pm, Cs.mT)  # (T, N, D)
    e = torch.linalg.solve_triangular(Ls, resid.mT, upper=False)  # (T, D, N)
    logdet = Ls.diagonal(dim1=-2, dim2=-1).log().sum()
    ll = -0.5 * e.square().sum(dim=(0, 1)) - logdet - 0.5 * _LOG_2PI * p.num_obs
    if not store:
        return None, None, None, None, ll
    fm = torch.baddbmm(pm, e.mT, Ws)  # (T, N, S)
    Pp, Pf = stack(Pp_l), stack(Pf_l)
    return pm.transpose(0, 1), Pp.unsqueeze(0), fm.transpose(0, 1), Pf.unsqueeze(0), ll


def _forward_impl(p: _Prepared, store: bool):
    N, T, S = p.N, p.T, p.S
    D = p.C.shape[-2]
    A = p.A.expand(N, S, S)
    Q = p.Q.expand(N, S, S)
    C = p.C.expand(N, D, S)
    R = p.R.expand(N, D, D)
    At = A.mT
    Ct = C.mT
    m, P = p.m0, p.P0
    pm, pP, fm, fP = [], [], [], []
    es, Ls, infos = [], [], []
    any_partial = not all(p.frame_full[t] or p.frame_empty[t] for t in range(T))
    eye_D = torch.eye(D, dtype=p.y.dtype, device=p.y.device)
    for t0 in range(0, T, _CHUNK):
        t1 = min(T, t0 + _CHUNK)
        ys = p.y[:, t0:t1].unbind(1)
        Bus = p.Bu[:, t0:t1].unbind(1) if p.Bu is not None else None
        if any_partial:
            r = p.rm[:, t0:t1]  # (N, c, D, 1)
            Cms = (C.unsqueeze(1) * r).unbind(1)
            Rms = (R.unsqueeze(1) * (r * r.mT) + eye_D * (1.0 - r)).unbind(1)
        for t in range(t0, t1):
            k = t - t0
            if t > 0:
                m = torch.baddbmm(Bus[k], A, m) if Bus is not None else torch.bmm(A, m)
                P = symmetrize(torch.baddbmm(Q, torch.bmm(A, P), At))
            if store:
                pm.append(m)
                pP.append(P)
            if p.frame_empty[t]:
                if store:
                    fm.append(m)
                    fP.append(P)
                continue
            if p.frame_full[t]:
                Cc, CcT, Rc = C, Ct, R
            else:
                Cc = Cms[k]
                CcT = Cc.mT
                Rc = Rms[k]
            CP = torch.bmm(Cc, P)
            Sm = torch.baddbmm(Rc, CP, CcT)
            resid = torch.baddbmm(ys[k], Cc, m, alpha=-1.0)
            L, info = torch.linalg.cholesky_ex(Sm)
            sol = torch.linalg.solve_triangular(L, torch.cat([CP, resid], dim=-1), upper=False)
            W, e = sol[..., :S], sol[..., S:]
            Wt = W.mT
            m = torch.baddbmm(m, Wt, e)
            P = symmetrize(torch.baddbmm(P, Wt, W, alpha=-1.0))
            es.append(e)
            Ls.append(L)
            infos.append(info)
            if store:
                fm.append(m)
                fP.append(P)
    return _finish_forward(p, store, pm, pP, fm, fP, es, Ls, infos, squeeze=True)


def _finish_forward(p, store, pm, pP, fm, fP, es, Ls, infos, squeeze):
    _raise_if_failed(infos, "innovation covariance C P C^T + R")
    if es:
        e_all = torch.stack(es, dim=1)  # (N, T', D, 1)
        ld_all = torch.stack(Ls, dim=1).diagonal(dim1=-2, dim2=-1)  # (N, T', D)
        ll = -0.5 * e_all.square().sum(dim=(1, 2, 3)) - ld_all.log().sum(dim=(1, 2))
    else:
        ll = torch.zeros(p.N, dtype=p.y.dtype, device=p.y.device)
    ll = ll - 0.5 * _LOG_2PI * p.num_obs
    if not store:
        return None, None, None, None, ll
    pm = torch.stack(pm, dim=1)
    fm = torch.stack(fm, dim=1)
    if squeeze:
        pm, fm = pm.squeeze(-1), fm.squeeze(-1)
    return pm, torch.stack(pP, dim=1), fm, torch.stack(fP, dim=1), ll


def _rmul(X: Tensor, Mt: Tensor) -> Tensor:
    """``X @ Mt`` for a batch ``X`` (n, a, b) and one shared ``Mt`` (b, c) as a single GEMM."""
    n, a, b = X.shape
    return (X.reshape(n * a, b) @ Mt).view(n, a, Mt.shape[-1])


def _forward_shared(p: _Prepared, store: bool):
    """Filter for parameters ``A`` and ``C`` shared by the batch.

    Products with the shared matrices are computed as one large GEMM over the
    flattened batch instead of a batched ``bmm`` of tiny matrices (several
    times faster on CPU), using the symmetry of ``P``:
    :math:`A P = (P A^\\top)^\\top` and :math:`C P = (P C^\\top)^\\top`.
    Means are kept as rows ``(N, S)``.
    """
    T, S = p.T, p.S
    At = p.A[0].mT
    Ct = p.C[0].mT  # (S, D)
    Q, R = p.Q, p.R  # (b, ., .)
    m = p.m0.squeeze(-1)  # (N, S)
    P = p.P0
    pm, pP, fm, fP = [], [], [], []
    es, Ls, infos = [], [], []
    rows = p.rm.squeeze(-1)  # (N, T, D)
    ys = p.y.squeeze(-1).unbind(1)
    Bus = p.Bu.squeeze(-1).unbind(1) if p.Bu is not None else None
    rs = rows.unbind(1)
    for t in range(T):
        if t > 0:
            m = m @ At
            if Bus is not None:
                m = m + Bus[t]
            X = _rmul(P, At)  # P A^T
            P = symmetrize(_rmul(X.mT, At).mT + Q)  # A P A^T + Q
        if store:
            pm.append(m)
            pP.append(P)
        if p.frame_empty[t]:
            if store:
                fm.append(m)
                fP.append(P)
            continue
        X = _rmul(P, Ct)  # P C^T  (N, S, D)
        CP = X.mT  # (N, D, S)
        Sm = _rmul(CP, Ct) + R  # C P C^T + R (symmetric up to rounding)
        resid = ys[t] - m @ Ct  # (N, D)
        if not p.frame_full[t]:
            r = rs[t]
            CP = CP * r.unsqueeze(-1)
            Sm = Sm * (r.unsqueeze(-1) * r.unsqueeze(-2)) + torch.diag_embed(1.0 - r)
            resid = resid * r
        L, info = torch.linalg.cholesky_ex(Sm)
        sol = torch.linalg.solve_triangular(L, torch.cat([CP, resid.unsqueeze(-1)], dim=-1), upper=False)
        W, e = sol[..., :S], sol[..., S:]
        m = m + (W * e).sum(-2)
        P = symmetrize(torch.baddbmm(P, W.mT, W, alpha=-1.0))
        es.append(e)
        Ls.append(L)
        infos.append(info)
        if store:
            fm.append(m)
            fP.append(P)
    return _finish_forward(p, store, pm, pP, fm, fP, es, Ls, infos, squeeze=False)




# --------------------------------------------------------------------------
# time-parallel (associative scan) filter
# --------------------------------------------------------------------------


def _associative_scan(fn, elems: tuple, dim: int = 1) -> tuple:
    """Inclusive scan of an associative ``fn`` over ``dim`` (odd/even recursion).

    ``elems`` is a tuple of tensors sharing the scanned dimension; ``fn(a, b)``
    combines earlier ``a`` with later ``b`` elementwise along it.
    Depth :math:`O(\\log T)`, work :math:`O(T)`.
    """
    n = elems[0].shape[dim]
    if n < 2:
        return elems

    def sl(xs, start, stop=None, step=None):
        index = (slice(None),) * dim + (slice(start, stop, step),)
        return tuple(x[index] for x in xs)

    reduced = fn(sl(elems, 0, -1, 2), sl(elems, 1, None, 2))
    odd = _associative_scan(fn, reduced, dim)
    if n % 2 == 0:
        even = fn(sl(odd, 0, -1), sl(elems, 2, None, 2))
    else:
        even = fn(odd, sl(elems, 2, None, 2))
    even = tuple(torch.cat([e0, e], dim=dim) for e0, e in zip(sl(elems, 0, 1), even))
    out = []
    for e, o in zip(even, odd):
        if e.shape[dim] == o.shape[dim]:
            inter = torch.stack([e, o], dim=dim + 1).flatten(dim, dim + 1)
        else:  # one more even element than odd ones
            inter = torch.stack([e.narrow(dim, 0, o.shape[dim]), o], dim=dim + 1).flatten(dim, dim + 1)
            inter = torch.cat([inter, e.narrow(dim, e.shape[dim] - 1, 1)], dim=dim)
        out.append(inter)
    return tuple(out)


def _affine_combine(ea: tuple, eb: tuple) -> tuple:
    r"""Compose row-vector affine maps :math:`x \mapsto x F + g`: ``a`` first, then ``b``."""
    Fa, ga = ea
    Fb, gb = eb
    return Fa @ Fb, ga @ Fb + gb


def _smooth_combine(ea: tuple, eb: tuple) -> tuple:
    r"""Compose smoother maps: ``a`` (applied first) then ``b``.

    A map is :math:`(G, C, b)`: means :math:`m \mapsto m G^\top + b`, covariances
    :math:`P \mapsto G P G^\top + C`; then ``b o a`` is
    :math:`(G_b G_a,\; G_b C_a G_b^\top + C_b,\; b_a G_b^\top + b_b)`.
    """
    Ga, Ca, ba = ea
    Gb, Cb, bb = eb
    return Gb @ Ga, Gb @ Ca @ Gb.mT + Cb, ba @ Gb.mT + bb


def _filter_combine(ei: tuple, ej: tuple) -> tuple:
    r"""Combine filtering elements :math:`(A, b, C, \eta, J)` (earlier ``ei``, later ``ej``)."""
    Ai, bi, Ci, ei_, Ji = ei
    Aj, bj, Cj, ej_, Jj = ej
    S = Ai.shape[-1]
    eye = torch.eye(S, dtype=Ai.dtype, device=Ai.device)
    Mm = eye + Ci @ Jj  # (I + C_i J_j); its transpose is (I + J_j C_i)
    LU, piv = torch.linalg.lu_factor(Mm)
    X = torch.linalg.lu_solve(LU, piv, torch.cat([Ai, bi + Ci @ ej_, Ci], dim=-1))
    AX = Aj @ X
    A = AX[..., :S]
    b = AX[..., S : S + 1] + bj
    C = symmetrize(AX[..., S + 1 :] @ Aj.mT + Cj)
    Y = torch.linalg.lu_solve(LU, piv, torch.cat([ej_ - Jj @ bi, Jj @ Ai], dim=-1), adjoint=True)
    AtY = Ai.mT @ Y
    eta = AtY[..., :1] + ei_
    J = symmetrize(AtY[..., 1:] + Ji)
    return A, b, C, eta, J


def _masked_emissions(p: _Prepared):
    """Per-frame masked emission matrices ``(N, T, D, S)`` and noise ``(N, T, D, D)``."""
    N, S = p.N, p.S
    D = p.C.shape[-2]
    C = p.C.expand(N, D, S).unsqueeze(1)
    R = p.R.expand(N, D, D).unsqueeze(1)
    if all(p.frame_full):
        return C, R
    r = p.rm
    eye_D = torch.eye(D, dtype=r.dtype, device=r.device)
    return C * r, R * (r * r.mT) + eye_D * (1.0 - r)


def _parallel_forward(p: _Prepared):
    N, T, S = p.N, p.T, p.S
    A = p.A.expand(N, S, S).unsqueeze(1)  # (N, 1, S, S)
    Q = p.Q.expand(N, S, S).unsqueeze(1)
    H, R = _masked_emissions(p)  # (N, T|1, D, S), (N, T|1, D, D)
    y = p.y  # (N, T, D, 1)
    m0, P0 = p.m0.unsqueeze(1), p.P0.unsqueeze(1)  # (N, 1, S, 1), (N, 1, S, S)
    # prior moments before each frame's update: (m0, P0) for t = 1, (B u_t, Q) after
    u = p.Bu[:, 1:] if p.Bu is not None else torch.zeros_like(y[:, 1:, :1, :]).expand(N, T - 1, S, 1)
    prior_m = torch.cat([m0, u], dim=1)  # (N, T, S, 1)
    prior_P = torch.cat([P0, Q.expand(N, T - 1, S, S)], dim=1)  # (N, T, S, S)
    HP = H @ prior_P  # (N, T, D, S)
    Sm = HP @ H.mT + R
    L, info = torch.linalg.cholesky_ex(Sm)
    if bool(info.ne(0).any()):
        raise ValueError("innovation covariance C P C^T + R is not positive definite (Cholesky failed)")
    resid = y - H @ prior_m
    HA = (H @ A).expand(N, T, -1, S)
    sol = torch.linalg.solve_triangular(L, torch.cat([HP, resid, HA], dim=-1), upper=False)
    W, e, V = sol[..., :S], sol[..., S : S + 1], sol[..., S + 1 :]
    Wt = W.mT
    b = prior_m + Wt @ e
    Cc = symmetrize(prior_P - Wt @ W)
    eye = torch.eye(S, dtype=y.dtype, device=y.device)
    KH = Wt @ torch.linalg.solve_triangular(L, H, upper=False).expand(N, T, -1, S)  # K H = P H^T S^{-1} H
    Ael = (eye - KH) @ A
    eta = V.mT @ e
    J = V.mT @ V
    # the first element conditions on the prior, not on a previous state
    first = torch.zeros(N, T, 1, 1, dtype=y.dtype, device=y.device)
    first[:, 0] = 1.0
    keep = 1.0 - first
    Ael, eta, J = Ael * keep, eta * keep, J * keep
    _, fm, fP, _, _ = _associative_scan(_filter_combine, (Ael, b, Cc, eta, J), dim=1)
    # predictions and log-likelihood, vectorised over time
    pm = torch.cat([m0, A @ fm[:, :-1] + (u if p.Bu is not None else 0.0)], dim=1)
    pP = torch.cat([P0, symmetrize(A @ fP[:, :-1] @ A.mT + Q)], dim=1)
    Sp = H @ pP @ H.mT + R
    Lp, info = torch.linalg.cholesky_ex(Sp)
    if bool(info.ne(0).any()):
        raise ValueError("innovation covariance C P C^T + R is not positive definite (Cholesky failed)")
    ep = torch.linalg.solve_triangular(Lp, y - H @ pm, upper=False)
    ll = (
        -0.5 * ep.square().sum(dim=(1, 2, 3))
        - Lp.diagonal(dim1=-2, dim2=-1).log().sum(dim=(1, 2))
        - 0.5 * _LOG_2PI * p.num_obs
    )
    return pm.squeeze(-1), pP, fm.squeeze(-1), fP, ll


def parallel_kalman_filter(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> FilterResult:
    r"""Time-parallel Kalman filter (associative scan, Särkkä & García-Fernández 2021).

    Same inputs and outputs as :func:`kalman_filter`.  Each frame ``t``
    becomes an element :math:`(A_t, b_t, C_t, \eta_t, J_t)` with
    :math:`p(z_t \mid z_{t-1}, x_t) = \mathcal N(A_t z_{t-1} + b_t, C_t)` and
    :math:`p(x_t \mid z_{t-1}) \propto \mathcal N_I(z_{t-1}; \eta_t, J_t)`;
    an inclusive scan with the associative combination rule yields the
    filtered moments in :math:`O(\log T)` sequential depth.  Predictions and
    the log-likelihood are then computed for all frames at once.  Uses
    :math:`O(N T S^2)` memory and LU solves of :math:`(I + C_i J_j)`, so it is
    somewhat less accurate than the sequential filter in float32.

    Parameters
    ----------
    __COMMON_PARAMS__
    Returns
    -------
    FilterResult
        As :func:`kalman_filter`.
    """
    p = _prepare(params, obs, mask, controls, lengths)
    pm, pP, fm, fP, ll = _parallel_forward(p)
    return FilterResult(fm, fP, pm, pP, ll)


_AUTO_MIN_T = 256
_AUTO_MAX_STEP_WORK = 4096


def _choose_method(method: str, p: _Prepared) -> str:
    if method not in ("auto", "sequential", "parallel"):
        raise ValueError(f"method: expected 'auto', 'sequential' or 'parallel', got {method!r}")
    if method != "auto":
        return method
    D = p.C.shape[-2]
    if p.T >= _AUTO_MIN_T and p.N * (p.S + D) ** 2 <= _AUTO_MAX_STEP_WORK:
        return "parallel"
    return "sequential"


def _backward_gains(A: Tensor, fP: Tensor, pP: Tensor):
    """Vectorised smoother gains and backward conditional covariances.

    Returns ``G`` ``(N, T-1, S, S)`` with :math:`G_t = P_t A^\\top (P^p_{t+1})^{-1}`
    and ``Cond`` ``(N, T-1, S, S)`` = :math:`\\mathrm{Cov}[z_t | z_{t+1}, x_{1:t}]`
    :math:`= P_t - G_t P^p_{t+1} G_t^\\top`.
    """
    Pf = fP[:, :-1]
    Pp = pP[:, 1:]
    Lp, info = torch.linalg.cholesky_ex(Pp)
    if bool(info.ne(0).any()):
        raise ValueError("predicted covariance A P A^T + Q is not positive definite (Cholesky failed)")
    AP = A.unsqueeze(1) @ Pf  # (N, T-1, S, S)
    V = torch.linalg.solve_triangular(Lp, AP, upper=False)  # Lp^{-1} A P_t
    Gt = torch.linalg.solve_triangular(Lp.mT, V, upper=True)  # Pp^{-1} A P_t = G^T
    G = Gt.mT
    Cond = symmetrize(Pf - V.mT @ V)
    return G, Cond


def _psd_cholesky(M: Tensor) -> Tensor:
    """Cholesky of PSD matrices, adding growing jitter where needed."""
    L, info = torch.linalg.cholesky_ex(M)
    if not bool(info.ne(0).any()):
        return L
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    scale = M.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(
        torch.finfo(M.dtype).tiny
    )
    eps = torch.finfo(M.dtype).eps
    for k in range(1, 8):
        L2, info2 = torch.linalg.cholesky_ex(M + (eps * 10.0**k) * scale * eye)
        bad = info.ne(0).unsqueeze(-1).unsqueeze(-1)
        L = torch.where(bad, L2, L)
        info = torch.where(info.ne(0), info2, info)
        if not bool(info.ne(0).any()):
            return L
    raise ValueError("backward conditional covariance is not positive semi-definite")


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


_COMMON_PARAMS_DOC = """
    params : LinearGaussianParams
        Model parameters (shared ``(S, S)`` or per-sequence ``(N, S, S)``).
    obs : Tensor or sequence or mapping of Tensor
        ``obs[m]`` of shape ``(N, T, D_m)``. Masked entries may be NaN.
    mask : Tensor or sequence or mapping of Tensor, optional
        ``mask[m]`` bool ``(N, T)``, True = observed; one ``(N, T)`` tensor
        applies to all modalities; ``None`` = everything observed.
    controls : Tensor, optional
        ``(N, T, U)`` controls :math:`u_t`; ``controls[:, 0]`` is unused.
    lengths : Tensor, optional
        ``(N,)`` integer sequence lengths; frames ``t >= lengths[n]`` are
        treated as unobserved.
"""

_METHOD_DOC = """    method : {"auto", "sequential", "parallel"}
        ``"sequential"``: the Cholesky-form recursion (``T`` Python steps,
        most accurate).  ``"parallel"``: :func:`parallel_kalman_filter`
        (``O(log T)`` depth, ``O(N T S^2)`` memory).  ``"auto"`` (default)
        picks ``"parallel"`` for long sequences with little work per step
        (``T >= 256`` and ``N (S + D)^2 <= 4096``, ``D = sum_m D_m``), where
        ``benchmarks/lds_speed.py`` measured it 10-40x faster, and
        ``"sequential"`` otherwise (at N=64, T=500, S=6, D=10 with shared
        parameters and masks the sequential filter's shared covariance
        recursion takes ~0.035 s for log-likelihood + gradient).
"""



def kalman_filter(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    method: str = "auto",
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
    __COMMON_PARAMS__
    __METHOD__
    Returns
    -------
    FilterResult
        ``means`` ``(N, T, S)``, ``covs`` ``(N, T, S, S)``,
        ``predicted_means`` ``(N, T, S)``, ``predicted_covs`` ``(N, T, S, S)``,
        ``log_likelihood`` ``(N,)``.  Differentiable w.r.t. all tensors.

    Raises
    ------
    ValueError
        On malformed shapes, or if a covariance is not positive definite.
    """
    p = _prepare(params, obs, mask, controls, lengths)
    if _choose_method(method, p) == "parallel":
        pm, pP, fm, fP, ll = _parallel_forward(p)
    else:
        pm, pP, fm, fP, ll = _forward(p, store=True)
        pP, fP = _expand_batch(pP, p.N), _expand_batch(fP, p.N)
    return FilterResult(fm, fP, pm, pP, ll)


def kalman_log_likelihood(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    method: str = "auto",
) -> Tensor:
    r"""Marginal log-likelihood :math:`\log p(x^{obs}_{1:T})` per sequence.

    Same computation as :func:`kalman_filter` without storing the moments.

    Parameters
    ----------
    __COMMON_PARAMS__
    __METHOD__
    Returns
    -------
    Tensor
        ``(N,)`` log-likelihoods, differentiable w.r.t. parameters and
        observed entries (masked entries get zero gradient).
    """
    p = _prepare(params, obs, mask, controls, lengths)
    if _choose_method(method, p) == "parallel":
        return _parallel_forward(p)[-1]
    return _forward(p, store=False)[-1]


def _expand_batch(x: Tensor, N: int) -> Tensor:
    """A covariance stack shared by the batch (leading dim 1) seen by ``N`` sequences: an
    expanded view (no copy: read-only use; ``.clone()`` it before writing in place)."""
    if x.shape[0] == N:
        return x
    return x.expand(N, *x.shape[1:])


def _smooth_from_filter(A: Tensor, filt: FilterResult) -> SmootherResult:
    """RTS pass.  Covariances may have batch size 1 (shared by the ``N`` sequences,
    see :func:`_forward_shared_cov`): then the covariance recursion runs once and
    the means take one batched GEMM per frame."""
    fm, fP, pm, pP, ll = filt.means, filt.covs, filt.predicted_means, filt.predicted_covs, filt.log_likelihood
    N, T, S = fm.shape
    if T == 1:
        return SmootherResult(fm, _expand_batch(fP, N), fm.new_zeros(N, 0, S, S), ll)
    G, Cond = _backward_gains(A, fP, pP)
    if fP.shape[0] == 1 and G.shape[0] == 1:
        # means: m^s_t = (m_t - G_t m^p_{t+1}) + m^s_{t+1} G_t^T, rows are sequences
        G1 = G[0]
        base = (fm[:, :-1] - (pm[:, 1:].unsqueeze(-2) @ G1.mT).squeeze(-2)).transpose(0, 1)  # (T-1, N, S)
        # Both backward recursions are affine maps of the later smoothed value,
        # m -> m G_t^T + base_t and P -> G_t P G_t^T + Cond_t, so all of them follow from an
        # associative scan over their compositions (depth O(log T), no per-frame Python loop),
        # applied to the last filtered moments. Reversed so the scan runs from t = T-2 down to 0.
        elems = (G1.flip(0), Cond[0].flip(0), base.flip(0))
        Gc, Cc, bc = _associative_scan(_smooth_combine, elems, dim=0)
        ms_last, Ps_last = fm[:, -1], fP[0, -1]
        ms = (ms_last.unsqueeze(0) @ Gc.mT + bc).flip(0)  # (T-1, N, S) for t = 0..T-2
        Ps = symmetrize(Gc @ Ps_last @ Gc.mT + Cc).flip(0)  # (T-1, S, S)
        means = torch.cat([ms.transpose(0, 1), ms_last.unsqueeze(1)], dim=1)
        covs = torch.cat([Ps, Ps_last.unsqueeze(0)], dim=0)
        cross = covs[1:] @ G1.mT
        return SmootherResult(means, _expand_batch(covs.unsqueeze(0), N), _expand_batch(cross.unsqueeze(0), N), ll)
    fP, pP = _expand_batch(fP, N), _expand_batch(pP, N)
    G, Cond = _expand_batch(G, N), _expand_batch(Cond, N)
    ms = fm[:, -1].unsqueeze(-1)
    Ps = fP[:, -1]
    means = [ms]
    covs = [Ps]
    fm_c = fm.unsqueeze(-1)
    pm_c = pm.unsqueeze(-1)
    Gs, Conds, fms, pms = G.unbind(1), Cond.unbind(1), fm_c.unbind(1), pm_c.unbind(1)
    with _cpu_single_thread(fm.device, N * S * S):
        for t in range(T - 2, -1, -1):
            Gt = Gs[t]
            ms = torch.baddbmm(fms[t], Gt, ms - pms[t + 1])
            Ps = symmetrize(torch.baddbmm(Conds[t], Gt @ Ps, Gt.mT))
            means.append(ms)
            covs.append(Ps)
    means = torch.stack(means[::-1], dim=1).squeeze(-1)
    covs = torch.stack(covs[::-1], dim=1)
    cross = covs[:, 1:] @ G.mT
    return SmootherResult(means, covs, cross, ll)


def rts_smoother(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> SmootherResult:
    r"""Rauch-Tung-Striebel smoother with per-modality missing data.

    With :math:`G_t = P_t A^\top (P^p_{t+1})^{-1}`:

    .. math::

        m^s_t &= m_t + G_t (m^s_{t+1} - m^p_{t+1}), \\
        P^s_t &= (P_t - G_t P^p_{t+1} G_t^\top) + G_t P^s_{t+1} G_t^\top, \\
        \mathrm{Cov}[z_{t+1}, z_t \mid x] &= P^s_{t+1} G_t^\top.

    Parameters
    ----------
    __COMMON_PARAMS__
    Returns
    -------
    SmootherResult
        ``means`` ``(N, T, S)``, ``covs`` ``(N, T, S, S)``,
        ``cross_covs`` ``(N, T-1, S, S)`` with ``cross_covs[:, t]`` =
        :math:`\mathrm{Cov}[z_{t+1}, z_t \mid x]`, ``log_likelihood`` ``(N,)``.
    """
    p = _prepare(params, obs, mask, controls, lengths)
    pm, pP, fm, fP, ll = _forward(p, store=True)
    return _smooth_from_filter(p.A, FilterResult(fm, fP, pm, pP, ll))


def ffbs_sample(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    *,
    num_samples: int = 1,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Forward-filter backward-sample draws from :math:`p(z_{1:T} \mid x^{obs})`.

    :math:`z_T \sim \mathcal N(m_T, P_T)`, then for :math:`t = T-1..1`:
    :math:`z_t \mid z_{t+1} \sim \mathcal N(m_t + G_t (z_{t+1} - m^p_{t+1}),
    P_t - G_t P^p_{t+1} G_t^\top)`.  Reparameterised (differentiable w.r.t.
    the parameters for fixed noise).

    Parameters
    ----------
    __COMMON_PARAMS__
    num_samples : int
        Number of joint draws ``K``.
    generator : torch.Generator, optional
        Source of the standard-normal noise (on the inputs' device).

    Returns
    -------
    Tensor
        ``(K, N, T, S)`` samples.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    p = _prepare(params, obs, mask, controls, lengths)
    pm, pP, fm, fP, ll = _forward(p, store=True)
    N, T, S = fm.shape
    eps = torch.randn(
        (num_samples, N, T, S, 1), generator=generator, dtype=fm.dtype, device=fm.device
    )
    LT = _psd_cholesky(fP[:, -1])
    z = fm[:, -1].unsqueeze(-1) + LT @ eps[:, :, -1]
    out = [z]
    if T > 1:
        G, Cond = _backward_gains(p.A, fP, pP)
        Lc = _psd_cholesky(Cond)
        # z-independent part of the conditional mean: m_t - G_t m^p_{t+1}
        base = fm[:, :-1].unsqueeze(-1) - G @ pm[:, 1:].unsqueeze(-1)
        noise = Lc @ eps[:, :, :-1]  # (K, N, T-1, S, 1)
        mean_part = base.unsqueeze(0) + noise
        parts, Gs = mean_part.unbind(2), G.unbind(1)
        with _cpu_single_thread(fm.device, num_samples * N * S):
            for t in range(T - 2, -1, -1):
                z = parts[t] + Gs[t] @ z
                out.append(z)
    return torch.stack(out[::-1], dim=2).squeeze(-1)


def _fill_docs(*fns) -> None:
    for fn in fns:
        fn.__doc__ = (
            fn.__doc__.replace("    __COMMON_PARAMS__\n", _COMMON_PARAMS_DOC.lstrip("\n"))
            .replace("    __METHOD__\n", _METHOD_DOC + "\n")
        )


_fill_docs(kalman_filter, kalman_log_likelihood, rts_smoother, ffbs_sample, parallel_kalman_filter)
