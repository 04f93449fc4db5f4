"""Robust event classification in noise: siamese embeddings, denoisers and their gated mixture
(paper section 6.4, Fig. 11; issue 13 item 4).

The corpus (:mod:`_noisy_events`, made here, nothing downloaded): the ten GRID digit words spoken
by ``espeak-ng`` voices; **test speakers are not training speakers** (voices of corpus variants
A / B of :mod:`data_prep.synth_grid`); training noises ``white``, ``babble``, ``nonstationary``
at -5/0/5 dB; test items under the same noise types (new realizations, other babble voices) and
under three noise types **never seen in training**, ``hum``, ``clicks``, ``tones``, at
-8/-3/2 dB. One item is a per-utterance standardized 24 x 32 log-mel window of one word (a
sequence of length 1 whose vector has 768 values).

Two configurations, one JSON line each (``DESIGN.md`` section 8; quality under ``"metrics"``,
training seconds per system under ``"median_s"``), a summary on stderr:

``word_knn``
    Word classification by nearest neighbours (``k`` = ``--k``, 5) in a memory of the **clean**
    training items (the "map of clean sound categories" of the paper). Systems:

    * ``raw_knn``: kNN on the raw features;
    * ``siamese_knn``: :class:`mmpgm.SiameseEncoder` (``MLPTower(768, (256,), 32)``, contrastive
      loss, trained on the clean training items) and kNN of the embedded noisy item, no
      denoising;
    * ``single_dae``: one :class:`~mmpgm.models.denoising.DenoisingExpert` trained on the items
      of all training noises, then the encoder and kNN;
    * ``oracle_dae``: told the test item's noise type: the denoiser trained on that type alone
      (for the unseen types a denoiser trained on that type, on the training speakers, at the
      unseen SNRs; for clean items no denoiser);
    * ``gated_pipeline``: one denoiser per training noise type plus the identity (the "clean"
      expert) in :class:`~mmpgm.models.denoising.GatedDenoisers`, the gate trained with the
      known noise type (denoisers frozen), then
      :func:`~mmpgm.models.denoising.finetune_into_embedding` with ``train="denoiser"`` (the
      paper's option 1: encoder fixed) and classification around the gate-weighted centre of
      the denoised embeddings (:func:`~mmpgm.models.denoising.gated_centre_classify`).
      ``gated_pipeline_encoder`` / ``gated_pipeline_both``: options 2 and 3 (the memory is
      re-embedded with the fine-tuned encoder); ``gated_pipeline_no_finetune``: the pipeline
      before fine-tuning.

    Metrics per system: ``accuracy_seen_noise`` (test speakers, training noise types),
    ``accuracy_unseen_noise`` (test speakers, unseen noise types), ``accuracy_clean``,
    ``accuracy_per_noise``; for the gated systems also ``gate_weights`` (mean gate weight of
    every expert per test noise type). ``"targets"``: on unseen noise, ``gated_pipeline`` >=
    ``siamese_knn`` + 10 points, >= ``single_dae`` + 3 points, >= ``oracle_dae`` - 3 points.

``hmm_frames``
    Frame decoding of digit strings (3-4 digits with pauses, one test speaker per sequence,
    the noise over the whole clip): a :class:`mmpgm.MultimodalHMM` with 11 shared states
    (silence + one per digit), fitted by EM on the training speakers' sequences (clean and the
    three training noises) with the per-frame labels clamping the state (supervised), decoded
    by Viterbi (``infer(...).map``). ``hmm_raw``: diagonal-Gaussian emission on the 32 log-mel
    values of the frame; ``hmm_embedding``: an
    :class:`~mmpgm.observations.EmbeddingObservation` on a frame
    :class:`mmpgm.SiameseEncoder` (``MLPTower(288, (256,), 16)``) of the frame's +-4-frame
    context window, trained with the per-frame class labels on the same training sequences
    (the encoder frozen: a feature likelihood). Metrics per condition: ``frame_accuracy``
    (11-way) and ``speech_accuracy`` (word vs silence). Target: ``hmm_embedding`` frame accuracy
    above ``hmm_raw``'s on the unseen noises.

A system whose API is missing from this checkout is listed under ``"skipped"`` with the reason.

Usage::

    python benchmarks/noisy_event_classification.py --quick        # CI smoke (~30 s)
    python benchmarks/noisy_event_classification.py --cache /tmp/ne --jsonl out.jsonl

``--device cuda[:i]``: the encoders, denoisers, gate and HMMs are moved there (``.to(device)``;
the library moves their inputs to their device), the raw-feature kNN stays on the CPU;
``"devices"`` says where each system ran, ``peak_mib`` the peak CUDA memory of a configuration.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `mmpgm` and `_common` importable
    _here = Path(__file__).resolve().parent
    sys.path.insert(0, str(_here))
    sys.path.insert(1, str(_here.parent))
    import _noisy_events as ne
    from _common import (
        CudaPeak,
        add_device_argument,
        check_device,
        device_env,
        device_map,
        emit,
        env_info,
    )
else:  # pragma: no cover - imported as benchmarks.noisy_event_classification
    from . import _noisy_events as ne
    from ._common import (
        CudaPeak,
        add_device_argument,
        check_device,
        device_env,
        device_map,
        emit,
        env_info,
    )

import numpy as np
import torch

import mmpgm
from mmpgm import MultimodalData, MultimodalHMM

BENCHMARK = "noisy_event_classification"
CONFIGS = ("word_knn", "hmm_frames")
NUM_CLASSES = len(ne.WORDS)
SIZES = {
    # train/test voices, renditions per (word, voice), noisy copies per (token, noise type),
    # HMM sequences per speaker (train / test), optimizer steps (siamese, fine-tuning: Adam
    # steps; denoisers and gate: epochs of minibatches of --batch-size items, as mmpgm.fit counts)
    "full": dict(train_voices=8, test_voices=8, train_reps=4, test_reps=3, copies=2,
                 train_seqs=6, test_seqs=3, siamese_steps=1500, dae_epochs=100, gate_epochs=30,
                 finetune_steps=300, frame_steps=1500, em_steps=3),
    "quick": dict(train_voices=4, test_voices=2, train_reps=2, test_reps=1, copies=1,
                  train_seqs=2, test_seqs=1, siamese_steps=150, dae_epochs=25, gate_epochs=10,
                  finetune_steps=40, frame_steps=100, em_steps=3),
}  # fmt: skip


def git_state() -> dict:
    import os
    import subprocess

    if os.environ.get("MMPGM_GIT_COMMIT"):
        return {"git_commit": os.environ["MMPGM_GIT_COMMIT"], "git_dirty": False}
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                             capture_output=True, text=True)  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return {}
    if rev.returncode != 0:
        return {}
    return {"git_commit": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def api_missing() -> dict:
    """Reasons why the siamese / denoiser systems cannot run in this checkout (empty: all can)."""
    out = {}
    for name in ("SiameseEncoder", "KNNMemory"):
        try:
            getattr(mmpgm, name)
        except AttributeError:
            out[name] = f"mmpgm.{name} is not in this checkout"
    try:
        from mmpgm.nn.siamese import MLPTower  # noqa: F401
    except ImportError:
        out["MLPTower"] = "mmpgm.nn.siamese.MLPTower is not in this checkout"
    try:
        from mmpgm.models.denoising import (  # noqa: F401
            DenoisingExpert,
            GatedDenoisers,
            finetune_into_embedding,
            gated_centre_classify,
        )
    except ImportError:
        out["denoising"] = "mmpgm.models.denoising (DenoisingExpert, GatedDenoisers) is missing"
    try:
        from mmpgm.observations import EmbeddingObservation  # noqa: F401
    except ImportError:
        out["EmbeddingObservation"] = "mmpgm.observations.EmbeddingObservation is missing"
    return out


# --------------------------------------------------------------------------- corpus
def build_corpus(args, sizes):
    t0 = time.perf_counter()
    cache = Path(args.cache)
    train_w = ne.synth_words(ne.TRAIN_VOICES[: sizes["train_voices"]], sizes["train_reps"],
                             cache, seed=args.seed)  # fmt: skip
    test_w = ne.synth_words(ne.TEST_VOICES[: sizes["test_voices"]], sizes["test_reps"],
                            cache, seed=args.seed + 1)  # fmt: skip
    babble_tr = ne.babble_sources("train", cache, seed=args.seed)
    babble_te = ne.babble_sources("test", cache, seed=args.seed)
    s = args.seed
    c = sizes["copies"]
    corpus = dict(
        train_waves=train_w,
        test_waves=test_w,
        babble_train=babble_tr,
        babble_test=babble_te,
        train=ne.make_word_set(train_w, ("clean",) + ne.TRAIN_NOISES, ne.TRAIN_SNRS,
                               seed=s, babble=babble_tr, copies=c),
        train_unseen=ne.make_word_set(train_w, ne.UNSEEN_NOISES, ne.UNSEEN_SNRS, seed=s + 10,
                                      babble=babble_tr, copies=c),
        test_clean=ne.make_word_set(test_w, ("clean",), ne.TRAIN_SNRS, seed=s + 20),
        test_seen=ne.make_word_set(test_w, ne.TRAIN_NOISES, ne.TRAIN_SNRS, seed=s + 21,
                                   babble=babble_te),
        test_unseen=ne.make_word_set(test_w, ne.UNSEEN_NOISES, ne.UNSEEN_SNRS, seed=s + 22,
                                     babble=babble_te),
    )  # fmt: skip
    corpus["seconds"] = time.perf_counter() - t0
    return corpus


def _t(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def items(x) -> torch.Tensor:
    """``(F, D)`` items as ``(F, 1, D)`` sequences of length 1 (the item convention)."""
    return _t(x)[:, None, :]


# --------------------------------------------------------------------------- word systems
def knn_predict(memory_x, memory_y, x, k):
    """Majority vote of the ``k`` nearest (Euclidean) memory items, a tie going to the class of
    the nearest tied neighbour (:class:`mmpgm.KNNMemory` where this checkout has it)."""
    if "KNNMemory" not in api_missing():
        return mmpgm.KNNMemory(k=k).add(memory_x, memory_y).predict(x)
    nearest = torch.cdist(x, memory_x).topk(min(k, len(memory_y)), largest=False).indices
    onehot = torch.nn.functional.one_hot(memory_y[nearest], NUM_CLASSES)  # (F, k, C)
    rank = torch.arange(nearest.shape[1], 0, -1, dtype=torch.float32)  # nearest: largest
    score = onehot.sum(1) * (nearest.shape[1] + 1) + (onehot * rank[:, None]).amax(1)
    return score.argmax(-1)


def accuracies(pred_fn, corpus) -> dict:
    """The metrics of one system; ``pred_fn(x (F, D) tensor, noise (F,) str) -> (F,)``."""
    out, per = {}, {}
    for key, split in (("clean", "test_clean"), ("seen_noise", "test_seen"),
                       ("unseen_noise", "test_unseen")):  # fmt: skip
        W = corpus[split]
        pred = pred_fn(_t(W.noisy), W.noise).cpu().numpy()
        ok = pred == W.word
        out[f"accuracy_{key}"] = float(ok.mean())
        if key != "clean":
            for kind in np.unique(W.noise):
                per[str(kind)] = float(ok[W.noise == kind].mean())
    out["accuracy_per_noise"] = per
    return out


def train_siamese(x, y, args, steps, *, input_dim, hidden, embed_dim, modality="x", label="word",
                  lengths=None):
    from mmpgm.nn.siamese import MLPTower

    tower = MLPTower(input_dim, hidden, embed_dim)
    enc = mmpgm.SiameseEncoder(tower, modality=modality, label=label, margin=args.margin,
                               num_pairs=args.num_pairs).to(args.device)  # fmt: skip
    data = MultimodalData({modality: x}, lengths=lengths, labels={label: y})
    _quiet(lambda: mmpgm.fit(enc, data, num_steps=steps, lr=args.lr, seed=args.seed,
                             progress=False))  # fmt: skip
    return enc


def train_dae(noisy, clean, args, steps):
    from mmpgm.models.denoising import DenoisingExpert

    dae = DenoisingExpert(noisy.shape[-1], hidden_dims=(args.dae_hidden,),
                          bottleneck_dim=args.dae_bottleneck).to(args.device)  # fmt: skip
    data = MultimodalData({"noisy": items(noisy), "clean": items(clean)})
    _quiet(lambda: mmpgm.fit(dae, data, num_steps=steps, lr=args.lr, seed=args.seed,
                             batch_size=args.batch_size, progress=False))  # fmt: skip
    return dae


def run_word_knn(args, sizes, corpus, missing) -> dict:
    W = corpus["train"]
    is_clean = W.noise == "clean"
    mem_x, mem_y = _t(W.clean[is_clean]), torch.as_tensor(W.word[is_clean])
    metrics, fit_s, skipped = {}, {}, {}
    metrics["raw_knn"] = accuracies(lambda x, _n: knn_predict(mem_x, mem_y, x, args.k), corpus)
    fit_s["raw_knn"] = 0.0
    log(f"  raw_knn: {_fmt(metrics['raw_knn'])}")
    if missing:
        reason = "; ".join(missing.values())
        for name in ("siamese_knn", "single_dae", "oracle_dae", "gated_pipeline"):
            skipped[name] = reason
        return dict(metrics=metrics, fit_s=fit_s, skipped=skipped)
    from mmpgm.models.denoising import (
        GatedDenoisers,
        finetune_into_embedding,
        gated_centre_classify,
    )

    D = W.clean.shape[1]
    t = time.perf_counter()
    enc = train_siamese(items(W.clean[is_clean]), torch.as_tensor(W.word[is_clean]), args,
                        sizes["siamese_steps"], input_dim=D, hidden=(args.hidden,),
                        embed_dim=args.embed_dim)  # fmt: skip
    fit_s["siamese_knn"] = time.perf_counter() - t
    memory = mmpgm.KNNMemory(enc, k=args.k).add(mem_x, mem_y)
    metrics["siamese_knn"] = accuracies(lambda x, _n: memory.predict(x), corpus)
    log(f"  siamese_knn: {_fmt(metrics['siamese_knn'])}  ({fit_s['siamese_knn']:.0f} s)")

    # one denoiser for all training noises
    noisy = ~is_clean
    t = time.perf_counter()
    single = train_dae(W.noisy[noisy], W.clean[noisy], args, sizes["dae_epochs"])
    fit_s["single_dae"] = time.perf_counter() - t
    metrics["single_dae"] = accuracies(lambda x, _n: memory.predict(single.denoise(x)), corpus)
    log(f"  single_dae: {_fmt(metrics['single_dae'])}  ({fit_s['single_dae']:.0f} s)")

    # one denoiser per noise type (training types: the experts; unseen types: oracle only)
    experts = {}
    t = time.perf_counter()
    for kind in ne.TRAIN_NOISES:
        sel = W.noise == kind
        experts[kind] = train_dae(W.noisy[sel], W.clean[sel], args, sizes["dae_epochs"])
    fit_s["experts"] = time.perf_counter() - t
    U = corpus["train_unseen"]
    oracle = dict(experts)
    t = time.perf_counter()
    for kind in ne.UNSEEN_NOISES:
        sel = U.noise == kind
        oracle[kind] = train_dae(U.noisy[sel], U.clean[sel], args, sizes["dae_epochs"])
    fit_s["oracle_dae"] = fit_s["experts"] + time.perf_counter() - t

    def oracle_pred(x, noise):
        z = torch.empty(x.shape[0], enc.embed_dim)
        for kind in np.unique(noise):
            sel = torch.as_tensor(noise == kind)
            xs = x[sel] if kind == "clean" else oracle[str(kind)].denoise(x[sel])
            z[sel] = enc.embed(xs).to(z)
        return mmpgm.KNNMemory(k=args.k).add(enc.embed(mem_x), mem_y).predict(z)

    metrics["oracle_dae"] = accuracies(oracle_pred, corpus)
    log(f"  oracle_dae: {_fmt(metrics['oracle_dae'])}  ({fit_s['oracle_dae']:.0f} s)")

    # the gated mixture: the training-noise experts and the identity, gate trained on the
    # known noise type with the experts frozen (Fig. 11b)
    kinds = ne.TRAIN_NOISES + ("clean",)
    gate_experts = [copy.deepcopy(experts[k]) for k in ne.TRAIN_NOISES] + [torch.nn.Identity()]
    gated = GatedDenoisers(gate_experts, noise_label="noise_type", train_experts=False,
                           input_dim=D).to(args.device)  # fmt: skip
    noise_type = torch.as_tensor([kinds.index(str(k)) for k in W.noise])
    gdata = MultimodalData({"noisy": items(W.noisy), "clean": items(W.clean)},
                           labels={"noise_type": noise_type})  # fmt: skip
    t = time.perf_counter()
    # program "collapsed" (the exact log-likelihood as one factor): with this mix of known
    # noise types the default "enumerated" program's loss is inf at step 0 in this checkout
    _quiet(lambda: mmpgm.fit(gated, gdata, program="collapsed", num_steps=sizes["gate_epochs"],
                             lr=args.lr, seed=args.seed, batch_size=args.batch_size,
                             progress=False))
    fit_s["gate"] = time.perf_counter() - t

    def gate_weights(g):
        out = {}
        for split in ("test_clean", "test_seen", "test_unseen"):
            Wt = corpus[split]
            w = g.denoise(_t(Wt.noisy)).gate_weights.cpu()
            for kind in np.unique(Wt.noise):
                sel = torch.as_tensor(Wt.noise == kind)
                out[str(kind)] = dict(zip(kinds, w[sel].mean(0).tolist(), strict=True))
        return out

    def gated_metrics(g, e):
        mem = mmpgm.KNNMemory(e, k=args.k).add(mem_x, mem_y)
        m = accuracies(lambda x, _n: gated_centre_classify(g, None, x, mem), corpus)
        m["gate_weights"] = gate_weights(g)
        return m

    metrics["gated_pipeline_no_finetune"] = gated_metrics(gated, enc)
    fit_s["gated_pipeline_no_finetune"] = fit_s["experts"] + fit_s["gate"]
    log(f"  gated_pipeline_no_finetune: {_fmt(metrics['gated_pipeline_no_finetune'])}")
    for option, name in (("denoiser", "gated_pipeline"), ("encoder", "gated_pipeline_encoder"),
                         ("both", "gated_pipeline_both")):  # fmt: skip
        g, e = copy.deepcopy(gated), copy.deepcopy(enc)
        t = time.perf_counter()
        _quiet(lambda g=g, e=e, option=option: finetune_into_embedding(
            g, e, gdata, train=option, num_steps=sizes["finetune_steps"], lr=args.lr,
            batch_size=args.batch_size, seed=args.seed, progress=False))
        fit_s[name] = fit_s["gated_pipeline_no_finetune"] + time.perf_counter() - t
        metrics[name] = gated_metrics(g, e)
        metrics[name]["finetune"] = option
        log(f"  {name}: {_fmt(metrics[name])}  ({fit_s[name]:.0f} s)")
    return dict(metrics=metrics, fit_s=fit_s, skipped=skipped)


def word_targets(metrics) -> dict:
    out = {}
    if "gated_pipeline" not in metrics:
        return out
    g = metrics["gated_pipeline"]["accuracy_unseen_noise"]
    for name, ref, margin in (("vs_siamese_knn", "siamese_knn", 0.10),
                              ("vs_single_dae", "single_dae", 0.03),
                              ("vs_oracle_dae", "oracle_dae", -0.03)):  # fmt: skip
        if ref in metrics:
            r = metrics[ref]["accuracy_unseen_noise"]
            out[name] = {"gated_pipeline": g, ref: r, "required_margin": margin,
                         "margin": g - r, "pass": bool(g >= r + margin - 1e-12)}  # fmt: skip
    return out


def _fmt(m) -> str:
    return (f"clean {m['accuracy_clean']:.3f}  seen {m['accuracy_seen_noise']:.3f}  "
            f"unseen {m['accuracy_unseen_noise']:.3f}")  # fmt: skip


# --------------------------------------------------------------------------- HMM systems
def seq_data(S, key, dtype=torch.float64, labels=True) -> MultimodalData:
    lab = {"shared": torch.as_tensor(S.labels)} if labels else None
    return MultimodalData({"audio": torch.as_tensor(getattr(S, key), dtype=dtype)},
                          lengths=torch.as_tensor(S.lengths), labels=lab)  # fmt: skip


def frame_metrics(model, S, key, dtype) -> dict:
    out = {}
    post = _quiet(lambda: mmpgm.infer(model, seq_data(S, key, dtype, labels=False)))
    pred = post.map["shared"].cpu().numpy()
    inside = S.labels >= 0
    for cond in np.unique(S.noise):
        sel = inside & (S.noise == cond)[:, None]
        out[str(cond)] = {
            "frame_accuracy": float((pred == S.labels)[sel].mean()),
            "speech_accuracy": float(((pred > 0) == (S.labels > 0))[sel].mean()),
        }
    return out


def _pool(per: dict, kinds) -> dict:
    keys = ("frame_accuracy", "speech_accuracy")
    return {k: float(np.mean([per[c][k] for c in kinds if c in per])) for k in keys}


def run_hmm_frames(args, sizes, corpus, missing) -> dict:
    t0 = time.perf_counter()
    train = ne.make_sequences(corpus["train_waves"], sizes["train_seqs"],
                              ("clean",) + ne.TRAIN_NOISES, ne.TRAIN_SNRS, seed=args.seed,
                              babble=corpus["babble_train"])  # fmt: skip
    test_seen = ne.make_sequences(corpus["test_waves"], sizes["test_seqs"],
                                  ("clean",) + ne.TRAIN_NOISES, ne.TRAIN_SNRS,
                                  seed=args.seed + 1, babble=corpus["babble_test"])  # fmt: skip
    test_unseen = ne.make_sequences(corpus["test_waves"], sizes["test_seqs"], ne.UNSEEN_NOISES,
                                    ne.UNSEEN_SNRS, seed=args.seed + 2)  # fmt: skip
    prep_s = time.perf_counter() - t0
    K = NUM_CLASSES + 1
    metrics, fit_s, skipped = {}, {}, {}

    def evaluate(model, key, dtype):
        per = frame_metrics(model, test_seen, key, dtype)
        per.update(frame_metrics(model, test_unseen, key, dtype))
        return {"clean": per["clean"], "seen_noise": _pool(per, ne.TRAIN_NOISES),
                "unseen_noise": _pool(per, ne.UNSEEN_NOISES), "per_noise": per}  # fmt: skip

    # every frame inside the lengths is labelled, so the labels clamp the whole shared path:
    # the E-step is exact from any start and the first M-step is already EM's fixed point (the
    # supervised MAP fit); init="none" skips the unsupervised data-driven start (a GMM search)
    t = time.perf_counter()
    raw = MultimodalHMM({"audio": ne.NUM_MELS}, num_shared_states=K, num_private_states=1)
    raw = raw.double().to(args.device)
    _quiet(lambda: mmpgm.fit(raw, seq_data(train, "raw"), method="em",
                             num_steps=sizes["em_steps"], init="none", seed=args.seed,
                             progress=False))
    fit_s["hmm_raw"] = time.perf_counter() - t
    metrics["hmm_raw"] = evaluate(raw, "raw", torch.float64)
    log(f"  hmm_raw: {_fmt_hmm(metrics['hmm_raw'])}  ({fit_s['hmm_raw']:.0f} s)")
    if missing:
        skipped["hmm_embedding"] = "; ".join(missing.values())
    else:
        from mmpgm.observations import EmbeddingObservation

        t = time.perf_counter()
        D = train.frames.shape[-1]
        fenc = train_siamese(torch.as_tensor(train.frames), torch.as_tensor(train.labels), args,
                             sizes["frame_steps"], input_dim=D, hidden=(args.hidden,),
                             embed_dim=args.frame_embed_dim, modality="audio",
                             label="frame_class",
                             lengths=torch.as_tensor(train.lengths))  # fmt: skip
        obs = EmbeddingObservation(fenc, K, 1, covariance="diag")
        emb = MultimodalHMM({"audio": fenc.embed_dim}, num_shared_states=K,
                            num_private_states=1,
                            emission={"audio": obs}).to(args.device)  # fmt: skip
        _quiet(lambda: mmpgm.fit(emb, seq_data(train, "frames", torch.float32), method="em",
                                 num_steps=sizes["em_steps"], init="none", seed=args.seed,
                             progress=False))
        fit_s["hmm_embedding"] = time.perf_counter() - t
        metrics["hmm_embedding"] = evaluate(emb, "frames", torch.float32)
        log(f"  hmm_embedding: {_fmt_hmm(metrics['hmm_embedding'])}  "
            f"({fit_s['hmm_embedding']:.0f} s)")  # fmt: skip
    targets = {}
    if "hmm_embedding" in metrics:
        e = metrics["hmm_embedding"]["unseen_noise"]["frame_accuracy"]
        r = metrics["hmm_raw"]["unseen_noise"]["frame_accuracy"]
        targets["embedding_vs_raw"] = {"hmm_embedding": e, "hmm_raw": r, "margin": e - r,
                                       "pass": bool(e > r)}  # fmt: skip
    config = {"num_states": K, "train_sequences": int(train.frames.shape[0]),
              "test_sequences": int(test_seen.frames.shape[0] + test_unseen.frames.shape[0]),
              "frame_hop_s": 0.02, "context": ne.CONTEXT, "prep_s": prep_s}  # fmt: skip
    return dict(metrics=metrics, fit_s=fit_s, skipped=skipped, targets=targets, config=config)


def _fmt_hmm(m) -> str:
    return " ".join(f"{c} {m[c]['frame_accuracy']:.3f}/{m[c]['speech_accuracy']:.3f}"
                    for c in ("clean", "seen_noise", "unseen_noise"))  # fmt: skip


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for the CI smoke test")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config names")
    p.add_argument("--cache", default=None, help="cache of synthesized words (default: a temp dir)")
    p.add_argument("--sizes", default="", help="overrides of the size table, e.g. "
                   "'train_reps=8,finetune_steps=600' (keys: see SIZES)")
    p.add_argument("--k", type=int, default=5, help="neighbours of every kNN")
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the towers")
    p.add_argument("--embed-dim", type=int, default=32, help="word embedding size")
    p.add_argument("--frame-embed-dim", type=int, default=16, help="frame embedding size")
    p.add_argument("--margin", type=float, default=1.0, help="contrastive margin")
    p.add_argument("--num-pairs", type=int, default=512, help="pairs per siamese step")
    p.add_argument("--dae-hidden", type=int, default=512)
    p.add_argument("--dae-bottleneck", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    add_device_argument(p, "the encoders, denoisers, gate and HMMs (training and inference)")
    args = p.parse_args(argv)
    try:
        args.device = check_device(args.device)
    except ValueError as err:
        p.error(str(err))
    configs = tuple(c for c in args.configs.split(",") if c)
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"--configs: expected names from {CONFIGS}, got {bad}")
    args.configs = configs
    sizes = dict(SIZES["quick" if args.quick else "full"])
    for part in (q for q in args.sizes.split(",") if q):
        key, _, value = part.partition("=")
        if key not in sizes or not value.isdigit() or int(value) < 1:
            p.error(f"--sizes: expected KEY=POSITIVE_INT with KEY in {sorted(sizes)}, got {part!r}")
        sizes[key] = int(value)
    args.size_table = sizes
    return args


def main(argv=None) -> int:
    import tempfile

    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes = args.size_table
    tmp = None
    if args.cache is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmpgm_noisy_events_")
        args.cache = tmp.name
    missing = api_missing()
    out = open(args.jsonl, "a") if args.jsonl else None  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        corpus = build_corpus(args, sizes)
        log(f"corpus: {len(corpus['train'].word)} training items, "
            f"{len(corpus['test_seen'].word) + len(corpus['test_unseen'].word)} noisy test items "
            f"({corpus['seconds']:.0f} s)")  # fmt: skip
        base_config = {
            **sizes,
            "quick": bool(args.quick),
            "words": list(ne.WORDS),
            "train_voices": [v[0] for v in ne.TRAIN_VOICES[: sizes["train_voices"]]],
            "test_voices": [v[0] for v in ne.TEST_VOICES[: sizes["test_voices"]]],
            "train_noises": list(ne.TRAIN_NOISES),
            "unseen_noises": list(ne.UNSEEN_NOISES),
            "train_snrs_db": list(ne.TRAIN_SNRS),
            "unseen_snrs_db": list(ne.UNSEEN_SNRS),
            "seed": args.seed,
        }
        for name in args.configs:
            log(f"{name}:")
            t = time.perf_counter()
            peak = CudaPeak(args.device)
            if name == "word_knn":
                with peak:
                    res = run_word_knn(args, sizes, corpus, missing)
                config = dict(base_config, name=name, k=args.k,
                              item_shape=[ne.NUM_FRAMES, ne.NUM_MELS],
                              train_items=len(corpus["train"].word),
                              test_items={s: len(corpus[s].word) for s in
                                          ("test_clean", "test_seen", "test_unseen")})  # fmt: skip
                targets = word_targets(res["metrics"])
            else:
                with peak:
                    res = run_hmm_frames(args, sizes, corpus, missing)
                config = dict(base_config, name=name, **res["config"])
                targets = res["targets"]
            record = {
                "benchmark": BENCHMARK,
                "config": dict(config, device=args.device),
                # raw_knn: a plain kNN on the raw features (no model), on the CPU
                "devices": device_map(list(res["metrics"]) + list(res["skipped"]), args.device,
                                      ("raw_knn",)),  # fmt: skip
                "median_s": res["fit_s"],
                "speedup": {},
                # --device cuda: the peak CUDA memory of the whole configuration
                "peak_mib": {} if peak.extra_mib is None else {"all_systems": peak.extra_mib},
                "agreement": {},
                "metrics": res["metrics"],
                "targets": targets,
                "skipped": res["skipped"],
                "wall_s": time.perf_counter() - t,
                "env": env_info({**git_state(), "total_s": time.perf_counter() - t0,
                                 **device_env(args.device)}),  # fmt: skip
            }
            emit(record)
            if out is not None:
                emit(record, out)
            for tname, tgt in targets.items():
                log(f"  target {tname}: margin {tgt['margin']:+.3f} -> "
                    f"{'pass' if tgt['pass'] else 'MISS'}")  # fmt: skip
    finally:
        if out is not None:
            out.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
