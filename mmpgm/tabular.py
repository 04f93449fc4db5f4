"""Tables of frames <-> :class:`~mmpgm.data.MultimodalData`: the CSV / Parquet input of the CLI.

The format is one row per frame:

* a **sequence-id** column (default ``sequence``; any text or number) says which sequence the
  frame belongs to; sequences keep the order of their first row;
* a **time** column (default ``time``; numbers) orders the frames of a sequence (rows may come
  in any order; two rows of one sequence with the same time are an error). Time only orders:
  gaps are not filled, so a missing frame is a row with empty cells;
* **feature** columns, grouped into modalities by the name before the first ``_`` or ``.``
  (``accel_0, accel_1, accel.z, gyro_x`` -> ``accel`` (3-d) and ``gyro`` (1-d); a column
  without ``_`` or ``.`` is a 1-d modality of its own name), in the order of the columns; or an
  explicit mapping ``modalities={"accel": ["ax", "ay"], ...}`` (then only the named columns are
  read and the others ignored);
* optional **label** columns, named explicitly (``labels={"speech": "vad"}``; several columns
  make a vector label per frame). A label whose values are all integers is stored as int64 with
  ``-1`` for empty cells and padding; otherwise (or when named in ``float_labels``) as floats with
  NaN.

Empty cells (and ``NA``, ``N/A``, ``NaN``, ``null``, any case) are missing values: NaN, so the
frame counts as unobserved in that modality. Ragged sequences are padded and get ``lengths``.
The reader keeps the sequence ids and times in ``data.meta["sequence_ids"]`` and
``data.meta["time"]``, which :func:`write_table` and :func:`write_frames` write back.

CSV needs only numpy and the standard library (``.csv`` comma-, ``.tsv`` tab-separated, UTF-8);
Parquet (``.parquet``, ``.pq``) needs pandas and pyarrow (``pip install "mmpgm[parquet]"``).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping

import numpy as np

from .data import MultimodalData

__all__ = [
    "MissingDependencyError",
    "from_columns",
    "group_columns",
    "read_table",
    "table_format",
    "write_frames",
    "write_table",
]

_MISSING = frozenset({"", "na", "n/a", "nan", "null"})
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_SPLIT = re.compile(r"[_.]")


class MissingDependencyError(ImportError):
    """An optional dependency (named, with the extra that installs it) is not installed."""


def table_format(path) -> str | None:
    """``"csv"``, ``"tsv"`` or ``"parquet"`` from the file name's extension, else None."""
    return _FORMATS.get(os.path.splitext(str(path))[1].lower())


def group_columns(names) -> dict[str, list[str]]:
    """Feature columns -> modalities by the name before the first ``_`` or ``.``.

    >>> group_columns(["accel_0", "accel_1", "gyro.x", "depth"])
    {'accel': ['accel_0', 'accel_1'], 'gyro': ['gyro.x'], 'depth': ['depth']}
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        prefix = _SPLIT.split(name, maxsplit=1)[0]
        if not prefix:
            raise ValueError(
                f"column {name!r}: no modality name before its first '_' or '.'; rename it or "
                "map the columns to modalities explicitly"
            )
        groups.setdefault(prefix, []).append(name)
    return groups


# ---------------------------------------------------------------------------------- reading
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


# ---------------------------------------------------------------------------------- writing
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
