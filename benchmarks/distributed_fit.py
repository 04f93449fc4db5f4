"""Data-parallel training benchmark (config ``DDP2``): time per epoch of ``mmpgm.fit`` in one
process and in two (``distributed=True``, gloo, one torch thread each) on the same problem.

Prints one JSON object per line (DESIGN.md section 8)::

    {"benchmark": "distributed_fit", "config": {"name": "DDP2", ...},
     "median_s": {"mmpgm": s per epoch with 2 processes, "one_process": s per epoch with 1},
     "speedup": {"one_process": one_process_s / mmpgm_s},
     "peak_mib": {impl: peak RSS of rank 0 in MiB},
     "agreement": {"single_process": max relative difference of the per-frame losses of
                   every epoch, 2 processes vs 1}, "param_max_abs_diff": ...,
     "cpu_s": {impl: CPU s per epoch of the busiest process}, "cpu_speedup": {...},
     "env": {...}}

Workload: a :class:`~mmpgm.MultimodalHMM` (two Gaussian modalities of 3 features, 4 shared and 3
private states per modality: 36 joint states), float64, ``N = 1024`` sequences of ``T = 100``
frames sampled from the model (large enough that an epoch's cost is proportional to the number
of sequences: at N = 128 the per-frame overhead of the recursions, the same whatever N, made
half the data cost 0.88x the CPU time of all of it). ``DDP2``: closed-form EM (``method="em"``:
each rank E-steps its 512 sequences, the statistics are all-reduced, every rank runs the
M-step); ``DDP2_svi``: full-batch SVI of the collapsed program (gradients all-reduced).
Every run: the data-driven start and one warm-up epoch (not timed), then ``--repeats`` fits
of ``--epochs`` epochs each (``init="none"``), each timed on rank 0 between barriers; the
median over the repeats of seconds per epoch is reported. Both runs do the same fits, so the
final parameters compare.

``DDP2_stream`` (memory of the streamed corpus): the same model fitted by EM from a
:class:`~mmpgm.ShardedData` corpus of ``.npz`` shards of 256 sequences (T = 100), written
once per size before the runs: 4 shards (N = 1024, "1x") and 16 shards (N = 4096, "4x").
Two processes stream their own sequences (``distributed=True``); the contrast is one process
holding the same corpus in memory (``ShardedData.load_all()``). ``peak_mib`` is the peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the largest over the ranks)
of each run; ``peak_ratio`` is 4x over 1x (flat = 1). Both fits start from the same parameters
(``init="none"``), so ``agreement`` compares their losses too.

The processes are started the way ``torchrun`` starts them (environment ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); ``--quick``: N = 8, T = 20, one repeat of
two epochs (CI smoke). On a shared machine the speedup depends on the other load (``env``
records the load average).

``--device cuda``: NCCL instead of gloo, one GPU per rank (rank ``r`` on ``cuda:LOCAL_RANK``,
as torchrun numbers them; the 2-process runs need two visible GPUs, the 1-process run uses
``cuda:0``, or ``cuda:i`` when given), the model moved with ``.to(device)`` and the data
(sampled on the CPU, so the same on every device) moved once; ``cuda_peak_mib`` adds each run's
peak CUDA memory (rank 0) to the resident-set ``peak_mib``. A CUDA device that torch does not
see, or fewer GPUs than processes, is an error naming ``--device``. Default ``cpu`` (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import add_device_argument, check_device, device_env, emit, env_info  # noqa: E402


def _config(args, method):
    return {
        "name": "DDP2" if method == "em" else "DDP2_svi",
        "model": "MultimodalHMM",
        "method": method,
        "dims": {"a": 3, "b": 3},
        "K_s": 4,
        "K_m": 3,
        "N": args.N,
        "T": args.T,
        "dtype": "float64",
        "processes": [1, 2],
        "threads_per_process": 1,
        "backend": _backend(args.device),
        "device": args.device,
        "epochs": args.epochs,
        "repeats": args.repeats,
    }


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def _rank_device(device: str, world: int) -> str:
    """This rank's device: ``cpu``; on CUDA one GPU per rank, ``cuda:LOCAL_RANK`` (a single
    process keeps the index it was given)."""
    if not device.startswith("cuda"):
        return "cpu"
    if world == 1:
        return device if ":" in device else "cuda:0"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def _init(args):
    """Process group (NCCL on CUDA, gloo on the CPU) and this rank's device: ``(world, rank,
    device)``."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _rank_device(args.device, world)
    if device != "cpu":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(_backend(device))
    rank = dist.get_rank() if world > 1 else 0
    return world, rank, device


def _barrier(device: str) -> None:
    import torch
    import torch.distributed as dist

    if device == "cpu":
        dist.barrier()
    else:
        dist.barrier(device_ids=[torch.device(device).index])


def _cuda_peak(device: str):
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device != "cpu" else None


