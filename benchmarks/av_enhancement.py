"""Audio-visual speech enhancement with the ratio-mask head of a gated mixture of modality
experts (paper section 4.6: an ideal-ratio-mask target; experiment set-up of section 7).

Generates a GRID-layout corpus (``data_prep.synth_grid``: espeak-ng speech, a talking face) and
prepares it (``data_prep.grid.prepare_grid(..., targets=("irm",))``) under two corruptions, each
with the video patch (a grey square over 20-30 frames):

* ``nonstationary -5 dB``: modulated pink noise with bursts (stand-in for casino noise);
* ``babble 0 dB``: other speakers of the corpus summed.

Inputs: the noisy 513-bin log-STFT averaged into 40 bands (``av_speech_activity.reduce_audio``),
mouth DCT (32) and flow (11) features. Target ``irm_bands`` ``(N, T, 40)``: the stored ideal
ratio mask (Wang's, clean speech against the added noise) averaged into the same 40 bands.
Train on all speakers but the last, test on the held-out last speaker.

Models (``GatedMixture(head="ratio_mask", mask_dim=40, target="irm_bands")``), trained with
``mmpgm.inference.cross_fit.fit_cross_fitted`` over the training speakers (gate shrinkage by
leave-one-speaker-out CV):

* ``conditional``: MLP experts on 4 past frames + the current one, conditional gate;
* ``recurrent``: causal GRU experts, recurrent gate;
* baselines: each expert alone (``expert_*`` / ``expert_gru_*``: the same final experts) and
  their equal-weight mix (``uniform_mlp`` / ``uniform_gru``);
* references: ``noisy`` (unprocessed input, mask 1) and ``ideal_band_mask`` (the target itself,
  i.e. what a perfect predictor of the target would give).

Metrics on the test speaker's frames:

* ``mask_mse``: mean squared error of the predicted band mask against ``irm_bands``;
* ``band_db_mse``: mean squared error (dB^2) of the enhanced band powers against the clean ones:
  band power = mean of ``|X_f|^2`` over the band's STFT bins, the clean ``|S_f|`` from the clean
  waveform (the corpus wav), the noisy ``|Y_f|`` from the stored features; enhanced power of band
  ``b`` = ``m_b^2`` times the noisy power; ``dB = 10 log10(P + floor)`` with one floor per
  condition, ``--floor-db`` (default 40) dB under the mean clean band power of the test frames
  (the clean clips hold digital silence, -inf dB; the floor sets how much the depth of noise
  suppression in speech pauses counts); ``band_db_mse_speech``: the same on speech frames
  only;
* ``gate_video_inside`` / ``_outside``: mean gate weight on the video experts (image + flow)
  inside / outside the corrupted video segments.

``agreement`` of the ``ideal_band_mask`` row: the largest absolute difference between the stored
IRM and the one recomputed from the waveforms rebuilt with the preparation's per-utterance random
streams (``av_speech_activity.noisy_waveforms``), over the test clips; of the ``noisy`` row: the
largest absolute difference of the stored noisy log-STFT to the rebuilt one.

One JSON line per configuration on stdout (DESIGN.md section 8, quality in ``metrics``), a
markdown table on stderr (and ``--table``), a figure at ``--out``: for one test clip, the clean,
noisy and enhanced band spectrograms and the gate weights over time.

Usage: ``python benchmarks/av_enhancement.py [--quick] [--out fig.png] [--data-dir DIR]
[--jsonl F] [--table F] [--workers K]``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import io
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `mmpgm`, `data_prep` and `_common` importable
    _here = Path(__file__).resolve().parent
    sys.path.insert(0, str(_here))
    sys.path.insert(1, str(_here.parent))
    from _common import (
        CudaPeak,
        add_device_argument,
        check_device,
        device_env,
        emit,
        env_info,
        to_cpu,
    )
    from av_speech_activity import (
        CONDITIONS,
        MODALITIES,
        NUM_BANDS,
        SHRINKAGE_GRID,
        gate_cell,
        gate_video_weights,
        noisy_waveforms,
        reduce_audio,
        split_speakers,
        write_table,
    )
else:  # pragma: no cover
    from ._common import (
        CudaPeak,
        add_device_argument,
        check_device,
        device_env,
        emit,
        env_info,
        to_cpu,
    )
    from .av_speech_activity import (
        CONDITIONS,
        MODALITIES,
        NUM_BANDS,
        SHRINKAGE_GRID,
        gate_cell,
        gate_video_weights,
        noisy_waveforms,
        reduce_audio,
        split_speakers,
        write_table,
    )

import numpy as np
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.inference.cross_fit import fit_cross_fitted, out_of_fold_scores
from mmpgm.inference.mixture import pretrain_experts
from mmpgm.models.mixture import GatedMixture

BENCH = "av_enhancement"
TARGET = "irm_bands"
FLOOR_DB = 40.0  # default dB floor under the mean clean band power (--floor-db)


# --------------------------------------------------------------------------- data
def make_corpora(
    data_dir: Path, num_speakers: int, num_utterances: int, seed: int, workers: int = 2
):
    """The speech-activity benchmark's corpus (same generated root, shared cache), prepared with
    the IRM target: ``(root, {(noise, snr): (npz, corruption)})``."""
    from data_prep.grid import prepare_grid
    from data_prep.synth_grid import make_synth_grid

    root = data_dir / f"synth_s{num_speakers}_u{num_utterances}_seed{seed}"
    if not (root / "synth_manifest.json").exists():
        make_synth_grid(
            str(root), num_speakers=num_speakers, num_utterances=num_utterances, seed=seed
        )
    out = {}
    for noise, snr in CONDITIONS:
        npz = data_dir / f"{root.name}_{noise}{int(snr)}_irm.npz"
        corruption = {"audio_noise": noise, "snr_db": snr, "video_patch": True}
        if not npz.exists():
            prepare_grid(
                str(root),
                str(npz),
                workers=workers,
                corruption=corruption,
                seed=seed,
                progress=False,
                targets=("irm",),
            )
        out[(noise, snr)] = (npz, corruption)
    return root, out


def to_bands(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(N, T, 513) -> (N, T, 40)`` band means, by ``reduce_audio`` itself (same bands as the
    audio features)."""
    return reduce_audio(MultimodalData({"audio": x}, lengths=lengths)).obs["audio"]


