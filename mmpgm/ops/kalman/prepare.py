r"""Validation and stacking of the inputs of :mod:`mmpgm.ops.kalman`.

:func:`prepare` turns parameters, per-modality observations, masks, controls and lengths into one
:class:`Prepared` bundle: the modalities stacked (``C`` ``(b, D, S)``, ``R`` block diagonal
``(b, D, D)``, ``D = sum_m D_m``), observations minus offsets with masked entries set to zero,
and a per-row observation mask.  ``b`` is 1 for parameters shared by the batch, ``N`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._threads import run_chunks, sequence_chunks
from ..linalg import symmetrize
from .types import LinearGaussianParams, MaskType, ObsType

__all__ = [
    "Prepared",
    "prepare",
    "sequence_slice",
    "split_sequences",
    "join_sequences",
    "records_grad",
    "SPLIT_MIN_WORK",
]


class Prepared(NamedTuple):
    """Stacked, validated inputs (``b`` is 1 or ``N``; every tensor is of one dtype/device)."""

    N: int
    T: int
    S: int
    m0: Tensor  # (N, S, 1) prior mean (possibly an expanded view)
    P0: Tensor  # (N, S, S) prior covariance (an expanded view when shared: stride 0)
    A: Tensor  # (b, S, S)
    Q: Tensor  # (b, S, S)
    C: Tensor  # (b, D, S)  all modalities stacked
    R: Tensor  # (b, D, D)  block diagonal
    y: Tensor  # (N, T, D, 1)  (x - d), zero where masked
    rm: Tensor  # (N, T, D, 1)  row mask as 0/1 floats
    Bu: Optional[Tensor]  # (N, T, S, 1) control input B u_t, or None
    frame_full: list  # per t: every row of every sequence observed
    frame_empty: list  # per t: nothing observed in the whole batch
    num_obs: Tensor  # (N,) number of observed scalar entries
    dims: tuple = ()  # (D_1, .., D_M): the modality blocks of the stacked rows (masked together)


def _shape_error(name: str, expected: str, got) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {tuple(got)}")


def _as_batched(x: Tensor, name: str, core: tuple, N: Optional[int]) -> Tensor:
    """Return ``x`` with a leading batch dim of size 1 or N; validate shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    k = len(core)
    if x.dim() == k:
        ok = all(c is None or s == c for s, c in zip(x.shape, core, strict=True))
        if ok:
            return x.unsqueeze(0)
    elif x.dim() == k + 1:
        ok = all(c is None or s == c for s, c in zip(x.shape[1:], core, strict=True))
        if ok and (N is None or x.shape[0] in (1, N)):
            return x
    dims = ", ".join("?" if c is None else str(c) for c in core)
    exp = f"({dims}{',' if k == 1 else ''}) or ({N}, {dims})"
    raise _shape_error(name, exp, x.shape)


def _modalities(obj, keys, name: str, allow_none: bool = False) -> list:
    """Turn a tensor / sequence / mapping of per-modality items into a list ordered by
    ``keys``."""
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


def _modality_keys(params: LinearGaussianParams, obs: ObsType) -> list:
    """Keys of a mapping of emission matrices, else of a mapping of observations, else
    positions."""
    emis = params.emission_matrices
    if isinstance(emis, Tensor):
        return [0]
    if isinstance(emis, Mapping):
        return list(emis.keys())
    if isinstance(obs, Mapping):
        return list(obs.keys())
    return list(range(len(emis)))


def _common_dtype(tensors: list) -> torch.dtype:
    floats = [t for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]
    if not floats:
        return torch.get_default_dtype()
    dtype = floats[0].dtype
    for tns in floats[1:]:
        dtype = torch.promote_types(dtype, tns.dtype)
    return dtype


