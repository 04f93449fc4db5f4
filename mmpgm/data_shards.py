r"""``ShardedData``: a corpus of ``.npz`` shards streamed a few shards at a time.

A corpus larger than memory is a list of ``.npz`` files in the format of
:meth:`MultimodalData.save <mmpgm.data.MultimodalData.save>` (keys ``obs/<m>``, ``mask/<m>``,
``lengths``, ``labels/<name>``; what ``mmpgm prep grid --shard i/n`` writes, one file per
shard). :class:`ShardedData` reads only each shard's array headers (shapes, dtypes) and its
``lengths`` up front; a shard's arrays are read when a minibatch needs them and at most
``cache_shards`` shards (plus one minibatch carried over) are held at a time, so memory is
bounded by a few shards, not by the corpus.

The sequences are numbered in shard order (shard 0's first, then shard 1's, ...): sequence
``i`` of the corpus is the ``i``-th sequence of the concatenation of the shards, the
:class:`MultimodalData` that :meth:`ShardedData.load_all` returns for a small corpus.

Every minibatch is padded to the corpus's longest shard (``num_timesteps``, the largest
``T`` over the shards): observations with NaN, masks with False, per-frame labels with -1
(integers), 0 (floats) or False (booleans). Frames past a sequence's length never contribute
to any model, so padding changes no result. Shard metadata (``meta/...``) is not carried into
minibatches.
"""

from __future__ import annotations

import glob as _glob
import os
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ._validation import check_bool, check_int
from .data import MultimodalData

__all__ = ["ShardedData", "concat_data"]


