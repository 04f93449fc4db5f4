"""Fusion with a failing sensor: per-class HMM classification and LDS tracking (issue 12, item 5).

Two configurations, each one JSON line per corpus (``DESIGN.md`` section 8; quality metrics
under ``"metrics"``), a human summary on stderr:

``imu_classification`` (corpora ``A`` and ``B``)
    IMU-like two-sensor sequences (:func:`mmpgm.datasets.imu_activity_data`: accelerometer and
    gyroscope, 3-d each, activity classes = small cyclic HMMs seen by both sensors, ragged
    lengths). One model per class is fitted to the clean training split, the label of a test
    sequence is the class whose model gives it the highest log-likelihood. Test conditions:
    ``clean`` and, for each sensor and each fault kind (``noise``: train mean + 3 train sd,
    ``stuck``: the last clean reading held, ``drift``: an offset growing to 6 train sd, see
    :func:`mmpgm.datasets.corrupt`), that sensor corrupted on half of each test sequence's
    frames (``--segments`` contiguous runs). Systems:

    * ``mmpgm_plain``: ``MultimodalHMM(dims, K_s, K_m)``, EM;
    * ``mmpgm_faults``: ``MultimodalHMM(dims, K_s, K_m, sensor_faults=True)``, EM; every class
      model gets ``fit_fault_background`` on the same pooled training data of all classes (so a
      faulty frame adds the same evidence to every class);
    * ``hmmlearn_joint``: ``hmmlearn.hmm.GaussianHMM(K_s, "diag")`` on the concatenated
      features;
    * ``hmmlearn_late``: one ``GaussianHMM`` per sensor, log-likelihoods summed (late fusion);
    * ``mmpgm_accel_only``, ``mmpgm_gyro_only``: ``MultimodalHMM`` on one sensor.

    Metrics per system: accuracy per condition; for ``mmpgm_faults`` also the fault-detection
    AUROC (the smoothed fault marginals of the predicted class's model on the corrupted
    sensor's frames against the corruption labels; ``_both``: every frame of both sensors), the
    mean fault probability on clean data, and ``cost_ratio``: median time of
    ``log_likelihood`` with / without the fault chains (same ``K_s, K_m``). Targets (pass/fail
    under ``"targets"``): every corrupted accuracy of ``mmpgm_faults`` >= the best clean
    single-sensor accuracy - 5 points; its clean accuracy >= ``mmpgm_plain``'s - 1 point.
    Corpus ``B`` is a second generator setting (6 classes, 5 phases, slower and more variable
    rhythm, more and more correlated noise, longer sequences, other templates) run with the
    same recipe (``K_s``, ``K_m``, EM steps, restarts): a transfer check of the recipe, not of
    fitted parameters.

``lds_outliers``
    Tracking with gross outliers: a two-sensor ``MultimodalLDS`` (``pos`` and ``imu``, 3-d
    each, shared state 4-d = two damped rotations, 1-d private blocks) with known parameters;
    ``--outlier-fraction`` (10%) of the ``pos`` frames replaced by isolated gross outliers
    (:func:`mmpgm.datasets.corrupt` ``"noise"`` with ``offset_sd=0, scale_sd=10``: zero-mean,
    10 data sd). Smoothed-state RMSE against the true latent path (all state coordinates,
    frames inside the lengths) of ``mmpgm_faults`` (``MultimodalLDS(..., sensor_faults=True)``
    with the same parameters), ``mmpgm_plain`` (exact Kalman smoother), ``oracle_mask`` (the
    plain smoother with the outlier frames masked) and ``pykalman`` (``KalmanFilter.smooth``
    with the same parameters; its agreement with ``mmpgm_plain`` under ``"agreement"``).
    Target: ``mmpgm_faults`` RMSE <= 1.1 x ``oracle_mask``'s.

A system that cannot run (not installed, or the fault-aware keyword not in this checkout) is
listed under ``"skipped"`` with its reason.

``--device cuda[:i]``: the mmpgm models are moved there (``.to(device)``; fits, likelihoods and
posteriors run there, the data follow), the CPU libraries (hmmlearn, pykalman) stay on the CPU;
``"devices"`` in each record says where each system ran, ``peak_mib`` holds the peak CUDA
memory of each mmpgm system's fit and scoring (``torch.cuda.max_memory_allocated``), and the
timings synchronize the device.

Usage::

    python benchmarks/sensor_faults.py --quick                 # CI smoke, ~1 min
    python benchmarks/sensor_faults.py                         # full run (minutes)
    python benchmarks/sensor_faults.py --configs lds_outliers --jsonl out.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `mmpgm` and `_common` importable
    _here = Path(__file__).resolve().parent
    sys.path.insert(0, str(_here))
    sys.path.insert(1, str(_here.parent))
    from _common import (
        CudaPeak,
        add_device_argument,
        check_device,
        device_env,
        device_map,
        emit,
        env_info,
        synchronized,
        time_interleaved,
    )
else:  # pragma: no cover - imported as benchmarks.sensor_faults
    from ._common import (
        CudaPeak,
        add_device_argument,
        check_device,
        device_env,
        device_map,
        emit,
        env_info,
        synchronized,
        time_interleaved,
    )

import torch

import mmpgm
from mmpgm import MultimodalData, MultimodalHMM, MultimodalLDS
from mmpgm.datasets import corrupt, imu_activity_data
from mmpgm.datasets.imu import FAULT_KINDS, IMU_MODALITIES

BENCHMARK = "sensor_faults"
CPU_PEERS = ("hmmlearn_joint", "hmmlearn_late", "pykalman")  # CPU libraries: never moved
CONFIGS = ("imu_classification", "lds_outliers")
LDS_DIMS = {"pos": 3, "imu": 3}

# The second corpus: other rates, noise, class count, lengths, templates (same recipe).
CORPORA = {
    "A": dict(template_seed=100),
    "B": dict(
        template_seed=200,
        num_classes=6,
        num_phases=5,
        rate=0.4,
        rate_spread=0.3,
        noise_scale=1.3,
        noise_ar=0.5,
        accel_separation=0.9,
        gyro_separation=0.8,
        gain_sd=0.15,
        min_length=80,
        max_length=140,
    ),
}


def git_state() -> dict:
    """The checkout the run measured: ``MMPGM_GIT_COMMIT`` if set (a snapshot without ``.git``),
    else ``git rev-parse HEAD`` of this repository and whether tracked files differ from it."""
    import os
    import subprocess

    if os.environ.get("MMPGM_GIT_COMMIT"):
        return {"git_commit": os.environ["MMPGM_GIT_COMMIT"], "git_dirty": False}
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return {}
    if rev.returncode != 0:
        return {}
    return {"git_commit": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def has_faults(cls) -> bool:
    return "sensor_faults" in inspect.signature(cls.__init__).parameters


# --------------------------------------------------------------------------- helpers
def select(data: MultimodalData, mods, idx=None) -> MultimodalData:
    """The modalities ``mods`` of ``data`` (rows ``idx``), lengths and masks kept."""
    d = MultimodalData(
        {m: data.obs[m] for m in mods},
        lengths=data.lengths,
        mask={m: data.mask[m] for m in mods},
        labels={k: v for k, v in data.labels.items() if k != "shared"},
    )
    return d if idx is None else d[idx]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``labels`` (sklearn's
    ``roc_auc_score`` when installed, else the Mann-Whitney rank formula with mid-ranks)."""
    s = scores.detach().double().flatten().cpu()
    y = labels.flatten().bool().cpu()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    try:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y.numpy(), s.numpy()))
    except ImportError:  # pragma: no cover - sklearn is a test dependency
        order = torch.argsort(s)
        ranks = torch.empty_like(s)
        ranks[order] = torch.arange(1, s.numel() + 1, dtype=s.dtype)
        for v in torch.unique(s):  # mid-ranks for ties
            tie = s == v
            if int(tie.sum()) > 1:
                ranks[tie] = ranks[tie].mean()
        return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _quiet_fit(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# --------------------------------------------------------------------------- HMM systems
class MmpgmClassifier:
    """One ``MultimodalHMM`` per class on the modalities ``mods``."""

    def __init__(self, mods, args, faults=False):
        self.mods, self.args, self.faults = tuple(mods), args, faults

    def fit(self, train: MultimodalData, num_classes: int):
        a = self.args
        y = train.labels["activity"]
        pooled = select(train, self.mods)
        self.models = []
        for c in range(num_classes):
            kw = {"sensor_faults": True} if self.faults else {}
            model = MultimodalHMM({m: 3 for m in self.mods}, a.k_shared, a.k_private, **kw)
            model = model.to(a.device)  # fit moves each class's data to the model's device
            part = select(train, self.mods, torch.nonzero(y == c).flatten())
            mmpgm.fit(
                model,
                part,
                method="em",
                num_steps=a.em_steps,
                num_restarts=a.restarts,
                seed=a.seed,
                progress=False,
            )
            if self.faults:
                model.fit_fault_background(pooled)
            self.models.append(model)
        return self

    @torch.no_grad()
    def scores(self, data: MultimodalData) -> torch.Tensor:
        d = select(data, self.mods)
        return torch.stack([m.log_likelihood(d).cpu() for m in self.models], -1)

    @torch.no_grad()
    def fault_probs(self, data: MultimodalData, pred: torch.Tensor) -> dict:
        """Smoothed fault marginals ``(N, T)`` per modality under each sequence's predicted
        class model."""
        d = select(data, self.mods)
        out = {m: torch.zeros(d.num_sequences, d.num_timesteps) for m in self.mods}
        for c, model in enumerate(self.models):
            rows = pred == c
            if not bool(rows.any()):
                continue
            post = mmpgm.infer(model, d[torch.nonzero(rows).flatten()], map_path=False)
            for m in self.mods:
                out[m][rows] = post.fault_probs[m].double().cpu()
        return out


class HmmlearnClassifier:
    """One ``GaussianHMM`` per class on the concatenated modalities of each group in
    ``groups``; a group's log-likelihoods are summed (one group = joint, one per sensor =
    late fusion)."""

    def __init__(self, groups, args):
        self.groups, self.args = [tuple(g) for g in groups], args

    @staticmethod
    def _seqs(data, mods):
        X = torch.cat([data.obs[m] for m in mods], -1).double().numpy()
        return [X[n, : int(data.lengths[n])] for n in range(data.num_sequences)]

    def fit(self, train, num_classes):
        import numpy as np
        from hmmlearn.hmm import GaussianHMM

        a = self.args
        y = train.labels["activity"]
        self.models = []
        for mods in self.groups:
            seqs = self._seqs(train, mods)
            per_class = []
            for c in range(num_classes):
                part = [seqs[i] for i in torch.nonzero(y == c).flatten().tolist()]
                hmm = GaussianHMM(
                    n_components=a.k_shared,
                    covariance_type="diag",
                    n_iter=a.em_steps,
                    random_state=a.seed,
                )
                X = np.concatenate(part)
                _quiet_fit(lambda hmm=hmm, X=X, part=part: hmm.fit(X, [len(p) for p in part]))
                per_class.append(hmm)
            self.models.append((mods, per_class))
        return self

    def scores(self, data):
        total = 0.0
        for mods, per_class in self.models:
            seqs = self._seqs(data, mods)
            s = [[hmm.score(x) for hmm in per_class] for x in seqs]
            total = total + torch.tensor(s, dtype=torch.float64)
        return total


def _conditions(test, train, args):
    conds = {"clean": (test, None)}
    for i, m in enumerate(IMU_MODALITIES):
        for j, kind in enumerate(FAULT_KINDS):
            conds[f"{m}_{kind}"] = corrupt(
                test,
                m,
                kind,
                args.fault_fraction,
                num_segments=args.segments,
                reference=train,
                seed=args.seed + 10 * i + j,
            )
    return conds


def run_imu(corpus: str, args) -> dict:
    torch.manual_seed(args.seed)
    kw = dict(CORPORA[corpus])
    if args.quick:
        kw.update(min_length=30, max_length=50)
    train = imu_activity_data(args.train_per_class, seed=args.seed + 1, **kw)
    test = imu_activity_data(args.test_per_class, seed=args.seed + 2, **kw)
    C = int(train.labels["activity"].max()) + 1
    y = test.labels["activity"]
    conds = _conditions(test, train, args)

    faults_ok = has_faults(MultimodalHMM)
    systems = {
        "mmpgm_plain": lambda: MmpgmClassifier(IMU_MODALITIES, args),
        "mmpgm_faults": lambda: MmpgmClassifier(IMU_MODALITIES, args, faults=True),
        "hmmlearn_joint": lambda: HmmlearnClassifier([IMU_MODALITIES], args),
        "hmmlearn_late": lambda: HmmlearnClassifier([(m,) for m in IMU_MODALITIES], args),
        "mmpgm_accel_only": lambda: MmpgmClassifier(("accel",), args),
        "mmpgm_gyro_only": lambda: MmpgmClassifier(("gyro",), args),
    }
    skipped, metrics, fit_s, fitted, peak_mib = {}, {}, {}, {}, {}
    if not faults_ok:
        skipped["mmpgm_faults"] = "MultimodalHMM has no sensor_faults keyword in this checkout"
    try:
        import hmmlearn  # noqa: F401
    except ImportError as e:
        for name in ("hmmlearn_joint", "hmmlearn_late"):
            skipped[name] = f"hmmlearn not importable: {e}"
    for name, make in systems.items():
        if name in skipped:
            continue
        t0 = time.perf_counter()
        with CudaPeak(args.device if name not in CPU_PEERS else "cpu") as peak:
            try:
                clf = make().fit(train, C)
            except Exception as e:  # noqa: BLE001 - one system failing must not kill the run
                skipped[name] = f"{type(e).__name__}: {e}"[:300]
                continue
            fit_s[name] = round(time.perf_counter() - t0, 3)
            fitted[name] = clf
            acc, preds = {}, {}
            for cname, (data, _) in conds.items():
                pred = clf.scores(data).argmax(-1)
                preds[cname] = pred
                acc[cname] = round(float((pred == y).double().mean()), 4)
        if peak.extra_mib is not None:
            peak_mib[name] = peak.extra_mib
        metrics[name] = {"accuracy": acc, "fit_s": fit_s[name]}
        if name == "mmpgm_faults":
            metrics[name].update(_fault_metrics(clf, conds, preds))
        print(
            f"[{corpus}] {name:17s} fit {fit_s[name]:6.1f} s  "
            + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()),
            file=sys.stderr,
        )

    median_s, cost = {}, None
    if "mmpgm_plain" in fitted:
        # the test set moved once (the CPU peers read it from the CPU)
        test_dev = test.to(device=args.device)
        fns = {
            n: synchronized(
                lambda c=fitted[n], d=test if n in CPU_PEERS else test_dev: c.scores(d),
                args.device,
            )
            for n in fitted
        }
        timing = time_interleaved(fns, repeats=args.repeats, budget_s=20.0)
        median_s = {n: t["median_s"] for n, t in timing.items() if "median_s" in t}
        if "mmpgm_faults" in fitted:
            plain, faulty = fitted["mmpgm_plain"].models[0], fitted["mmpgm_faults"].models[0]
            d = select(test_dev, IMU_MODALITIES)

            def ll(model):
                with torch.no_grad():
                    return model.log_likelihood(d)

            t = time_interleaved(
                {
                    "plain": synchronized(lambda: ll(plain), args.device),
                    "faults": synchronized(lambda: ll(faulty), args.device),
                },
                repeats=max(args.repeats, 3),
                budget_s=20.0,
            )
            cost = t["faults"]["median_s"] / t["plain"]["median_s"]
            metrics["mmpgm_faults"]["cost_ratio"] = round(cost, 3)
            metrics["mmpgm_faults"]["log_likelihood_s"] = {
                k: round(v["median_s"], 5) for k, v in t.items()
            }
    targets = _imu_targets(metrics)
    ref = "mmpgm_faults" if "mmpgm_faults" in median_s else "mmpgm_plain"
    return {
        "benchmark": BENCHMARK,
        "config": {
            "name": "imu_classification",
            "corpus": corpus,
            "generator": {k: v for k, v in kw.items()},
            "num_classes": C,
            "train_sequences": train.num_sequences,
            "test_sequences": test.num_sequences,
            "lengths": [int(test.lengths.min()), int(test.lengths.max())],
            "K_s": args.k_shared,
            "K_m": args.k_private,
            "em_steps": args.em_steps,
            "restarts": args.restarts,
            "fault_fraction": args.fault_fraction,
            "segments": args.segments,
            "conditions": list(conds),
            "seed": args.seed,
            "dtype": "float64",
            "device": args.device,
        },
        "devices": device_map(systems, args.device, CPU_PEERS),
        "median_s": median_s,
        "speedup": {n: t / median_s[ref] for n, t in median_s.items() if n != ref},
        "peak_mib": peak_mib,
        "peak_method": "cuda_max_memory_allocated" if peak_mib else None,
        "agreement": {},
        "metrics": metrics,
        "targets": targets,
        "skipped": skipped,
        "env": env_info({"mmpgm": mmpgm.__version__, **git_state(), **device_env(args.device)}),
    }


