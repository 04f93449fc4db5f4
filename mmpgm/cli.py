"""The ``mmpgm`` command line: ``demo``, ``fit``, ``infer``, ``prep``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


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

    data = mmpgm.MultimodalData.load(args.data)
    model = mmpgm.MultimodalHMM(
        data.obs_dims,
        num_shared_states=args.shared,
        num_private_states=args.private,
        emission=args.emission,
    )
    res = mmpgm.fit(
        model,
        data,
        method=args.method,
        num_steps=args.steps,
        seed=args.seed,
        num_restarts=args.restarts,
        progress=args.progress,
    )
    model.save(args.out)
    print(
        json.dumps(
            {
                "final_loss_per_frame": res.final_loss,
                "steps": res.num_steps,
                "converged": res.converged,
                "model": args.out,
            }
        )
    )
    return 0


def _infer(args) -> int:
    import numpy as np

    import mmpgm

    model = mmpgm.load_model(args.model)
    data = mmpgm.MultimodalData.load(args.data)
    post = mmpgm.infer(model, data, causal=args.causal)
    arrays = {f"marginals/{k}": v.numpy() for k, v in post.marginals.items()}
    arrays.update({f"map/{k}": v.numpy() for k, v in post.map.items()})
    arrays["log_likelihood"] = post.log_likelihood.numpy()
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}")
    return 0


def _prep(args, rest) -> int:
    if args.dataset == "grid":
        from data_prep import grid

        return grid.main(rest)
    from data_prep import synth_grid

    return synth_grid.main(rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmpgm", description="Multimodal probabilistic graphical models"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="fit the multimodal HMM to an embedded synthetic dataset ('hmm', default), "
        "or run a small audio-visual speech-activity experiment ('av')",
    )
    d.add_argument("which", nargs="?", default="hmm", choices=["hmm", "av"])
    d.add_argument("--smoke", action="store_true", help="tiny, fast version (CI)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="mmpgm_demo", help="folder for the figure and JSON summary")
    f = sub.add_parser("fit", help="fit a MultimodalHMM to a MultimodalData .npz")
    f.add_argument("data")
    f.add_argument("--out", required=True, help="model file to write")
    f.add_argument("--shared", type=int, default=2)
    f.add_argument("--private", type=int, default=1)
    f.add_argument("--emission", default="diag", choices=["diag", "full", "categorical"])
    f.add_argument("--method", default="em", choices=["em", "svi"])
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--restarts", type=int, default=1)
    f.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("infer", help="posterior marginals and MAP paths of a fitted model")
    i.add_argument("model")
    i.add_argument("data")
    i.add_argument("--out", required=True)
    i.add_argument("--causal", action="store_true")
    p = sub.add_parser("prep", help="prepare data (see data_prep/README.md)")
    p.add_argument("dataset", choices=["grid", "synth-grid"])
    for sp in (d, f):
        sp.add_argument("--progress", action="store_true", default=None, help="show a progress bar")
    args, rest = parser.parse_known_args(argv)
    if args.command != "prep" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        return _demo(args)
    if args.command == "fit":
        return _fit(args)
    if args.command == "infer":
        return _infer(args)
    return _prep(args, rest)


if __name__ == "__main__":
    sys.exit(main())