def _npy_header(zf: zipfile.ZipFile, key: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of member ``key + '.npy'`` of an ``.npz`` (reads the header only)."""
    with zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


class _ShardInfo:
    """Header of one shard: path, number of sequences and frames, modality dims, label kinds."""

    def __init__(self, path: str):
        self.path = path
        try:
            zf = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except (OSError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"shard {path}: not a MultimodalData .npz file (expected the arrays written by "
                f"MultimodalData.save or `mmpgm prep`; reading it failed: {err})"
            ) from None
        with zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            obs = sorted(k for k in keys if k.startswith("obs/"))
            if not obs:
                raise ValueError(f"shard {path}: no 'obs/<modality>' arrays found; keys are {keys}")
            self.obs_dims, shapes = {}, set()
            try:
                for k in obs:
                    shape, dtype = _npy_header(zf, k)
                    if len(shape) != 3 or dtype.hasobject:
                        raise ValueError(
                            f"shard {path}: {k} expected a numeric (N, T, D) array, got shape "
                            f"{shape} and dtype {dtype}"
                        )
                    self.obs_dims[k[4:]] = int(shape[2])
                    shapes.add(shape[:2])
                if len(shapes) != 1:
                    raise ValueError(
                        f"shard {path}: the modalities' (N, T) differ: {sorted(shapes)}"
                    )
                self.num_sequences, self.num_timesteps = (int(s) for s in shapes.pop())
                self.labels = {}
                for k in sorted(k for k in keys if k.startswith("labels/")):
                    shape, dtype = _npy_header(zf, k)
                    self.labels[k[7:]] = ("frame" if len(shape) >= 2 else "sequence",
                                          tuple(shape[2:]))
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                if str(err).startswith(f"shard {path}"):
                    raise
                raise ValueError(f"shard {path}: unreadable array header ({err})") from None
        if "lengths" in keys:
            with np.load(path, allow_pickle=False) as f:
                lengths = np.asarray(f["lengths"])
            if lengths.shape != (self.num_sequences,) or lengths.dtype.kind not in "iu":
                raise ValueError(
                    f"shard {path}: lengths expected ({self.num_sequences},) integers, got shape "
                    f"{lengths.shape} and dtype {lengths.dtype}"
                )
            self.lengths = torch.as_tensor(lengths.astype(np.int64))
        else:
            self.lengths = torch.full((self.num_sequences,), self.num_timesteps, dtype=torch.long)


def _pad_time(data: MultimodalData, num_timesteps: int) -> MultimodalData:
    """``data`` padded along time to ``num_timesteps`` frames (see the module docstring)."""
    pad = num_timesteps - data.num_timesteps
    if pad == 0:
        return data
    N = data.num_sequences

    def padded(v, value):
        extra = torch.full((N, pad) + tuple(v.shape[2:]), value, dtype=v.dtype, device=v.device)
        return torch.cat([v, extra], 1)

    new = data._replace(lambda v: v, lambda v: v)
    new.obs = {k: padded(v, float("nan")) for k, v in data.obs.items()}
    new.mask = {k: padded(v, False) for k, v in data.mask.items()}
    for k, v in data.labels.items():
        if v.dim() >= 2:
            fill = False if v.dtype == torch.bool else (0.0 if v.is_floating_point() else -1)
            new.labels[k] = padded(v, fill)
    return new


def concat_data(parts: Sequence[MultimodalData]) -> MultimodalData:
    """The sequences of ``parts`` one after another (padded along time to the longest part).

    All parts must have the same modalities, dims and label names (``ValueError`` otherwise);
    the result keeps no metadata.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("parts: expected at least one MultimodalData, got none")
    first = parts[0]
    for i, p in enumerate(parts[1:], 1):
        if p.obs_dims != first.obs_dims or sorted(p.labels) != sorted(first.labels):
            raise ValueError(
                f"parts[{i}]: modalities {p.obs_dims} and labels {sorted(p.labels)} differ from "
                f"parts[0]'s {first.obs_dims} and {sorted(first.labels)}"
            )
    if len(parts) == 1:
        out = first._replace(lambda v: v, lambda v: v)
        out.meta = {}
        return out
    T = max(p.num_timesteps for p in parts)
    parts = [_pad_time(p, T) for p in parts]
    out = object.__new__(MultimodalData)
    out.obs = {k: torch.cat([p.obs[k] for p in parts]) for k in first.obs}
    out.mask = {k: torch.cat([p.mask[k] for p in parts]) for k in first.mask}
    out.lengths = torch.cat([p.lengths for p in parts])
    out.labels = {k: torch.cat([p.labels[k] for p in parts]) for k in first.labels}
    out.meta = {}
    return out


class ShardedData:
    """A corpus of ``.npz`` shards, read lazily (see the module docstring).

    Parameters
    ----------
    paths_or_glob : str, path-like or sequence of them
        A glob pattern (``"corpus/shard-*.npz"``, sorted by name), one path, or a list of
        paths (kept in the order given). Each file is a :meth:`MultimodalData.save`-format
        ``.npz``; only the array headers and ``lengths`` are read here (never with
        ``allow_pickle``).
    cache_shards : int
        How many shards are read (and held) together: minibatches mix the sequences of
        ``cache_shards`` shards; memory is about ``cache_shards`` shards plus one minibatch.

    Attributes
    ----------
    paths : tuple[str, ...]
        The shards, in corpus order.
    obs_dims : dict[str, int]
        Modality -> dimension (the same in every shard).
    lengths : Tensor
        ``(num_sequences,)`` int64: every sequence's length, in corpus order.

    Raises
    ------
    ValueError
        No file matches; a file is not a MultimodalData ``.npz``; shards differ in modalities,
        dims or label names (the message names the shard and what differs).
    """

    def __init__(self, paths_or_glob, *, cache_shards: int = 1, _select=None):
        check_int("cache_shards", cache_shards)
        if isinstance(paths_or_glob, (str, os.PathLike)):
            p = os.fspath(paths_or_glob)
            paths = sorted(_glob.glob(p)) if _glob.has_magic(p) else [p]
            if not paths:
                raise ValueError(f"paths_or_glob: no file matches {p!r}")
        elif isinstance(paths_or_glob, Sequence) and paths_or_glob:
            paths = [os.fspath(q) for q in paths_or_glob]
        else:
            raise TypeError(
                "paths_or_glob: expected a glob pattern, a path or a non-empty list of paths, "
                f"got {paths_or_glob!r}"
            )
        for q in paths:
            if not os.path.isfile(q):
                raise FileNotFoundError(f"shard {q}: no such file")
        self._infos = [_ShardInfo(q) for q in paths]
        ref = self._infos[0]
        for info in self._infos[1:]:
            if info.obs_dims != ref.obs_dims:
                raise ValueError(
                    f"shard {info.path}: modalities and dims {info.obs_dims} differ from those of "
                    f"shard {ref.path}: {ref.obs_dims}"
                )
            if info.labels != ref.labels:
                raise ValueError(
                    f"shard {info.path}: labels {info.labels} differ from those of shard "
                    f"{ref.path}: {ref.labels} (name -> per-frame or per-sequence, trailing shape)"
                )
        self.paths = tuple(paths)
        self.cache_shards = cache_shards
        self.obs_dims = dict(ref.obs_dims)
        # _select[s]: the positions kept of shard s (None = all): a rank's view
        self._select = [None] * len(paths) if _select is None else list(_select)
        sizes = [
            info.num_sequences if sel is None else int(sel.numel())
            for info, sel in zip(self._infos, self._select, strict=True)
        ]
        self._sizes = sizes
        self.lengths = torch.cat(
            [
                info.lengths if sel is None else info.lengths[sel]
                for info, sel in zip(self._infos, self._select, strict=True)
            ]
        )

    # ------------------------------------------------------------------ sizes
    @property
    def num_shards(self) -> int:
        return len(self.paths)

    @property
    def num_sequences(self) -> int:
        """Sequences in the corpus (or in this rank's view, :meth:`shard_for_rank`)."""
        return int(sum(self._sizes))

    @property
    def num_timesteps(self) -> int:
        """Frames of every minibatch: the largest ``T`` over the shards."""
        return max(info.num_timesteps for info in self._infos)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.obs_dims)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self._infos[0].labels)

    def __len__(self) -> int:
        return self.num_sequences

    def __repr__(self) -> str:
        return (
            f"ShardedData({self.num_shards} shards, num_sequences={self.num_sequences}, "
            f"num_timesteps={self.num_timesteps}, obs_dims={self.obs_dims})"
        )

    def check_modalities(self, obs_dims) -> None:
        """As :meth:`MultimodalData.check_modalities`, on the header (reads no arrays)."""
        head = MultimodalData({m: np.zeros((1, 1, d)) for m, d in self.obs_dims.items()})
        head.check_modalities(obs_dims)

    # ------------------------------------------------------------------ reading
    def load_shard(self, index: int) -> MultimodalData:
        """Shard ``index`` (this view's sequences of it), read now, padded to
        :attr:`num_timesteps`."""
        check_int("index", index, minimum=0)
        if index >= self.num_shards:
            raise ValueError(f"index: expected < num_shards={self.num_shards}, got {index}")
        info = self._infos[index]
        try:
            data = MultimodalData.load(info.path)
        except ValueError as err:
            raise ValueError(f"shard {info.path}: {err}") from None
        if data.obs_dims != self.obs_dims or data.num_sequences != info.num_sequences:
            raise ValueError(
                f"shard {info.path}: changed since it was opened (dims {data.obs_dims}, "
                f"{data.num_sequences} sequences; expected {self.obs_dims}, {info.num_sequences})"
            )
        sel = self._select[index]
        if sel is not None:
            data = data[sel]
        data.meta = {}
        return _pad_time(data, self.num_timesteps)

    def iter_shards(self) -> Iterator[MultimodalData]:
        """Every shard in corpus order (one read at a time), as :meth:`load_shard`; shards of
        this view without sequences are skipped."""
        for s in range(self.num_shards):
            if self._sizes[s]:
                yield self.load_shard(s)

    def load_all(self) -> MultimodalData:
        """The whole corpus (or view) in memory, in corpus order: for small corpora and tests."""
        return concat_data(list(self.iter_shards()))

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[MultimodalData]:
        """Minibatches of ``batch_size`` sequences over the whole corpus: every sequence once.

        The shards are read in groups of :attr:`cache_shards`; with ``shuffle`` the shard order
        is a random permutation and the sequences of each group are permuted (both drawn from
        ``generator``), so a minibatch mixes the sequences of a group; the sequences left over
        at the end of a group start the next group's first minibatch, so all minibatches but
        the last hold ``batch_size`` sequences. Without ``shuffle`` the batches are those of
        the concatenated corpus in order (``load_all().batches(batch_size)``).

        Parameters
        ----------
        batch_size : int
            Sequences per minibatch.
        shuffle : bool
        generator : torch.Generator, optional
            Source of the permutations (same generator state, same batches).

        Yields
        ------
        MultimodalData
            ``(batch_size, num_timesteps, D_m)`` observations (the last may be smaller).
        """
        check_int("batch_size", batch_size)
        check_bool("shuffle", shuffle)
        order = (
            torch.randperm(self.num_shards, generator=generator).tolist()
            if shuffle
            else list(range(self.num_shards))
        )
        order = [s for s in order if self._sizes[s]]
        carry = None
        for g in range(0, len(order), self.cache_shards):
            parts = [self.load_shard(s) for s in order[g : g + self.cache_shards]]
            pool = concat_data(parts)
            del parts
            if shuffle:
                pool = pool[torch.randperm(pool.num_sequences, generator=generator)]
            if carry is not None:
                pool = concat_data([carry, pool])
                carry = None
            n = pool.num_sequences
            last = g + self.cache_shards >= len(order)
            start = 0
            while start < n:
                if n - start < batch_size and not last:
                    carry = pool[start:n]
                    break
                yield pool[start : start + batch_size]
                start += batch_size
            del pool

    def chunks(self) -> Iterator[MultimodalData]:
        """The corpus (or view) in groups of :attr:`cache_shards` shards, in corpus order: the
        unit of streamed E-steps and full-batch gradient accumulation."""
        live = [s for s in range(self.num_shards) if self._sizes[s]]
        for g in range(0, len(live), self.cache_shards):
            yield concat_data([self.load_shard(s) for s in live[g : g + self.cache_shards]])

    # ------------------------------------------------------------------ ranks
    def shard_for_rank(self, rank: int, world_size: int) -> "ShardedData":
        """This corpus's sequences ``rank, rank + W, rank + 2W, ...`` (corpus order), the rule
        of :func:`mmpgm.inference.distributed.shard_indices`: over the ranks every sequence
        exactly once, none repeated, sizes differing by at most one.

        Returns
        -------
        ShardedData
            A view on the same files (each rank reads the shards holding its sequences and
            keeps only those).
        """
        check_int("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
        select, offset = [], 0
        for s, info in enumerate(self._infos):
            base = (
                torch.arange(info.num_sequences)
                if self._select[s] is None
                else self._select[s]
            )
            n = base.numel()
            pos = torch.arange(n)
            keep = pos[(pos + offset) % world_size == rank]
            select.append(base[keep])
            offset += n
        return ShardedData(list(self.paths), cache_shards=self.cache_shards, _select=select)