def _fault_metrics(clf, conds, preds) -> dict:
    out = {"fault_auroc": {}, "fault_auroc_both": {}}
    for cname, (data, faulty) in conds.items():
        probs = clf.fault_probs(data, preds[cname])
        inside = data.time_mask
        if faulty is None:
            out["fault_prob_clean"] = {m: round(float(probs[m][inside].mean()), 4) for m in probs}
            continue
        bad_mod = next(m for m in faulty if faulty[m].any())
        out["fault_auroc"][cname] = round(auroc(probs[bad_mod][inside], faulty[bad_mod][inside]), 4)
        s = torch.cat([probs[m][inside] for m in probs])
        lab = torch.cat([faulty[m][inside] for m in probs])
        out["fault_auroc_both"][cname] = round(auroc(s, lab), 4)
    return out


def _imu_targets(metrics) -> dict:
    t = {}
    singles = [
        metrics[n]["accuracy"]["clean"]
        for n in ("mmpgm_accel_only", "mmpgm_gyro_only")
        if n in metrics
    ]
    if not singles or "mmpgm_faults" not in metrics:
        return {"skipped": "needs mmpgm_faults and the single-sensor models"}
    best = max(singles)
    acc = metrics["mmpgm_faults"]["accuracy"]
    corrupted = {k: v for k, v in acc.items() if k != "clean"}
    worst = min(corrupted, key=corrupted.get)
    t["corrupted_accuracy"] = {
        "threshold": round(best - 0.05, 4),
        "best_single_clean": best,
        "worst_condition": worst,
        "worst_accuracy": corrupted[worst],
        "failed_conditions": sorted(k for k, v in corrupted.items() if v < best - 0.05),
        "pass": all(v >= best - 0.05 for v in corrupted.values()),
    }
    if "mmpgm_plain" in metrics:
        drop = metrics["mmpgm_plain"]["accuracy"]["clean"] - acc["clean"]
        t["clean_drop"] = {"drop": round(drop, 4), "max": 0.01, "pass": drop <= 0.01 + 1e-12}
    return t


