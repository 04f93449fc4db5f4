""":class:`~mmpgm.data.MultimodalData` and per-frame results -> tables of frames."""

from __future__ import annotations

import csv
from collections.abc import Mapping

import numpy as np

from ..data import MultimodalData
from ._formats import MissingDependencyError, table_format


def _frame_index(data_meta, lengths):
    """Sequence ids and times per sequence: from ``meta`` when it carries them for these
    lengths, else ``0..N-1`` and ``0..L-1``."""
    N = len(lengths)
    ids = data_meta.get("sequence_ids") if data_meta else None
    if not (isinstance(ids, list) and len(ids) == N):
        ids = [str(n) for n in range(N)]
    times = data_meta.get("time") if data_meta else None
    ok = isinstance(times, list) and len(times) == N
    if ok:
        ok = all(
            isinstance(t, list) and len(t) == int(L) for t, L in zip(times, lengths, strict=True)
        )
    if not ok:
        times = [list(range(int(L))) for L in lengths]
    return ids, times


def _cells(x: np.ndarray) -> np.ndarray:
    """Values -> text cells: shortest round-trip decimals, '' for NaN."""
    if x.dtype.kind == "f":
        s = x.astype(str)
        s[np.isnan(x)] = ""
        return s
    if x.dtype.kind == "b":
        return x.astype(np.int8).astype(str)
    return x.astype(str)


def write_frames(
    path,
    arrays: Mapping[str, np.ndarray],
    lengths,
    *,
    sequence_ids=None,
    times=None,
    sequence: str = "sequence",
    time: str = "time",
    format: str | None = None,
) -> list[str]:
    """Write per-frame arrays as a table, one row per frame inside ``lengths``.

    ``arrays``: name -> ``(N, T, ...)`` per-frame values (trailing axes flattened into columns
    ``name_i``, ``name_i_j``, ...; a ``(N, T)`` array is the single column ``name``) or ``(N,)``
    per-sequence values (repeated on every row of the sequence). Padding frames are not
    written. ``sequence_ids`` (``N`` strings) and ``times`` (``N`` lists of ``lengths[n]``
    numbers) default to ``0..N-1`` and ``0..L-1``. Returns the column names written.
    """
    fmt = format or table_format(path)
    if fmt not in ("csv", "tsv", "parquet"):
        raise ValueError(f"{path}: expected a file name ending in .csv, .tsv, .parquet or .pq")
    lengths = np.asarray(lengths, dtype=np.int64)
    N = len(lengths)
    T = max(int(lengths.max()), 1) if N else 1
    meta = {"sequence_ids": sequence_ids, "time": times}
    ids, tlists = _frame_index(meta, lengths)
    inside = np.arange(T)[None, :] < lengths[:, None]
    n_idx, t_idx = np.nonzero(inside)
    header = [sequence, time]
    cols = [
        np.asarray([ids[n] for n in n_idx.tolist()], dtype=str),
        np.asarray([tlists[n][t] for n, t in zip(n_idx.tolist(), t_idx.tolist(), strict=True)]),
    ]
    for name, x in arrays.items():
        x = np.asarray(x)
        if x.shape[:1] != (N,) or (x.ndim > 1 and x.shape[1] < T):
            raise ValueError(
                f"{name}: expected a (N={N},) or (N={N}, T={T}, ...) array, got {x.shape}"
            )
        if x.ndim == 1:
            header.append(name)
            cols.append(x[n_idx])
            continue
        v = x[n_idx, t_idx].reshape(len(n_idx), -1)
        if x.ndim == 2:
            header.append(name)
        else:
            header += [
                name + "_" + "_".join(map(str, i)) for i in np.ndindex(*x.shape[2:])
            ]  # fmt: skip
        cols += [v[:, j] for j in range(v.shape[1])]
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"{path}: column names {dup} would appear twice")
    if fmt == "parquet":
        try:
            import pandas as pd

            pd.DataFrame(dict(zip(header, cols, strict=True))).to_parquet(path, index=False)
        except ImportError as err:
            raise MissingDependencyError(
                f"writing Parquet needs pandas and pyarrow: pip install 'mmpgm[parquet]' ({err})"
            ) from None
        return header
    text = [_cells(c) for c in cols]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
        w.writerow(header)
        w.writerows(zip(*text, strict=True))
    return header


def write_table(
    data: MultimodalData, path, *, sequence: str = "sequence", time: str = "time",
    format: str | None = None,
) -> dict:  # fmt: skip
    """Write ``data`` as a table of frames that :func:`read_table` reads back.

    Feature columns are ``<modality>_<i>`` (unobserved frames empty), labels are columns named
    by the label (per-sequence labels repeated on every row; vector labels ``<label>_<i>``);
    padding frames are not written. Returns ``{"modalities": {m: columns}, "labels": {name:
    column(s)}}``, the mapping to read it back with (``read_table(path, **mapping)``; the
    default grouping by prefix gives the same modalities when no modality name contains ``_``
    or ``.``).
    """
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
    arrays, mods, labs = {}, {}, {}
    for m, x in data.obs.items():
        x = x.detach().cpu()
        arrays[m] = x.masked_fill(~data.mask[m].cpu()[..., None], float("nan")).numpy()
        mods[m] = [f"{m}_{i}" for i in range(x.shape[-1])]
    for name, y in data.labels.items():
        y = y.detach().cpu().numpy()
        if y.ndim > 3:
            raise ValueError(
                f"labels[{name!r}]: a table holds labels up to (N, T, F), got {y.shape}"
            )
        if y.ndim == 1:  # per-sequence: repeated on every frame
            y = np.repeat(y[:, None], data.num_timesteps, 1)
        arrays[name] = y
        labs[name] = name if y.ndim == 2 else [f"{name}_{i}" for i in range(y.shape[-1])]
    ids, times = _frame_index(data.meta, data.lengths.cpu().numpy())
    write_frames(
        path, arrays, data.lengths.cpu().numpy(), sequence_ids=ids, times=times,
        sequence=sequence, time=time, format=format,
    )  # fmt: skip
    return {"modalities": mods, "labels": labs}
