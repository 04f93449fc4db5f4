"""Tables of frames (CSV, TSV, Parquet) -> :class:`~mmpgm.data.MultimodalData`."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping

import numpy as np

from ..data import MultimodalData
from ._formats import _MISSING, MissingDependencyError, group_columns, table_format


def read_table(
    path,
    *,
    sequence: str = "sequence",
    time: str = "time",
    modalities: Mapping[str, list] | None = None,
    labels: Mapping[str, str | list] | None = None,
    float_labels=(),
    format: str | None = None,
) -> MultimodalData:
    """Read a CSV / TSV / Parquet table of frames (module docstring) into a MultimodalData.

    Parameters
    ----------
    path : str or path
    sequence, time : str
        Names of the sequence-id and time columns.
    modalities : Mapping[str, list of str], optional
        Modality name -> its feature columns, in order. Default: every column that is not the
        sequence, time or a label column, grouped by :func:`group_columns`.
    labels : Mapping[str, str or list of str], optional
        Label name -> its column (a per-frame label) or columns (a per-frame vector).
    float_labels : collection of str
        Labels stored as floats with NaN for missing, even when their values are integers
        (e.g. the target of a Normal head).
    format : {"csv", "tsv", "parquet"}, optional
        Default: from the extension (:func:`table_format`).

    Raises
    ------
    ValueError
        A file that is not a table of this kind, a missing or duplicated column, a non-numeric
        cell, a duplicated (sequence, time) pair; the message names the column and the line
        (CSV; line 1 is the header) or row (Parquet, counted from 0).
    FileNotFoundError
    MissingDependencyError
        Parquet without pandas / pyarrow.
    """
    fmt = format or table_format(path)
    if fmt not in ("csv", "tsv", "parquet"):
        raise ValueError(
            f"{path}: expected a table ending in .csv, .tsv, .parquet or .pq, got "
            f"{os.path.splitext(str(path))[1] or 'no extension'!r}"
        )
    if fmt == "parquet":
        columns, where = _read_parquet(path)
    else:
        columns, where = _read_csv(path, "\t" if fmt == "tsv" else ",")
    return from_columns(
        columns,
        sequence=sequence,
        time=time,
        modalities=modalities,
        labels=labels,
        float_labels=float_labels,
        source=str(path),
        where=where,
    )


def _read_csv(path, delimiter):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file (expected a header row of column names)")
            rows, lines = [], []
            for row in reader:
                if not any(c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                        f"{len(header)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}: not a text table (not UTF-8); expected a CSV file with a header row"
        ) from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    names = [h.strip() for h in header]
    _check_header(names, str(path))
    if not rows:
        raise ValueError(f"{path}: no data rows under the header")
    cells = list(zip(*rows, strict=True))
    columns = {name: cells[j] for j, name in enumerate(names)}
    return columns, lambda i: f"line {lines[i]}"


def _read_parquet(path):
    try:
        import pandas as pd
    except ImportError:
        raise MissingDependencyError(
            "reading Parquet needs pandas and pyarrow: pip install 'mmpgm[parquet]'"
        ) from None
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        frame = pd.read_parquet(path)
    except ImportError as err:
        raise MissingDependencyError(
            f"reading Parquet needs pyarrow: pip install 'mmpgm[parquet]' ({err})"
        ) from None
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    names = [str(c) for c in frame.columns]
    _check_header(names, str(path))
    if len(frame) == 0:
        raise ValueError(f"{path}: no data rows")
    columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    return columns, lambda i: f"row {i}"


def _check_header(names, source):
    seen = set()
    for j, name in enumerate(names):
        if not name:
            raise ValueError(f"{source}: column {j + 1} of the header has no name")
        if name in seen:
            raise ValueError(f"{source}: column {name!r} appears twice in the header")
        seen.add(name)


def _numbers(values, column, where, source) -> np.ndarray:
    """A column of cells -> float64, NaN for missing cells; ``ValueError`` naming the first bad
    cell."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biuf":
        out = arr.astype(np.float64)
    else:
        cells = [
            math.nan
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (str(v).strip() if not isinstance(v, (int, float)) else v)
            for v in arr.tolist()
        ]
        cells = [math.nan if isinstance(c, str) and c.lower() in _MISSING else c for c in cells]
        try:
            out = np.asarray(cells, dtype=np.float64)
        except (ValueError, TypeError):
            for i, c in enumerate(cells):
                try:
                    float(c)
                except (ValueError, TypeError):
                    raise ValueError(
                        f"{source}, {where(i)}, column {column!r}: {c!r} is not a number "
                        "(leave the cell empty for a missing value)"
                    ) from None
            raise
    bad = np.isinf(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}, {where(i)}, column {column!r}: {out[i]} is not finite (leave the cell "
            "empty for a missing value)"
        )
    return out


def _sequence_ids(values, column, where, source) -> list[str]:
    arr = np.asarray(values)
    ids = []
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
        if not s:
            raise ValueError(f"{source}, {where(i)}, column {column!r}: empty sequence id")
        ids.append(s)
    return ids


def _as_list(value, what) -> list[str]:
    if isinstance(value, str):
        return [value]
    value = list(value)
    if not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what}: expected a column name or a list of column names, got {value!r}")
    return value