# --------------------------------------------------------------------------- LDS
def _true_lds(args) -> MultimodalLDS:
    """Known parameters: shared state = two damped rotations (periods ~25 and ~60 frames),
    private blocks AR(1) 0.9, random emission weights, noise sd 0.3."""
    g = torch.Generator().manual_seed(args.seed + 7)
    dims = LDS_DIMS
    model = MultimodalLDS(dims, shared_dim=4, private_dim=1).double()
    p = model.params

    def rot(theta, r):
        c, s = math.cos(theta), math.sin(theta)
        return r * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)

    A = {"shared": torch.block_diag(rot(2 * math.pi / 25, 0.99), rot(2 * math.pi / 60, 0.995))}
    Q = {"shared": 0.05 * torch.eye(4, dtype=torch.float64)}
    for m in dims:
        A[m] = torch.tensor([[0.9]], dtype=torch.float64)
        Q[m] = torch.tensor([[0.05]], dtype=torch.float64)
    blocks = list(A)
    shared_w = {m: torch.randn(3, 4, generator=g, dtype=torch.float64) for m in dims}
    private_w = {m: 0.5 * torch.randn(3, 1, generator=g, dtype=torch.float64) for m in dims}
    p = p._replace(
        transition_matrices=A,
        transition_covs=Q,
        initial_means={b: torch.zeros(A[b].shape[0], dtype=torch.float64) for b in blocks},
        initial_covs={b: torch.eye(A[b].shape[0], dtype=torch.float64) for b in blocks},
        shared_emission_matrices=shared_w,
        private_emission_matrices=private_w,
        emission_offsets={m: torch.zeros(3, dtype=torch.float64) for m in dims},
        emission_covs={m: 0.09 * torch.eye(3, dtype=torch.float64) for m in dims},
    )
    model.set_params(p)
    return model