def with_band_target(raw: MultimodalData) -> MultimodalData:
    """40-band audio features, the 40-band IRM as ``labels["irm_bands"]`` (the 513-bin IRM
    dropped)."""
    data = reduce_audio(raw)
    labels = {k: v for k, v in data.labels.items() if k != "irm"}
    labels[TARGET] = to_bands(raw.labels["irm"], raw.lengths)
    return MultimodalData(
        data.obs, lengths=data.lengths, mask=data.mask, labels=labels, meta=data.meta
    )


def clean_band_power(root: Path, test: MultimodalData) -> torch.Tensor:
    """Band powers ``(N, T, 40)`` of the clean test waveforms (the corpus wav files)."""
    from data_prep.grid import discover
    from mmpgm.features import audio as fa

    paths = {u.uid: u.audio for u in discover(str(root))}
    T = test.num_timesteps
    out = torch.zeros(test.num_sequences, T, fa.N_BINS)
    for n, uid in enumerate(test.meta["utterance_id"]):
        mag = fa.stft_magnitude(fa.load_audio(paths[str(uid)]))
        out[n, : len(mag)] = torch.from_numpy(mag[:T]).double().pow(2).float()
    return to_bands(out, test.lengths)


def rebuild_agreement(root, raw_test, corruption, seed):
    """Max |stored - rebuilt| of the IRM and of the noisy log-STFT over the test clips."""
    from data_prep.grid import discover
    from mmpgm.features import audio as fa

    paths = {u.uid: u.audio for u in discover(str(root))}
    noisy = noisy_waveforms(root, raw_test, corruption, seed)
    irm_diff, feat_diff = 0.0, 0.0
    for n, (uid, y) in enumerate(zip(raw_test.meta["utterance_id"], noisy, strict=True)):
        L = int(raw_test.lengths[n])
        clean = fa.load_audio(paths[str(uid)])
        irm = fa.waveform_ratio_mask(clean, y)
        irm_diff = max(irm_diff, float(np.abs(irm - raw_test.labels["irm"][n, :L].numpy()).max()))
        feats = fa.audio_features(y)
        feat_diff = max(
            feat_diff, float(np.abs(feats - raw_test.obs["audio"][n, :L].numpy()).max())
        )
    return irm_diff, feat_diff


