"""The multimodal sequence container shared by every model.

A dataset is ``num_sequences`` synchronized sequences of ``num_timesteps`` frames; each
modality ``m`` contributes an ``obs_dim_m``-dimensional vector per frame. Ragged sequences are
padded, and a per-modality boolean mask says which frames were observed, so a frame can be
missing in one stream and present in another.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from ._validation import check_int, check_output_path, check_path

__all__ = ["MultimodalData"]


def _as_tensor(value, name: str, dtype=None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if dtype is None else value.to(dtype)
    if isinstance(value, (np.ndarray, list, tuple)) and not isinstance(value, str):
        try:
            arr = np.asarray(value)
        except ValueError as e:
            raise ValueError(f"{name}: could not make an array ({e})") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.as_tensor(arr)
        return t if dtype is None else t.to(dtype)
    raise TypeError(
        f"{name}: expected a torch.Tensor, a numpy array or a list, got {type(value).__name__}"
    )


def _pad_ragged(seqs: Sequence, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a list of ``(T_i, D)`` arrays into ``(N, max T_i, D)`` padded with NaN."""
    if len(seqs) == 0:
        raise ValueError(f"obs[{name!r}]: expected at least one sequence, got an empty list")
    tensors = []
    for i, s in enumerate(seqs):
        t = _as_tensor(s, f"obs[{name!r}][{i}]")
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2:
            raise ValueError(
                f"obs[{name!r}][{i}]: expected a (T_i, obs_dim) array, got shape {tuple(t.shape)}"
            )
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"obs[{name!r}][{i}]: expected a real numeric array, got {t.dtype}")
        tensors.append(t)
    dims = {t.shape[1] for t in tensors}
    if len(dims) != 1:
        raise ValueError(
            f"obs[{name!r}]: all sequences must share obs_dim, got dims {sorted(dims)}"
        )
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    dtype = tensors[0].dtype if tensors[0].is_floating_point() else torch.get_default_dtype()
    out = torch.full((len(tensors), int(lengths.max()), tensors[0].shape[1]), math.nan, dtype=dtype)
    for i, t in enumerate(tensors):
        f = t.to(dtype)
        if not t.is_floating_point():  # integer data: negative = missing, as for a padded array
            f = torch.where(t < 0, torch.full_like(f, math.nan), f)
        out[i, : t.shape[0]] = f
    return out, lengths