def _pykalman_smooth(model, data) -> torch.Tensor:
    import numpy as np
    import pykalman

    lg = model.linear_gaussian_params()
    mods = model.modalities

    def npy(x):
        return x.detach().double().cpu().numpy()

    kf = pykalman.KalmanFilter(
        transition_matrices=npy(lg.transition_matrix),
        observation_matrices=np.concatenate([npy(lg.emission_matrices[m]) for m in mods], 0),
        transition_covariance=npy(lg.transition_cov),
        observation_covariance=npy(torch.block_diag(*[lg.emission_covs[m] for m in mods])),
        transition_offsets=np.zeros(lg.transition_matrix.shape[0]),
        observation_offsets=np.concatenate([npy(lg.emission_offsets[m]) for m in mods]),
        initial_state_mean=npy(lg.initial_mean),
        initial_state_covariance=npy(lg.initial_cov),
    )
    X = torch.cat([data.obs[m] for m in mods], -1).double().numpy()
    out = torch.full(
        (data.num_sequences, data.num_timesteps, lg.transition_matrix.shape[0]),
        math.nan,
        dtype=torch.float64,
    )
    for n in range(data.num_sequences):
        L = int(data.lengths[n])
        out[n, :L] = torch.from_numpy(kf.smooth(X[n, :L])[0])
    return out


