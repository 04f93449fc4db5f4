"""The ``mmpgm`` command line: ``demo``, ``fit``, ``infer``, ``impute``, ``prep``.

``fit`` / ``infer`` / ``impute`` read a MultimodalData ``.npz`` or a table of frames (CSV, TSV,
Parquet; :mod:`mmpgm.tabular`) and work for every model family. The defaults of their options
are read from the signatures of :func:`mmpgm.fit`, :func:`mmpgm.infer`, the model constructors
and :func:`mmpgm.tabular.read_table`, so they are the Python defaults and cannot drift.

User errors (a missing or unreadable file, a bad option value, data that do not fit the model,
an unknown modality) print one line ``mmpgm: error: <message>`` and exit with status 2, as
argparse does; ``--debug`` or ``MMPGM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

_PREP_DATASETS = ("grid", "synth-grid")
_FAMILIES = {
    "hmm": "MultimodalHMM",
    "lds": "MultimodalLDS",
    "mvrnn": "MVRNN",
    "mixture": "GatedMixture",
}
_DATA_HELP = """\
DATA is a MultimodalData .npz (MultimodalData.save, `mmpgm prep`) or a table of frames: a
.csv (comma), .tsv (tab) or .parquet file with one row per frame, a sequence-id column and a
time column (--sequence-column, --time-column), and feature columns grouped into modalities by
the name before the first '_' or '.' (accel_0, accel_1, gyro_x -> modalities accel (2-d) and
gyro (1-d)), or explicitly with --columns MODALITY=COL,COL. Empty cells are missing values
(that frame of that modality is unobserved). Rows may come in any order; time orders the frames
of a sequence; sequences may have different lengths. Labels are read only when named:
--label NAME=COLUMN.
"""


# ---------------------------------------------------------------------------------- errors
class _UsageError(Exception):
    """A command line that argparse refused (printed as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)``; options whose default is unset (None) or off explain it in their
    help instead of printing ``None``."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _user_errors() -> tuple:
    from .tabular import MissingDependencyError

    # The exceptions that user input raises in mmpgm (bad values and files, data that do not
    # fit the model). Deliberately not ``Exception``: a bug (RuntimeError, AttributeError,
    # IndexError, ...) keeps its traceback so it can be reported.
    return (
        _UsageError,
        ValueError,
        TypeError,
        KeyError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        MissingDependencyError,
    )


def _message(err) -> str:
    """One line for ``err``."""
    reasons = {
        FileNotFoundError: "no such file",
        IsADirectoryError: "is a directory, expected a file",
        NotADirectoryError: "a part of the path is not a directory",
        PermissionError: "permission denied",
    }
    if type(err) in reasons and getattr(err, "filename", None):
        return f"{err.filename}: {reasons[type(err)]}"
    if isinstance(err, KeyError) and err.args:
        text = f"missing key {err.args[0]!r}"
    else:
        text = str(err)
    text = " ".join(text.split())
    if len(text) > 1000:
        text = text[:1000] + " ..."
    return text or type(err).__name__


def _debug_requested(argv) -> bool:
    return "--debug" in argv or os.environ.get("MMPGM_DEBUG", "") not in ("", "0")


# ---------------------------------------------------------------------------------- defaults
def _defaults(fn) -> dict:
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _model_class(family: str):
    import mmpgm

    return getattr(mmpgm, _FAMILIES[family])


def _per_modality(conv):
    """``"3"`` -> ``conv("3")``; ``"accel=2,gyro=1"`` -> ``{"accel": 2, "gyro": 1}``."""

    def parse(text):
        def one(value):
            try:
                return conv(value.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"invalid {conv.__name__} value: {value.strip()!r}"
                ) from None

        if "=" not in text:
            return one(text)
        out = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise argparse.ArgumentTypeError(
                    f"expected a value or MODALITY=VALUE,MODALITY=VALUE, got {text!r}"
                )
            out[name.strip()] = one(value)
        return out

    parse.__name__ = conv.__name__
    return parse


