"""A small version of the paper's audio-visual speech-activity experiment (section 7, Table 1).

Generates a GRID-layout corpus (espeak-ng speech, a real face photograph; see
``data_prep/synth_grid.py``), prepares it with 0 dB babble noise and a bright video patch over
20-30 frames, trains one expert per stream (audio log-mel, mouth DCT, optical flow) on some
speakers, fits a conditional gate on their out-of-fold predictions (cross-fitting,
:mod:`mmpgm.inference.cross_fit`: every training speaker scored by experts that never saw it),
and reports
per-frame accuracy on an unseen speaker together with the gate's weight on the video experts
inside and outside the corrupted video segments. ``benchmarks/av_speech_activity.py`` is the
full experiment (all gates, co-learning, audio-only peer detectors).
"""

from __future__ import annotations

import os
import tempfile

import torch

from ..data import MultimodalData

STREAMS = ("audio", "image", "flow")


def _accuracy(prob, y, valid):
    return float((((prob > 0.5).long() == y) & valid).sum() / valid.sum())


def run_av_demo(out_dir: str | None = None, smoke: bool = False, seed: int = 0) -> dict:
    """Run the demo; returns ``{"accuracy": {...}, "gate_video": {"inside", "outside"}, ...}``.

    Needs the ``prep`` extra (librosa, OpenCV) and the ``espeak-ng`` program.
    """
    from data_prep.grid import prepare_grid
    from data_prep.synth_grid import make_synth_grid

    from ..inference.cross_fit import fit_cross_fitted
    from ..models.mixture import GatedMixture

    num_speakers, num_utterances = (3, 3) if smoke else (5, 8)
    root = tempfile.mkdtemp(prefix="mmpgm_av_") if out_dir is None else out_dir
    corpus = os.path.join(root, "corpus")
    make_synth_grid(corpus, num_speakers=num_speakers, num_utterances=num_utterances, seed=seed)
    npz = os.path.join(root, "babble0dB_patch.npz")
    prepare_grid(
        corpus,
        npz,
        audio_kind="logmel",
        seed=seed,
        progress=False,
        corruption={"audio_noise": "babble", "snr_db": 0.0, "video_patch": True},
    )
    data = MultimodalData.load(npz)
    speaker = data.labels["speaker"]
    test_spk = int(speaker.max())
    test = data[torch.nonzero(speaker == test_spk).flatten()]
    train = data[torch.nonzero(speaker != test_spk).flatten()]

    torch.manual_seed(seed)
    model = GatedMixture(
        data.obs_dims, gate="conditional", hidden_dim=32, context=4, gate_hidden_dim=32
    )
    fit = fit_cross_fitted(
        model,
        train,
        "speaker",
        expert_steps=20 if smoke else 100,
        gate_steps=10 if smoke else 60,
        lr=0.01,
        seed=seed,
        batch_size=16,
    )

    post = model.posterior(test)
    y = test.labels["speech"]
    valid = (y >= 0) & test.time_mask
    acc = {
        f"expert_{m}": _accuracy(post.expert_predictions[..., i], y, valid)
        for i, m in enumerate(model.modalities)
    }
    acc["equal_weights"] = _accuracy(post.expert_predictions.mean(-1), y, valid)
    acc["mixture"] = _accuracy(post.predictive, y, valid)
    video = [i for i, m in enumerate(model.modalities) if m in ("image", "flow")]
    w = post.gate_weights[..., video].sum(-1)
    corrupted = (test.labels["video_corrupted"] == 1) & test.time_mask
    clean = (test.labels["video_corrupted"] == 0) & test.time_mask
    return {
        "accuracy": acc,
        "gate_video": {"inside": float(w[corrupted].mean()), "outside": float(w[clean].mean())},
        "gate_shrinkage": fit.gate_shrinkage,
        "test_frames": int(valid.sum()),
        "speakers": num_speakers,
        "clips": num_speakers * num_utterances,
    }


def format_table(result: dict) -> str:
    lines = ["| model | accuracy (unseen speaker, babble 0 dB + video patch) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["accuracy"].items()]
    g = result["gate_video"]
    lines.append(
        f"\nmean gate weight on the video experts: {g['inside']:.2f} inside corrupted video "
        f"segments, {g['outside']:.2f} outside"
    )
    return "\n".join(lines)
