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
    import torch

    import mmpgm
    from mmpgm.datasets import demo_hmm
    from mmpgm.diagnostics import align_params, permute_params, state_accuracy
    from mmpgm.plots import plot_streams_with_states

    torch.manual_seed(args.seed)
    N, T, N_test = (30, 50, 10) if args.smoke else (100, 100, 40)
    truth = demo_hmm(seed=args.seed)
    train, latents = truth.sample(N, T, seed=args.seed)
    test, _ = truth.sample(N_test, T, seed=args.seed + 1)
    print(f"data: {N} training and {N_test} held-out sequences of {T} frames; streams "
          + ", ".join(f"{m} ({d}-d)" for m, d in train.obs_dims.items()))
    print("true model: 3 shared states, 2 private states per stream")
    model = mmpgm.MultimodalHMM(train.obs_dims, num_shared_states=3, num_private_states=2).double()
    t0 = time.perf_counter()
    res = mmpgm.fit(model, train, method="em", num_steps=20 if args.smoke else 200,
                    num_restarts=3, seed=args.seed, progress=args.progress)
    elapsed = time.perf_counter() - t0
    post = mmpgm.infer(model, train)
    acc, _ = state_accuracy(latents["shared"], post.map["shared"], 3)
    frames = N_test * T
    with torch.no_grad():
        ll_fit = float(model.log_likelihood(test).sum()) / frames
        ll_true = float(truth.log_likelihood(test).sum()) / frames
    fitted = permute_params(model.params, *align_params(truth.params, model.params))
    trans_err = float((fitted.shared_transition - truth.params.shared_transition).abs().max())
    # impute the video stream of the held-out data from audio and flow
    imp = model.impute(test, "video")
    rmse = float(((imp.mean - test.obs["video"]) ** 2).mean().sqrt())
    base = float(((train.obs["video"].mean((0, 1)) - test.obs["video"]) ** 2).mean().sqrt())
    summary = {
        "fit_seconds": round(elapsed, 2),
        "em_iterations": res.num_steps,
        "shared_state_accuracy": round(acc, 4),
        "heldout_loglik_per_frame": {"fitted": round(ll_fit, 4), "true_model": round(ll_true, 4)},
        "shared_transition_max_abs_error": round(trans_err, 4),
        "video_imputation_rmse": {"from_audio_and_flow": round(rmse, 4), "predict_mean": round(base, 4)},
    }
    print(f"fitted by EM in {elapsed:.1f} s ({res.num_steps} iterations)")
    print(f"shared-state accuracy after label alignment: {acc:.3f}")
    print(f"held-out log-likelihood per frame: fitted {ll_fit:.4f}, true model {ll_true:.4f} "
          f"(gap {ll_true - ll_fit:+.4f} nats)")
    print(f"shared transition matrix, max abs error: {trans_err:.4f}")
    print(f"video imputed from audio+flow: RMSE {rmse:.3f} (predicting the mean: {base:.3f})")
    os.makedirs(args.out, exist_ok=True)
    fig = plot_streams_with_states(test, mmpgm.infer(model, test), index=0, true_states=None,
                                   imputation=imp, imputed_modality="video")
    path = os.path.join(args.out, "hmm_demo.png")
    fig.savefig(path, dpi=110)
    with open(os.path.join(args.out, "hmm_demo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"figure: {path}")
    return 0


def _demo_av(args) -> int:
    from mmpgm.datasets.av_demo import format_table, run_av_demo
    from mmpgm.features import missing_av_requirements

    missing = missing_av_requirements()
    if missing:
        print("mmpgm demo av needs " + " and ".join(missing), file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    print("generating a GRID-layout corpus (espeak-ng speech, a real face photo), preparing it with "
          "0 dB babble and a video patch, training experts and a conditional gate ...")
    t0 = time.perf_counter()
    result = run_av_demo(os.path.join(args.out, "av"), smoke=args.smoke, seed=args.seed)
    print(format_table(result))
    print(f"({result['clips']} clips of {result['speakers']} speakers, {result['test_frames']} test frames; "
          f"{time.perf_counter() - t0:.0f} s)")
    with open(os.path.join(args.out, "av_demo.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


def _fit(args) -> int:
    import mmpgm

    data = mmpgm.MultimodalData.load(args.data)
    model = mmpgm.MultimodalHMM(data.obs_dims, num_shared_states=args.shared, num_private_states=args.private,
                                emission=args.emission)
    res = mmpgm.fit(model, data, method=args.method, num_steps=args.steps, seed=args.seed,
                    num_restarts=args.restarts, progress=args.progress)
    model.save(args.out)
    print(json.dumps({"final_loss_per_frame": res.final_loss, "steps": res.num_steps,
                      "converged": res.converged, "model": args.out}))
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
    parser = argparse.ArgumentParser(prog="mmpgm", description="Multimodal probabilistic graphical models")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="fit the multimodal HMM to an embedded synthetic dataset ('hmm', default), "
                                    "or run a small audio-visual speech-activity experiment ('av')")
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