def _name_columns(text, require_name=True):
    name, sep, cols = text.partition("=")
    if not sep:
        if require_name:
            raise argparse.ArgumentTypeError(f"expected NAME=COLUMN[,COLUMN...], got {text!r}")
        name, cols = text, text
    names = [c.strip() for c in cols.split(",")]
    if not name.strip() or not all(names):
        raise argparse.ArgumentTypeError(f"expected NAME=COLUMN[,COLUMN...], got {text!r}")
    return name.strip(), names


def _label_columns(text):
    name, cols = _name_columns(text, require_name=False)
    return name, cols[0] if len(cols) == 1 else cols


# The model options: flag -> the constructor keyword of each family that has it, the parser of
# the value, and the help. Defaults come from the constructors' signatures (see _model_help).
_MODEL_OPTIONS = (
    ("--shared-states", {"hmm": "num_shared_states"}, int, "K", "shared states K_s"),
    (
        "--private-states",
        {"hmm": "num_private_states"},
        _per_modality(int),
        "K|M=K,...",
        "private states K_m of each stream (1 = no private chain); one number, or per "
        "modality: accel=2,gyro=1",
    ),
    (
        "--emission",
        {"hmm": "emission"},
        _per_modality(str),
        "KIND|M=KIND,...",
        "emission model: diag, full or categorical (a 1-column modality of class indices "
        "0..C-1, C read from the data); or per modality: accel=full,button=categorical",
    ),
    (
        "--shared-dim",
        {"lds": "shared_dim", "mvrnn": "shared_dim"},
        int,
        "DIM",
        "size of the shared latent",
    ),
    (
        "--private-dim",
        {"lds": "private_dim", "mvrnn": "private_dim"},
        _per_modality(int),
        "DIM|M=DIM,...",
        "size of each stream's private latent (0 = none); or per modality: accel=2,gyro=0",
    ),
    (
        "--hidden-dim",
        {"mvrnn": "hidden_dim", "mixture": "hidden_dim"},
        int,
        "DIM",
        "hidden units (mvrnn: of the GRUs; mixture: of each expert)",
    ),
    (
        "--target",
        {"mixture": "target"},
        str,
        "LABEL",
        "the label the mixture predicts (a table names its column with --label NAME=COLUMN)",
    ),
    ("--gate", {"mixture": "gate"}, str, "GATE", "gate: conditional, markov or recurrent"),
    (
        "--head",
        {"mixture": "head"},
        str,
        "HEAD",
        "target model: bernoulli, categorical, normal or ratio_mask",
    ),
    (
        "--num-classes",
        {"mixture": "num_classes"},
        int,
        "C",
        "classes of a categorical head (unset: the largest target label + 1)",
    ),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _model_help(text, per_family) -> str:
    parts = []
    for family, kw in per_family.items():
        d = _defaults(_model_class(family)).get(kw)
        if d is not None:
            parts.append(f"{d} for {family}" if len(per_family) > 1 else f"{d}")
    fams = "--model " + ", ".join(per_family)
    if len(per_family) == 1 and parts:
        return f"{text} ({fams}; default: {parts[0]})"
    return f"{text} ({fams}; default: {', '.join(parts)})" if parts else f"{text} ({fams})"


# ---------------------------------------------------------------------------------- data
def _read_data(path, args, float_labels=()):
    """A MultimodalData from a ``.npz`` or a table, with the table options of ``args``."""
    from .data import MultimodalData
    from .tabular import read_table, table_format

    path = str(path)
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
    from .tabular import write_frames

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


# ---------------------------------------------------------------------------------- commands
def _demo(args) -> int:
    if args.which == "av":
        return _demo_av(args)
    from mmpgm.demos.hmm import run_hmm_demo

    run_hmm_demo(args.out, smoke=args.smoke, seed=args.seed, progress=args.progress)
    return 0


def _demo_av(args) -> int:
    from mmpgm.features import missing_av_requirements

    missing = missing_av_requirements()
    if missing:
        print("mmpgm demo av needs " + " and ".join(missing), file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    print(
        "generating a GRID-layout corpus (espeak-ng speech, a real face photo), preparing it with "
        "0 dB babble and a video patch, training experts and a conditional gate ..."
    )
    t0 = time.perf_counter()
    # corpus generation and preparation belong to data_prep, which only this CLI imports
    from data_prep.grid import prepare_grid
    from data_prep.synth_grid import make_synth_grid
    from mmpgm.data import MultimodalData
    from mmpgm.demos.av import format_table, run_av_demo

    num_speakers, num_utterances = (3, 3) if args.smoke else (5, 8)
    root = os.path.join(args.out, "av")
    corpus = os.path.join(root, "corpus")
    make_synth_grid(
        corpus, num_speakers=num_speakers, num_utterances=num_utterances, seed=args.seed
    )
    npz = os.path.join(root, "babble0dB_patch.npz")
    prepare_grid(
        corpus,
        npz,
        audio_kind="logmel",
        seed=args.seed,
        progress=False,
        corruption={"audio_noise": "babble", "snr_db": 0.0, "video_patch": True},
    )
    result = run_av_demo(MultimodalData.load(npz), smoke=args.smoke, seed=args.seed)
    result.update(speakers=num_speakers, clips=num_speakers * num_utterances)
    print(format_table(result))
    print(
        f"({result['clips']} clips of {result['speakers']} speakers, {result['test_frames']} test "
        f"frames; {time.perf_counter() - t0:.0f} s)"
    )
    with open(os.path.join(args.out, "av_demo.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


def _fit(args) -> int:
    import mmpgm

    family = args.model
    cls = _model_class(family)
    defaults = _defaults(cls)
    _check_out(args.out)
    kwargs = {}
    for flag, per_family, _, _, _ in _MODEL_OPTIONS:
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if family not in per_family:
            fams = " or ".join(per_family)
            raise ValueError(f"{flag}: applies to --model {fams}, not to --model {family}")
        kwargs[per_family[family]] = value
    config = {**defaults, **kwargs}
    data = _read_data(args.data, args, _float_labels(config) if family == "mixture" else ())
    obs_dims = dict(data.obs_dims)
    if family == "hmm":
        _categorical_dims(obs_dims, data, config["emission"])
    if family == "mixture":
        _mixture_target(kwargs, config, data)
    model = cls(obs_dims, **kwargs)
    res = mmpgm.fit(
        model,
        data,
        method=args.method,
        program=args.program,
        num_steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        num_restarts=args.restarts,
        seed=args.seed,
        progress=args.progress,
    )
    model.save(args.out)
    print(
        json.dumps(
            {
                "model": args.out,
                "family": family,
                "class": type(model).__name__,
                "modalities": dict(data.obs_dims),
                "method": res.method,
                "final_loss_per_frame": res.final_loss,
                "steps": res.num_steps,
                "converged": res.converged,
            }
        )
    )
    return 0


def _categorical_dims(obs_dims, data, emission) -> None:
    """A categorical HMM stream holds class indices in one column: its size is their count."""
    import torch

    for m in obs_dims:
        kind = emission.get(m) if isinstance(emission, dict) else emission
        if kind != "categorical":
            continue
        x = data.obs[m]
        if x.shape[-1] != 1:
            raise ValueError(
                f"modality {m!r}: a categorical emission needs one column of class indices, "
                f"got {x.shape[-1]} columns"
            )
        seen = x[data.mask[m]]
        if seen.numel() == 0:
            raise ValueError(f"modality {m!r}: no observed value to count its classes from")
        if not bool(torch.all((seen >= 0) & (seen == seen.round()))):
            raise ValueError(
                f"modality {m!r}: a categorical emission needs class indices 0, 1, 2, ...; got "
                f"values such as {sorted(set(seen.flatten().tolist()))[:5]}"
            )
        obs_dims[m] = max(int(seen.max()) + 1, 2)


def _mixture_target(kwargs, config, data) -> None:
    target, head = config["target"], config["head"]
    if target not in data.labels:
        raise ValueError(
            f"the mixture's target label {target!r} is not in the data (its labels: "
            f"{sorted(data.labels) or 'none'}); choose one with --target, or for a table name "
            f"its column with --label {target}=COLUMN"
        )
    y = data.labels[target]
    if head == "categorical" and config.get("num_classes") is None:
        kwargs["num_classes"] = max(int(y.max()) + 1, 2)
    if head == "ratio_mask" and config.get("mask_dim") is None and y.dim() == 3:
        kwargs["mask_dim"] = int(y.shape[-1])


def _infer(args) -> int:
    import mmpgm

    ext = _check_out(args.out, (".npz", ".csv", ".tsv"))
    model = _load_model(args.model)
    data = _read_data(args.data, args, _float_labels(model.config()))
    _check_table_streams(data, model, args.data)
    post = mmpgm.infer(
        model,
        data,
        causal=args.causal,
        num_samples=args.samples,
        seed=args.seed,
        map_path=args.map,
    )
    collected = _collect(post, data.lengths, data.num_timesteps)
    _write_output(args.out, ext, collected, data)
    print(f"wrote {args.out}: {', '.join(k for k, _, _ in collected)}")
    return 0


def _impute(args) -> int:
    import math

    import torch

    import mmpgm

    ext = _check_out(args.out, (".npz", ".csv", ".tsv"))
    model = _load_model(args.model)
    impute = getattr(model, "impute", None)
    if impute is None:
        raise ValueError(
            f"{type(model).__name__} has no impute: it predicts its target label from the "
            "streams and does not generate a stream; use 'mmpgm infer'"
        )
    params = inspect.signature(impute).parameters
    kwargs = {}
    for flag, kw in (("--samples", "num_samples"), ("--seed", "seed")):
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if kw not in params:
            raise ValueError(
                f"{flag}: {type(model).__name__}'s impute is exact and draws no samples"
            )
        kwargs[kw] = value
    data = _read_data(args.data, args, _float_labels(model.config()))
    _check_table_streams(data, model, args.data)
    dims = model.data_dims
    if args.modality not in dims:
        raise ValueError(
            f"--modality: unknown modality {args.modality!r}; the model has {list(dims)}"
        )
    if args.modality not in data.obs:  # the stream to impute may be absent from the data
        obs = dict(data.obs)
        first = next(iter(obs.values()))
        shape = (data.num_sequences, data.num_timesteps, dims[args.modality])
        obs[args.modality] = torch.full(shape, math.nan, dtype=first.dtype)
        data = mmpgm.MultimodalData(
            obs, lengths=data.lengths, mask=data.mask, labels=data.labels, meta=data.meta
        )
    res = impute(data, args.modality, **kwargs)
    collected = _collect(res, data.lengths, data.num_timesteps)
    _write_output(args.out, ext, collected, data)
    print(f"wrote {args.out}: {', '.join(k for k, _, _ in collected)}")
    return 0


def _prep(dataset, rest) -> int:
    if dataset == "grid":
        from data_prep import grid

        return grid.main(rest)
    from data_prep import synth_grid

    return synth_grid.main(rest)


# ---------------------------------------------------------------------------------- parser
def _data_options():
    from .tabular import read_table

    read = _defaults(read_table)
    p = _Parser(add_help=False, formatter_class=_Formatter, allow_abbrev=False)
    g = p.add_argument_group("table input (DATA as CSV, TSV or Parquet)")
    g.add_argument(
        "--sequence-column", default=read["sequence"], metavar="NAME",
        help="column of the sequence ids",
    )  # fmt: skip
    g.add_argument(
        "--time-column", default=read["time"], metavar="NAME",
        help="column of the frame times (orders the rows of a sequence)",
    )  # fmt: skip
    g.add_argument(
        "--columns", action="append", type=_name_columns, metavar="MODALITY=COL[,COL...]",
        help="the feature columns of a modality (repeatable); then other columns are ignored "
        "(unset: every other column, grouped by the name before the first '_' or '.')",
    )  # fmt: skip
    g.add_argument(
        "--label", action="append", type=_label_columns, metavar="NAME=COL[,COL...]",
        help="read a label from a column (repeatable; several columns: a vector per frame; "
        "NAME alone: the column NAME). Integer labels: -1 = empty cell",
    )  # fmt: skip
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``mmpgm`` argument parser (``prep DATASET ...`` is forwarded before parsing)."""
    import mmpgm

    fit_d, infer_d = _defaults(mmpgm.fit), _defaults(mmpgm.infer)
    mvrnn_impute = _defaults(mmpgm.MVRNN.impute)
    common = _Parser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show the Python traceback of an error (also: environment MMPGM_DEBUG=1)",
    )  # fmt: skip
    kw = dict(formatter_class=_Formatter, allow_abbrev=False)
    parser = _Parser(prog="mmpgm", description="Multimodal probabilistic graphical models", **kw)
    parser.add_argument(
        "--debug", action="store_true",
        help="show the Python traceback of an error instead of one line (also: MMPGM_DEBUG=1)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="fit the multimodal HMM to an embedded synthetic dataset ('hmm', default), "
        "or run a small audio-visual speech-activity experiment ('av')",
        parents=[common], **kw,
    )  # fmt: skip
    d.add_argument("which", nargs="?", default="hmm", choices=["hmm", "av"], help="which demo")
    d.add_argument("--smoke", action="store_true", help="tiny, fast version (CI)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--out", default="mmpgm_demo", help="folder for the figure and JSON summary")
    d.add_argument("--progress", action="store_true", default=None, help="show a progress bar")
    d.set_defaults(func=_demo)

    f = sub.add_parser(
        "fit", help="fit a model of any family to DATA and save it",
        description="Fit a model to DATA (mmpgm.fit) and save it to --out (mmpgm.load_model\n"
        "reads it). Prints a JSON summary.\n\n" + _DATA_HELP,
        parents=[common, _data_options()], **kw,
    )  # fmt: skip
    f.add_argument("data", metavar="DATA", help=".npz, .csv, .tsv or .parquet")
    f.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    f.add_argument(
        "--model", default="hmm", choices=list(_FAMILIES),
        help="hmm: MultimodalHMM, lds: MultimodalLDS, mvrnn: MVRNN, mixture: GatedMixture",
    )  # fmt: skip
    g = f.add_argument_group("model options (constructor arguments)")
    for flag, per_family, conv, metavar, text in _MODEL_OPTIONS:
        g.add_argument(
            flag, type=conv, default=None, metavar=metavar,
            help=_model_help(text, per_family),
        )  # fmt: skip
    g = f.add_argument_group("fit options (mmpgm.fit)")
    g.add_argument(
        "--method", default=fit_d["method"],
        help="svi (Adam on the model's ELBO) or em (closed-form EM: hmm, lds; the Appendix-A EM "
        "of the mixture)",
    )  # fmt: skip
    g.add_argument(
        "--program", default=fit_d["program"],
        help="svi only: the Pyro program that trains (unset: the model's first; hmm, lds: "
        "collapsed; mvrnn: vectorized; mixture: enumerated)",
    )  # fmt: skip
    g.add_argument(
        "--steps", type=int, default=fit_d["num_steps"],
        help="maximum optimizer steps or EM iterations (unset: 1000 for svi, 200 for em, 20 for "
        "the mixture's em)",
    )  # fmt: skip
    g.add_argument(
        "--lr", type=float, default=fit_d["lr"],
        help="Adam learning rate (unset: 0.05 for svi; the mixture's em: its own default)",
    )  # fmt: skip
    g.add_argument(
        "--batch-size", type=int, default=fit_d["batch_size"],
        help="sequences per minibatch (svi and the mixture's em; unset: all sequences)",
    )  # fmt: skip
    g.add_argument(
        "--restarts", type=int, default=fit_d["num_restarts"],
        help="fit from this many initializations and keep the best",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=fit_d["seed"], help="random seed")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=fit_d["progress"],
        help="progress bar (unset: only when stderr is a terminal)",
    )  # fmt: skip
    f.set_defaults(func=_fit)

    i = sub.add_parser(
        "infer", help="posterior of a fitted model on DATA, written to .npz or .csv",
        description="Posterior over the latents of DATA under a fitted MODEL (mmpgm.infer).\n"
        "--out OUT.npz holds every field of the model's result type (dict fields as\n"
        "field/key) plus lengths; frames past a sequence's length are NaN (-1 in integer\n"
        "paths). --out OUT.csv writes one row per frame instead.\n\n" + _DATA_HELP,
        parents=[common, _data_options()], **kw,
    )  # fmt: skip
    i.add_argument("model", metavar="MODEL", help="a model file written by 'mmpgm fit'")
    i.add_argument("data", metavar="DATA", help=".npz, .csv, .tsv or .parquet")
    i.add_argument("--out", required=True, metavar="OUT", help=".npz, .csv or .tsv to write")
    i.add_argument(
        "--causal", action="store_true", default=infer_d["causal"],
        help="filtered (online) instead of smoothed marginals",
    )  # fmt: skip
    i.add_argument(
        "--samples", type=int, default=infer_d["num_samples"],
        help="posterior path draws per sequence",
    )  # fmt: skip
    i.add_argument(
        "--seed", type=int, default=infer_d["seed"], help="seed of the draws (unset: random)"
    )
    i.add_argument(
        "--map", action=argparse.BooleanOptionalAction, default=infer_d["map_path"],
        help="compute the joint MAP path",
    )  # fmt: skip
    i.set_defaults(func=_infer)

    m = sub.add_parser(
        "impute", help="predict one stream of DATA from the others (hmm, lds, mvrnn)",
        description="Posterior predictive of --modality from the other streams of DATA under\n"
        "a fitted MODEL (model.impute): mean and covariance (hmm, lds) or variance (mvrnn),\n"
        "plus lengths; padding frames NaN. The stream may be absent from DATA. --out\n"
        "OUT.csv writes one row per frame.\n\n" + _DATA_HELP,
        parents=[common, _data_options()], **kw,
    )  # fmt: skip
    m.add_argument("model", metavar="MODEL", help="a model file written by 'mmpgm fit'")
    m.add_argument("data", metavar="DATA", help=".npz, .csv, .tsv or .parquet")
    m.add_argument("--modality", required=True, metavar="M", help="the stream to impute")
    m.add_argument("--out", required=True, metavar="OUT", help=".npz, .csv or .tsv to write")
    m.add_argument(
        "--samples", type=int, default=None,
        help=f"mvrnn only: guide draws averaged (unset: {mvrnn_impute['num_samples']})",
    )  # fmt: skip
    m.add_argument("--seed", type=int, default=None, help="mvrnn only: seed of the draws")
    m.set_defaults(func=_impute)

    p = sub.add_parser(
        "prep", help="prepare data (see data_prep/README.md)",
        description="Prepare audio-visual data; 'mmpgm prep DATASET --help' shows the options "
        "of each.",
        **kw,
    )  # fmt: skip
    ds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    ds.add_parser("grid", help="a GRID-layout corpus -> a MultimodalData .npz", add_help=False)
    ds.add_parser("synth-grid", help="generate a small GRID-layout corpus", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    # `mmpgm [--debug] prep DATASET ...`: everything after DATASET (--help included) belongs to
    # the preparation script, which parses it itself
    k = next((j for j, a in enumerate(argv) if not a.startswith("-")), None)
    if (
        k is not None
        and argv[k] == "prep"
        and all(a == "--debug" for a in argv[:k])
        and len(argv) > k + 1
        and argv[k + 1] in _PREP_DATASETS
    ):
        return _prep(argv[k + 1], argv[k + 2 :])
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except _user_errors() as err:
        if debug:
            raise
        print(f"mmpgm: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
