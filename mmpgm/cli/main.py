"""The parser and the entry point ``mmpgm``."""

from __future__ import annotations

import argparse
import sys

from .._malloc import retain_freed_memory
from ._common import (
    _DATA_HELP,
    _FAMILIES,
    _PREP_DATASETS,
    _SHARDS_HELP,
    _debug_requested,
    _Formatter,
    _message,
    _Parser,
    _user_errors,
)
from .commands import _demo, _fit, _impute, _infer, _prep
from .options import _MODEL_OPTIONS, _data_options, _defaults, _model_help


def build_parser() -> argparse.ArgumentParser:
    """The ``mmpgm`` argument parser (``prep DATASET ...`` is forwarded before parsing)."""
    import mmpgm

    fit_d, infer_d = _defaults(mmpgm.fit), _defaults(mmpgm.infer)
    shard_d = _defaults(mmpgm.ShardedData)
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
        "reads it). Prints a JSON summary.\n\n" + _DATA_HELP + _SHARDS_HELP,
        parents=[common, _data_options()], **kw,
    )  # fmt: skip
    f.add_argument(
        "data", metavar="DATA", nargs="+",
        help=".npz, .csv, .tsv or .parquet; or .npz shards, streamed (mmpgm.ShardedData): "
        "a quoted glob ('corpus/shard-*.npz') or several files",
    )  # fmt: skip
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
    g = f.add_argument_group("sharded input (DATA a glob of .npz shards)")
    g.add_argument(
        "--cache-shards", type=int, default=None, metavar="S",
        help="shards read and held together (memory: about S shards); the data-driven start "
        f"sees the first S (unset: {shard_d['cache_shards']})",
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
        "a fitted MODEL (model.impute): mean and covariance (every family; diagonal for mvrnn),\n"
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
        # this process is mmpgm's own: keep freed memory for the next batched call instead of
        # page-faulting it in again (up to 40% of a Kalman smoother call; mmpgm/_malloc.py)
        retain_freed_memory()
        return args.func(args)
    except _user_errors() as err:
        if debug:
            raise
        print(f"mmpgm: error: {_message(err)}", file=sys.stderr)
        return 2