# --------------------------------------------------------------------------- metrics
class Scorer:
    """Metrics of a predicted band mask ``(N, T, 40)`` on the test speaker."""

    def __init__(
        self,
        test: MultimodalData,
        raw_test: MultimodalData,
        clean_power,
        floor_db: float = FLOOR_DB,
    ):
        from mmpgm.features.audio import LOG_EPS

        self.test = test
        self.frames = test.time_mask & ~torch.isnan(test.labels[TARGET]).all(-1)
        self.speech = self.frames & (test.labels["speech"] == 1)
        self.target = test.labels[TARGET].double()
        mag = (raw_test.obs["audio"].double().exp() - LOG_EPS).clamp_min(0)
        self.noisy_power = to_bands(mag.pow(2), raw_test.lengths).double()
        self.clean_power = clean_power.double()
        self.floor = float(self.clean_power[self.frames].mean()) * 10 ** (-floor_db / 10)

    def db(self, p):
        return 10 * torch.log10(p + self.floor)

    def __call__(self, mask: torch.Tensor, post=None) -> dict:
        mask = mask.double()
        f = self.frames
        enh = self.db(mask.pow(2) * self.noisy_power)
        err = (enh - self.db(self.clean_power)).pow(2)
        mse = (mask - self.target).pow(2).mean(-1)
        vc = f & (self.test.labels["video_corrupted"] == 1)
        out = {
            "mask_mse": round(float(mse[f].mean()), 5),
            "mask_mse_video_patched": round(float(mse[vc].mean()), 5),
            "band_db_mse": round(float(err[f].mean()), 3),
            "band_db_mse_speech": round(float(err[self.speech].mean()), 3),
            "frames": int(f.sum()),
            "speech_frames": int(self.speech.sum()),
            "bands": int(mask.shape[-1]),
            "db_floor": round(float(10 * np.log10(self.floor)), 2),
        }
        if post is not None:
            out.update(gate_video_weights(post, self.test))
            out.pop("gate_counts")
        return out


def equal_weight_mix(post) -> torch.Tensor:
    """Mean of the observed experts' masks (the gate fixed at 1/M over the observed streams)."""
    avail = (post.gate_weights > 0).to(post.expert_predictions.dtype)
    w = avail / avail.sum(-1, keepdim=True).clamp_min(1)
    return (w[..., None] * post.expert_predictions).sum(-2)


# --------------------------------------------------------------------------- models
def build(gate: str, expert: str, args) -> GatedMixture:
    torch.manual_seed(args.seed)
    dims = {"audio": NUM_BANDS, "image": 32, "flow": 11}
    model = GatedMixture(
        dims,
        gate=gate,
        head="ratio_mask",
        mask_dim=NUM_BANDS,
        target=TARGET,
        expert=expert,
        hidden_dim=args.hidden,
        context=args.context if expert == "mlp" else 0,
        gate_hidden_dim=args.hidden,
        expert_weight=1.0,
    )
    return model.to(args.device)  # the fits move the data to the model's device


SETS = (("mlp", "conditional", ""), ("recurrent", "recurrent", "_gru"))


def _shrink_toward() -> str:
    """What ``fit_cross_fitted`` shrinks the gate toward by default (recorded in the JSON: the
    option appeared after the first version, which always shrank toward equal weights)."""
    p = inspect.signature(fit_cross_fitted).parameters.get("shrink_toward")
    return "uniform" if p is None else str(p.default)


def run_condition(train, test, score, args, emit_row):
    """Both expert sets: experts alone, their equal-weight mix, the cross-fitted mixture.
    Returns ``{name: (metrics, mask, posterior)}`` of the mixtures."""
    kw = dict(lr=args.lr, batch_size=args.batch, seed=args.seed)
    mixtures = {}
    for expert, gate, tag in SETS:
        t0 = time.perf_counter()
        base = build(gate, expert, args)
        scores, evidence, _ = out_of_fold_scores(
            base, train, "speaker", expert_steps=args.pretrain_steps, **kw
        )
        final = copy.deepcopy(base)
        pretrain_experts(final, train, num_steps=args.pretrain_steps, **kw)
        expert_secs = time.perf_counter() - t0
        post = to_cpu(final.posterior(test))  # scored against the CPU labels
        kind = "causal GRU" if expert == "recurrent" else f"MLP, context {args.context}"
        for i, m in enumerate(MODALITIES):
            emit_row(
                f"expert{tag}_{m}",
                score(post.expert_predictions[..., i, :]),
                extra={"model": f"unimodal expert ({kind})", "modality": m},
            )
        emit_row(
            f"uniform{tag or '_mlp'}",
            score(equal_weight_mix(post)),
            extra={"model": f"experts ({kind}), gate fixed at 1/M (not learned)"},
        )
        model = build(gate, expert, args)
        model.experts.load_state_dict(final.experts.state_dict())
        model.standardizers.load_state_dict(final.standardizers.state_dict())
        res = fit_cross_fitted(
            model,
            train,
            "speaker",
            expert_steps=args.pretrain_steps,
            gate_steps=args.steps,
            gate_shrinkage=SHRINKAGE_GRID,
            refit_experts=False,
            out_of_fold=(scores, evidence),
            **kw,
        )
        post = to_cpu(model.posterior(test, causal=True))
        met = score(post.predictive, post)
        met["gate_shrinkage"] = res.gate_shrinkage
        emit_row(
            gate,
            met,
            seconds=expert_secs + res.seconds,
            extra={
                "model": "GatedMixture(head='ratio_mask')",
                "gate": gate,
                "expert": expert,
                "context": model._config["context"],
                "steps": args.steps,
                "pretrain_steps": args.pretrain_steps,
                "training": "cross-fitted: out-of-fold expert scores per training speaker, "
                "one gate on all, shrinkage by leave-one-speaker-out CV",
                "shrinkage_cv": {str(k): round(v, 4) for k, v in res.shrinkage_cv.items()},
                "shrink_toward": _shrink_toward(),
            },
        )
        mixtures[gate] = (met, post.predictive, post)
    return mixtures


