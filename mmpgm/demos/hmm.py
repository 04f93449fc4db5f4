"""The embedded multimodal-HMM demo behind ``mmpgm demo``: sample from a known model, fit a new
one by EM, and report how much of the truth came back (states, likelihood, transitions, an
imputed stream), with a figure."""

from __future__ import annotations

import json
import os
import time

import torch

from ..api import fit, infer
from ..datasets import demo_hmm
from ..diagnostics import align_params, permute_params, state_accuracy
from ..models.hmm import MultimodalHMM
from ..plots import plot_streams_with_states

__all__ = ["run_hmm_demo"]


def run_hmm_demo(out_dir: str, *, smoke: bool = False, seed: int = 0, progress=None) -> dict:
    """Run the demo, print what it measures, write ``hmm_demo.png`` and ``hmm_demo.json`` to
    ``out_dir``, and return the summary dict."""
    N, T, N_test = (30, 50, 10) if smoke else (100, 100, 40)
    truth = demo_hmm(seed=seed)
    train, latents = truth.sample(N, T, seed=seed)
    test, _ = truth.sample(N_test, T, seed=seed + 1)
    print(
        f"data: {N} training and {N_test} held-out sequences of {T} frames; streams "
        + ", ".join(f"{m} ({d}-d)" for m, d in train.obs_dims.items())
    )
    print("true model: 3 shared states, 2 private states per stream")
    model = MultimodalHMM(train.obs_dims, num_shared_states=3, num_private_states=2).double()
    t0 = time.perf_counter()
    res = fit(
        model,
        train,
        method="em",
        num_steps=20 if smoke else 200,
        num_restarts=3,
        seed=seed,
        progress=progress,
    )
    elapsed = time.perf_counter() - t0
    post = infer(model, train)
    acc, _ = state_accuracy(latents["shared"], post.map["shared"], 3)
    frames = N_test * T
    with torch.no_grad():
        ll_fit = float(model.log_likelihood(test).sum()) / frames
        ll_true = float(truth.log_likelihood(test).sum()) / frames
    fitted = permute_params(model.params, *align_params(truth.params, model.params))
    trans_err = float(
        (fitted.shared_transition_probs - truth.params.shared_transition_probs).abs().max()
    )
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
        "video_imputation_rmse": {
            "from_audio_and_flow": round(rmse, 4),
            "predict_mean": round(base, 4),
        },
    }
    print(f"fitted by EM in {elapsed:.1f} s ({res.num_steps} iterations)")
    print(f"shared-state accuracy after label alignment: {acc:.3f}")
    print(
        f"held-out log-likelihood per frame: fitted {ll_fit:.4f}, true model {ll_true:.4f} "
        f"(gap {ll_true - ll_fit:+.4f} nats)"
    )
    print(f"shared transition matrix, max abs error: {trans_err:.4f}")
    print(f"video imputed from audio+flow: RMSE {rmse:.3f} (predicting the mean: {base:.3f})")
    os.makedirs(out_dir, exist_ok=True)
    fig = plot_streams_with_states(
        test,
        infer(model, test),
        index=0,
        true_states=None,
        imputation=imp,
        imputed_modality="video",
    )
    path = os.path.join(out_dir, "hmm_demo.png")
    fig.savefig(path, dpi=110)
    with open(os.path.join(out_dir, "hmm_demo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"figure: {path}")
    return summary
