"""Reading inputs (npz or tables, model files) and writing results, lengths and padding marked."""

from __future__ import annotations

import glob
import os


def _is_shard_glob(path) -> bool:
    """``DATA`` is a glob pattern (``*``, ``?`` or ``[...]``) of ``.npz`` shards rather than one
    file (a file whose name really holds such characters is read as that file)."""
    path = str(path)
    return glob.has_magic(path) and not os.path.exists(path)


def _read_shards(pattern, args):
    """A :class:`~mmpgm.data_shards.ShardedData` over the ``.npz`` shards matching the glob
    ``pattern`` (sorted by name; what ``mmpgm prep grid --shard i/n`` writes) or the list of
    paths ``pattern`` (in that order: a glob the shell expanded), streamed by ``mmpgm.fit``."""
    from ..data_shards import ShardedData

    for flag, value in (("--columns", args.columns), ("--label", args.label)):
        if value:
            raise ValueError(
                f"{flag}: applies to table input (CSV/TSV/Parquet); DATA {pattern!r} are .npz "
                "shards, which carry their modalities and labels"
            )
    if isinstance(pattern, list):
        for path in pattern:
            if _is_shard_glob(path):
                raise ValueError(
                    f"DATA: one glob or several files, got the glob {path!r} among {pattern}"
                )
            if os.path.isdir(path):
                raise IsADirectoryError(21, "Is a directory", path)
            if not os.path.exists(path):
                raise FileNotFoundError(2, "No such file or directory", path)
    elif not glob.glob(pattern):
        raise ValueError(
            f"DATA: the glob {pattern!r} matches no file (expected .npz shards written by "
            "MultimodalData.save or 'mmpgm prep grid --shard i/n', e.g. 'corpus/shard-*.npz', "
            "quoted so that the shell passes the pattern)"
        )
    kw = {} if args.cache_shards is None else {"cache_shards": args.cache_shards}
    return ShardedData(pattern, **kw)


def _data_parts(data):
    """The in-memory parts of ``data``: itself, or a ShardedData's shards one at a time."""
    from ..data_shards import ShardedData

    return data.iter_shards() if isinstance(data, ShardedData) else iter((data,))


def _read_data(path, args, float_labels=()):
    """A MultimodalData from a ``.npz`` or a table, with the table options of ``args``."""
    from ..data import MultimodalData
    from ..tabular import read_table, table_format

    path = str(path)
    if _is_shard_glob(path):
        raise ValueError(
            f"DATA: {path!r} is a glob of shards; 'mmpgm fit' streams shards, infer and impute "
            "read one .npz or table (MultimodalData.save writes one from ShardedData.load_all())"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    fmt = table_format(path)
    if fmt is None:
        with open(path, "rb") as f:
            magic = f.read(4)
        fmt = {b"PK\x03\x04": "npz", b"PAR1": "parquet"}.get(magic)
        if fmt is None:
            kind = "a .npz is a zip archive; " if path.lower().endswith(".npz") else ""
            raise ValueError(
                f"{path}: not a MultimodalData .npz ({kind}a table of frames needs the "
                "extension .csv, .tsv or .parquet; see 'mmpgm fit --help' for its format)"
            )
    if fmt == "npz":
        for flag, value in (("--columns", args.columns), ("--label", args.label)):
            if value:
                raise ValueError(
                    f"{flag}: applies to table input (CSV/TSV/Parquet); {path} is a .npz, "
                    "which carries its modalities and labels"
                )
        return MultimodalData.load(path)
    return read_table(
        path,
        sequence=args.sequence_column,
        time=args.time_column,
        modalities=_unique_pairs(args.columns, "--columns") or None,
        labels=_unique_pairs(args.label, "--label") or None,
        float_labels=float_labels,
        format=fmt,
    )


def _check_table_streams(data, model, path) -> None:
    """A table's column groups must be the model's streams: name the odd ones with a hint."""
    if "sequence_ids" not in data.meta:  # not read from a table: data.check_modalities says it
        return
    extra = [m for m in data.obs if m not in model.data_dims]
    if extra:
        raise ValueError(
            f"{path}: the columns make modalities {extra} that the model does not have (its "
            f"modalities: {list(model.data_dims)}); name a label column with --label NAME, or "
            "pick the feature columns with --columns MODALITY=COL,COL"
        )


def _unique_pairs(pairs, flag) -> dict:
    out = {}
    for name, value in pairs or ():
        if name in out:
            raise ValueError(f"{flag}: {name!r} given twice")
        out[name] = value
    return out


def _load_model(path):
    """``mmpgm.load_model``, refusing first what is not a model file at all (``model.save``
    writes a zip archive; torch's unpickler fails on other files with assorted errors)."""
    import zipfile

    import mmpgm

    path = str(path)
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not an mmpgm model file (expected a file written by 'mmpgm fit')"
        )
    return mmpgm.load_model(path)


