"""Audio-visual preparation throughput: clips per second with 1 and 2 workers.

Generates a GRID-layout corpus with ``data_prep.synth_grid`` (espeak-ng + a real face photo),
then times ``data_prep.grid.prepare_grid`` on it with ``--workers 1`` and ``2`` (features:
log-STFT, mouth DCT, Farneback flow; no corruption, and with the paper's corruptions), and
projects the time for the 34,000-clip GRID corpus. One JSON line per configuration
(DESIGN.md section 8; quality fields under ``"metrics"``).

    python benchmarks/prep_speed.py            # 4 speakers x 8 clips
    python benchmarks/prep_speed.py --quick    # 2 x 3 clips, CI smoke

No ``--device cuda``: the preparation runs no torch (numpy, librosa and OpenCV, on the CPU in
worker processes); ``--device`` is accepted for a uniform command line and must be ``cpu``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, env_info  # noqa: E402

GRID_CLIPS = 34_000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0]
        + " The preparation runs no torch (numpy, librosa, OpenCV on the CPU): no --device cuda."
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument(
        "--device", default="cpu",
        help="cpu only: the preparation runs no torch (numpy, librosa and OpenCV on the CPU), so "
        "there is nothing to move to a GPU; accepted for the benchmarks' common command line",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error(
            f"--device: prep_speed runs no torch (numpy, librosa, OpenCV on the CPU), so only "
            f"'cpu' applies; got {args.device!r}"
        )
    if args.quick:
        args.speakers, args.utterances = 2, 3
    import subprocess

    from data_prep.grid import prepare_grid

    workers_list = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "corpus")
        t0 = time.perf_counter()
        # generate in a child process: a parent that has run OpenCV must spawn (not fork) workers,
        # which would add interpreter start-up to every measurement
        subprocess.run([sys.executable, "-m", "data_prep.synth_grid", root, "--speakers", str(args.speakers),
                        "--utterances", str(args.utterances), "--seed", "0", "--quiet"], check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       stdout=sys.stderr)  # its summary line: stdout holds only the JSON lines
        gen_s = time.perf_counter() - t0
        clips = args.speakers * args.utterances
        for corrupt in (False, True):
            corruption = {"audio_noise": "babble", "snr_db": 0.0, "video_patch": True} if corrupt else None
            seconds, rates = {}, {}
            for w in workers_list:
                out = os.path.join(tmp, f"out_{w}_{int(corrupt)}.npz")
                t0 = time.perf_counter()
                prepare_grid(root, out, workers=w, corruption=corruption, seed=0, progress=False)
                seconds[f"workers_{w}"] = time.perf_counter() - t0
                rates[f"workers_{w}"] = clips / seconds[f"workers_{w}"]
            best = max(rates.values())
            emit({
                "benchmark": "prep_speed",
                "config": {"name": "E_corrupt" if corrupt else "E", "clips": clips, "speakers": args.speakers,
                           "corruption": corruption, "generate_s": round(gen_s, 3),
                           "device": "cpu"},
                "median_s": {"mmpgm": min(seconds.values()), **{f"mmpgm_{k}": v for k, v in seconds.items()}},
                "speedup": {},
                "peak_mib": {},
                "agreement": {},
                "metrics": {"mmpgm": {
                    "clips_per_s": {k: round(v, 3) for k, v in rates.items()},
                    "scaling_2_over_1": round(rates.get("workers_2", float("nan")) / rates["workers_1"], 3)
                    if "workers_1" in rates and "workers_2" in rates else None,
                    "projected_grid_hours": round(GRID_CLIPS / best / 3600, 2),
                }},
                "env": env_info(),
            })
            print(f"{'corrupted' if corrupt else 'clean'}: " + ", ".join(
                f"{k} {v:.2f} clips/s" for k, v in rates.items())
                + f"; GRID (34,000 clips) in {GRID_CLIPS / best / 3600:.2f} h", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