def from_columns(
    columns,
    *,
    sequence: str = "sequence",
    time: str = "time",
    modalities: Mapping[str, list] | None = None,
    labels: Mapping[str, str | list] | None = None,
    float_labels=(),
    source: str = "table",
    where=None,
) -> MultimodalData:
    """Build a MultimodalData from columns of frames: a dict column name -> 1-d array of cells
    (numbers or strings), or a pandas DataFrame. The format and the other parameters are those
    of :func:`read_table`; ``source`` and ``where(i)`` (default ``"row i"``) name the file and a
    row in error messages."""
    if where is None:
        where = lambda i: f"row {i}"  # noqa: E731
    names = [str(c) for c in columns.keys()]
    n_rows = len(columns[next(iter(columns.keys()))]) if names else 0
    if n_rows == 0:
        raise ValueError(f"{source}: no rows")
    cols = {str(c): columns[c] for c in columns.keys()}
    labels = dict(labels or {})
    float_labels = set(float_labels)

    def need(col, role):
        if col not in cols:
            raise ValueError(
                f"{source}: no column {col!r} ({role}); the columns are {names[:20]}"
                + (" ..." if len(names) > 20 else "")
            )

    need(sequence, "the sequence ids: set its name with sequence= / --sequence-column")
    need(time, "the frame times: set its name with time= / --time-column")
    if sequence == time:
        raise ValueError(f"{source}: the sequence and time columns are both {sequence!r}")
    label_cols = {}
    for name, value in labels.items():
        label_cols[name] = _as_list(value, f"labels[{name!r}]")
        for col in label_cols[name]:
            need(col, f"label {name!r}")
            if col in (sequence, time):
                raise ValueError(
                    f"label {name!r}: column {col!r} is the sequence-id or the time column"
                )
    reserved = {sequence, time} | {c for cs in label_cols.values() for c in cs}
    if modalities is None:
        features = [c for c in names if c not in reserved]
        if not features:
            raise ValueError(
                f"{source}: no feature columns (every column is the sequence, time or a label)"
            )
        groups = group_columns(features)
    else:
        groups, owner = {}, {}
        for name, value in dict(modalities).items():
            groups[name] = _as_list(value, f"modalities[{name!r}]")
            for col in groups[name]:
                need(col, f"modality {name!r}")
                if col in reserved:
                    raise ValueError(
                        f"modality {name!r}: column {col!r} is the sequence, time or a label column"
                    )
                if col in owner:
                    raise ValueError(
                        f"column {col!r} is in two modalities, {owner[col]!r} and {name!r}"
                    )
                owner[col] = name
        if not groups:
            raise ValueError("modalities: expected at least one modality, got an empty mapping")

    ids = _sequence_ids(cols[sequence], sequence, where, source)
    times = _numbers(cols[time], time, where, source)
    if np.isnan(times).any():
        i = int(np.flatnonzero(np.isnan(times))[0])
        raise ValueError(f"{source}, {where(i)}, column {time!r}: empty time")
    index: dict[str, int] = {}
    seq = np.fromiter((index.setdefault(s, len(index)) for s in ids), np.int64, len(ids))
    order = np.lexsort((times, seq))  # by sequence, then time (stable)
    s_sorted, t_sorted = seq[order], times[order]
    dup = np.flatnonzero((s_sorted[1:] == s_sorted[:-1]) & (t_sorted[1:] == t_sorted[:-1]))
    if dup.size:
        a, b = int(order[dup[0]]), int(order[dup[0] + 1])
        a, b = min(a, b), max(a, b)
        raise ValueError(
            f"{source}, {where(a)} and {where(b)}: sequence {ids[a]!r} has two rows at "
            f"{time} {times[a]:g} (one row per frame)"
        )
    N = len(index)
    lengths = np.bincount(seq, minlength=N)
    T = int(lengths.max())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(order)) - starts[s_sorted]

    def frames(col_names):
        values = np.stack([_numbers(cols[c], c, where, source) for c in col_names], -1)
        out = np.full((N, T, len(col_names)), np.nan)
        out[s_sorted, pos] = values[order]
        return out

    obs = {m: frames(cs) for m, cs in groups.items()}
    lab = {}
    for name, cs in label_cols.items():
        x = frames(cs)
        if len(cs) == 1:
            x = x[..., 0]
            finite = x[~np.isnan(x)]
            if name not in float_labels and np.all(finite == np.round(finite)):
                x = np.where(np.isnan(x), -1, x).astype(np.int64)
        lab[name] = x
    import torch  # MultimodalData stores tensors; features become the default float dtype

    dtype = torch.get_default_dtype()
    obs = {m: torch.as_tensor(x, dtype=dtype) for m, x in obs.items()}
    seq_ids = list(index)
    time_lists = [[] for _ in range(N)]
    integral = bool(np.all(times == np.round(times)))
    for s, t in zip(s_sorted.tolist(), t_sorted.tolist(), strict=True):
        time_lists[s].append(int(t) if integral else t)
    meta = {"sequence_ids": seq_ids, "time": time_lists}
    return MultimodalData(obs, lengths=lengths, labels=lab or None, meta=meta)
