"""Smoke test of ``benchmarks/av_enhancement.py --quick``: it runs, prints one JSON line per
configuration (DESIGN.md section 8), the references behave as they must, the table and the
figure are written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "av_enhancement.py"
KEYS = ("benchmark", "config", "median_s", "speedup", "peak_mib", "agreement", "metrics", "env")
MODELS = (
    "noisy",
    "ideal_band_mask",
    "expert_audio",
    "expert_image",
    "expert_flow",
    "uniform_mlp",
    "conditional",
    "expert_gru_audio",
    "expert_gru_image",
    "expert_gru_flow",
    "uniform_gru",
    "recurrent",
)


@pytest.mark.benchmark
def test_av_enhancement_quick(tmp_path):
    from mmpgm.features import missing_av_requirements

    if missing_av_requirements():
        pytest.skip("needs " + "; ".join(missing_av_requirements()))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    table, fig = tmp_path / "table.md", tmp_path / "fig.png"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--workers",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(fig),
            "--table",
            str(table),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    secs = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    by_name = {r["config"]["name"]: r for r in records}
    assert len(by_name) == len(records) == 2 * len(MODELS)
    for cond in ("nonstationary-5dB+patch", "babble0dB+patch"):
        rows = {m: by_name[f"{cond}/{m}"] for m in MODELS}
        for name, r in rows.items():
            for k in KEYS:
                assert k in r, (name, k)
            assert r["benchmark"] == "av_enhancement" and r["config"]["test_speaker"] == 2
            met = r["metrics"]["mmpgm"]
            for k in ("mask_mse", "band_db_mse", "band_db_mse_speech"):
                assert met[k] is not None and math.isfinite(met[k]) and met[k] >= 0, (name, k)
            assert met["bands"] == 40 and met["frames"] == 4 * 75
        met = {m: r["metrics"]["mmpgm"] for m, r in rows.items()}
        # the oracle mask is the target; it removes most of the noise
        assert met["ideal_band_mask"]["mask_mse"] == 0
        assert met["ideal_band_mask"]["band_db_mse"] < 0.2 * met["noisy"]["band_db_mse"]
        # the stored targets and features are those of the rebuilt waveforms
        assert rows["ideal_band_mask"]["agreement"]["irm_rebuilt"] < 1e-5
        assert rows["noisy"]["agreement"]["noisy_log_stft_rebuilt"] < 1e-4
        # every learned mask beats the unprocessed input, even at this tiny size
        for m in MODELS[2:]:
            assert met[m]["mask_mse"] < met["noisy"]["mask_mse"], m
            assert met[m]["band_db_mse"] < met["noisy"]["band_db_mse"], m
        for m in ("conditional", "recurrent"):
            assert 0 <= met[m]["gate_video_inside"] <= 1 and 0 <= met[m]["gate_video_outside"] <= 1
            assert rows[m]["median_s"]["mmpgm"] > 0
    assert "band dB MSE" in table.read_text()
    assert fig.stat().st_size > 10_000
    assert secs < 90, f"--quick took {secs:.0f} s"