def _affine_map(pred: torch.Tensor, target: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Least-squares ``W`` ``(S + 1, S)`` with ``[pred, 1] W ~ target`` on the frames inside."""
    X = pred[inside]
    X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], -1)
    return torch.linalg.lstsq(X, target[inside]).solution


def _apply_map(pred: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    return pred @ W[:-1] + W[-1]


def _with_mask(data: MultimodalData, modality: str, drop: torch.Tensor) -> MultimodalData:
    mask = dict(data.mask)
    mask[modality] = mask[modality] & ~drop
    return MultimodalData(data.obs, lengths=data.lengths, mask=mask, labels=data.labels)


def run_lds(args) -> dict:
    """Known parameters (``mmpgm_*``, ``oracle_mask``, ``pykalman``: the generating model; the
    fault-aware model's background fitted to a clean training sample) and fitted parameters
    (``*_fitted``: EM on the clean training sample; the fitted state basis is mapped onto the
    true one by the least-squares affine map of the training sample's smoothed means, then
    applied to the test smoothed means)."""
    from mmpgm.models.lds import faults as lds_faults

    torch.manual_seed(args.seed)
    N, T = (4, 60) if args.quick else (args.lds_sequences, args.lds_timesteps)
    true = _true_lds(args)
    train, train_lat = true.sample(N, T, seed=args.seed + 2)
    clean, latents = true.sample(N, T, seed=args.seed + 3)
    true = true.to(args.device)  # sampled on the CPU (the same data on every device)
    z = torch.cat([latents[b] for b in true.block_slices], -1)
    z_train = torch.cat([train_lat[b] for b in true.block_slices], -1)
    data, faulty = corrupt(
        clean,
        "pos",
        "noise",
        args.outlier_fraction,
        num_segments=T,
        offset_sd=0.0,
        scale_sd=10.0,
        seed=args.seed + 4,
        reference=train,
    )
    bad = faulty["pos"]
    oracle = _with_mask(data, "pos", bad)
    inside = data.time_mask
    shared = slice(*true.block_slices["shared"])

    def smooth(model, d):
        with torch.no_grad():
            return mmpgm.infer(model, d, map_path=False).state_mean.cpu()

    def scores(mean):
        err = (mean - z)[inside]
        return {
            "rmse": round(float(err.pow(2).mean().sqrt()), 5),
            "rmse_shared": round(float(err[:, shared].pow(2).mean().sqrt()), 5),
        }

    skipped, metrics, times, models = {}, {}, {}, {"mmpgm_plain": true}
    faults_ok = has_faults(MultimodalLDS)
    if not faults_ok:
        skipped["mmpgm_faults"] = "MultimodalLDS has no sensor_faults keyword in this checkout"
    else:
        robust = MultimodalLDS(LDS_DIMS, shared_dim=4, private_dim=1, sensor_faults=True)
        robust = robust.double().to(args.device)
        robust.set_params(true.params)
        lds_faults.fit_background(robust, train)
        models["mmpgm_faults"] = robust
    # fitted parameters: EM on the clean training sample
    fitted = {}
    for name, kw in (("plain", {}), ("faults", {"sensor_faults": True})):
        if name == "faults" and not faults_ok:
            continue
        m = MultimodalLDS(LDS_DIMS, shared_dim=4, private_dim=1, **kw).double().to(args.device)
        t0 = time.perf_counter()
        mmpgm.fit(
            m, train, method="em", num_steps=args.lds_em_steps, seed=args.seed, progress=False
        )
        times[f"fit_{name}"] = time.perf_counter() - t0
        fitted[name] = (m, _affine_map(smooth(m, train), z_train, train.time_mask))

    posts = {}
    runs = [
        ("mmpgm_plain", "mmpgm_plain", data, None),
        ("oracle_mask", "mmpgm_plain", oracle, None),
        ("mmpgm_plain_clean", "mmpgm_plain", clean, None),
        ("mmpgm_faults", "mmpgm_faults", data, None),
        ("mmpgm_faults_clean", "mmpgm_faults", clean, None),
        ("mmpgm_plain_fitted", "plain", data, "fitted"),
        ("oracle_mask_fitted", "plain", oracle, "fitted"),
        ("mmpgm_faults_fitted", "faults", data, "fitted"),
    ]
    for name, key, d, kind in runs:
        if kind is None and key not in models or kind == "fitted" and key not in fitted:
            continue
        model, W = (models[key], None) if kind is None else fitted[key]
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                post = mmpgm.infer(model, d, map_path=False)
                state_mean = post.state_mean.cpu()  # (waits for the device)
        except Exception as e:  # noqa: BLE001 - one system failing must not kill the run
            skipped[name] = f"{type(e).__name__}: {e}"[:300]
            continue
        times[name] = time.perf_counter() - t0
        mean = state_mean if W is None else _apply_map(state_mean, W)
        posts[name] = mean
        metrics[name] = scores(mean)
        fp = getattr(post, "fault_probs", None)
        if fp is not None:
            fp = {m: v.cpu() for m, v in fp.items()}
        if fp is not None and d is data:
            metrics[name]["fault_auroc"] = round(auroc(fp["pos"][inside], bad[inside]), 4)
            s = torch.cat([fp[m][inside] for m in fp])
            lab = torch.cat([faulty[m][inside] for m in fp])
            metrics[name]["fault_auroc_both"] = round(auroc(s, lab), 4)
    agreement = {}
    try:
        t0 = time.perf_counter()
        pk = _pykalman_smooth(true, data)
        times["pykalman"] = time.perf_counter() - t0
        metrics["pykalman"] = scores(pk)
        if "mmpgm_plain" in posts:
            ref = posts["mmpgm_plain"]
            agreement["pykalman"] = float((pk - ref)[inside].abs().max() / ref[inside].abs().max())
    except ImportError as e:
        skipped["pykalman"] = f"pykalman not importable: {e}"
    targets = {}
    for suffix in ("", "_fitted"):
        a, b = f"mmpgm_faults{suffix}", f"oracle_mask{suffix}"
        if a in metrics and b in metrics:
            ratio = metrics[a]["rmse"] / metrics[b]["rmse"]
            targets[f"rmse_vs_oracle{suffix}"] = {
                "ratio": round(ratio, 4),
                "max": 1.1,
                "pass": ratio <= 1.1,
            }
    if not targets:
        targets["skipped"] = "needs mmpgm_faults"
    for name, m in metrics.items():
        print(
            f"[lds] {name:20s} rmse {m['rmse']:.4f}"
            + (f"  auroc {m['fault_auroc']:.3f}" if "fault_auroc" in m else ""),
            file=sys.stderr,
        )
    return {
        "benchmark": BENCHMARK,
        "config": {
            "name": "lds_outliers",
            "N": N,
            "T": T,
            "obs_dims": LDS_DIMS,
            "shared_dim": 4,
            "private_dim": 1,
            "outlier_modality": "pos",
            "outlier_fraction": args.outlier_fraction,
            "outlier_frames": int(bad.sum()),
            "outlier_scale_sd": 10.0,
            "parameters": "known (the generating model); *_fitted: EM on a clean training sample",
            "em_steps": args.lds_em_steps,
            "seed": args.seed,
            "dtype": "float64",
            "device": args.device,
        },
        "devices": device_map(list(metrics) + list(skipped), args.device, CPU_PEERS),
        "median_s": {k: round(v, 4) for k, v in times.items()},
        "speedup": {},
        "peak_mib": {},
        "agreement": agreement,
        "metrics": metrics,
        "targets": targets,
        "skipped": skipped,
        "env": env_info({"mmpgm": mmpgm.__version__, **git_state(), **device_env(args.device)}),
    }


# --------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for the CI smoke test")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config names")
    p.add_argument("--corpora", default="A,B", help="imu corpora to run (A, B)")
    p.add_argument("--train-per-class", type=int, default=None, help="default 20 (quick 6)")
    p.add_argument("--test-per-class", type=int, default=None, help="default 50 (quick 6)")
    p.add_argument("--k-shared", type=int, default=4, help="K_s of every class model")
    p.add_argument("--k-private", type=int, default=1, help="K_m of every class model")
    p.add_argument("--em-steps", type=int, default=None, help="EM iterations (default 100)")
    p.add_argument("--restarts", type=int, default=None, help="EM restarts (default 2, quick 1)")
    p.add_argument("--fault-fraction", type=float, default=0.5)
    p.add_argument("--segments", type=int, default=1, help="contiguous fault segments")
    p.add_argument("--outlier-fraction", type=float, default=0.1)
    p.add_argument("--lds-sequences", type=int, default=20)
    p.add_argument("--lds-timesteps", type=int, default=200)
    p.add_argument("--lds-em-steps", type=int, default=None, help="LDS EM steps (default 100)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    add_device_argument(p, "the mmpgm models (fits, likelihoods, posteriors)")
    a = p.parse_args(argv)
    try:
        a.device = check_device(a.device)
    except ValueError as err:
        p.error(str(err))
    q = a.quick
    a.train_per_class = a.train_per_class or (6 if q else 20)
    a.test_per_class = a.test_per_class or (6 if q else 50)
    a.em_steps = a.em_steps or (15 if q else 100)
    a.restarts = a.restarts or (1 if q else 2)
    a.repeats = a.repeats or (1 if q else 5)
    a.lds_em_steps = a.lds_em_steps or (10 if q else 100)
    for name in a.configs.split(","):
        if name not in CONFIGS:
            p.error(f"--configs: unknown config {name!r}; expected some of {list(CONFIGS)}")
    for name in a.corpora.split(","):
        if name not in CORPORA:
            p.error(f"--corpora: unknown corpus {name!r}; expected some of {list(CORPORA)}")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    out = open(args.jsonl, "a") if args.jsonl else None  # noqa: SIM115
    try:
        records = []
        configs = args.configs.split(",")
        if "imu_classification" in configs:
            for corpus in args.corpora.split(","):
                records.append(run_imu(corpus, args))
                emit(records[-1])
                if out:
                    emit(records[-1], out)
        if "lds_outliers" in configs:
            records.append(run_lds(args))
            emit(records[-1])
            if out:
                emit(records[-1], out)
    finally:
        if out:
            out.close()
    for r in records:
        print(
            f"{r['config']['name']}/{r['config'].get('corpus', '')}: targets {r['targets']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