def _float_labels(config: dict) -> tuple:
    """A mixture with a real-valued target reads its label column as floats (NaN = missing)."""
    if config.get("head") in ("normal", "ratio_mask") and config.get("target"):
        return (config["target"],)
    return ()


def _check_out(path, formats=None) -> str | None:
    """Fail before any work when ``--out`` cannot be written; the output format."""
    path = str(path)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--out {path}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--out {path}: is a directory, expected a file name")
    if formats is None:
        return None
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        raise ValueError(
            f"--out {path}: expected a file name ending in {', '.join(formats[:-1])} or "
            f"{formats[-1]}, got {ext or 'no extension'!r}"
        )
    return ext


# ---------------------------------------------------------------------------------- results
def _collect(result, lengths, num_timesteps) -> list:
    """The fields of a result type, generically: ``[(key, array, layout)]`` with dict fields as
    ``field/key``, padding frames NaN (float), -1 (integer) or False (bool). ``layout``:
    ``"frame"`` ``(N, T, ...)``, ``"draws"`` ``(S, N, T, ...)`` (the ``samples`` field),
    ``"lag"`` ``(N, T-1, ...)`` (between frames t and t+1), ``"sequence"`` ``(N,)``, or None."""
    import numpy as np
    import torch

    lengths = lengths.detach().cpu()
    N, T = len(lengths), num_timesteps
    out = []

    def tensor(key, x, draws):
        x = x.detach().cpu()
        a = 1 if draws else 0
        shape = tuple(x.shape)
        layout = None
        if x.dim() >= a + 2 and shape[a] == N and shape[a + 1] == T:
            layout, steps, offset = ("draws" if draws else "frame"), T, 0
        elif not draws and x.dim() >= 3 and shape[0] == N and shape[1] == T - 1 and T > 1:
            layout, steps, offset = "lag", T - 1, 1
        elif x.dim() == 1 and shape[0] == N:
            layout = "sequence"
        if layout in ("frame", "draws", "lag"):
            inside = torch.arange(steps)[None, :] + offset < lengths[:, None]
            inside = inside.reshape((1,) * a + (N, steps) + (1,) * (x.dim() - a - 2))
            if x.dtype == torch.bool:
                fill = False
            elif x.is_floating_point() or x.is_complex():
                fill = float("nan")
            else:
                fill = -1
            x = torch.where(inside, x, torch.full_like(x, fill))
        out.append((key, x.numpy(), layout))

    def put(key, value, draws):
        if isinstance(value, torch.Tensor):
            tensor(key, value, draws)
        elif isinstance(value, (bool, int, float, str)):
            out.append((key, np.asarray(value), None))
        elif isinstance(value, (tuple, list)) and value:
            if all(isinstance(v, str) for v in value):
                out.append((key, np.asarray(value, dtype=str), None))
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                out.append((key, np.asarray(value), None))

    for field, value in result._asdict().items():
        if value is None or field == "lengths":
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{field}/{k}", v, field == "samples")
        else:
            put(field, value, field == "samples")
    out.append(("lengths", lengths.numpy(), None))
    return out


def _write_output(path, ext, collected, data) -> None:
    import numpy as np

    if ext == ".npz":
        np.savez_compressed(path, **{k: v for k, v, _ in collected})
        return
    from ..tabular import write_frames

    arrays = {}
    for key, x, layout in collected:
        if layout in ("frame", "sequence"):
            arrays[key] = x
        elif layout == "draws":
            arrays[key] = np.moveaxis(x, 0, 2)  # (N, T, S, ...): one column per draw
        elif layout == "lag":  # frame t holds the value between t and t+1; the last is empty
            pad = np.full((x.shape[0], 1) + x.shape[2:], np.nan)
            arrays[key] = np.concatenate([x, pad], 1)
    meta = data.meta
    write_frames(
        path,
        arrays,
        data.lengths.cpu().numpy(),
        sequence_ids=meta.get("sequence_ids"),
        times=meta.get("time"),
    )
