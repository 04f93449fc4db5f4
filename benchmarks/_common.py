"""Shared helpers for the scripts in ``benchmarks/``.

Conventions (``DESIGN.md`` section 8): every script prints one JSON object per line and per
configuration with the keys ``benchmark``, ``config``, ``median_s``, ``speedup``, ``peak_mib``,
``agreement`` and ``env``; a human summary goes to stderr.

What is here:

* :func:`time_interleaved` -- median wall time over repeats, with warm-up calls, the
  implementations run round-robin so that load from other processes on a shared machine hits
  all of them alike; slow implementations get fewer repeats within a time budget.
* :class:`PeakRSS` -- extra peak resident memory of one call, measured on Linux by resetting
  the kernel's high-water mark (``/proc/self/clear_refs``) and reading ``VmHWM``; falls back
  to ``resource.getrusage(...).ru_maxrss`` (which cannot be reset, so then only the first
  measurement in a process is meaningful).
* :func:`run_worker` -- runs a command in a fresh subprocess (``MALLOC_MMAP_THRESHOLD_`` fixed
  so that freed large blocks go back to the OS and RSS tracks live memory) and returns the JSON
  object of its last output line.
* :func:`env_info`, :func:`emit`, :func:`rel_diff`.
* ``--device``: :func:`add_device_argument` (the option, default ``cpu``), :func:`check_device`
  (a CUDA device asked for and absent is an error naming ``--device``, never a silent CPU
  run), :func:`synchronized` (timings wait for the kernels), :func:`cuda_peak_mib` and
  :class:`CudaPeak` (peak CUDA memory), :func:`device_map` and :func:`device_env` (where each
  system ran, in the JSON: CPU-only peers are marked ``"cpu"``), :func:`to_cpu` (results back
  to the CPU before they are scored).
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

__all__ = [
    "CudaPeak",
    "PeakRSS",
    "add_device_argument",
    "check_device",
    "cuda_peak_mib",
    "device_env",
    "device_map",
    "emit",
    "env_info",
    "freeze_heap",
    "median",
    "rel_diff",
    "run_worker",
    "synchronized",
    "time_interleaved",
    "to_cpu",
]

MiB = 1024.0 * 1024.0


# --------------------------------------------------------------------------- output
def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    try:  # numpy / torch scalars
        return _jsonable(x.item())
    except Exception:
        return str(x)


def emit(obj: Mapping, stream=None) -> None:
    """Print ``obj`` as one JSON line (non-finite floats become ``null``) and flush."""
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(_jsonable(obj), sort_keys=False) + "\n")
    stream.flush()


def rel_diff(value: float, reference: float) -> float:
    """``|value - reference| / max(|reference|, tiny)``."""
    value, reference = float(value), float(reference)
    return abs(value - reference) / max(abs(reference), 1e-300)


def median(xs) -> float:
    return float(statistics.median(xs))


# --------------------------------------------------------------------------- environment
def env_info(extra: Mapping | None = None) -> dict:
    """Versions, CPU and thread counts, load average (timings on a shared machine are noisy)."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mods = sys.modules
    if "torch" in mods:
        torch = mods["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
    for name in ("numpy", "pyro", "hmmlearn", "jax", "dynamax"):
        if name in mods:
            info[name] = getattr(mods[name], "__version__", "?")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    if extra:
        info.update(extra)
    return info


# --------------------------------------------------------------------------- allocator
MALLOC_MODES = ("retain", "default")


def add_malloc_argument(parser) -> None:
    """``--malloc {retain,default}``: how the benchmark's processes treat freed memory."""
    parser.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="retain",
        help="retain (default): every process of the run, peers included, keeps freed memory "
        "in its heap (mmpgm.retain_freed_memory, glibc), as the mmpgm CLI does; default: "
        "glibc's own trimming, which page-faults large buffers in again on every call",
    )


def apply_malloc(mode: str) -> str:
    """Apply ``--malloc`` in this process; returns what holds (for the JSON ``env``)."""
    if mode == "default":
        return "default"
    from mmpgm import retain_freed_memory

    return "retain" if retain_freed_memory() else "default (retain needs glibc)"


# --------------------------------------------------------------------------- timing
def freeze_heap() -> None:
    """Collect garbage once, then move every live object to the permanent generation
    (``gc.freeze``) so that the ``gc.collect()`` before each timed call only scans objects made
    since (with torch, Pyro and JAX imported, a full collection takes a noticeable fraction of
    a second)."""
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()


