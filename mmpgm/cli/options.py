"""Options whose defaults are read from the Python signatures, so they cannot drift."""

from __future__ import annotations

import argparse
import inspect

from ._common import _FAMILIES, _Formatter, _Parser


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


def _data_options():
    from ..tabular import read_table

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
