"""Train on one generated corpus, score on another (issue 12, items 3-5c): the ``--test-corpus``
mode of ``benchmarks/av_speech_activity.py``.

Corpora (``data_prep.synth_grid`` variants, disjoint voices): **A** trains (the package's
default corpus: scikit-image's astronaut face, its espeak-ng voices), **B** tests (other voices,
rates and pitches, matplotlib's Grace Hopper photograph, random recording levels, 16 kHz wavs,
other mouth and head motion, other patch shapes and sizes) and, with ``--val-corpus C``, a third
corpus **C** (yet other voices, a wider tinted astronaut crop) chooses the gate's shrinkage and
the reported mixture. Nothing is chosen on B.

Training data: corpus A prepared three times (``data_prep.grid.prepare_grid``), all speakers:

* ``clean``: no corruption (also the clean-feature density of the gates' novelty inputs);
* ``aug_noisy``: one noise kind per clip (white, babble of voices in no corpus, from
  ``<A>/babble``, non-stationary), SNR uniform in [-5, 15] dB, random gain in [-20, 6] dB
  (rescaled against clipping), a video patch (square, rectangle or ellipse, brightness 0-255);
* ``aug_clean``: the gain and the patch, no noise.

Test conditions on B: babble 0 dB (other B speakers) + patch (rectangles and ellipses of side
60-160 px), clean audio + clean video, non-stationary -5 dB + patch.

Features: the 40 band means of the log-STFT; the image stream is the mouth DCT's
frame-to-frame differences and their log energy (default ``--image-features delta``,
:func:`mmpgm.features.normalize.temporal_delta`; ``dct``: the DCT itself) plus the face-quality
summaries; then (default ``--normalize running``) every stream through
:func:`mmpgm.features.normalize.running_normalize` (causal per utterance; removes log-gain
offsets, so the audio features are gain-invariant), the image stream with robust statistics
(default ``--norm-clip 3``: innovations beyond 3 running SDs clipped before they update them,
so a patch stays visible for as long as it lasts instead of being absorbed).
``--normalize speaker`` (offline per-speaker standardization) and ``none`` are the ablations.

Systems: the MLP experts alone, their equal-weight mix, cross-fitted gates (conditional and
Markov) reading the features only (the former gate), the reliability inputs only (per-stream
novelty under a diagonal Gaussian of clean A features, expert disagreement), or both; the
label-free agreement combiners (per-utterance Dawid-Skene EM over the experts' outputs, votes
counted once or ``M`` times a reliability gate's weight; the Beta prior's strength chosen on
C); and the peers silero-vad and webrtcvad on B's noisy 16 kHz waveforms. Every system's
p(speech) is then filtered by a two-state label chain with A's label statistics (default
``--smooth hmm``, :mod:`mmpgm.ops.label_filter`; causal). ``--failure-augmentation F`` adds
simulated expert failures to the gates' training data
(:func:`mmpgm.inference.cross_fit.simulate_expert_failures`); ``--expert-cache DIR`` reuses
trained experts between runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mmpgm.data import MultimodalData
from mmpgm.features.normalize import running_normalize, temporal_delta
from mmpgm.inference.cross_fit import (
    fit_cross_fitted,
    out_of_fold_scores,
    simulate_expert_failures,
)
from mmpgm.inference.mixture import pretrain_experts
from mmpgm.models.mixture import GatedMixture
from mmpgm.ops.label_filter import filter_binary_posterior, label_transitions

try:  # benchmarks/ as a package, or on sys.path (run as a script)
    from ._common import to_cpu
except ImportError:
    from _common import to_cpu

MODALITIES = ("audio", "image", "flow")
PATCH = dict(
    video_patch=True, patch_shapes=("square", "rect", "ellipse"), box_jitter=(0.08, 0.15)
)
TEST_PATCH = dict(video_patch=True, patch_shapes=("rect", "ellipse"), patch_side_range=(60, 160))
TRAIN_PREPS = {
    "clean": (0, {}),
    "aug_noisy": (
        1,
        dict(
            PATCH,
            noise_kinds=("white", "babble", "nonstationary"),
            snr_range=(-5.0, 15.0),
            gain_db_range=(-20.0, 6.0),
        ),
    ),
    "aug_clean": (2, dict(PATCH, gain_db_range=(-20.0, 6.0))),
}
TEST_CONDITIONS = {
    "babble0dB+patch": dict(TEST_PATCH, audio_noise="babble", snr_db=0.0),
    "clean": {},
    "nonstationary-5dB+patch": dict(TEST_PATCH, audio_noise="nonstationary", snr_db=-5.0),
}
GATE_VARIANTS = {
    "features": ("features",),
    "reliability": ("novelty", "disagreement"),
    "features+reliability": ("features", "novelty", "disagreement"),
}
SHRINKAGE_GRID = (0.0, 0.1, 0.3, 1.0, 3.0)
#: Beta-prior strengths (pseudo-frames) of the per-utterance agreement combiner, chosen on C.
AGREEMENT_PRIOR_GRID = (0.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: Agreement combiners (``--transfer-mixtures`` names) -> (vote weights, gate system or None).
AGREEMENT_VARIANTS = {
    "agreement/uniform": ("uniform", None),
    "agreement/conditional-reliability": ("gate", "conditional/reliability"),
    "agreement/markov-reliability": ("gate", "markov/reliability"),
}


# --------------------------------------------------------------------------- corpora
def make_corpus(data_dir: Path, variant: str, speakers: int, utterances: int, seed: int,
                babble: int = 0) -> Path:
    from data_prep.synth_grid import make_synth_grid

    root = data_dir / f"synth{variant}_s{speakers}_u{utterances}_b{babble}_seed{seed}"
    if not (root / "synth_manifest.json").exists():
        make_synth_grid(str(root), num_speakers=speakers, num_utterances=utterances, seed=seed,
                        variant=variant, babble_utterances=babble)
    return root


def prep(root: Path, data_dir: Path, name: str, corruption: dict, seed: int) -> Path:
    from data_prep.grid import prepare_grid

    npz = data_dir / f"{root.name}_{name}_fq_seed{seed}.npz"
    if not npz.exists():
        prepare_grid(str(root), str(npz), workers=2, corruption=corruption, seed=seed,
                     progress=False, face_quality=True)
    return npz


def concat(parts: list) -> MultimodalData:
    """Sequences of several corpora of the same modalities, labels and ``T`` stacked."""
    T = max(p.num_timesteps for p in parts)
    if any(p.num_timesteps != T for p in parts):
        raise ValueError("concat: all parts must have the same num_timesteps")
    obs = {m: torch.cat([p.obs[m] for p in parts]) for m in parts[0].modalities}
    mask = {m: torch.cat([p.mask[m] for p in parts]) for m in parts[0].modalities}
    labels = {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels}
    lengths = torch.cat([p.lengths for p in parts])
    uids = [str(u) for p in parts for u in np.asarray(p.meta["utterance_id"]).reshape(-1)]
    return MultimodalData(obs, lengths=lengths, mask=mask, labels=labels,
                          meta={"utterance_id": uids})


def features(raw: MultimodalData, how: str, decay: float, reduce_audio, speaker_normalize,
             image: str = "dct", clip: float | None = None, clip_streams=("image",)):
    """40-band audio, the face-quality summaries appended to the image stream (32 + 17 dims),
    then the normalization ``how`` (running / speaker / none). ``image="delta"``: the mouth DCT
    replaced by its frame-to-frame differences and their log energy (33 dims,
    :func:`mmpgm.features.normalize.temporal_delta`) before the face quality is appended;
    ``image="energy"``: by the log energy alone (1 dim)."""
    data = reduce_audio(raw)
    if image in ("delta", "energy"):
        obs = dict(data.obs)
        obs["image"] = temporal_delta(obs["image"].double(), data.mask["image"]).float()
        if image == "energy":  # only the log motion energy (no per-coefficient layout)
            obs["image"] = obs["image"][..., -1:]
        data = MultimodalData(obs, lengths=data.lengths, mask=data.mask, labels=data.labels,
                              meta=data.meta)
    if "face_quality" in data.obs:
        obs = {m: v for m, v in data.obs.items() if m != "face_quality"}
        mask = {m: v for m, v in data.mask.items() if m != "face_quality"}
        obs["image"] = torch.cat([obs["image"], data.obs["face_quality"]], -1)
        data = MultimodalData(obs, lengths=data.lengths, mask=mask, labels=data.labels,
                              meta=data.meta)
    if how == "speaker":
        return speaker_normalize(data)
    if how == "running":
        obs = {
            m: running_normalize(data.obs[m].double(), data.mask[m], decay=decay,
                                 clip=clip if m in clip_streams else None).float()
            for m in data.modalities
        }
        data = MultimodalData(obs, lengths=data.lengths, mask=data.mask, labels=data.labels,
                              meta=data.meta)
    return data


def mouth_cover(data: MultimodalData) -> torch.Tensor:
    """Per frame, the fraction of the mouth box (:func:`mmpgm.features.video.mouth_box` of the
    clip's face box, the region the video features see) that the patch covers, ``(N, T)``; 0
    outside the patch segment. The patch is placed anywhere on the face box, so on many clips
    it leaves the mouth alone and the video features are not corrupted at all."""
    import json

    from mmpgm.features.video import FaceBox, mouth_box

    N, T = data.num_sequences, data.num_timesteps
    out = torch.zeros(N, T)
    recs = np.asarray(data.meta.get("corruption", [])).reshape(-1)
    infos = np.asarray(data.meta.get("info", [])).reshape(-1)
    for n in range(min(N, len(recs))):
        patch = [r for r in json.loads(str(recs[n])) if r["type"] == "video_patch"]
        if not patch:
            continue
        r, b = patch[0], json.loads(str(infos[n]))["face_box"]
        mx, my, mw, mh = mouth_box(FaceBox(b["x"], b["y"], b["w"], b["h"], True))
        pw, ph = r.get("width", r["side"]), r.get("height", r["side"])
        ox = max(0, min(mx + mw, r["x"] + pw) - max(mx, r["x"]))
        oy = max(0, min(my + mh, r["y"] + ph) - max(my, r["y"]))
        out[n, r["start_frame"] : r["start_frame"] + r["n_frames"]] = ox * oy / (mw * mh)
    return out


def gate_on_covered_mouth(post, data: MultimodalData, cover: torch.Tensor) -> dict:
    """Mean gate weight on the video experts on the patched frames whose patch covers at least
    half of the mouth box (the frames whose video features are corrupted), against the frames
    without a patch."""
    w = post.gate_weights[..., 1] + post.gate_weights[..., 2]
    tm = data.time_mask
    hit = (cover >= 0.5) & tm
    clean = (data.labels["video_corrupted"] == 0) & tm
    if not bool(hit.any()):
        return {}
    return {
        "gate_video_mouth_covered": round(float(w[hit].mean()), 4),
        "mouth_covered_frames": int(hit.sum()),
        "patched_frames_mouth_untouched": int(((cover == 0) & (data.labels["video_corrupted"] == 1)
                                                & tm).sum()),
        "gate_video_unpatched": round(float(w[clean].mean()), 4),
    }


def accuracy_mouth_covered(pred: torch.Tensor, data: MultimodalData, cover: torch.Tensor):
    """Accuracy on the labelled frames whose patch covers at least half of the mouth box."""
    y = data.labels["speech"]
    keep = (y >= 0) & data.time_mask & (cover >= 0.5)
    if not bool(keep.any()):
        return None
    return round(float((pred[keep] == y[keep]).double().mean()), 4)


def fixed_weight_ceiling(probs: torch.Tensor, data: MultimodalData, smooth) -> dict:
    """The best accuracy any *fixed* combination of the experts reaches on ``data``, with the
    weights chosen on ``data`` itself (an oracle: a ceiling for every gate that cannot tell
    frames apart, not a system). ``probs (N, T, M)``: the experts' p(speech). Linear pools
    :math:`\sum_m w_m p_m` over the simplex in steps of 0.1, log-linear pools
    :math:`\sigma(\sum_m w_m \operatorname{logit} p_m)` over :math:`w_m \in \{0, 0.25,
    \dots, 2\}`; both through the same label filter as every system."""
    import itertools

    y = data.labels["speech"]
    keep = (y >= 0) & data.time_mask
    p = probs.double()  # a one-hot linear pool is exactly that expert's row
    q = p.clamp(1e-4, 1 - 1e-4)
    logit = torch.log(q) - torch.log1p(-q)
    M = p.shape[-1]

    def acc(q):
        return float(((smooth(q, data) > 0.5).long()[keep] == y[keep]).double().mean())

    steps = range(11)
    lin = max(((acc((p * torch.tensor(w, dtype=p.dtype) / 10).sum(-1)), w)
               for w in itertools.product(steps, repeat=M) if sum(w) == 10),
              key=lambda r: r[0])
    grid = [0.25 * i for i in range(9)]
    loglin = max(((acc(torch.sigmoid((logit * torch.tensor(w, dtype=p.dtype)).sum(-1))), w)
                  for w in itertools.product(grid, repeat=M) if any(w)), key=lambda r: r[0])
    return {"linear": round(lin[0], 4), "linear_weights": [v / 10 for v in lin[1]],
            "log_linear": round(loglin[0], 4), "log_linear_weights": list(loglin[1])}


# --------------------------------------------------------------------------- models
class AgreementPost(NamedTuple):
    """A posterior-like view of :meth:`GatedMixture.agreement` for the scoring code:
    ``predictive (N, T)``, ``gate_weights (N, T, M)`` (each expert's share of the absolute
    log-odds: its effective weight in the vote), ``log_likelihood (N,)`` (Bernoulli
    log-likelihood of the labels under the combined prediction, 0 without labels)."""

    predictive: torch.Tensor
    gate_weights: torch.Tensor
    log_likelihood: torch.Tensor


class AgreementSystem:
    """The per-utterance Dawid-Skene combiner over a model's experts (the vote weights 1, or
    ``M`` x the model's gate weights), with the prior strength ``kappa``."""

    def __init__(self, model: GatedMixture, weights: str, kappa: float = 10.0):
        self.model, self.weights, self.kappa = model, weights, kappa

    def posterior(self, data: MultimodalData, causal: bool = True, map_path: bool = False):
        a = self.model.agreement(data, weights=self.weights, prior_strength=self.kappa)
        lo = a.log_odds.abs()
        share = lo / lo.sum(-1, keepdim=True).clamp_min(1e-12)
        y = data.labels.get("speech")
        ll = torch.zeros(data.num_sequences)
        if y is not None:
            keep = (y >= 0) & data.time_mask
            p = a.posterior.clamp(1e-6, 1 - 1e-6)
            lp = torch.where(y == 1, torch.log(p), torch.log1p(-p))
            ll = torch.where(keep, lp, torch.zeros_like(lp)).sum(-1)
        return AgreementPost(a.posterior, share, ll)


def build(gate: str, gate_inputs, args, dims) -> GatedMixture:
    torch.manual_seed(args.seed)
    model = GatedMixture(
        dims,
        gate=gate,
        hidden_dim=args.hidden,
        context=args.context,
        gate_hidden_dim=args.hidden,
        expert_weight=1.0,
        gate_inputs=gate_inputs,
    )
    return model.to(args.device)  # --device: the fits and posteriors move the data there


def val_log_likelihood(model, vals: dict) -> float:
    """Mixture log-likelihood per labelled frame pooled over the validation sets."""
    tot, frames = 0.0, 0.0
    with torch.no_grad():
        for v in vals.values():
            post = to_cpu(model.posterior(v, causal=True, map_path=False))
            tot += float(post.log_likelihood.sum())
            frames += float(((v.labels["speech"] >= 0) & v.time_mask).sum())
    return tot / max(frames, 1.0)


def make_smoother(how: str, train: MultimodalData):
    """``--smooth``: the identity (``none``) or the causal two-state label filter
    (:func:`mmpgm.ops.label_filter.filter_binary_posterior`, ``hmm``) whose chain and prior are
    the speech labels' transition statistics on the training corpus A; a function
    ``(probabilities (N, T), data) -> (N, T)``."""
    if how == "none":
        return lambda p, data: p
    A, prior = label_transitions(train.labels["speech"], train.time_mask)
    return lambda p, data: filter_binary_posterior(p.double(), A, prior,
                                                   data.time_mask).to(p.dtype)


def val_accuracy(model, vals: dict, smooth=lambda p, data: p) -> float:
    correct, frames = 0, 0
    with torch.no_grad():
        for v in vals.values():
            post = to_cpu(model.posterior(v, causal=True, map_path=False))
            pred = (smooth(post.predictive, v) > 0.5).long()
            keep = (v.labels["speech"] >= 0) & v.time_mask
            correct += int((pred[keep] == v.labels["speech"][keep]).sum())
            frames += int(keep.sum())
    return correct / max(frames, 1)


# --------------------------------------------------------------------------- run
def run_transfer(args, bench, emit_row_factory, helpers) -> list:
    """The whole transfer run; returns the table rows ``(condition, system, metrics,
    skipped)``. ``helpers``: the benchmark's ``reduce_audio``, ``speaker_normalize``,
    ``frame_metrics``, ``gate_video_weights``, ``run_peers`` functions."""
    reduce_audio, speaker_normalize, frame_metrics, gate_video_weights, run_peers = helpers
    q = args.quick
    data_dir = Path(args.data_dir)
    sa, ua = (3, 4) if q else (args.speakers or 5, args.utterances or 16)
    sb, ub = (2, 4) if q else (4, 12)
    sc, uc = (2, 4) if q else (3, 8)
    t0 = time.perf_counter()
    root_a = make_corpus(data_dir, "A", sa, ua, args.seed, babble=1 if q else 3)
    test_seed = args.seed if args.test_seed is None else args.test_seed
    root_b = make_corpus(data_dir, args.test_corpus, sb, ub, test_seed)
    root_c = None
    if args.val_corpus:
        root_c = make_corpus(data_dir, args.val_corpus, sc, uc, args.seed)
    clip = args.norm_clip or None  # --norm-clip 0: off
    feat = lambda raw: features(  # noqa: E731
        raw, args.normalize, args.norm_decay, reduce_audio, speaker_normalize,
        image=args.image_features, clip=clip,
        clip_streams=tuple(args.norm_clip_streams.split(",")),
    )
    # --extra-train-corpus D: the same preparations of a second training corpus (other voices,
    # another face per speaker), its speaker k in fold k with A's speaker k (as many folds)
    roots = [root_a]
    if args.extra_train_corpus:
        roots.append(make_corpus(data_dir, args.extra_train_corpus, sa, ua, args.seed))
    parts = {}
    for name, (off, corr) in TRAIN_PREPS.items():
        corr = dict(corr)
        if "noise_kinds" in corr:
            corr["babble_dir"] = str(root_a / "babble")
        loaded = [feat(MultimodalData.load(prep(r, data_dir, name, corr, args.seed + off)))
                  for r in roots]
        parts[name] = loaded[0] if len(loaded) == 1 else concat(loaded)
    train = concat(list(parts.values()))
    tests, vals = {}, {}
    for cond, corr in TEST_CONDITIONS.items():
        npz = prep(root_b, data_dir, cond, corr, test_seed)
        tests[cond] = (feat(MultimodalData.load(npz)), corr)
        if root_c is not None:
            vals[cond] = feat(MultimodalData.load(prep(root_c, data_dir, cond, corr, args.seed)))
    prep_secs = time.perf_counter() - t0
    base_cfg = {
        "train_corpus": "+".join(["A"] + ([args.extra_train_corpus]
                                          if args.extra_train_corpus else [])),
        "test_corpus": args.test_corpus,
        "val_corpus": args.val_corpus,
        "test_seed": test_seed,
        "normalize": args.normalize,
        "norm_decay": args.norm_decay if args.normalize == "running" else None,
        "norm_clip": clip if args.normalize == "running" else None,
        "norm_clip_streams": args.norm_clip_streams if clip else None,
        "image_features": args.image_features,
        "train_clips": train.num_sequences,
        "train_speakers": sa,
        "train_preps": {k: v[1] for k, v in TRAIN_PREPS.items()},
        "frames_per_s": 25,
        "prep_s": round(prep_secs, 1),
    }
    rows = []
    smooth = make_smoother(args.smooth, train)
    base_cfg["smooth"] = args.smooth
    kw = dict(lr=args.lr, seed=args.seed, batch_size=args.batch)
    steps, pre_steps = args.steps, args.pretrain_steps

    # experts: out-of-fold (per training speaker) and final, shared by every gate
    t1 = time.perf_counter()
    dims = {m: train.obs[m].shape[-1] for m in MODALITIES}
    base = build("conditional", ("features",), args, dims)
    cache = None
    if args.expert_cache:  # the experts depend only on these (and the code)
        key = json.dumps(dict(dims=dims, normalize=args.normalize, decay=args.norm_decay,
                              **({"clip": clip, "clip_streams": args.norm_clip_streams}
                                 if clip else {}),
                              image=args.image_features, hidden=args.hidden,
                              context=args.context, steps=pre_steps, lr=args.lr,
                              batch=args.batch, seed=args.seed, clips=train.num_sequences,
                              quick=bool(q)), sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cache = Path(args.expert_cache) / f"experts_{digest}.pt"
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        final = copy.deepcopy(base)
        final.load_state_dict(saved["final"])
        scores, evidence, outputs = saved["scores"], saved["evidence"], saved["outputs"]
        expert_secs = saved["seconds"]
    else:
        scores, evidence, _, outputs = out_of_fold_scores(
            base, train, "speaker", expert_steps=pre_steps, return_outputs=True, **kw
        )
        final = copy.deepcopy(base)
        pretrain_experts(final, train, num_steps=pre_steps, **kw)
        expert_secs = time.perf_counter() - t1
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dict(final=final.state_dict(), scores=scores, evidence=evidence,
                            outputs=outputs, seconds=expert_secs), cache)

    # the gates' training data: the out-of-fold scores, plus (--failure-augmentation F > 0)
    # copies of F N sequences in which one expert gives another sequence's outputs
    gate_train, oof = train, (scores, evidence, outputs)
    if args.failure_augmentation > 0:
        *aug, _ = simulate_expert_failures(final, train, scores, evidence, outputs,
                                           fraction=args.failure_augmentation, seed=args.seed)
        gate_train, oof = aug[0], tuple(aug[1:])
    base_cfg["failure_augmentation"] = args.failure_augmentation
    systems = {}  # name -> (model or None, extra config)
    for gate in ("conditional", "markov"):
        for vname, inputs in GATE_VARIANTS.items():
            if f"{gate}/{vname}" not in args.transfer_mixtures:
                continue
            t2 = time.perf_counter()
            model = build(gate, inputs, args, dims)
            model.experts.load_state_dict(final.experts.state_dict())
            model.standardizers.load_state_dict(final.standardizers.state_dict())
            if "novelty" in inputs:
                model.fit_novelty(parts["clean"])
            start = copy.deepcopy(model.gate.state_dict())
            choice = {}
            if vals:  # shrinkage chosen on corpus C (validation), not on B
                best = None
                for kappa in SHRINKAGE_GRID:
                    model.gate.load_state_dict(start)
                    fit_cross_fitted(model, gate_train, "speaker", expert_steps=pre_steps,
                                     gate_steps=steps, gate_shrinkage=kappa, refit_experts=False,
                                     out_of_fold=oof, **kw)
                    ll = val_log_likelihood(model, vals)
                    choice[str(kappa)] = round(ll, 4)
                    if best is None or ll > best[0]:
                        best = (ll, kappa, copy.deepcopy(model.gate.state_dict()))
                model.gate.load_state_dict(best[2])
                kappa, how = best[1], f"validation log-likelihood on corpus {args.val_corpus}"
            else:  # leave-one-speaker-out on A
                res = fit_cross_fitted(model, gate_train, "speaker", expert_steps=pre_steps,
                                       gate_steps=steps, gate_shrinkage=SHRINKAGE_GRID,
                                       refit_experts=False, out_of_fold=oof, **kw)
                kappa, how = res.gate_shrinkage, "leave-one-speaker-out on A"
                choice = {str(k): round(v, 4) for k, v in res.shrinkage_cv.items()}
            extra = {
                "model": "GatedMixture",
                "gate": gate,
                "gate_inputs": list(inputs),
                "gate_shrinkage": kappa,
                "shrinkage_chosen_by": how,
                "shrinkage_scores": choice,
                "fit_s": round(time.perf_counter() - t2 + expert_secs, 1),
            }
            if vals:
                extra["val_accuracy"] = round(val_accuracy(model, vals, smooth), 4)
            systems[f"{gate}/{vname}"] = (model, extra)

    # label-free per-utterance agreement combiners (Dawid-Skene EM over the final experts'
    # outputs on each clip); the prior strength is chosen on C, by the label log-likelihood
    for name, (weights, gate_name) in AGREEMENT_VARIANTS.items():
        if name not in args.transfer_mixtures:
            continue
        if gate_name is not None and gate_name not in systems:
            raise ValueError(f"--transfer-mixtures: {name} needs {gate_name} among them")
        t2 = time.perf_counter()
        src = final if gate_name is None else systems[gate_name][0]
        choice, kappa = {}, AGREEMENT_PRIOR_GRID[2]
        if vals:
            for k in AGREEMENT_PRIOR_GRID:
                choice[str(k)] = round(val_log_likelihood(AgreementSystem(src, weights, k),
                                                          vals), 4)
            kappa = float(max(choice, key=choice.get))
        system = AgreementSystem(src, weights, kappa)
        extra = {
            "model": "per-utterance Dawid-Skene EM over the experts' outputs (label-free, "
                     "not causal)",
            "vote_weights": weights if gate_name is None else f"M x gate weights of {gate_name}",
            "prior_strength": kappa,
            "prior_accuracy": 0.7,
            "prior_chosen_by": (f"label log-likelihood on corpus {args.val_corpus}" if vals
                                else "fixed (no validation corpus)"),
            "prior_scores": choice,
            "gate_weights_are": "each expert's share of the absolute log-odds",
            "fit_s": round(time.perf_counter() - t2 + expert_secs, 1),
        }
        if vals:
            extra["val_accuracy"] = round(val_accuracy(system, vals, smooth), 4)
        systems[name] = (system, extra)

    # the mixture reported as "selected": best validation accuracy on C (else none)
    selected = None
    if vals and systems:
        selected = max(systems, key=lambda k: systems[k][1]["val_accuracy"])

    ceilings = {}
    for cond, (test, corr) in tests.items():
        emit_row = emit_row_factory(dict(base_cfg, condition=cond, test_clips=test.num_sequences,
                                         test_corruption=corr), cond)
        post = to_cpu(final.posterior(test))
        patched = bool((test.labels["video_corrupted"] == 1).any())
        cover = mouth_cover(test)

        def metrics(pred, _test=test, _cover=cover, _patched=patched):
            met = frame_metrics(pred, _test)
            if _patched:
                met["accuracy_mouth_covered"] = accuracy_mouth_covered(pred, _test, _cover)
            return met

        for i, m in enumerate(MODALITIES):
            met = metrics((smooth(post.expert_predictions[..., i], test) > 0.5).long())
            emit_row("mmpgm", met, name=f"expert_{m}",
                     extra={"model": "unimodal MLP expert", "modality": m})
            rows.append((cond, f"expert_{m}", met, None))
        ceilings[cond] = fixed_weight_ceiling(post.expert_predictions, test, smooth)
        best = max(ceilings[cond]["linear"], ceilings[cond]["log_linear"])
        rows.append((cond, "(ceiling: best fixed expert weights, chosen on the test corpus)",
                     {"accuracy": best, "f1": float("nan")}, None))
        met = metrics((smooth(post.expert_predictions.mean(-1), test) > 0.5).long())
        emit_row("mmpgm", met, name="uniform_gate_reference",
                 extra={"model": "experts, gate fixed at 1/3 (not learned)"})
        rows.append((cond, "uniform_gate_reference", met, None))
        for name, (model, extra) in systems.items():
            p = to_cpu(model.posterior(test, causal=True))
            met = metrics((smooth(p.predictive, test) > 0.5).long())
            if patched:
                met.update(gate_video_weights(p, test))
                met.update(gate_on_covered_mouth(p, test, cover))
            else:
                met["gate_video_mean"] = round(
                    float((p.gate_weights[..., 1] + p.gate_weights[..., 2])[test.time_mask].mean()),
                    4,
                )
            emit_row("mmpgm", met, name=name,
                     extra=dict(extra, selected_on_validation=name == selected))
            rows.append((cond, name, met, None))
        peer_rows = []
        run_peers(root_b, test, corr, test_seed,
                  lambda impl, met, _e=emit_row, _r=peer_rows, **k: (_e(impl, met, **k),
                                                                    _r.append((impl, met, k))))
        for impl, met, k in peer_rows:
            rows.append((cond, impl, met, k.get("skipped")))
    # targets (issue 12): babble 0 dB + patch and clean, on the test corpus
    summary = {}
    by = {(c, n): m for c, n, m, _ in rows if m is not None}
    for cond in TEST_CONDITIONS:
        mixes = {n: by[(cond, n)]["accuracy"] for n in systems if (cond, n) in by}
        experts = {m: by[(cond, f"expert_{m}")]["accuracy"] for m in MODALITIES}
        s = {
            "best_single_expert": max(experts.values()),
            "uniform_gate_reference": by[(cond, "uniform_gate_reference")]["accuracy"],
            # the best fixed weights, chosen on the test corpus: a ceiling, not a system
            "fixed_weight_ceiling_on_test (oracle)": ceilings[cond],
        }
        if mixes:
            s["best_mixture_on_test (oracle pick)"] = max(mixes.values())
            s["best_mixture_name"] = max(mixes, key=mixes.get)
        if selected is not None:
            sel = by[(cond, selected)]
            s["selected_mixture"] = selected
            s["selected_accuracy"] = sel["accuracy"]
            for key in ("video", "image"):  # image + flow, and the image expert alone
                if f"gate_{key}_inside" in sel:
                    s[f"selected_gate_{key}_inside_over_outside"] = round(
                        sel[f"gate_{key}_inside"] / max(sel[f"gate_{key}_outside"], 1e-9), 4
                    )
        for peer in ("silero_vad", "webrtcvad"):
            if (cond, peer) in by:
                s[peer] = by[(cond, peer)]["accuracy"]
        summary[cond] = s
    emit_row = emit_row_factory(dict(base_cfg, condition="all"), "targets")
    emit_row("mmpgm", summary, name="summary",
             extra={"targets": "babble0dB+patch: mixture >= 0.90 and >= best expert + 0.02; "
                    "clean: >= 0.95; gate on video inside/outside patch <= 0.6",
                    "total_s": round(time.perf_counter() - t0, 1)})
    return rows