# --------------------------------------------------------------------------- figure
def save_figure(path, score, mask, post, n, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = score.test
    L = int(test.lengths[n])
    clean = score.db(score.clean_power[n, :L]).numpy()
    noisy = score.db(score.noisy_power[n, :L]).numpy()
    enh = score.db(mask[n, :L].double().pow(2) * score.noisy_power[n, :L]).numpy()
    vmax = float(max(clean.max(), noisy.max()))
    vmin = max(float(clean.min()), vmax - 80)
    vc = test.labels["video_corrupted"][n, :L].numpy()
    on = np.flatnonzero(vc == 1)
    fig, axes = plt.subplots(
        4, 1, figsize=(9, 9), sharex=True, gridspec_kw={"height_ratios": [1, 1, 1, 0.8]}
    )
    panels = [
        (clean, "(a) clean"),
        (noisy, "(b) noisy input"),
        (enh, "(c) enhanced: predicted band mask x noisy"),
    ]
    for ax, (img, name) in zip(axes[:3], panels, strict=True):
        im = ax.imshow(
            img.T,
            origin="lower",
            aspect="auto",
            vmin=vmin,
            vmax=vmax,
            cmap="magma",
            extent=(-0.5, L - 0.5, -0.5, img.shape[1] - 0.5),
            interpolation="nearest",
        )
        err = float(np.mean((img - clean) ** 2)) if name[1] != "a" else None
        ax.set_title(
            name + ("" if err is None else f"  (band dB MSE vs clean {err:.1f})"), fontsize=10
        )
        ax.set_ylabel("band (0-8 kHz)")
    fig.colorbar(im, ax=axes[:3], label="band power (dB)", fraction=0.03, pad=0.01)
    ax = axes[3]
    t = np.arange(L)
    ax.stackplot(
        t,
        *[post.gate_weights[n, :L, i].numpy() for i in range(len(MODALITIES))],
        labels=list(MODALITIES),
        alpha=0.85,
    )
    if len(on):
        for a in axes:
            a.axvspan(
                on[0] - 0.5,
                on[-1] + 0.5,
                fill=False,
                edgecolor="red",
                lw=1.5,
                hatch="//" if a is ax else None,
                label="video corrupted" if a is ax else None,
            )
    sp = test.labels["speech"][n, :L].numpy()
    ax.step(t, sp, where="mid", color="k", lw=1, label="speech (truth)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("gate weight")
    ax.set_xlabel("frame (25 fps)")
    ax.set_title("(d) gate weights", fontsize=10)
    ax.legend(fontsize=7, loc="lower right", ncol=5)
    fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny corpus (3 speakers x 4 clips) and few steps (CI smoke)",
    )
    ap.add_argument("--out", default="av_enhancement.png", help="figure path")
    ap.add_argument(
        "--data-dir", default=None, help="where corpora are generated/cached (default: a temp dir)"
    )
    ap.add_argument("--speakers", type=int, default=None)
    ap.add_argument("--utterances", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="gate fit epochs")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="expert training epochs")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument(
        "--context",
        type=int,
        default=4,
        help="past frames stacked to the MLP experts' and conditional gate's inputs",
    )
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="data preparation processes")
    ap.add_argument(
        "--floor-db",
        type=float,
        default=FLOOR_DB,
        help="band powers are floored this many dB under the mean clean band power",
    )
    ap.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--table", default=None, help="also write the markdown table to this file")
    add_device_argument(ap, "the mixtures (expert pretraining, cross-fitting, posteriors)")
    args = ap.parse_args(argv)
    try:
        args.device = check_device(args.device)
    except ValueError as err:
        ap.error(str(err))
    q = args.quick
    args.speakers = args.speakers or (3 if q else 5)
    args.utterances = args.utterances or (4 if q else 16)
    args.steps = args.steps or (10 if q else 60)
    args.pretrain_steps = args.pretrain_steps or (10 if q else 60)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="av_enh_")
        data_dir = Path(tmp.name)
    else:
        data_dir = Path(args.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    root, corpora = make_corpora(data_dir, args.speakers, args.utterances, args.seed, args.workers)
    t_data = time.perf_counter() - t_start
    env = env_info({"mmpgm": mmpgm.__version__, **device_env(args.device)})
    rows = []
    best_fig = None

    for (noise, snr), (npz, corruption) in corpora.items():
        cond = f"{noise}{int(snr)}dB+patch"
        raw = MultimodalData.load(npz)
        data = with_band_target(raw)
        train, test, test_speaker = split_speakers(data)
        _, raw_test, _ = split_speakers(raw, test_speaker)
        score = Scorer(test, raw_test, clean_band_power(root, raw_test), args.floor_db)
        base = {
            "noise": noise,
            "snr_db": snr,
            "video_patch": True,
            "train_clips": train.num_sequences,
            "test_clips": test.num_sequences,
            "test_speaker": test_speaker,
            "frames_per_s": 25,
            "target": "IRM (sqrt |S|^2/(|S|^2+|N|^2)) averaged into 40 bands",
            "device": args.device,
        }

        peak = CudaPeak(args.device)

        def emit_row(
            name, metrics, *, seconds=None, agreement=None, extra=None, base=base, cond=cond,
            peak=peak,
        ):  # fmt: skip
            rec = {
                "benchmark": BENCH,
                "config": dict(base, name=f"{cond}/{name}", **(extra or {})),
                "median_s": {} if seconds is None else {"mmpgm": round(seconds, 3)},
                "speedup": {},
                # --device cuda: peak CUDA memory of the condition's fits up to this row
                "peak_mib": {} if (mib := peak.so_far_mib()) is None else {"mmpgm": mib},
                # the references (noisy input, ideal mask) are computed, not run, on the CPU
                "devices": {"mmpgm": "cpu" if name in ("noisy", "ideal_band_mask")
                            else args.device},  # fmt: skip
                "agreement": agreement or {},
                "metrics": {"mmpgm": metrics},
                "env": env,
            }
            emit(rec)
            if args.jsonl:
                with open(args.jsonl, "a") as fh:
                    emit(rec, fh)
            rows.append((cond, name, metrics))

        irm_diff, feat_diff = rebuild_agreement(root, raw_test, corruption, args.seed)
        emit_row(
            "noisy",
            score(torch.ones_like(test.labels[TARGET])),
            agreement={"noisy_log_stft_rebuilt": feat_diff},
            extra={"model": "unprocessed noisy input (mask 1)"},
        )
        ideal = torch.nan_to_num(test.labels[TARGET], nan=1.0)
        emit_row(
            "ideal_band_mask",
            score(ideal),
            agreement={"irm_rebuilt": irm_diff},
            extra={"model": "oracle: the target band mask itself (a perfect predictor)"},
        )
        with peak:
            mixtures = run_condition(train, test, score, args, emit_row)
        if noise == "babble" or best_fig is None:
            name = min(mixtures, key=lambda k: mixtures[k][0]["band_db_mse"])
            met, mask, post = mixtures[name]
            vc = test.labels["video_corrupted"]
            n = int(torch.argmax((vc == 1).sum(1)))
            best_fig = (
                score,
                mask,
                post,
                n,
                f"{cond}, {name} mixture, held-out speaker {test_speaker}, "
                f"clip {test.meta['utterance_id'][n]}",
            )

    save_figure(args.out, *best_fig)
    total = time.perf_counter() - t_start
    out = io.StringIO()
    out.write(
        "\n| condition | model | mask MSE | mask MSE in patched video | band dB MSE "
        "| band dB MSE (speech frames) | gate on video in / out corrupted |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for cond, name, met in rows:
        gv = gate_cell(met)
        out.write(
            f"| {cond} | {name} | {met['mask_mse']:.4f} | {met['mask_mse_video_patched']:.4f} | "
            f"{met['band_db_mse']:.2f} | {met['band_db_mse_speech']:.2f} | {gv} |\n"
        )
    out.write(f"\nfigure: {args.out}; corpora {t_data:.0f} s, total {total:.0f} s\n")
    write_table(out.getvalue(), args.table)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
