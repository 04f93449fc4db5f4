"""Smoke tests of the benchmarks' ``--quick`` modes: ``hmm_speed.py`` runs, prints the JSON
convention of DESIGN.md section 8, and every peer that ran agrees with mmpgm's log-likelihood in
float64; the other scripts likewise; ``--device``: a missing GPU is an error naming the option,
``--device cpu`` runs (the fast quick modes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "hmm_speed.py"
KEYS = ("benchmark", "config", "median_s", "speedup", "peak_mib", "agreement", "env")
CONFIG_KEYS = ("name", "modalities", "dims", "K_s", "K_m", "N", "T", "dtype")


@pytest.mark.benchmark
def test_hmm_speed_quick():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every stdout line is one JSON object
    assert [r["config"]["name"] for r in records] == ["A1", "A2", "A3"]
    for r in records:
        name = r["config"]["name"]
        for k in KEYS:
            assert k in r, f"{name}: missing key {k!r}"
        for k in CONFIG_KEYS:
            assert k in r["config"], f"{name}: missing config key {k!r}"
        assert r["benchmark"] == "hmm_speed"
        assert r["config"]["dtype"] == "float64"
        assert "mmpgm" in r["median_s"] and "mmpgm_ops" in r["median_s"], r.get("skipped")
        for impl, t in r["median_s"].items():
            assert isinstance(t, float) and t > 0, (name, impl, t)
        ran = set(r["median_s"]) - {"mmpgm"}
        assert set(r["speedup"]) == ran
        assert set(r["agreement"]) == ran
        for impl, d in r["agreement"].items():
            assert d is not None and math.isfinite(d) and d < 1e-8, (name, impl, d)
        for impl, v in r["peak_mib"].items():
            assert v is None or v >= 0, (name, impl, v)
        # hmmlearn and Pyro are test dependencies, so those peers must have run;
        # dynamax is optional and then listed with its reason under "skipped"
        for peer in ("hmmlearn_log", "hmmlearn_scaling", "pyro_trace_enum", "pyro_discrete_hmm"):
            assert peer in r["median_s"], (name, peer, r.get("skipped"))
        assert "dynamax" in r["median_s"] or "dynamax" in r["skipped"]
        if "dynamax" in r["median_s"]:
            assert r["compile_s"]["dynamax"] > 0
        assert r["gradient"]["hmmlearn_log"] is False and r["gradient"]["mmpgm"] is True
        assert "torch" in r["env"] and "python" in r["env"]


@pytest.mark.benchmark
def test_av_speech_activity_extra_train_corpus_needs_a_test_corpus():
    proc = _run_script("av_speech_activity", ["--quick", "--extra-train-corpus", "D"], timeout=120)
    assert proc.returncode == 2
    assert "--extra-train-corpus needs --test-corpus" in proc.stderr


def test_av_speech_activity_quick_transfer(tmp_path):
    """``av_speech_activity.py --quick --test-corpus B --val-corpus C --extra-train-corpus D``
    (issue 12's transfer recipe with its defaults: delta image features, label smoothing):
    trains on corpora A and D, scores every system on B under the three test conditions, each
    row a finite accuracy or a skip."""
    from mmpgm.features import missing_av_requirements

    if missing_av_requirements():
        pytest.skip("needs " + "; ".join(missing_av_requirements()))
    mixtures = ("conditional/reliability", "agreement/conditional-reliability")
    proc = _run_script(
        "av_speech_activity",
        ["--quick", "--test-corpus", "B", "--val-corpus", "C", "--extra-train-corpus", "D",
         "--transfer-mixtures", ",".join(mixtures), "--data-dir", tmp_path / "data"],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    rows, summary = {}, None
    for r in records:
        assert r["benchmark"] == "av_speech_activity_transfer"
        assert r["config"]["test_corpus"] == "B" and r["config"]["val_corpus"] == "C"
        assert r["config"]["image_features"] == "delta"
        assert r["config"]["train_corpus"] == "A+D"
        assert r["config"]["train_clips"] == 2 * 3 * 3 * 4  # 2 corpora x 3 preparations x 3 x 4
        assert r["config"]["norm_clip"] == 3.0 and r["config"]["norm_clip_streams"] == "image"
        trained, cond, name = r["config"]["name"].split("/", 2)
        assert trained == "A+D->B"
        (met,) = r["metrics"].values()
        if cond == "targets":
            summary = met
        else:
            rows[(cond, name)] = met
    conditions = {"babble0dB+patch", "clean", "nonstationary-5dB+patch"}
    assert {c for c, _ in rows} == conditions
    # the targets line: per condition, the mixture chosen on C (never on B) and its accuracy
    assert summary is not None and set(summary) == conditions
    for cond, t in summary.items():
        assert t["selected_accuracy"] == rows[(cond, t["selected_mixture"])]["accuracy"]
        # the oracle ceiling of fixed expert weights: one-hot weights are the experts themselves
        ceiling = t["fixed_weight_ceiling_on_test (oracle)"]
        assert t["best_single_expert"] <= ceiling["linear"] <= 1.0, (cond, t)
        assert 0.0 <= ceiling["log_linear"] <= 1.0 and sum(ceiling["linear_weights"]) > 0.99
        if cond != "clean":  # patched video: the gate on video, and on the image expert alone
            for key in ("video", "image"):
                assert 0 < t[f"selected_gate_{key}_inside_over_outside"] < math.inf, (cond, t)
    systems = ("expert_audio", "expert_image", "expert_flow", "uniform_gate_reference") + mixtures
    for cond in conditions:
        for name in systems + ("webrtcvad", "silero_vad"):
            assert (cond, name) in rows, (cond, name)
        for name in systems:
            acc = rows[(cond, name)]["accuracy"]
            assert 0.0 <= acc <= 1.0, (cond, name, acc)


@pytest.mark.benchmark
def test_av_speech_activity_quick_leave_one_speaker_out(tmp_path):
    """``av_speech_activity.py --quick --test-speakers all``: every row pooled over the three
    held-out speakers, the table written, the figure saved."""
    from mmpgm.features import missing_av_requirements

    if missing_av_requirements():
        pytest.skip("needs " + "; ".join(missing_av_requirements()))
    table, fig = tmp_path / "table.md", tmp_path / "fig.png"
    proc = _run_script(
        "av_speech_activity",
        ["--quick", "--test-speakers", "all", "--timing-steps", "0", "--data-dir",
         tmp_path / "data", "--out", fig, "--table", table],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    pooled = [r for r in records if r["config"]["test_speaker"] == "pooled"]
    per_fold = [r for r in records if r["config"]["test_speaker"] != "pooled"]
    assert {r["config"]["test_speaker"] for r in per_fold} == {0, 1, 2}
    names = {r["config"]["name"].split("/")[1] for r in pooled}
    for name in (
        "expert_audio",
        "expert_image",
        "expert_flow",
        "uniform_gate_reference",
        "conditional",
        "markov",
        "recurrent",
        "conditional_colearn",
        "webrtcvad",
        "silero_vad",
    ):
        assert name in names, name
    for r in pooled:
        for k in KEYS:
            assert k in r
        (met,) = r["metrics"].values()
        if "skipped" in met:
            continue
        assert r["config"]["folds"] == 3 and len(met["accuracy_per_speaker"]) == 3
        # the pooled accuracy is the frame-weighted mean of the per-speaker ones
        fold_frames = [
            f["metrics"][next(iter(f["metrics"]))]["frames"]
            for f in per_fold
            if f["config"]["name"] == r["config"]["name"]
        ]
        mean = sum(a * n for a, n in zip(met["accuracy_per_speaker"], fold_frames, strict=True))
        assert abs(met["accuracy"] - mean / sum(fold_frames)) < 1e-3
        if "gate_video_inside" in met:
            assert 0 <= met["gate_video_inside"] <= 1 and 0 <= met["gate_video_outside"] <= 1
    assert "accuracy per test speaker" in table.read_text()
    assert fig.stat().st_size > 10_000


@pytest.mark.benchmark
def test_sensor_faults_quick():
    """``sensor_faults.py --quick``: one line per IMU corpus and one for the LDS, the section-8
    keys, accuracies in [0, 1] for every system (hmmlearn and pykalman are test dependencies,
    so they must have run), pykalman's smoother equal to mmpgm's plain one, and the
    fault-aware systems with AUROC, cost ratio and pass/fail targets. Even at the quick sizes
    the fault-aware systems must beat the plain ones where a sensor is replaced by a noise
    burst (plain: near chance; margin: 0.25) and where 10% of the frames are 10-sd outliers
    (plain RMSE ~8x the oracle's)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sensor_faults.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [(r["config"]["name"], r["config"].get("corpus")) for r in records] == [
        ("imu_classification", "A"),
        ("imu_classification", "B"),
        ("lds_outliers", None),
    ]
    for r in records:
        assert r["benchmark"] == "sensor_faults"
        for k in KEYS + ("metrics", "targets", "skipped"):
            assert k in r, (r["config"]["name"], k)
    systems = (
        "mmpgm_plain",
        "mmpgm_faults",
        "hmmlearn_joint",
        "hmmlearn_late",
        "mmpgm_accel_only",
        "mmpgm_gyro_only",
    )
    for r in records[:2]:
        conds = r["config"]["conditions"]
        assert conds[0] == "clean" and len(conds) == 7
        assert not r["skipped"], r["skipped"]
        for name in systems:
            acc = r["metrics"][name]["accuracy"]
            assert set(acc) == set(conds), name
            assert all(0.0 <= a <= 1.0 for a in acc.values()), (name, acc)
        m = r["metrics"]["mmpgm_faults"]
        assert set(m["fault_auroc"]) == set(conds[1:])
        assert all(0.0 <= v <= 1.0 for v in m["fault_auroc"].values())
        assert m["cost_ratio"] > 0
        assert isinstance(r["targets"]["corrupted_accuracy"]["pass"], bool)
        assert isinstance(r["targets"]["clean_drop"]["pass"], bool)
        for cond in ("accel_noise", "gyro_noise"):
            plain = r["metrics"]["mmpgm_plain"]["accuracy"][cond]
            assert m["accuracy"][cond] >= plain + 0.25, (cond, m["accuracy"][cond], plain)
    lds = records[2]
    for name in ("mmpgm_plain", "oracle_mask", "pykalman"):
        assert lds["metrics"][name]["rmse"] > 0, name
    assert lds["agreement"]["pykalman"] < 1e-8
    # masking the outlier frames must help the plain smoother (10-sd outliers)
    assert lds["metrics"]["oracle_mask"]["rmse"] < lds["metrics"]["mmpgm_plain"]["rmse"]
    assert not lds["skipped"], lds["skipped"]
    for suffix in ("", "_fitted"):
        robust, oracle = (
            lds["metrics"]["mmpgm_faults" + suffix],
            lds["metrics"]["oracle_mask" + suffix],
        )
        assert robust["rmse"] < 2 * oracle["rmse"], (suffix, robust, oracle)
        assert isinstance(lds["targets"]["rmse_vs_oracle" + suffix]["pass"], bool)


@pytest.mark.benchmark
def test_distributed_fit_quick():
    """``benchmarks/distributed_fit.py --quick --method em``: config ``DDP2`` in the JSON
    convention, 1 and 2 processes timed, and the 2-process EM fit equal to the 1-process one
    (float64; summation order only, measured ~1e-16 relative)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed_fit.py"), "--quick"]
        + ["--method", "em"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [r["config"]["name"] for r in records] == ["DDP2"]
    (r,) = records
    for k in KEYS:
        assert k in r, k
    assert r["benchmark"] == "distributed_fit" and r["config"]["processes"] == [1, 2]
    assert set(r["median_s"]) == {"mmpgm", "one_process"}
    assert all(isinstance(t, float) and t > 0 for t in r["median_s"].values())
    assert r["speedup"]["one_process"] == pytest.approx(
        r["median_s"]["one_process"] / r["median_s"]["mmpgm"]
    )
    assert 0 <= r["agreement"]["single_process"] < 1e-10
    assert 0 <= r["param_max_abs_diff"] < 1e-10


@pytest.mark.benchmark
def test_noisy_event_classification_quick(tmp_path):
    """``noisy_event_classification.py --quick``: the two configurations in the section-8
    convention, every word system with its three accuracies (the issue's names), the gate's
    weights per test noise type, the targets as booleans, and two checks that can fail at the
    quick sizes: on clean test speakers the raw kNN is far above chance (10 words, chance 0.1;
    measured 1.0 on 20 items: a broken feature pipeline or label mix-up drops it to ~0.1) and
    the gate, trained with the known noise type, gives each training noise type's test items
    (new realizations, other speakers) most weight on that type's denoiser (measured >= 0.77
    against <= 0.13 for every other expert)."""
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs the espeak-ng synthesizer")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "noisy_event_classification.py"), "--quick",
         "--cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [r["config"]["name"] for r in records] == ["word_knn", "hmm_frames"]
    for r in records:
        assert r["benchmark"] == "noisy_event_classification"
        for k in KEYS + ("metrics", "targets", "skipped"):
            assert k in r, (r["config"]["name"], k)
        assert not r["skipped"], r["skipped"]
    words, hmm = records
    assert not set(words["config"]["train_voices"]) & set(words["config"]["test_voices"])
    assert not set(words["config"]["train_noises"]) & set(words["config"]["unseen_noises"])
    systems = ("raw_knn", "siamese_knn", "single_dae", "oracle_dae", "gated_pipeline",
               "gated_pipeline_encoder", "gated_pipeline_both")  # fmt: skip
    for name in systems:
        m = words["metrics"][name]
        for key in ("accuracy_seen_noise", "accuracy_unseen_noise", "accuracy_clean"):
            assert 0.0 <= m[key] <= 1.0, (name, key, m[key])
        assert set(m["accuracy_per_noise"]) == set(words["config"]["train_noises"]) | set(
            words["config"]["unseen_noises"]
        )
    assert words["metrics"]["raw_knn"]["accuracy_clean"] >= 0.6
    gate = words["metrics"]["gated_pipeline_no_finetune"]["gate_weights"]
    for kind in words["config"]["train_noises"]:
        w = gate[kind]
        assert abs(sum(w.values()) - 1.0) < 1e-4, (kind, w)
        assert max(w, key=w.get) == kind, (kind, w)
    for t in words["targets"].values():
        assert isinstance(t["pass"], bool)
    assert set(words["targets"]) == {"vs_siamese_knn", "vs_single_dae", "vs_oracle_dae"}
    for name in ("hmm_raw", "hmm_embedding"):
        for cond in ("clean", "seen_noise", "unseen_noise"):
            m = hmm["metrics"][name][cond]
            assert 0.0 <= m["frame_accuracy"] <= 1.0 and 0.0 <= m["speech_accuracy"] <= 1.0
    assert isinstance(hmm["targets"]["embedding_vs_raw"]["pass"], bool)


# --------------------------------------------------------------------------- --device
# every benchmark that runs torch takes --device (benchmarks/_common.py: add_device_argument,
# check_device); prep_speed runs no torch and refuses cuda
DEVICE_SCRIPTS = (
    "hmm_speed",
    "mvrnn_speed",
    "lds_speed",
    "sensor_faults",
    "av_speech_activity",
    "av_enhancement",
    "noisy_event_classification",
    "distributed_fit",
)


def _run_script(script, argv, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.benchmark
@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
def test_device_cuda_without_cuda_is_an_error_naming_the_option(script):
    """``--device cuda`` where torch sees no GPU: a non-zero exit with a message naming
    ``--device`` before any work (nothing printed on stdout: no silent CPU run)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    proc = _run_script(script, ["--quick", "--device", "cuda"], timeout=120)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "--device" in proc.stderr and "no CUDA device" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""


@pytest.mark.benchmark
def test_prep_speed_runs_no_torch_and_says_so():
    """``prep_speed.py`` prepares data with numpy, librosa and OpenCV only: its help says so and
    ``--device cuda`` is refused naming the option (on any machine)."""
    help_text = _run_script("prep_speed", ["--help"], timeout=60)
    assert help_text.returncode == 0
    assert "runs no torch" in " ".join(help_text.stdout.split())
    proc = _run_script("prep_speed", ["--quick", "--device", "cuda"], timeout=60)
    assert proc.returncode != 0 and "--device" in proc.stderr and "runs no torch" in proc.stderr
    assert proc.stdout.strip() == ""


def _fast_cpu_runs():
    """``--device cpu`` spelled out, on the quick modes that no other smoke test runs (measured
    on a shared 2-core machine: mvrnn_speed 6.5 s, prep_speed 8.5 s). The others' quick modes
    run above and in their own smoke tests with the default ``--device cpu`` (hmm_speed 14 s,
    sensor_faults 19 s, distributed_fit 7 s, noisy_event_classification 22 s, av_enhancement
    16 s, av_speech_activity 30-42 s, lds_speed 79 s); each also passed this test once."""
    return [
        ("mvrnn_speed", [], ()),
        ("prep_speed", [], ("av",)),
    ]


@pytest.mark.benchmark
@pytest.mark.parametrize(
    "script, extra, needs", _fast_cpu_runs(), ids=[s for s, _, _ in _fast_cpu_runs()]
)
def test_device_cpu_quick_runs_on_the_cpu(script, extra, needs, tmp_path):
    """``--device cpu --quick``: exit 0, one JSON object per stdout line, every record says
    it ran on the CPU (``config.device`` or ``env.device``; every system in ``devices``)."""
    import shutil

    if "espeak" in needs and shutil.which("espeak-ng") is None:
        pytest.skip("needs the espeak-ng synthesizer")
    if "av" in needs:
        from mmpgm.features import missing_av_requirements

        if missing_av_requirements():
            pytest.skip("needs " + "; ".join(missing_av_requirements()))
    argv = ["--quick", "--device", "cpu", *(a.format(tmp=tmp_path) for a in extra)]
    proc = _run_script(script, argv, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert records
    for r in records:
        assert r["benchmark"] == script, r["benchmark"]
        device = r["config"].get("device", r.get("env", {}).get("device"))
        assert device == "cpu", (script, r["config"])
        assert all(d == "cpu" for d in r.get("devices", {}).values()), r["devices"]


@pytest.mark.benchmark
@pytest.mark.cuda
@pytest.mark.parametrize(
    "script, extra, needs",
    [r for r in _fast_cpu_runs() if r[0] != "prep_speed"]
    + [("av_speech_activity", ["--timing-steps", "0", "--data-dir", "{tmp}/data", "--out",
                               "{tmp}/fig.png", "--table", "{tmp}/table.md"], ("av",))],
    ids=[s for s, _, _ in _fast_cpu_runs() if s != "prep_speed"] + ["av_speech_activity"],
)  # fmt: skip
def test_device_cuda_quick_runs_on_the_gpu(script, extra, needs, tmp_path):
    """Where CUDA exists: ``--device cuda --quick`` runs, every record says so, the CPU-only
    peers are marked ``"cpu"`` and nothing else is (distributed_fit: two GPUs, NCCL)."""
    import shutil

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if script == "distributed_fit" and torch.cuda.device_count() < 2:
        pytest.skip("the 2-process NCCL run needs two GPUs")
    if "espeak" in needs and shutil.which("espeak-ng") is None:
        pytest.skip("needs the espeak-ng synthesizer")
    if "av" in needs:
        from mmpgm.features import missing_av_requirements

        if missing_av_requirements():
            pytest.skip("needs " + "; ".join(missing_av_requirements()))
    argv = ["--quick", "--device", "cuda", *(a.format(tmp=tmp_path) for a in extra)]
    proc = _run_script(script, argv, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert records
    cpu_only = {"hmmlearn_joint", "hmmlearn_late", "pykalman", "raw_knn", "webrtcvad",
                "silero_vad"}  # fmt: skip
    for r in records:
        device = r["config"].get("device", r.get("env", {}).get("device"))
        assert device == "cuda", (script, r["config"])
        for name, d in r.get("devices", {}).items():
            reference = r["config"]["name"].endswith(("/noisy", "/ideal_band_mask"))
            assert d == ("cpu" if name in cpu_only or reference else "cuda"), (name, d)