def worker(args) -> None:
    """One rank: build, fit, time; rank 0 prints a JSON line."""
    import resource

    import torch
    import torch.distributed as dist

    import mmpgm
    from mmpgm.models import MultimodalHMM

    world, rank, device = _init(args)
    torch.manual_seed(0)
    model = MultimodalHMM({"a": 3, "b": 3}, num_shared_states=4, num_private_states=3).double()
    data, _ = model.sample(args.N, args.T, seed=0)  # on the CPU: the same data on every device
    model, data = model.to(device), data.to(device=device)
    opts = dict(method=args.method, patience=0, progress=False, distributed=world > 1)
    if args.method == "svi":
        opts["lr"] = 0.01
    losses = list(mmpgm.fit(model, data, num_steps=1, **opts).losses)  # start + warm-up
    per_epoch, cpu = [], []
    for _ in range(args.repeats):
        if world > 1:
            _barrier(device)
        t0, c0 = time.perf_counter(), time.process_time()
        res = mmpgm.fit(model, data, num_steps=args.epochs, init="none", **opts)
        if device != "cpu":
            torch.cuda.synchronize(device)
        c1 = torch.tensor(
            (time.process_time() - c0) / args.epochs, dtype=torch.float64, device=device
        )
        if world > 1:
            dist.all_reduce(c1, op=dist.ReduceOp.MAX)  # the busiest rank's CPU time
        per_epoch.append((time.perf_counter() - t0) / args.epochs)
        cpu.append(float(c1))
        losses += list(res.losses)
    if rank == 0:
        state = {k: v.detach().reshape(-1).tolist() for k, v in model.state_dict().items()}
        out = {
            "per_epoch_s": per_epoch,
            "cpu_per_epoch_s": cpu,
            "losses": [float(v) for v in losses],
            "state": state,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "cuda_peak_mib": _cuda_peak(device),
        }
        print(json.dumps(out), flush=True)
    if world > 1:
        dist.destroy_process_group()


def stream_worker(args) -> None:
    """One rank of ``DDP2_stream``: EM from the shards in ``args.shards`` (streamed, or all in
    memory with ``--in-memory``); rank 0 prints a JSON line with the largest peak RSS."""
    import resource

    import torch
    import torch.distributed as dist

    import mmpgm

    world, rank, device = _init(args)
    sharded = mmpgm.ShardedData(os.path.join(args.shards, "*.npz"), cache_shards=1)
    data = sharded.load_all().to(device=device) if args.in_memory else sharded
    model = _stream_model().to(device)  # a streamed shard follows the model to its device
    t0 = time.perf_counter()
    res = mmpgm.fit(model, data, method="em", num_steps=args.epochs, patience=0, init="none",
                    progress=False, distributed=world > 1)
    if device != "cpu":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / args.epochs
    peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                        dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        out = {"per_epoch_s": seconds, "losses": [float(v) for v in res.losses],
               "peak_mib": float(peak), "cuda_peak_mib": _cuda_peak(device),
               "num_sequences": sharded.num_sequences}
        print(json.dumps(out), flush=True)
    if world > 1:
        dist.destroy_process_group()


def _stream_model():
    import torch

    from mmpgm.models import MultimodalHMM

    torch.manual_seed(0)
    return MultimodalHMM({"a": 3, "b": 3}, num_shared_states=4, num_private_states=3).double()