class MultimodalData:
    """Synchronized multimodal sequences with lengths, per-modality masks and labels.

    Parameters
    ----------
    obs : Mapping[str, Tensor | ndarray | list of arrays]
        Modality name -> ``(num_sequences, num_timesteps, obs_dim)`` float array, or a list of
        ragged ``(T_i, obs_dim)`` arrays (padded with NaN). NaN entries mean "missing": a frame
        with any NaN in modality ``m`` is treated as unobserved in ``m``. ``+/-inf`` is refused
        (``ValueError``: use NaN for missing values). Integer arrays (categorical modalities,
        ``obs_dim = 1``, values in ``0..C-1``; counts) are stored as floats of the default dtype,
        a negative value meaning a missing frame; half-precision floats are converted to the
        default dtype.
    lengths : array ``(num_sequences,)``, optional
        True lengths; frames at ``t >= lengths[n]`` are padding and never contribute. Default:
        ``num_timesteps`` (or the ragged lengths).
    mask : Mapping[str, bool array ``(num_sequences, num_timesteps)``], optional
        True = observed. Combined (logical and) with "inside lengths" and "not NaN".
    labels : Mapping[str, array], optional
        Per-sequence ``(num_sequences,)``, per-frame ``(num_sequences, num_timesteps)`` or
        per-frame vector/array labels ``(num_sequences, num_timesteps, ...)`` (e.g. a ratio mask
        ``(N, T, F)`` over ``F`` frequency bins, the target of
        ``GatedMixture(head="ratio_mask")``). Indexing, batches, :meth:`split`, :meth:`to` and
        :meth:`save` / :meth:`load` keep every trailing axis.
        A per-frame ``labels["shared"]`` (``-1`` = unknown) clamps the shared state of the
        multimodal HMM on the frames where it is given (semi-supervised fitting).
    meta : Mapping[str, object], optional
        Free-form metadata (JSON-serializable) kept through save/load with its types (strings,
        lists of strings, and any other JSON value).

    Attributes
    ----------
    obs : dict[str, Tensor]
        ``(N, T, D_m)``; missing entries keep their stored value (NaN or anything).
    mask : dict[str, Tensor]
        ``(N, T)`` bool, observed frames.
    lengths : Tensor
        ``(N,)`` int64.
    """

    def __init__(self, obs, lengths=None, mask=None, labels=None, meta=None):
        if not isinstance(obs, Mapping):
            raise TypeError(
                f"obs: expected a dict of modality name -> array, got {type(obs).__name__}"
            )
        if len(obs) == 0:
            raise ValueError("obs: expected at least one modality, got an empty dict")
        for name, value in (("mask", mask), ("labels", labels), ("meta", meta)):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(
                    f"{name}: expected a dict of name -> value or None, got {type(value).__name__}"
                )
        tensors: dict[str, torch.Tensor] = {}
        ragged_lengths = None
        for name, value in obs.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"obs: modality names must be str (non-empty), got {name!r}")
            if isinstance(value, (list, tuple)):
                t, ln = _pad_ragged(value, name)
                if ragged_lengths is not None and not torch.equal(ln, ragged_lengths):
                    raise ValueError(
                        f"obs[{name!r}]: ragged lengths {ln.tolist()} differ from other "
                        f"modalities' {ragged_lengths.tolist()}"
                    )
                ragged_lengths = ln
            else:
                t = _as_tensor(value, f"obs[{name!r}]")
            if t.dim() == 2:
                raise ValueError(
                    f"obs[{name!r}]: expected shape (num_sequences, num_timesteps, obs_dim), "
                    f"got {tuple(t.shape)}; add a trailing axis for a 1-dimensional stream"
                )
            if t.dim() != 3:
                raise ValueError(
                    f"obs[{name!r}]: expected shape (num_sequences, num_timesteps, obs_dim), "
                    f"got {tuple(t.shape)}"
                )
            if t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"obs[{name!r}]: expected a real numeric array, got {t.dtype}")
            if not t.is_floating_point():
                # integer data (categorical modalities, counts): stored as floats, negative = NaN
                f = t.to(torch.get_default_dtype())
                t = torch.where(t < 0, torch.full_like(f, math.nan), f)
            elif t.dtype in (torch.float16, torch.bfloat16):
                t = t.to(torch.get_default_dtype())  # half precision is too coarse to fit in
            if bool(torch.isinf(t).any()):
                where = torch.nonzero(torch.isinf(t).any(-1))[:5].tolist()
                raise ValueError(
                    f"obs[{name!r}]: expected finite values or NaN (missing), got "
                    f"{int(torch.isinf(t).sum())} entries that are +/-inf, first at "
                    f"(sequence, frame) {where}; replace them with NaN to mark them missing"
                )
            tensors[name] = t
        first = next(iter(tensors))
        N, T = tensors[first].shape[:2]
        for name, t in tensors.items():
            if t.shape[0] != N:
                raise ValueError(
                    f"obs[{name!r}]: num_sequences {t.shape[0]} differs from obs[{first!r}]'s {N}"
                )
            if t.shape[1] != T:
                raise ValueError(
                    f"obs[{name!r}]: num_timesteps {t.shape[1]} differs from "
                    f"obs[{first!r}]'s {T}; pad ragged sequences and pass lengths"
                )
        if N < 1 or T < 1:
            raise ValueError(
                f"obs: expected at least one sequence and one frame, got (N={N}, T={T})"
            )
        for name, t in tensors.items():
            if t.shape[2] < 1:
                raise ValueError(
                    f"obs[{name!r}]: expected obs_dim >= 1 (the last axis), got shape "
                    f"{tuple(t.shape)}"
                )

        if lengths is None:
            lengths = ragged_lengths if ragged_lengths is not None else torch.full((N,), T)
        lengths = _as_tensor(lengths, "lengths")
        if lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths: expected integers, got dtype {lengths.dtype}")
        if lengths.is_floating_point():
            if not torch.all(lengths == lengths.round()):
                raise TypeError(f"lengths: expected integers, got {lengths.tolist()}")
        lengths = lengths.to(torch.long)
        if lengths.shape != (N,):
            raise ValueError(f"lengths: expected shape ({N},), got {tuple(lengths.shape)}")
        if lengths.numel() and (lengths.min() < 1 or lengths.max() > T):
            raise ValueError(
                f"lengths: expected values in [1, num_timesteps={T}], got min {int(lengths.min())}"
                f" and max {int(lengths.max())}"
            )
        inside = torch.arange(T)[None, :] < lengths[:, None]

        masks: dict[str, torch.Tensor] = {}
        user_mask = {} if mask is None else dict(mask)
        for name in user_mask:
            if name not in tensors:
                raise ValueError(
                    f"mask: unknown modality {name!r}; modalities are {sorted(tensors)}"
                )
        for name, t in tensors.items():
            present = ~torch.isnan(t).any(-1)
            m = inside & present.cpu()
            if name in user_mask:
                um = _as_tensor(user_mask[name], f"mask[{name!r}]")
                if um.shape != (N, T):
                    raise ValueError(
                        f"mask[{name!r}]: expected shape ({N}, {T}), got {tuple(um.shape)}"
                    )
                if um.dtype != torch.bool and (
                    um.is_complex() or not bool(((um == 0) | (um == 1)).all())
                ):
                    raise ValueError(
                        f"mask[{name!r}]: expected booleans (or 0/1), got dtype {um.dtype} with "
                        f"other values"
                    )
                m = m & um.to(torch.bool).cpu()
            masks[name] = m.to(t.device)
        any_obs = torch.zeros(N, dtype=torch.bool)
        for m in masks.values():
            any_obs |= m.cpu().any(-1)
        if not bool(any_obs.all()):
            bad = torch.nonzero(~any_obs).flatten().tolist()
            raise ValueError(
                f"obs: sequences {bad[:10]} have no observed frame in any modality (all NaN or "
                "masked); drop them or give them at least one observed frame"
            )

        lab: dict[str, torch.Tensor] = {}
        for name, value in ({} if labels is None else dict(labels)).items():
            t = _as_tensor(value, f"labels[{name!r}]")
            if t.is_complex():
                raise TypeError(f"labels[{name!r}]: expected a real array, got {t.dtype}")
            if t.shape != (N,) and tuple(t.shape[:2]) != (N, T):
                raise ValueError(
                    f"labels[{name!r}]: expected shape ({N},), ({N}, {T}) or ({N}, {T}, ...), "
                    f"got {tuple(t.shape)}"
                )
            lab[name] = t
        self.obs = tensors
        self.mask = masks
        self.lengths = lengths.to(tensors[first].device)
        self.labels = lab
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ properties
    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.obs)

    @property
    def num_sequences(self) -> int:
        return next(iter(self.obs.values())).shape[0]

    @property
    def num_timesteps(self) -> int:
        return next(iter(self.obs.values())).shape[1]

    @property
    def obs_dims(self) -> dict[str, int]:
        return {k: v.shape[-1] for k, v in self.obs.items()}

    @property
    def device(self) -> torch.device:
        return next(iter(self.obs.values())).device

    @property
    def time_mask(self) -> torch.Tensor:
        """``(N, T)`` bool: frame inside the sequence's length."""
        T = self.num_timesteps
        return torch.arange(T, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def filled(self, modality: str, value: float = 0.0) -> torch.Tensor:
        """Observations of ``modality`` with unobserved frames replaced by ``value``."""
        if modality not in self.obs:
            raise ValueError(
                f"modality: unknown modality {modality!r}; modalities are {sorted(self.obs)}"
            )
        x = self.obs[modality]
        m = self.mask[modality]
        return torch.where(m[..., None], x, torch.as_tensor(value, dtype=x.dtype, device=x.device))

    def __len__(self) -> int:
        return self.num_sequences

    def __repr__(self) -> str:
        mods = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.obs.items())
        return (
            f"MultimodalData(num_sequences={self.num_sequences}, num_timesteps="
            f"{self.num_timesteps}, obs={{{mods}}}, labels={sorted(self.labels)})"
        )

    # ------------------------------------------------------------------ checks
    def check_modalities(self, obs_dims: Mapping[str, int]) -> None:
        """Raise if this data does not have exactly the modalities (and sizes) a model expects."""
        for name, dim in obs_dims.items():
            if name not in self.obs:
                raise ValueError(
                    f"data: the model expects modality {name!r}, which the data lacks "
                    f"(data has {sorted(self.obs)})"
                )
            if self.obs[name].shape[-1] != dim:
                raise ValueError(
                    f"data.obs[{name!r}]: the model expects obs_dim {dim}, got "
                    f"{self.obs[name].shape[-1]}"
                )
        for name in self.obs:
            if name not in obs_dims:
                raise ValueError(
                    f"data: unknown modality {name!r}; the model's modalities are "
                    f"{sorted(obs_dims)}"
                )

    # ------------------------------------------------------------------ moves, slicing
    def _replace(self, fn_obs, fn_aux) -> "MultimodalData":
        new = object.__new__(MultimodalData)
        new.obs = {k: fn_obs(v) for k, v in self.obs.items()}
        new.mask = {k: fn_aux(v) for k, v in self.mask.items()}
        new.lengths = fn_aux(self.lengths)
        new.labels = {k: fn_aux(v) for k, v in self.labels.items()}
        new.meta = dict(self.meta)
        return new

    def to(self, device=None, dtype=None) -> "MultimodalData":
        """Move to ``device``; cast floating observations to ``dtype``."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")

        def fo(v):
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device=device)

        return self._replace(fo, lambda v: v.to(device=device))

    def __getitem__(self, index) -> "MultimodalData":
        """Select sequences (int, slice, list or tensor of indices, or a bool mask of length
        ``num_sequences``); keeps the batch axis. An int out of range raises ``IndexError`` (so
        ``for seq in data`` stops), as do index arrays with entries out of range; an index of
        another kind ``TypeError``. As with Python slicing, a slice or an empty index array may
        select no sequence (an empty selection, e.g. one process's shard of a small data set)."""
        N = self.num_sequences
        if isinstance(index, bool) or (
            isinstance(index, torch.Tensor) and index.dim() == 0 and index.dtype == torch.bool
        ):
            raise TypeError(f"index: expected an int, a slice or an index array, got {index!r}")
        if isinstance(index, np.integer) or (
            isinstance(index, torch.Tensor) and index.dim() == 0 and not index.is_floating_point()
        ):
            index = int(index)
        if isinstance(index, int):
            if not -N <= index < N:
                raise IndexError(
                    f"index: expected a sequence index in [{-N}, {N - 1}], got {index}"
                )
            index = index % N
            index = slice(index, index + 1)
        elif not isinstance(index, slice):
            try:
                idx = _as_tensor(index, "index")
            except TypeError:
                raise TypeError(
                    f"index: expected an int, a slice or an index array, got "
                    f"{type(index).__name__}"
                ) from None
            if idx.numel() == 0 and idx.dim() == 1:
                idx = idx.long()  # [] reads as a float array
            if idx.dtype == torch.bool:
                if idx.shape != (N,):
                    raise ValueError(
                        f"index: expected a bool mask of shape ({N},), got {tuple(idx.shape)}"
                    )
            elif idx.is_floating_point() or idx.dim() != 1:
                raise TypeError(
                    f"index: expected a 1-D array of int sequence indices, got dtype {idx.dtype} "
                    f"and shape {tuple(idx.shape)}"
                )
            elif bool(((idx < -N) | (idx >= N)).any()):
                raise IndexError(
                    f"index: expected sequence indices in [{-N}, {N - 1}], got "
                    f"{idx[(idx < -N) | (idx >= N)].tolist()[:5]}"
                )
            index = idx

        def sel(v):
            idx = index.to(v.device) if isinstance(index, torch.Tensor) else index
            return v[idx]

        return self._replace(sel, sel)

    def batches(self, batch_size: int, shuffle: bool = False, generator=None) -> Iterator:
        """Iterate over ``MultimodalData`` minibatches of at most ``batch_size`` sequences."""
        check_int("batch_size", batch_size)
        N = self.num_sequences
        order = torch.randperm(N, generator=generator) if shuffle else torch.arange(N)
        for start in range(0, N, batch_size):
            yield self[order[start : start + batch_size]]

    def split(self, fraction: float, seed: int = 0) -> tuple["MultimodalData", "MultimodalData"]:
        """Random split of the sequences into ``(first, second)`` with ``fraction`` in first."""
        check_int("seed", seed, minimum=0)
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0 < fraction < 1
        ):
            raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
        N = self.num_sequences
        n_first = int(round(fraction * N))
        if n_first < 1 or n_first >= N:
            raise ValueError(f"fraction: {fraction} of {N} sequences leaves one side empty")
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
        return self[perm[:n_first]], self[perm[n_first:]]

    # ------------------------------------------------------------------ I/O
    def save(self, path) -> None:
        """Write one ``.npz`` with keys ``obs/<m>``, ``mask/<m>``, ``lengths``,
        ``labels/<name>``."""
        path = check_output_path("path", path)
        arrays = {f"obs/{k}": v.detach().cpu().numpy() for k, v in self.obs.items()}
        arrays.update({f"mask/{k}": v.cpu().numpy() for k, v in self.mask.items()})
        arrays["lengths"] = self.lengths.cpu().numpy()
        arrays.update({f"labels/{k}": v.cpu().numpy() for k, v in self.labels.items()})
        for k, v in self.meta.items():
            if isinstance(v, str):
                arrays[f"meta/{k}"] = np.asarray(v)
            elif isinstance(v, (list, tuple)) and v and all(isinstance(e, str) for e in v):
                arrays[f"meta/{k}"] = np.asarray(v, dtype=str)  # per-sequence strings stay an array
            else:  # any other JSON value keeps its type through a JSON string
                try:
                    arrays[f"meta_json/{k}"] = np.asarray(json.dumps(v))
                except TypeError as err:
                    raise TypeError(
                        f"meta[{k!r}]: expected a JSON-serializable value ({err})"
                    ) from None
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path) -> "MultimodalData":
        """Read a ``.npz`` written by :meth:`save` or by ``data_prep``."""
        path = check_path("path", path)
        try:
            npz = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"{path}: not a MultimodalData .npz file (expected the arrays written by "
                f"MultimodalData.save or `mmpgm prep`; reading it failed: {err})"
            ) from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not a MultimodalData .npz file (a single .npy array)")
        with npz as f:
            keys = list(f.keys())
            obs = {k[4:]: f[k] for k in keys if k.startswith("obs/")}
            if not obs:
                raise ValueError(f"{path}: no 'obs/<modality>' arrays found; keys are {keys}")
            mask = {k[5:]: f[k] for k in keys if k.startswith("mask/")}
            labels = {k[7:]: f[k] for k in keys if k.startswith("labels/")}
            lengths = f["lengths"] if "lengths" in keys else None
            meta = {}
            for k in keys:
                if k.startswith("meta/"):
                    v = f[k]
                    meta[k[5:]] = v.tolist() if v.dtype.kind != "U" or v.ndim else str(v)
                elif k.startswith("meta_json/"):
                    meta[k[10:]] = json.loads(str(f[k]))
        return cls(obs, lengths=lengths, mask=mask or None, labels=labels or None, meta=meta)
