"""Audio-visual speech activity detection with gated mixtures of modality experts (paper
section 7, Table 1, Fig. 17-18; issue 7).

Generates a GRID-layout corpus (``data_prep.synth_grid``, espeak-ng speech and a talking
face), prepares it twice (``data_prep.grid.prepare_grid``) under the paper's corruptions:

* ``nonstationary -5 dB``: modulated pink noise with bursts (stand-in for casino noise);
* ``babble 0 dB``: other speakers of the corpus summed;

both with the video patch (a grey square over 20-30 frames). Audio features: the 513-bin
log-STFT averaged into 40 bands. Trains on all speakers but the last, tests on the held-out
speaker, and reports per-frame accuracy and F1 (speech = positive) for

* unimodal experts alone (audio, image, flow; each trained by itself),
* conditional / Markov / recurrent gated mixtures, each with and without co-learning,
* audio-only peers ``webrtcvad`` (``webrtcvad-wheels``) and ``silero-vad`` on the same noisy
  16 kHz waveforms (rebuilt with the preparation's per-utterance random streams and checked
  against the stored features), skipped with the reason when not importable,
* the unimodal experts again as causal GRUs (``expert_gru_*``), and the equal-weight mix of each
  expert set (``uniform_gate_reference*``, a gate fixed at 1/3: the reference a learned gate
  must beat),

plus the mean gate weight on the video experts (image + flow) inside vs outside the corrupted
video segments. One JSON line per configuration (DESIGN.md section 8, ``metrics`` field), a
Table-1-like markdown table on stderr, and a figure like Fig. 17-18 (experts' outputs and gate
weights over a test clip, corrupted video segment shaded) at ``--out``.

Mixture training (default ``--training crossfit``, :mod:`mmpgm.inference.cross_fit`): every
training speaker is scored by experts trained on the other training speakers (out-of-fold), one
gate is fit on all training speakers' out-of-fold scores, shrunk toward equal weights by a
KL penalty whose weight is chosen by leave-one-speaker-out validation, and the final experts are
trained on all training speakers. Four expert sets (MLP or GRU experts, with or without
co-learning) are fit once each and shared by the gates that use them. ``--training staged``
(experts on all training speakers but one, the gate on that one, Appendix-A EM) and
``--training joint`` (everything on all training speakers) are the earlier recipes: trained
jointly the gate collapsed onto the audio expert, which memorizes the training speakers'
babble; staged, the gate saw a single speaker and did not transfer. The ``timing_*`` rows
compare Appendix-A EM with plain ``TraceEnum_ELBO`` SVI (and the collapsed loss) on the same
joint fit and number of gradient steps (first noise condition).

``--test-speakers all`` holds out each speaker in turn (leave-one-speaker-out) and reports every
row pooled over all test frames, with the per-speaker accuracies.

``--test-corpus B`` (issue 12; :mod:`_av_transfer`): train on corpus A (all its speakers,
prepared clean and with augmentation: noise kinds incl. babble of voices in no corpus, SNR and
gain ranges, patch shapes, framing jitter), score on corpus B, made with other voices, face
photograph, levels and patch shapes (``data_prep.synth_grid --variant B``);
``--val-corpus C`` chooses the gates' shrinkage and the reported mixture on a third corpus.
Features are running-normalized per utterance by default (``--normalize``), the image stream
is the mouth DCT's frame-to-frame differences (``--image-features delta``) and every system's
p(speech) is filtered causally by a two-state label chain (``--smooth hmm``). Rows: the
experts, the equal-weight mix, conditional / Markov gates reading the features, the
reliability inputs (novelty, disagreement; :mod:`mmpgm.models.mixture.reliability`) or both,
the label-free per-utterance agreement combiners (Dawid-Skene EM,
:meth:`mmpgm.models.mixture.GatedMixture.agreement`), silero-vad and webrtcvad, and a
``summary`` row with the issue's targets; gate weights on the video experts inside / outside
the patch and on the frames whose patch covers the mouth.

Usage: ``python benchmarks/av_speech_activity.py [--quick] [--out fig.png] [--data-dir DIR]
[--jsonl F] [--table F] [--training {crossfit,staged,joint}] [--test-speakers {last,all}]
[--seed S] [--test-corpus B [--val-corpus C] [--normalize {running,speaker,none}]]
[--device cuda[:i]]``.

``--device cuda[:i]``: every mixture is moved there (``.to(device)``: expert pretraining,
cross-fitting, gates, posteriors; the data follow) and its posterior comes back to the CPU to be
scored; the audio-only peers (webrtcvad, silero-vad) run on the CPU. ``"devices"`` in each row
says where it ran, ``peak_mib`` the peak CUDA memory of the fold's fits up to that row.
"""

from __future__ import annotations

import argparse
import copy
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

import numpy as np
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.inference.cross_fit import fit_cross_fitted, out_of_fold_scores
from mmpgm.inference.mixture import fit_gate, pretrain_experts
from mmpgm.models.mixture import GatedMixture

BENCH = "av_speech_activity"
CONDITIONS = [("nonstationary", -5.0), ("babble", 0.0)]
MODALITIES = ("audio", "image", "flow")
NUM_BANDS = 40
SHRINKAGE_GRID = (0.0, 0.1, 0.3, 1.0, 3.0)
PEERS = ("webrtcvad", "silero_vad")
MIXTURES = (
    "conditional",
    "markov",
    "conditional_colearn",
    "markov_colearn",
    "recurrent",
    "recurrent_colearn",
)