def _timed_call(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float = 30.0,
    min_repeats: int = 0,
) -> dict:
    """Median wall time of each callable.

    Every callable is first called ``warmup`` times (the last warm-up duration sets its repeat
    count: at most ``repeats``, fewer when ``repeats`` calls would exceed ``budget_s``, never
    fewer than ``min_repeats``). The timed calls then run round-robin over the callables. A
    callable whose single warm-up call already exceeds ``budget_s`` (with ``min_repeats=0``) is
    not called again: its warm-up time is reported (``times_s`` empty).

    Returns ``{name: {"median_s", "times_s", "warmup_s"}}``; a callable that raises is reported
    as ``{"error": "..."}`` and dropped from the later rounds.
    """
    out: dict = {}
    plan: dict = {}
    freeze_heap()
    for name, fn in fns.items():
        try:
            w = [_timed_call(fn) for _ in range(max(warmup, 0))]
        except Exception as e:  # noqa: BLE001 - a peer failing must not kill the benchmark
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        last = w[-1] if w else 0.0
        n = repeats
        if last > 0 and last * repeats > budget_s:
            n = max(min_repeats, int(budget_s // last))
        plan[name] = n
        out[name] = {"times_s": [], "warmup_s": w}
    for r in range(max(plan.values(), default=0)):
        for name, n in plan.items():
            if r >= n or "error" in out[name]:
                continue
            try:
                out[name]["times_s"].append(_timed_call(fns[name]))
            except Exception as e:  # noqa: BLE001
                out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    for rec in out.values():
        if "error" not in rec:
            times = rec["times_s"] or rec["warmup_s"]
            rec["median_s"] = median(times) if times else float("nan")
    return out


# --------------------------------------------------------------------------- memory
def _status_kib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform == "darwin" else float(r)  # bytes on macOS, KiB on Linux


class PeakRSS:
    """Extra peak resident memory (MiB) of the code run inside the ``with`` block.

    ``extra_mib`` = peak RSS during the block minus RSS at entry. ``method`` says how it was
    measured: ``"vmhwm_reset"`` (exact high-water mark of the block, Linux) or ``"ru_maxrss"``
    (process-lifetime high-water mark; exact only when nothing before the block used more).
    """

    def __init__(self):
        self.extra_mib = float("nan")
        self.method = None

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def __enter__(self):
        freeze_heap()
        self._can_reset = self._reset()
        rss = _status_kib("VmRSS")
        if self._can_reset and rss is not None:
            self.method = "vmhwm_reset"
            self._base = rss
        else:
            self.method = "ru_maxrss"
            self._base = rss if rss is not None else _maxrss_kib()
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM") if self.method == "vmhwm_reset" else _maxrss_kib()
        self.extra_mib = (
            max(0.0, (peak - self._base) / 1024.0) if peak is not None else float("nan")
        )
        return False


def run_worker(argv: list, *, timeout_s: float, env: Mapping | None = None) -> dict:
    """Run ``[sys.executable] + argv`` in a fresh process; return its last stdout line as JSON.

    Blocks of 16 KiB and more are forced through ``mmap`` (fixed ``MALLOC_MMAP_THRESHOLD_``) so
    that memory freed by a warm-up call goes back to the OS instead of being silently reused
    (which would hide it from the measured call), and RSS follows live allocations.
    """
    e = dict(os.environ)
    e.setdefault("MALLOC_MMAP_THRESHOLD_", "16384")
    e.setdefault("MALLOC_TRIM_THRESHOLD_", "16384")
    if env:
        e.update(env)
    try:
        p = subprocess.run(
            [sys.executable] + [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=e,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout or "").strip().splitlines()[-3:]
        return {"error": f"worker exit {p.returncode}: " + " | ".join(tail)[:400]}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as err:
        return {"error": f"bad worker output: {err}"}


# --------------------------------------------------------------------------- devices
def check_device(device: str) -> str:
    """``--device``: ``"cpu"`` or ``"cuda"`` / ``"cuda:i"``, available here; else ValueError
    naming the argument (a benchmark asked for a GPU it does not have must not time the CPU)."""
    import torch

    if device == "cpu":
        return device
    if not isinstance(device, str) or not device.startswith("cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda[:i]', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} requested but torch sees no CUDA device")
    torch.device(device)  # validates the index form
    return device


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by ``torch.cuda.synchronize`` on a CUDA device (kernels are asynchronous:
    without it a timer measures the launch, not the work); ``fn`` itself on the CPU."""
    if not device.startswith("cuda"):
        return fn
    import torch

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def cuda_peak_mib(fn: Callable[[], object], device: str) -> float:
    """Peak CUDA memory allocated by one call of ``fn`` above what was allocated before, MiB."""
    import torch

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


class CudaPeak:
    """Peak CUDA memory (MiB) allocated by the code in the ``with`` block above what was
    allocated at entry (``torch.cuda.max_memory_allocated``); ``extra_mib`` stays ``None`` on
    the CPU (where :class:`PeakRSS` measures)."""

    def __init__(self, device: str):
        self.device = device
        self.extra_mib = None

    def __enter__(self):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def start(self) -> "CudaPeak":
        """Begin measuring without a ``with`` block (read it with :meth:`so_far_mib`)."""
        return self.__enter__()

    def so_far_mib(self) -> float | None:
        """The peak since entry, read inside the block (``None`` on the CPU or before entry)."""
        if not self.device.startswith("cuda") or not hasattr(self, "_before"):
            return None
        import torch

        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self._before) / 2**20

    def __exit__(self, *exc):
        self.extra_mib = self.so_far_mib()
        return False


def add_device_argument(parser, what: str = "the mmpgm models and their data") -> None:
    """The ``--device`` option of every benchmark (default ``cpu``; checked by
    :func:`check_device`)."""
    parser.add_argument(
        "--device",
        default="cpu",
        help=f"cpu (default) or cuda[:i]: {what} run there (models moved with .to(device), data "
        "tensors follow); CPU-only peers run on the CPU and are marked so in the JSON "
        "('devices'); a CUDA device torch does not see is an error",
    )


def device_map(systems, device: str, cpu_only=()) -> dict:
    """``{system: device it ran on}`` for the JSON: ``device`` for the mmpgm systems, ``"cpu"``
    for the CPU-only peers in ``cpu_only``."""
    cpu_only = set(cpu_only)
    return {name: ("cpu" if name in cpu_only else device) for name in systems}


def device_env(device: str) -> dict:
    """``{"device": ..., "gpu": name}`` for :func:`env_info` (``gpu`` only on CUDA)."""
    out = {"device": device}
    if device.startswith("cuda"):
        import torch

        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def to_cpu(x):
    """``x`` with every tensor moved to the CPU: tensors, dicts, lists, tuples and result
    NamedTuples (a posterior computed on a GPU, before it is scored against CPU labels)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, Mapping):
        return type(x)((k, to_cpu(v)) for k, v in x.items())
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(to_cpu(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_cpu(v) for v in x)
    return x
