"""Constants and the one-line error handling of the command line."""

from __future__ import annotations

import argparse
import os

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
_SHARDS_HELP = """
DATA may also be a quoted glob of MultimodalData .npz shards, 'corpus/shard-*.npz' (what
`mmpgm prep grid --shard i/n` writes; sorted by name): the corpus is streamed a few shards at a
time (mmpgm.ShardedData, --cache-shards), never held in memory; several .npz files (a glob
the shell expanded) are shards too. The data-driven start sees the first --cache-shards shards;
with --cache-shards = the number of shards, EM (hmm, lds) equals EM on the shards concatenated
into one file. A glob that matches no file is an error.
"""


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
    from ..tabular import MissingDependencyError

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