def write_shards(folder, num_shards: int, shard_sequences: int, T: int) -> None:
    """``num_shards`` shards sampled from the model one at a time (shard ``s`` from seed ``s``,
    so the 4x corpus starts with the 1x one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = _stream_model()
    for s in range(num_shards):
        data, _ = model.sample(shard_sequences, T, seed=s)
        data.save(folder / f"shard-{s:03d}.npz")


def run_stream(args) -> dict:
    """The ``DDP2_stream`` record: peak RSS streamed (2 processes) and in memory (1), 1x and
    4x."""
    import tempfile

    n, base = (8, 2) if args.quick else (256, 4)
    T = 20 if args.quick else args.T
    peaks, times, agree, sizes, cuda_peaks = {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 4):
            folder = Path(tmp) / f"{scale}x"
            write_shards(folder, base * scale, n, T)
            extra = ["--shards", str(folder)]
            stream = launch(args, 2, extra)
            memory = launch(args, 1, extra + ["--in-memory"])
            key = f"{scale}x"
            peaks[f"stream_{key}"] = stream["peak_mib"]
            peaks[f"in_memory_{key}"] = memory["peak_mib"]
            if args.device != "cpu":
                cuda_peaks[f"stream_{key}"] = stream["cuda_peak_mib"]
                cuda_peaks[f"in_memory_{key}"] = memory["cuda_peak_mib"]
            times[f"stream_{key}"] = stream["per_epoch_s"]
            times[f"in_memory_{key}"] = memory["per_epoch_s"]
            sizes[key] = stream["num_sequences"]
            agree[key] = max(
                abs(a - b) / max(abs(b), 1e-300)
                for a, b in zip(stream["losses"], memory["losses"], strict=True)
            )
    ratio = {
        "stream": peaks["stream_4x"] / peaks["stream_1x"],
        "in_memory": peaks["in_memory_4x"] / peaks["in_memory_1x"],
    }
    return {
        "benchmark": "distributed_fit",
        "config": {
            "name": "DDP2_stream",
            "model": "MultimodalHMM",
            "method": "em",
            "dims": {"a": 3, "b": 3},
            "K_s": 4,
            "K_m": 3,
            "shard_sequences": n,
            "num_shards": {"1x": base, "4x": 4 * base},
            "N": sizes,
            "T": T,
            "dtype": "float64",
            "processes": {"stream": 2, "in_memory": 1},
            "cache_shards": 1,
            "threads_per_process": 1,
            "backend": _backend(args.device),
            "device": args.device,
            "epochs": args.epochs,
        },
        "peak_mib": peaks,
        "peak_ratio": ratio,
        "cuda_peak_mib": cuda_peaks,
        "flat_within_10pct": abs(ratio["stream"] - 1) <= 0.10,
        "per_epoch_s": times,
        "agreement": {"stream_vs_in_memory": agree},
        "env": env_info({"torch_threads_per_process": 1, **device_env(args.device)}),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, world: int, extra=()) -> dict:
    """``world`` worker processes (torchrun's environment); rank 0's JSON."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.update(WORLD_SIZE=str(world), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", "--method", args.method, "--device", args.device]
    cmd += ["--N", str(args.N), "--T", str(args.T)]
    cmd += ["--epochs", str(args.epochs), "--repeats", str(args.repeats), *extra]
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=args.timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"worker exit {p.returncode}: {err[-2000:]}")
    lines = [ln for ln in outs[0][0].splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small size for CI smoke checks")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=("em", "svi"), default=None)
    ap.add_argument("--N", type=int, default=1024)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--stream", action="store_true",
                    help="only DDP2_stream: peak memory of the streamed corpus, 1x and 4x")
    ap.add_argument("--shards", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    add_device_argument(ap, "every rank's model and data (NCCL, one GPU per rank via LOCAL_RANK)")
    args = ap.parse_args(argv)
    try:
        args.device = check_device(args.device)
    except ValueError as err:
        ap.error(str(err))
    if args.worker:
        stream_worker(args) if args.shards else worker(args)
        return
    import torch  # (its version in env)

    if args.device != "cpu" and torch.cuda.device_count() < 2:
        ap.error(
            f"--device {args.device}: the 2-process runs need one GPU per rank (NCCL), torch sees "
            f"{torch.cuda.device_count()}"
        )

    if args.quick:
        args.N, args.T, args.epochs, args.repeats = 8, 20, 2, 1
    methods = ("em", "svi") if args.method is None else (args.method,)
    if args.stream:
        methods = ()
    for method in methods:
        args.method = method
        one = launch(args, 1)
        two = launch(args, 2)
        t1 = sorted(one["per_epoch_s"])[len(one["per_epoch_s"]) // 2]
        t2 = sorted(two["per_epoch_s"])[len(two["per_epoch_s"]) // 2]
        c1 = sorted(one["cpu_per_epoch_s"])[len(one["cpu_per_epoch_s"]) // 2]
        c2 = sorted(two["cpu_per_epoch_s"])[len(two["cpu_per_epoch_s"]) // 2]
        agree = max(
            abs(a - b) / max(abs(b), 1e-300)
            for a, b in zip(two["losses"], one["losses"], strict=True)
        )
        pdiff = max(
            (
                abs(a - b)
                for k in one["state"]
                for a, b in zip(two["state"][k], one["state"][k], strict=True)
            ),
            default=0.0,
        )
        rec = {
            "benchmark": "distributed_fit",
            "config": _config(args, method),
            "median_s": {"mmpgm": t2, "one_process": t1},
            "speedup": {"one_process": t1 / t2},
            "peak_mib": {"mmpgm": two["peak_mib"], "one_process": one["peak_mib"]},
            "cuda_peak_mib": {"mmpgm": two["cuda_peak_mib"], "one_process": one["cuda_peak_mib"]},
            "agreement": {"single_process": agree},
            "param_max_abs_diff": pdiff,
            # CPU seconds per epoch of the busiest process (load-independent: what the split
            # of the work would give with one free core per process)
            "cpu_s": {"mmpgm": c2, "one_process": c1},
            "cpu_speedup": {"one_process": c1 / c2},
            "env": env_info({"torch_threads_per_process": 1, **device_env(args.device)}),
        }
        emit(rec)
        print(
            f"{rec['config']['name']}: 1 process {t1:.4f} s/epoch, 2 processes {t2:.4f} s/epoch, "
            f"speedup {t1 / t2:.2f}x (CPU s/epoch {c1:.4f} vs {c2:.4f}: {c1 / c2:.2f}x), "
            f"loss agreement {agree:.1e}, params {pdiff:.1e}",
            file=sys.stderr,
        )
    if args.stream or args.method is None:
        args.method = "em"
        rec = run_stream(args)
        emit(rec)
        p, r = rec["peak_mib"], rec["peak_ratio"]
        print(
            f"DDP2_stream: peak RSS streamed (2 processes) {p['stream_1x']:.0f} -> "
            f"{p['stream_4x']:.0f} MiB ({r['stream']:.3f}x), in memory (1 process) "
            f"{p['in_memory_1x']:.0f} -> {p['in_memory_4x']:.0f} MiB ({r['in_memory']:.3f}x)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