def _row_masks(mask_list, keys, lengths, N: int, T: int, device) -> list:
    """Per-modality bool masks ``(N, T)``, and-ed with the length mask."""
    len_mask = None
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=device)
        if lengths.shape != (N,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError(
                f"lengths: expected integer tensor of shape ({N},), "
                f"got {tuple(lengths.shape)} {lengths.dtype}"
            )
        if bool((lengths < 0).any()) or bool((lengths > T).any()):
            raise ValueError(
                f"lengths: expected values in [0, {T}], "
                f"got min {int(lengths.min())}, max {int(lengths.max())}"
            )
        len_mask = torch.arange(T, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    out = []
    for key, mk in zip(keys, mask_list, strict=True):
        if mk is None:
            mk = torch.ones(N, T, dtype=torch.bool, device=device)
        else:
            if not isinstance(mk, Tensor) or mk.shape != (N, T):
                got = mk.shape if isinstance(mk, Tensor) else (type(mk).__name__,)
                raise _shape_error(f"mask[{key!r}]", f"({N}, {T}) bool", got)
            if mk.dtype != torch.bool:
                raise ValueError(f"mask[{key!r}]: expected dtype torch.bool, got {mk.dtype}")
            mk = mk.to(device)
        out.append(mk if len_mask is None else mk & len_mask)
    return out


def prepare(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> Prepared:
    """Validate and stack the inputs of the public functions (see their docstrings).

    Raises
    ------
    ValueError
        Naming the argument, the expected shape or type, and what was received.
    """
    if not isinstance(params, LinearGaussianParams):
        raise ValueError(f"params: expected LinearGaussianParams, got {type(params).__name__}")
    keys = _modality_keys(params, obs)
    M = len(keys)
    if M == 0:
        raise ValueError("params.emission_matrices: expected at least one modality, got 0")
    emis = params.emission_matrices
    C_list = _modalities(emis, keys, "params.emission_matrices")
    obs_list = _modalities(obs, keys, "obs")
    d_list = _modalities(params.emission_offsets, keys, "params.emission_offsets", True)
    R_list = _modalities(params.emission_covs, keys, "params.emission_covs")
    if mask is None or isinstance(mask, Tensor):
        mask_list = [mask] * M
    else:
        mask_list = _modalities(mask, keys, "mask", allow_none=True)

    # batch / time sizes from observations
    for key, x in zip(keys, obs_list, strict=True):
        if not isinstance(x, Tensor) or x.dim() != 3:
            got = x.shape if isinstance(x, Tensor) else (type(x).__name__,)
            raise _shape_error(f"obs[{key!r}]", "(N, T, D_m)", got)
    N, T = obs_list[0].shape[:2]
    if T < 1:
        raise _shape_error("obs", "(N, T>=1, D_m)", obs_list[0].shape)
    for key, x in zip(keys, obs_list, strict=True):
        if x.shape[:2] != (N, T):
            raise _shape_error(f"obs[{key!r}]", f"({N}, {T}, D_m)", x.shape)

    # dtype / device
    names = ["initial_mean", "initial_cov", "transition_matrix", "transition_cov"]
    core4 = [getattr(params, n) for n in names]
    for name, tns in zip(names, core4, strict=True):
        if not isinstance(tns, Tensor):
            raise ValueError(f"params.{name}: expected a torch.Tensor, got {type(tns).__name__}")
    dtype = _common_dtype(core4 + C_list + R_list + [d for d in d_list if d is not None] + obs_list)
    device = obs_list[0].device

    def batched(x, name, core):
        return _as_batched(x, name, core, N).to(dtype=dtype, device=device)

    S = params.initial_mean.shape[-1] if params.initial_mean.dim() > 0 else -1
    if S < 1:
        raise _shape_error("params.initial_mean", "(S,) or (N, S)", params.initial_mean.shape)
    m0 = batched(params.initial_mean, "params.initial_mean", (S,))
    P0 = batched(params.initial_cov, "params.initial_cov", (S, S))
    A = batched(params.transition_matrix, "params.transition_matrix", (S, S))
    Q = batched(params.transition_cov, "params.transition_cov", (S, S))

    Cs, Rs, ds, dims = [], [], [], []
    for key, Cm, Rm, dm, x in zip(keys, C_list, R_list, d_list, obs_list, strict=True):
        Dm = x.shape[-1]
        dims.append(Dm)
        Cs.append(batched(Cm, f"params.emission_matrices[{key!r}]", (Dm, S)))
        Rs.append(batched(Rm, f"params.emission_covs[{key!r}]", (Dm, Dm)))
        ds.append(None if dm is None else batched(dm, f"params.emission_offsets[{key!r}]", (Dm,)))
    D = sum(dims)

    # batch of the stacked C and R (m0, P0, A, Q, d are handled apart)
    b = max(x.shape[0] for x in Cs + Rs)
    C = torch.cat([c.expand(b, -1, -1) for c in Cs], dim=1) if M > 1 else Cs[0]
    if M > 1:
        R = torch.zeros(b, D, D, dtype=dtype, device=device)
        o = 0
        for Rm, Dm in zip(Rs, dims, strict=True):
            R[:, o : o + Dm, o : o + Dm] = Rm.expand(b, -1, -1)
            o += Dm
    else:
        R = Rs[0]
    # covariance parameters enter only through their symmetric part, so that
    # gradients w.r.t. them are symmetric
    R = symmetrize(R)

    # masks and masked observations
    if lengths is None and all(mk is None for mk in mask_list):
        # everything observed: no masking passes over the (N, T, D) stack
        recorded = torch.is_grad_enabled() and any(
            x.requires_grad for x in obs_list + [d for d in ds if d is not None]
        )
        if recorded or (M == 1 and ds[0] is None):
            y = torch.cat(obs_list, -1) if M > 1 else obs_list[0]
            y = y.to(dtype=dtype, device=device)
            if any(d is not None for d in ds):
                offsets = [
                    y.new_zeros(1, Dm) if d is None else d for d, Dm in zip(ds, dims, strict=True)
                ]
                b_d = max(o.shape[0] for o in offsets)
                y = y - torch.cat([o.expand(b_d, -1) for o in offsets], -1).unsqueeze(1)
        else:  # one pass: each modality minus its offset written into its columns
            y = torch.empty(N, T, D, dtype=dtype, device=device)
            o = 0
            for x, dm, Dm in zip(obs_list, ds, dims, strict=True):
                if dm is None:
                    y[..., o : o + Dm].copy_(x)
                else:
                    torch.sub(x.to(device), dm.unsqueeze(1), out=y[..., o : o + Dm])
                o += Dm
        y = y.unsqueeze(-1)
        rm = torch.ones((), dtype=dtype, device=device).expand(N, T, D, 1)
        frame_full, frame_empty = [True] * T, [False] * T
        num_obs = torch.full((N,), float(T * D), dtype=dtype, device=device)
    else:
        rows, ys = [], []
        zero = torch.zeros((), dtype=dtype, device=device)
        for mk, x, dm, Dm in zip(
            _row_masks(mask_list, keys, lengths, N, T, device), obs_list, ds, dims, strict=True
        ):
            mk3 = mk.unsqueeze(-1)
            x = torch.where(mk3, x.to(dtype=dtype, device=device), zero)
            if dm is not None:
                x = x - dm.unsqueeze(1)
            ys.append(x * mk3.to(dtype))
            rows.append(mk3.expand(N, T, Dm))
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
        Bm = batched(params.control_matrix, "params.control_matrix", (S, U))
        Bu = Bm.unsqueeze(1) @ controls.to(dtype=dtype, device=device).unsqueeze(-1)
        Bu = Bu.expand(N, T, S, 1)

    return Prepared(
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
        dims=tuple(dims),
    )


_SEQUENCE_FIELDS = ("m0", "P0", "A", "Q", "C", "R", "y", "rm", "Bu", "num_obs")


def sequence_slice(p: Prepared, a: int, b: int) -> Prepared:
    """The inputs of sequences ``a .. b - 1`` (views; tensors shared by the batch stay whole).

    ``frame_full`` / ``frame_empty`` keep the whole batch's flags, which stay true of the part
    (a frame full or empty in every sequence is so in each); a frame that is full in the part
    only is then run as partially observed, with the same result."""
    if (a, b) == (0, p.N):
        return p

    def cut(x):
        return x if x is None or x.shape[0] != p.N else x[a:b]

    return p._replace(N=b - a, **{f: cut(getattr(p, f)) for f in _SEQUENCE_FIELDS})


SPLIT_MIN_WORK = 1 << 23
"""Smallest ``N T S^2`` for which :func:`split_sequences` splits a batch. Its threads' frame loops
of small ops contend for the GIL, so only the whole-stack passes gain: measured with
``benchmarks/lds_speed.py`` (``mmpgm_smooth``, 2 cores), config B (``1.2e6``) ran 2x slower split
and B10k (``2.3e7``) 1.4x faster."""


def records_grad(p: Prepared) -> bool:
    """Whether autograd records operations on the inputs ``p``."""
    tensors = (p.m0, p.P0, p.A, p.Q, p.C, p.R, p.y, p.Bu)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def split_sequences(p: Prepared, fn) -> list:
    """``[fn(part) for part in parts of the batch]``: one part (the whole batch) unless autograd
    records nothing and the CPU has threads to spare (:func:`~mmpgm.ops._threads.sequence_chunks`),
    then one part of the sequences a thread, run concurrently."""
    work = p.N * p.T * p.S**2
    chunks = (
        [(0, p.N)] if records_grad(p) else sequence_chunks(p.N, work, p.y.device, SPLIT_MIN_WORK)
    )
    return run_chunks(lambda a, b: fn(sequence_slice(p, a, b)), chunks)


def join_sequences(
    parts: list, N: int, shared_covariance: bool = False, expand: bool = False
) -> tuple:
    """Per-part result tuples (means ``(n, T, S)``, covariances ``(b, T, S, S)``, log-likelihoods
    ``(n,)``, ``None``) joined along the batch of ``N`` sequences. With ``shared_covariance``
    (``share="covariance"``) the covariances do not depend on the observations and are the same
    in every part: the first part's at batch size 1, or seen by all ``N`` (``expand``: an
    expanded view); everything else concatenates."""
    if len(parts) == 1:
        return tuple(parts[0])
    out = []
    for xs in zip(*parts, strict=True):
        x = xs[0]
        if x is None:
            out.append(None)
        elif shared_covariance and x.dim() == 4:
            out.append(x[:1].expand(N, *x.shape[1:]) if expand else x[:1])
        else:
            out.append(torch.cat(xs, 0))
    return tuple(out)