# --------------------------------------------------------------------------- data
def make_corpora(data_dir: Path, num_speakers: int, num_utterances: int, seed: int):
    from data_prep.grid import prepare_grid
    from data_prep.synth_grid import make_synth_grid

    root = data_dir / f"synth_s{num_speakers}_u{num_utterances}_seed{seed}"
    if not (root / "synth_manifest.json").exists():
        make_synth_grid(
            str(root), num_speakers=num_speakers, num_utterances=num_utterances, seed=seed
        )
    out = {}
    for noise, snr in CONDITIONS:
        npz = data_dir / f"{root.name}_{noise}{int(snr)}.npz"
        corruption = {"audio_noise": noise, "snr_db": snr, "video_patch": True}
        if not npz.exists():
            prepare_grid(
                str(root), str(npz), workers=2, corruption=corruption, seed=seed, progress=False
            )
        out[(noise, snr)] = (npz, corruption)
    return root, out


def reduce_audio(data: MultimodalData) -> MultimodalData:
    """513-bin log-STFT -> 40 band means (contiguous bins)."""
    a = data.obs["audio"]
    edges = np.linspace(0, a.shape[-1], NUM_BANDS + 1).round().astype(int)
    pairs = zip(edges[:-1], edges[1:], strict=True)
    bands = torch.stack([a[..., lo:hi].mean(-1) for lo, hi in pairs], -1)
    obs = dict(data.obs)
    obs["audio"] = bands
    return MultimodalData(
        obs, lengths=data.lengths, mask=data.mask, labels=data.labels, meta=data.meta
    )


def speaker_normalize(data: MultimodalData) -> MultimodalData:
    """Standardize every feature per speaker (mean/std over that speaker's observed frames), as
    speaker-level CMVN in VAD front ends. For the held-out speaker this uses all of its clips
    (offline enrollment statistics; within a clip, frames after t inform the scaling at t)."""
    spk = data.labels["speaker"]
    obs = {}
    for m, x in data.obs.items():
        x = x.clone()
        for s in spk.unique():
            rows = spk == s
            xs, mk = x[rows], data.mask[m][rows]
            v = xs[mk]
            x[rows] = (xs - v.mean(0)) / v.std(0).clamp_min(1e-6)
        obs[m] = x
    return MultimodalData(
        obs, lengths=data.lengths, mask=data.mask, labels=data.labels, meta=data.meta
    )


def split_speakers(data: MultimodalData, test_id: int | None = None):
    """``(train, test, test_id)``: the test speaker (default: the last one) against all others."""
    spk = data.labels["speaker"]
    test_id = int(spk.max()) if test_id is None else int(test_id)
    test = spk == test_id
    tr, te = torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()
    train, held = data[tr], data[te]
    uids = np.asarray(data.meta["utterance_id"]).reshape(-1)
    train.meta["utterance_id"], held.meta["utterance_id"] = (
        list(uids[tr.numpy()]),
        list(uids[te.numpy()]),
    )
    return train, held, test_id


# --------------------------------------------------------------------------- metrics
def frame_metrics(pred: torch.Tensor, data: MultimodalData) -> dict:
    y = data.labels["speech"]
    keep = (y >= 0) & data.time_mask
    p, t = pred[keep].long(), y[keep].long()
    tp = int(((p == 1) & (t == 1)).sum())
    fp = int(((p == 1) & (t == 0)).sum())
    fn = int(((p == 0) & (t == 1)).sum())
    acc = float((p == t).double().mean())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    vc = (data.labels["video_corrupted"] == 1)[keep]
    acc_vc = float((p[vc] == t[vc]).double().mean()) if bool(vc.any()) else float("nan")
    return {
        "accuracy": round(acc, 4),
        "f1": round(f1, 4),
        "frames": int(keep.sum()),
        "accuracy_video_patched": round(acc_vc, 4),
        "counts": {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "correct": int((p == t).sum()),
            "patched_correct": int((p[vc] == t[vc]).sum()),
            "patched_frames": int(vc.sum()),
        },
    }


def gate_video_weights(post, data: MultimodalData) -> dict:
    w = post.gate_weights[..., 1] + post.gate_weights[..., 2]  # image + flow
    image = post.gate_weights[..., 1]  # the expert a patch hurts most (flow reads motion)
    vc = data.labels["video_corrupted"]
    inside = (vc == 1) & data.time_mask
    outside = (vc == 0) & data.time_mask
    return {
        "gate_video_inside": round(float(w[inside].mean()), 4),
        "gate_video_outside": round(float(w[outside].mean()), 4),
        "gate_image_inside": round(float(image[inside].mean()), 4),
        "gate_image_outside": round(float(image[outside].mean()), 4),
        "gate_counts": {
            "inside_sum": float(w[inside].sum()),
            "inside_frames": int(inside.sum()),
            "outside_sum": float(w[outside].sum()),
            "outside_frames": int(outside.sum()),
        },
    }


def pool_metrics(per_fold: list) -> dict:
    """Metrics over the union of several test speakers' frames (from the per-fold counts)."""
    c = {k: sum(m["counts"][k] for m in per_fold) for k in per_fold[0]["counts"]}
    frames = sum(m["frames"] for m in per_fold)
    out = {
        "accuracy": round(c["correct"] / max(frames, 1), 4),
        "f1": round(2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"]), 4),
        "frames": frames,
        "accuracy_video_patched": round(c["patched_correct"] / max(c["patched_frames"], 1), 4),
        "accuracy_per_speaker": [m["accuracy"] for m in per_fold],
        "counts": c,
    }
    if "gate_counts" in per_fold[0]:
        g = {k: sum(m["gate_counts"][k] for m in per_fold) for k in per_fold[0]["gate_counts"]}
        out["gate_video_inside"] = round(g["inside_sum"] / max(g["inside_frames"], 1), 4)
        out["gate_video_outside"] = round(g["outside_sum"] / max(g["outside_frames"], 1), 4)
        out["gate_counts"] = g
    if "gate_shrinkage" in per_fold[0]:
        out["gate_shrinkage_per_speaker"] = [m["gate_shrinkage"] for m in per_fold]
    return out


# --------------------------------------------------------------------------- models
def build(gate: str, co: bool, args, expert: str = "mlp") -> GatedMixture:
    torch.manual_seed(args.seed)
    dims = {"audio": NUM_BANDS, "image": 32, "flow": 11}
    model = GatedMixture(
        dims,
        gate=gate,
        expert=expert,
        hidden_dim=args.hidden,
        context=args.context,
        gate_hidden_dim=args.hidden,
        gate_recurrent=False,
        co_learning_units=args.hidden // 4 if co else 0,
        co_learning_weight=args.co_weight,
        expert_weight=1.0,
    )
    return model.to(args.device)  # the fits and posteriors move the data to its device


def mixture_config(gate: str, expert: str, co: bool, args) -> dict:
    """The JSON ``config`` fields of a mixture row."""
    return {
        "model": "GatedMixture",
        "gate": gate,
        "expert": expert,
        "co_learning": co,
        "steps": args.steps,
        "pretrain_steps": args.pretrain_steps,
    }


def gate_cell(met: dict) -> str:
    """Table cell ``inside / outside`` of the mean gate weight on the video experts ('' if none)."""
    if "gate_video_inside" not in met:
        return ""
    return f"{met['gate_video_inside']:.3f} / {met['gate_video_outside']:.3f}"


def write_table(text: str, path) -> None:
    """The markdown summary to stderr and, when ``path`` is given, to that file."""
    sys.stderr.write(text)
    if path:
        Path(path).write_text(text)


def train_kw(args) -> dict:
    """The optimizer settings every fit of this benchmark shares."""
    return dict(lr=args.lr, seed=args.seed, batch_size=args.batch)


def gate_split(train: MultimodalData):
    """Speaker-wise split of the training speakers: experts on all but the last, gate on the
    last."""
    spk = train.labels["speaker"]
    g = int(spk.max())
    return train[torch.nonzero(spk != g).flatten()], train[torch.nonzero(spk == g).flatten()]


def train_mixture(model, pretrained, train, args):
    """Staged (default): experts pre-trained on the expert speakers, then only the gate fit on the
    held-out gate speaker (experts frozen), so the gate learns how far each expert can be trusted
    on a speaker the experts never saw. ``--joint``: the former recipe (pre-training, then
    everything fit jointly on all training speakers with the collapsed loss)."""
    t0 = time.perf_counter()
    if pretrained is not None:
        for m in MODALITIES:
            model.experts[m].load_state_dict(pretrained.experts[m].state_dict())
            model.standardizers[m].load_state_dict(pretrained.standardizers[m].state_dict())
    if args.training == "joint":
        if pretrained is None:
            pretrain_experts(
                model,
                train,
                num_steps=args.pretrain_steps,
                **train_kw(args),
            )
        mmpgm.fit(
            model,
            train,
            num_steps=args.steps,
            **train_kw(args),
            patience=0,
            program="collapsed",
            progress=False,
        )
        return time.perf_counter() - t0
    experts_data, gate_data = gate_split(train)
    model.init_from_data(train)
    if pretrained is None:
        pretrain_experts(
            model,
            experts_data,
            num_steps=args.pretrain_steps,
            **train_kw(args),
        )
    method = args.gate_method if model.gating.supports_em else "svi"
    fit_gate(
        model,
        gate_data,
        num_steps=args.steps if method == "svi" else max(1, args.steps // args.m_steps),
        **train_kw(args),
        method=method,
        m_steps=args.m_steps,
    )
    return time.perf_counter() - t0


def em_vs_svi(pretrained, train, test, args, emit_row):
    """Appendix-A EM vs plain TraceEnum SVI (and the collapsed loss) on the full joint fit, from the
    same pre-trained experts, the same number of gradient steps."""
    from mmpgm.inference.em_mixture import fit_em_mixture

    steps = args.timing_steps
    for gate in ("conditional", "markov"):
        res = {}
        for how in ("svi_traceenum", "svi_collapsed", "em"):
            model = build(gate, False, args)
            for m in MODALITIES:
                model.experts[m].load_state_dict(pretrained.experts[m].state_dict())
                model.standardizers[m].load_state_dict(pretrained.standardizers[m].state_dict())
            t0 = time.perf_counter()
            if how == "em":
                fit_em_mixture(
                    model,
                    train,
                    num_iters=max(1, steps // args.m_steps),
                    m_steps=args.m_steps,
                    lr=args.lr,
                    batch_size=args.batch,
                    seed=args.seed,
                )
            else:
                mmpgm.fit(
                    model,
                    train,
                    num_steps=steps,
                    **train_kw(args),
                    patience=0,
                    progress=False,
                    program="enumerated" if how == "svi_traceenum" else "collapsed",
                )
            secs = time.perf_counter() - t0
            with torch.no_grad():
                nll = -float(model.log_likelihood(train).sum() - model.penalty(train).sum())
            frames = float((train.labels["speech"] >= 0).logical_and(train.time_mask).sum())
            post = to_cpu(model.posterior(test, causal=True))
            met = frame_metrics((post.predictive > 0.5).long(), test)
            met["train_loss_per_frame"] = round(nll / frames, 4)
            res[how] = (secs, met)
        for how, (secs, met) in res.items():
            emit_row(
                "mmpgm",
                met,
                name=f"timing_{gate}_{how}",
                seconds=secs,
                extra={
                    "model": "GatedMixture",
                    "gate": gate,
                    "trainer": how,
                    "gradient_steps_per_batch": steps,
                    "m_steps": args.m_steps,
                    "speedup_vs_traceenum": round(res["svi_traceenum"][0] / secs, 2),
                },
            )


def crossfit_mixtures(uni, train, test, args, emit_row):
    """Default recipe: cross-fitted (stacked) training, :mod:`mmpgm.inference.cross_fit`.

    Four expert sets (MLP or GRU experts, with or without co-learning); for each, the out-of-fold
    scores (every training speaker scored by experts trained on the others) and the final experts
    (all training speakers) are computed once and shared by the gates that use them. Each gate
    is fit on the out-of-fold scores of all training speakers, its shrinkage toward equal
    weights chosen by leave-one-speaker-out CV. Returns the best row ``(accuracy, name, post)``."""
    sets = []
    for expert, co, gates in [
        ("mlp", False, ("conditional", "markov")),
        ("mlp", True, ("conditional", "markov")),
        ("recurrent", False, ("recurrent",)),
        ("recurrent", True, ("recurrent",)),
    ]:
        keep = tuple(g for g in gates if f"{g}{'_colearn' if co else ''}" in args.mixtures)
        if keep or (expert, co) == ("mlp", False):  # the MLP set gives the uniform reference
            sets.append((expert, co, keep))
    kw = train_kw(args)
    best, posts = None, {}
    for expert, co, gates in sets:
        t0 = time.perf_counter()
        base = build("conditional", co, args, expert=expert)
        if gates:  # out-of-fold scores are only needed to fit a gate
            scores, evidence, _ = out_of_fold_scores(
                base, train, "speaker", expert_steps=args.pretrain_steps, **kw
            )
        if expert == "mlp" and not co:
            final = uni  # same seed, data and steps: the unimodal experts of the table
        else:
            final = copy.deepcopy(base)
            pretrain_experts(final, train, num_steps=args.pretrain_steps, **kw)
        expert_secs = time.perf_counter() - t0
        tag = ("_gru" if expert == "recurrent" else "") + ("_colearn" if co else "")
        post = to_cpu(final.posterior(test))
        if tag == "_gru":  # the GRU experts alone (single-expert baselines for the recurrent rows)
            for i, m in enumerate(MODALITIES):
                emit_row(
                    "mmpgm",
                    frame_metrics((post.expert_predictions[..., i] > 0.5).long(), test),
                    name=f"expert{tag}_{m}",
                    extra={"model": "unimodal expert (causal GRU)", "modality": m},
                )
        if not co:
            emit_row(
                "mmpgm",
                frame_metrics((post.expert_predictions.mean(-1) > 0.5).long(), test),
                name=f"uniform_gate_reference{tag}",
                extra={"model": f"experts{tag or '_mlp'}, gate fixed at 1/M (not learned)"},
            )
        for gate in gates:
            model = build(gate, co, args, expert=expert)
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
            met = frame_metrics((post.predictive > 0.5).long(), test)
            met.update(gate_video_weights(post, test))
            met["gate_shrinkage"] = res.gate_shrinkage
            name = f"{gate}{'_colearn' if co else ''}"
            emit_row(
                "mmpgm",
                met,
                name=name,
                seconds=expert_secs + res.seconds,
                extra={
                    **mixture_config(gate, expert, co, args),
                    "training": "cross-fitted: out-of-fold expert scores per training speaker, "
                    "one gate on all, shrinkage by leave-one-speaker-out CV",
                    "shrinkage_cv": {str(k): round(v, 4) for k, v in res.shrinkage_cv.items()},
                },
            )
            posts[name] = post
            if best is None or met["accuracy"] > best[0]:
                best = (met["accuracy"], name, post)
    return best, posts


def staged_or_joint_mixtures(uni, train, test, args, emit_row):
    """The former recipes (``--training staged`` / ``joint``); returns the best row
    ``(accuracy, name, posterior)``."""
    pre = uni
    if (
        args.training != "joint"
    ):  # staged: the MLP experts of the mixtures never see the gate speaker
        pre = build("conditional", False, args)
        pre.init_from_data(train)
        pretrain_experts(
            pre,
            gate_split(train)[0],
            num_steps=args.pretrain_steps,
            **train_kw(args),
        )
    if (
        args.training != "joint"
    ):  # the experts the staged mixtures use, alone, and their equal-weight mix
        post = to_cpu(pre.posterior(test))
        for i, m in enumerate(MODALITIES):
            emit_row(
                "mmpgm",
                frame_metrics((post.expert_predictions[..., i] > 0.5).long(), test),
                name=f"staged_expert_{m}",
                extra={"model": "expert of the staged mixtures (gate speaker held out)"},
            )
        emit_row(
            "mmpgm",
            frame_metrics((post.expert_predictions.mean(-1) > 0.5).long(), test),
            name="uniform_gate_reference",
            extra={"model": "staged experts, gate fixed at 1/M (not learned)"},
        )
    best, posts = None, {}
    for gate in ("conditional", "markov", "recurrent"):
        for co in (False, True):
            expert = "recurrent" if gate == "recurrent" else "mlp"
            model = build(gate, co, args, expert=expert)
            secs = train_mixture(model, pre if expert == "mlp" and not co else None, train, args)
            post = to_cpu(model.posterior(test, causal=True))
            met = frame_metrics((post.predictive > 0.5).long(), test)
            met.update(gate_video_weights(post, test))
            name = f"{gate}{'_colearn' if co else ''}"
            emit_row(
                "mmpgm",
                met,
                name=name,
                seconds=secs,
                extra={
                    **mixture_config(gate, expert, co, args),
                    "training": "joint, collapsed ELBO"
                    if args.training == "joint"
                    else "staged: experts on "
                    f"{train.num_sequences - gate_split(train)[1].num_sequences}"
                    f" clips, gate ({args.gate_method if gate != 'recurrent' else 'svi'}) on "
                    f"held-out training speaker",
                },
            )
            posts[name] = post
            if best is None or met["accuracy"] > best[0]:
                best = (met["accuracy"], name, post)
    return best, posts


# --------------------------------------------------------------------------- peers
def noisy_waveforms(root: Path, data: MultimodalData, corruption: dict, seed: int):
    """The corrupted 16 kHz waveforms exactly as ``prepare_grid`` made them (same random streams,
    through the preparation's own ``data_prep.grid.corrupt_clip``)."""
    from data_prep.grid import CorruptionConfig, _utt_rng, babble_paths, corrupt_clip, discover
    from mmpgm.features import audio as fa
    from mmpgm.features import video as fv

    cc = CorruptionConfig.coerce(dict(corruption)).validate()
    utts = discover(str(root))
    index = {u.uid: i for i, u in enumerate(utts)}
    waves = []
    for uid in data.meta["utterance_id"]:
        i = index[str(uid)]
        u = utts[i]
        y = fa.load_audio(u.audio)
        T = fa.num_frames(len(y))
        if cc.video_patch:  # the patch advances the stream exactly as the preparation did
            frames, _ = fv.read_video(u.video)
            box = fv.detect_face(frames[0])
        else:
            frames, box = np.zeros((T, 1, 1, 3), np.uint8), None
        y, _, _, _, _ = corrupt_clip(
            y, frames, box, cc, _utt_rng(seed, u.uid), _utt_rng(seed + 104729, u.uid), T,
            babble_paths(cc, utts, i, seed), str(root),
        )  # fmt: skip
        waves.append(np.asarray(y, dtype=np.float32))
    return waves


def webrtcvad_frames(waves, T, mode=2):
    import webrtcvad

    vad = webrtcvad.Vad(mode)
    out = np.zeros((len(waves), T), dtype=np.int64)
    sub = 320  # 20 ms at 16 kHz; a 40 ms frame holds two
    for n, y in enumerate(waves):
        pcm = (np.clip(y, -1, 1) * 32767).astype(np.int16)
        for t in range(T):
            votes = []
            for k in range(2):
                seg = pcm[t * 640 + k * sub : t * 640 + (k + 1) * sub]
                if len(seg) == sub:
                    votes.append(vad.is_speech(seg.tobytes(), 16000))
            out[n, t] = int(bool(votes) and np.mean(votes) >= 0.5)
    return torch.from_numpy(out)


def silero_frames(waves, T, threshold=0.5):
    from silero_vad import load_silero_vad

    model = load_silero_vad()
    out = np.zeros((len(waves), T), dtype=np.int64)
    chunk = 512
    for n, y in enumerate(waves):
        model.reset_states()
        x = torch.from_numpy(np.asarray(y, dtype=np.float32))
        probs = []
        with torch.no_grad():
            for s in range(0, len(x) - chunk + 1, chunk):
                probs.append(float(model(x[s : s + chunk], 16000)))
        probs = np.asarray(probs)
        for t in range(T):
            centre = int((t + 0.5) * 640)
            k = min(len(probs) - 1, centre // chunk)
            out[n, t] = int(probs[k] >= threshold)
    return torch.from_numpy(out)


def run_peers(root, test, corruption, seed, emit_row):
    T = test.num_timesteps
    try:
        waves = noisy_waveforms(root, test, corruption, seed)
    except Exception as exc:  # noqa: BLE001
        for peer in ("webrtcvad", "silero_vad"):
            emit_row(
                peer, None, skipped=f"noisy waveforms not rebuilt: {type(exc).__name__}: {exc}"
            )
        return
    # agreement: rebuilt waveforms give the stored log-STFT features
    from mmpgm.features import audio as fa

    feats = fa.audio_features(waves[0], 16000, kind="stft")
    stored = test.meta.get("_raw_audio0")
    # max relative difference of the first clip's log-STFT rebuilt from the waveform vs the
    # stored one
    agree = (
        None
        if stored is None
        else float(np.abs(feats - stored).max() / max(np.abs(stored).max(), 1e-300))
    )
    for peer, fn in (("webrtcvad", webrtcvad_frames), ("silero_vad", silero_frames)):
        try:
            t0 = time.perf_counter()
            pred = fn(waves, T)
            emit_row(
                peer, frame_metrics(pred, test), seconds=time.perf_counter() - t0, agreement=agree
            )
        except ImportError as exc:
            emit_row(peer, None, skipped=f"not importable: {exc}")


# --------------------------------------------------------------------------- figure
def save_figure(path, post, data, n, title, extra_gates=()):
    """Fig. 17-18 style: (a) experts' and the mixture's p(speech), (b) the mixture's gate, and one
    more gate panel per ``(name, posterior)`` in ``extra_gates`` (e.g. the conditional gate,
    which reacts more to the corrupted video than a strongly shrunk one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = int(data.lengths[n])
    t = np.arange(L)
    y = data.labels["speech"][n, :L].numpy()
    vc = data.labels["video_corrupted"][n, :L].numpy()
    extra_gates = list(extra_gates)
    rows = 2 + len(extra_gates)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.75 * rows), sharex=True)
    for ax in axes:
        on = np.flatnonzero(vc == 1)
        if len(on):
            ax.axvspan(on[0] - 0.5, on[-1] + 0.5, color="red", alpha=0.12, label="video corrupted")
    ax = axes[0]
    ax.step(t, y, where="mid", color="k", lw=2, label="speech (truth)")
    for i, m in enumerate(MODALITIES):
        ax.plot(t, post.expert_predictions[n, :L, i].numpy(), label=f"expert {m}")
    ax.plot(
        t, post.predictive[n, :L].numpy(), "--", color="purple", lw=2, label="mixture p(y=1|x<=t)"
    )
    ax.set_ylabel("p(speech)")
    ax.set_title(f"(a) expert outputs - {title}")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    panels = [("(b) gate (attention) outputs", post)]
    panels += [
        (f"({chr(ord('c') + k)}) gate of the {name} mixture", p)
        for k, (name, p) in enumerate(extra_gates)
    ]
    for ax, (panel_title, p) in zip(axes[1:], panels, strict=True):
        ax.stackplot(
            t,
            *[p.gate_weights[n, :L, i].numpy() for i in range(3)],
            labels=list(MODALITIES),
            alpha=0.8,
        )
        ax.set_ylabel("gate weight")
        ax.set_title(panel_title)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("frame (25 fps)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- transfer
def transfer(args, t_start) -> int:
    """``--test-corpus``: train on corpus A, score on another corpus (``_av_transfer``)."""
    import io

    from _av_transfer import run_transfer

    args.transfer_mixtures = tuple(
        m.strip() for m in args.transfer_mixtures.split(",") if m.strip()
    )
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="av_transfer_")
        args.data_dir = tmp.name
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    env = env_info({"mmpgm": mmpgm.__version__, **device_env(args.device)})
    trained = "A+" + args.extra_train_corpus if args.extra_train_corpus else "A"

    def factory(base, cond):
        def emit_row(impl, metrics, *, name=None, seconds=None, skipped=None, agreement=None,
                     extra=None):
            cfg = dict(base, name=f"{trained}->{args.test_corpus}/{cond}/{name or impl}",
                       **(extra or {}))
            cfg["device"] = args.device
            rec = {
                "benchmark": BENCH + "_transfer",
                "config": cfg,
                "devices": {impl: "cpu" if impl in PEERS else args.device},
                "median_s": {} if seconds is None else {impl: round(seconds, 3)},
                "speedup": {},
                "peak_mib": {},
                "agreement": {} if agreement is None else {impl: agreement},
                "metrics": {impl: metrics if metrics is not None else {"skipped": skipped}},
                "env": env,
            }
            emit(rec)
            if args.jsonl:
                with open(args.jsonl, "a") as fh:
                    emit(rec, fh)

        return emit_row

    helpers = (reduce_audio, speaker_normalize, frame_metrics, gate_video_weights, run_peers)
    rows = run_transfer(args, BENCH, factory, helpers)
    out = io.StringIO()
    out.write(
        f"\n| condition (train {trained}, test {args.test_corpus}) | model | accuracy | F1 | "
        "accuracy in patched video | gate on video in / out patch |\n|---|---|---|---|---|---|\n"
    )
    for cond, name, met, skipped in rows:
        if met is None:
            out.write(f"| {cond} | {name} | skipped: {skipped} | | | |\n")
            continue
        acc_p = met.get("accuracy_video_patched", float("nan"))
        out.write(
            f"| {cond} | {name} | {met['accuracy']:.3f} | {met['f1']:.3f} | {acc_p:.3f} | "
            f"{gate_cell(met)} |\n"
        )
    out.write(f"\ntotal {time.perf_counter() - t_start:.0f} s\n")
    write_table(out.getvalue(), args.table)
    if tmp is not None:
        tmp.cleanup()
    return 0


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="tiny corpus and few steps (CI smoke, < 2 min)"
    )
    ap.add_argument(
        "--out", default="av_speech_activity.png", help="figure path (Fig. 17-18 style)"
    )
    ap.add_argument(
        "--data-dir", default=None, help="where corpora are generated/cached (default: a temp dir)"
    )
    ap.add_argument("--speakers", type=int, default=None)
    ap.add_argument("--utterances", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="mixture fit steps (epochs)")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument(
        "--context", type=int, default=4, help="past frames stacked to expert/gate inputs"
    )
    ap.add_argument(
        "--co-weight", type=float, default=0.1, help="co-learning lambda_m (all modalities)"
    )
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--training",
        choices=("crossfit", "staged", "joint"),
        default="crossfit",
        help="mixture recipe: cross-fitted (default), staged (experts on all training speakers "
        "but one, gate on that one) or joint (everything on all training speakers)",
    )
    ap.add_argument("--joint", action="store_true", help="same as --training joint")
    ap.add_argument(
        "--mixtures",
        default=",".join(MIXTURES),
        help=f"comma-separated subset of {','.join(MIXTURES)} (cross-fitted recipe)",
    )
    ap.add_argument(
        "--test-speakers",
        choices=("last", "all"),
        default="last",
        help="held-out test speaker: the last one (the paper's 5th subject), or each in turn "
        "(leave-one-speaker-out; metrics pooled over all test frames)",
    )
    ap.add_argument(
        "--gate-method",
        choices=("svi", "em"),
        default="em",
        help="gate stage trainer (conditional/markov; recurrent always svi)",
    )
    ap.add_argument(
        "--speaker-norm",
        action="store_true",
        help="standardize features per speaker (ablation; see speaker_normalize)",
    )
    ap.add_argument("--m-steps", type=int, default=5, help="EM: gradient steps per M-step")
    ap.add_argument(
        "--timing-steps",
        type=int,
        default=None,
        help="gradient steps per batch in the EM vs SVI timing (0 = skip)",
    )
    ap.add_argument(
        "--test-corpus",
        default=None,
        choices=("B", "C"),
        help="train on corpus A (augmented), score on this data_prep.synth_grid variant "
        "(benchmarks/_av_transfer.py); the default is the speaker-held-out run on one corpus",
    )
    ap.add_argument(
        "--extra-train-corpus",
        default=None,
        choices=("D",),
        help="with --test-corpus: also train on this data_prep.synth_grid variant (D: other "
        "voices, a different real face per speaker), prepared as A is",
    )
    ap.add_argument(
        "--val-corpus",
        default=None,
        choices=("B", "C"),
        help="with --test-corpus: a third corpus that chooses the gate shrinkage and the "
        "reported mixture (never the test corpus)",
    )
    ap.add_argument(
        "--normalize",
        choices=("running", "speaker", "none"),
        default="running",
        help="with --test-corpus: causal per-utterance running normalization (default), "
        "offline per-speaker standardization, or none",
    )
    ap.add_argument("--norm-decay", type=float, default=0.98, help="running normalization decay")
    ap.add_argument("--norm-clip", type=float, default=3.0,
                    help="running normalization of --norm-clip-streams: clip innovations at this "
                    "many running SDs before they update the statistics (robust: a patch is not "
                    "absorbed; chosen on corpus C, see benchmarks/results/av_transfer.md); 0 = off")
    ap.add_argument("--norm-clip-streams", default="image",
                    help="comma-separated streams --norm-clip applies to")
    ap.add_argument(
        "--test-seed",
        type=int,
        default=None,
        help="with --test-corpus: seed of the test corpus and its corruptions (default --seed); "
        "another value scores the same trained models on a fresh realization of the corpus",
    )
    ap.add_argument(
        "--transfer-mixtures",
        default="conditional/features,conditional/reliability,conditional/features+reliability,"
        "markov/features,markov/reliability,markov/features+reliability,agreement/uniform,"
        "agreement/conditional-reliability,agreement/markov-reliability",
        help="with --test-corpus: gate/inputs pairs to fit, and agreement combiners "
        "(agreement/uniform, agreement/conditional-reliability, agreement/markov-reliability: "
        "per-utterance Dawid-Skene EM over the experts; the last two need that gate too)",
    )
    ap.add_argument(
        "--image-features",
        choices=("dct", "delta", "energy"),
        default="delta",
        help="with --test-corpus: the image stream's mouth features: the frame-to-frame "
        "differences of the mouth DCT plus their log energy (face-invariant; default) or the "
        "DCT itself (the main run of benchmarks/results/av_transfer.md), or only the log energy "
        "of the differences",
    )
    ap.add_argument(
        "--smooth",
        choices=("none", "hmm"),
        default="hmm",
        help="with --test-corpus: causal temporal smoothing of every system's p(speech) by a "
        "two-state label chain with corpus A's label statistics (mmpgm.ops.label_filter; "
        "default) or none (the main run of benchmarks/results/av_transfer.md)",
    )
    ap.add_argument(
        "--failure-augmentation",
        type=float,
        default=0.0,
        help="with --test-corpus: add this fraction of copies of the training sequences in "
        "which one expert gives another sequence's out-of-fold outputs, to the gates' training "
        "data (mmpgm.inference.cross_fit.simulate_expert_failures; 0 = off)",
    )
    ap.add_argument(
        "--expert-cache",
        default=None,
        help="with --test-corpus: a directory where the trained experts (final and out-of-fold) "
        "are saved and reused by later runs with the same expert settings",
    )
    ap.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--table", default=None, help="also write the markdown table to this file")
    add_device_argument(ap, "the mixtures (experts, gates, posteriors)")
    args = ap.parse_args(argv)
    try:
        args.device = check_device(args.device)
    except ValueError as err:
        ap.error(str(err))
    args.mixtures = tuple(m.strip() for m in args.mixtures.split(",") if m.strip())
    unknown = sorted(set(args.mixtures) - set(MIXTURES))
    if unknown:
        ap.error(f"--mixtures: unknown {unknown}; choose from {list(MIXTURES)}")
    if args.joint:
        args.training = "joint"
    q = args.quick
    args.speakers = args.speakers or (3 if q else 5)
    args.utterances = args.utterances or (4 if q else 16)
    args.steps = args.steps or (15 if q else 60)
    args.pretrain_steps = args.pretrain_steps or (15 if q else 60)
    if args.timing_steps is None:
        args.timing_steps = 5 if q else 20
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.extra_train_corpus and args.test_corpus is None:
        ap.error("--extra-train-corpus needs --test-corpus (it is part of the transfer run)")
    if args.test_corpus is not None:
        if args.val_corpus == args.test_corpus:
            ap.error("--val-corpus must differ from --test-corpus (nothing is chosen on the test)")
        return transfer(args, t_start)

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="av_sad_")
        data_dir = Path(tmp.name)
    else:
        data_dir = Path(args.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    root, corpora = make_corpora(data_dir, args.speakers, args.utterances, args.seed)
    env = env_info({"mmpgm": mmpgm.__version__, **device_env(args.device)})
    rows = []
    figure_done = False

    for (noise, snr), (npz, corruption) in corpora.items():
        cond = f"{noise}{int(snr)}dB+patch"
        raw = MultimodalData.load(npz)
        data = reduce_audio(raw)
        if args.speaker_norm:
            data = speaker_normalize(data)
        speakers = data.labels["speaker"].unique().tolist()
        test_ids = speakers if args.test_speakers == "all" else [speakers[-1]]
        for fold, test_id in enumerate(test_ids):
            train, test, test_speaker = split_speakers(data, test_id)
            _, raw_test, _ = split_speakers(raw, test_id)
            test.meta["_raw_audio0"] = raw_test.obs["audio"][0, : int(raw_test.lengths[0])].numpy()
            base = {
                "noise": noise,
                "snr_db": snr,
                "video_patch": True,
                "train_clips": train.num_sequences,
                "test_clips": test.num_sequences,
                "test_speaker": test_speaker,
                "frames_per_s": 25,
                "speaker_norm": bool(args.speaker_norm),
                "training": args.training,
                "device": args.device,
            }
            peak = CudaPeak(args.device)

            def emit_row(
                impl,
                metrics,
                *,
                name=None,
                seconds=None,
                skipped=None,
                agreement=None,
                extra=None,
                base=base,
                cond=cond,
                peak=peak,
            ):
                cfg = dict(base, name=f"{cond}/{name or impl}", **(extra or {}))
                mib = None if impl in PEERS else peak.so_far_mib()
                rec = {
                    "benchmark": BENCH,
                    "config": cfg,
                    # the audio-only peers are CPU libraries
                    "devices": {impl: "cpu" if impl in PEERS else args.device},
                    "median_s": {} if seconds is None else {impl: round(seconds, 3)},
                    "speedup": {},
                    # --device cuda: peak CUDA memory of this fold's fits up to this row
                    "peak_mib": {} if mib is None else {impl: mib},
                    "agreement": {} if agreement is None else {impl: agreement},
                    "metrics": {impl: metrics if metrics is not None else {"skipped": skipped}},
                    "env": env,
                }
                emit(rec)
                if args.jsonl:
                    with open(args.jsonl, "a") as fh:
                        emit(rec, fh)
                rows.append((cond, name or impl, metrics, skipped, base["test_speaker"]))

            peak.start()  # this fold's fits (the next fold's start resets the peak)
            # unimodal experts, each trained alone (the shared pre-training of the MLP experts)
            uni = build("conditional", False, args)
            t0 = time.perf_counter()
            pretrain_experts(
                uni,
                train,
                num_steps=args.pretrain_steps,
                **train_kw(args),
            )
            secs = time.perf_counter() - t0
            post = to_cpu(uni.posterior(test))
            for i, m in enumerate(MODALITIES):
                emit_row(
                    "mmpgm",
                    frame_metrics((post.expert_predictions[..., i] > 0.5).long(), test),
                    name=f"expert_{m}",
                    seconds=secs,
                    extra={"model": "unimodal expert", "modality": m},
                )

            if args.timing_steps and noise == CONDITIONS[0][0] and fold == 0:
                em_vs_svi(uni, train, test, args, emit_row)
            if args.training == "crossfit":
                best, posts = crossfit_mixtures(uni, train, test, args, emit_row)
            else:
                best, posts = staged_or_joint_mixtures(uni, train, test, args, emit_row)
            wanted = noise == "babble" or len(corpora) == 1
            if best is not None and not figure_done and wanted:
                vc = test.labels["video_corrupted"]
                n = int(torch.argmax((vc == 1).sum(1)))
                extra = [(k, v) for k, v in posts.items() if k == "conditional" != best[1]]
                save_figure(
                    args.out,
                    best[2],
                    test,
                    n,
                    f"{cond}, {best[1]}, held-out speaker {test_speaker}",
                    extra_gates=extra,
                )
                figure_done = True
            run_peers(
                root, test, corruption, args.seed, lambda impl, met, **kw: emit_row(impl, met, **kw)
            )

    # pooled over the test speakers (--test-speakers all)
    rotating = args.test_speakers == "all"
    if rotating:
        pooled = {}
        for cond, name, met, skipped, _ in rows:
            pooled.setdefault((cond, name), []).append((met, skipped))
        rows = []
        for (cond, name), items in pooled.items():
            mets = [m for m, _ in items if m is not None]
            met = pool_metrics(mets) if mets else None
            skipped = None if mets else items[0][1]
            rec = {
                "benchmark": BENCH,
                "config": {"name": f"{cond}/{name}", "test_speaker": "pooled", "folds": len(mets)},
                "median_s": {},
                "speedup": {},
                "peak_mib": {},
                "agreement": {},
                "metrics": {name if name in PEERS else "mmpgm": met or {"skipped": skipped}},
                "env": env,
            }
            emit(rec)
            if args.jsonl:
                with open(args.jsonl, "a") as fh:
                    emit(rec, fh)
            rows.append((cond, name, met, skipped, "pooled"))

    # Table-1-like summary on stderr (and --table)
    import io

    out = io.StringIO()
    extra_col = " accuracy per test speaker |" if rotating else ""
    out.write(
        "\n| condition | model | accuracy | F1 | accuracy in patched video | gate on video in / "
        f"out corrupted |{extra_col}\n|---|---|---|---|---|---|{'---|' if rotating else ''}\n"
    )
    for cond, name, met, skipped, _ in rows:
        if met is None:
            out.write(f"| {cond} | {name} | skipped: {skipped} | | | |{' |' if rotating else ''}\n")
            continue
        gv = gate_cell(met)
        per = ""
        if rotating:
            per = " " + " ".join(f"{a:.3f}" for a in met.get("accuracy_per_speaker", [])) + " |"
        out.write(
            f"| {cond} | {name} | {met['accuracy']:.3f} | {met['f1']:.3f} | "
            f"{met['accuracy_video_patched']:.3f} | {gv} |{per}\n"
        )
    out.write(f"\nfigure: {args.out}; total {time.perf_counter() - t_start:.0f} s\n")
    write_table(out.getvalue(), args.table)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
