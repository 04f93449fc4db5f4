"""Speed benchmark: multimodal linear-Gaussian state-space log-likelihood (+ gradient).

Prints one JSON object per line per config::

    {"benchmark": "lds_speed", "config": {"name": "B", ...},
     "median_s": {impl: s}, "speedup": {peer: peer_s / mmpgm_s},
     "peak_mib": {impl: MiB}, "agreement": {peer: max rel diff of log-lik},
     "env": {...}}

Implementations (each timed in its own subprocess so that peak memory is
its own):

* ``mmpgm``: :func:`mmpgm.ops.kalman.kalman_log_likelihood` with its
  default ``method="auto"`` + backward w.r.t. all parameters.
* ``mmpgm_sequential``: the same, forcing the sequential filter.
* ``mmpgm_parallel``: the same with ``method="parallel"`` (the associative
  scan of :func:`mmpgm.ops.kalman.parallel_kalman_filter`) + backward.
* ``mmpgm_masked``: default method with ~20% of each modality missing
  (no peer supports this; timing only, not in ``agreement``).
* ``pykalman``: ``KalmanFilter.loglikelihood`` in a loop over sequences
  (numpy, no gradient); the two modalities are stacked with a
  block-diagonal observation covariance.
* ``mmpgm_exact``: default method with the steady-state reuse of the
  Riccati recursion switched off (``steady_state=False``).
* ``mmpgm_smooth``: :func:`mmpgm.ops.kalman.rts_smoother` (means,
  covariances, cross-covariances; no gradient).
* ``pykalman_smooth``: ``KalmanFilter.smooth`` looped over sequences.
* ``dynamax_filter`` / ``dynamax_filter_grad`` / ``dynamax_smoother``:
  ``jit(vmap(lgssm_filter))`` marginal log-likelihood, the same under
  ``value_and_grad`` w.r.t. all parameters, and ``jit(vmap(lgssm_smoother))``
  (float64 via ``jax_enable_x64``); ``*_parallel`` use dynamax's
  associative-scan versions.  ``compile_s`` is the first (tracing +
  compiling) call, excluded from ``median_s``.
* ``pyro_gaussian_hmm``: ``pyro.distributions.GaussianHMM.log_prob`` +
  backward (no masks).  Pyro's first observation follows one transition from
  its initial state, so the benchmark parameterises the prior of ``z_1`` as
  ``initial_mean = A m_0``, ``initial_cov = A P_0 A^T + Q`` for every library.

Smoothing implementations are compared with ``mmpgm_smooth`` (``speedup``
and ``agreement`` = max abs difference of the smoothed means over their max
abs value); the others with ``mmpgm`` (max relative difference of the
per-sequence log-likelihoods).  Config ``B10k`` is config B with T=10,000;
when run after B its line carries ``growth_vs_B`` (time ratio; linear cost
gives 20).

``peak_mib`` is the growth of the process' peak resident set size during
the timed calls (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).

Usage::

    python benchmarks/lds_speed.py            # configs B, B10k and L
    python benchmarks/lds_speed.py --quick    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import statistics
import sys
import time

CONFIGS = {
    # latent 6, two modalities (6 + 4), N=64, T=500
    "B": dict(name="B", S=6, dims=(6, 4), N=64, T=500, reps=5),
    # config B with T = 10,000: cost linear in T
    "B10k": dict(name="B10k", S=6, dims=(6, 4), N=64, T=10000, reps=3),
    # a long single sequence: where the time-parallel scan can win
    "L": dict(name="L", S=2, dims=(2,), N=1, T=20000, reps=3),
    "quick": dict(name="quick", S=3, dims=(2, 1), N=4, T=20, reps=3),
}

IMPLS = [
    "mmpgm",
    "mmpgm_exact",
    "mmpgm_sequential",
    "mmpgm_parallel",
    "mmpgm_masked",
    "mmpgm_smooth",
    "pykalman",
    "pykalman_smooth",
    "pyro_gaussian_hmm",
    "dynamax_filter",
    "dynamax_filter_grad",
    "dynamax_smoother",
    "dynamax_filter_parallel",
    "dynamax_smoother_parallel",
]
# implementations run per config when --impls is not given
DEFAULT_IMPLS = {
    "B10k": [
        "mmpgm",
        "mmpgm_smooth",
        "mmpgm_masked",
        "pyro_gaussian_hmm",
        "dynamax_filter",
        "dynamax_filter_grad",
        "dynamax_smoother",
    ],
}
# seconds a worker may take for one implementation (its timed repeats included) before it is
# killed and reported as an error
WORKER_TIMEOUT_S = 300
# slow peers: fewer timed repeats
MAX_REPS = {"pykalman": 1, "pykalman_smooth": 1}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _make_problem(cfg, device, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    S, dims, N, T = cfg["S"], tuple(cfg["dims"]), cfg["N"], cfg["T"]

    def spd(n, scale):
        X = torch.randn(n, n, generator=g, dtype=torch.float64)
        return scale * (X @ X.T / n + 0.5 * torch.eye(n, dtype=torch.float64))

    A = torch.randn(S, S, generator=g, dtype=torch.float64)
    A = 0.95 * A / torch.linalg.matrix_norm(A, ord=2)
    raw = dict(
        m00=torch.randn(S, generator=g, dtype=torch.float64),
        P00=spd(S, 1.0),
        A=A,
        Q=spd(S, 0.3),
        C=[torch.randn(d, S, generator=g, dtype=torch.float64) for d in dims],
        d=[torch.randn(d, generator=g, dtype=torch.float64) for d in dims],
        R=[spd(d, 0.5) for d in dims],
    )
    # simulate
    m1 = A @ raw["m00"]
    P1 = A @ raw["P00"] @ A.T + raw["Q"]
    z = m1 + torch.randn(N, S, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(P1).T
    Lq = torch.linalg.cholesky(raw["Q"])
    W = torch.randn(N, T, S, generator=g, dtype=torch.float64) @ Lq.T
    zs = [z]
    for t in range(1, T):
        z = z @ A.T + W[:, t]
        zs.append(z)
    Z = torch.stack(zs, 1)
    obs = [
        Z @ C.T
        + d
        + torch.randn(N, T, C.shape[0], generator=g, dtype=torch.float64)
        @ torch.linalg.cholesky(R).T
        for C, d, R in zip(raw["C"], raw["d"], raw["R"], strict=True)
    ]
    masks = [torch.rand(N, T, generator=g) > 0.2 for _ in dims]

    def conv(x):
        return x.to(device=device, dtype=dtype)

    raw = {k: ([conv(x) for x in v] if isinstance(v, list) else conv(v)) for k, v in raw.items()}
    return raw, [conv(o) for o in obs], [m.to(device) for m in masks]


def _leaves(raw):
    leaves = {}
    for k, v in raw.items():
        if isinstance(v, list):
            leaves[k] = [x.clone().requires_grad_(True) for x in v]
        else:
            leaves[k] = v.clone().requires_grad_(True)
    return leaves


def _flat(leaves):
    out = []
    for v in leaves.values():
        out.extend(v if isinstance(v, list) else [v])
    return out


# keywords of kalman_log_likelihood per mmpgm implementation (``mmpgm_masked`` adds the masks)
MMPGM_KEYWORDS = {
    "mmpgm": {},
    "mmpgm_exact": dict(steady_state=False),
    "mmpgm_sequential": dict(method="sequential"),
    "mmpgm_parallel": dict(method="parallel"),
    "mmpgm_masked": {},
}


def _build_mmpgm(impl, cfg, device, dtype_name, raw, obs, masks):
    import torch

    from mmpgm.ops.kalman import LinearGaussianParams, kalman_log_likelihood, rts_smoother

    def params_of(lv):
        A = lv["A"]
        return LinearGaussianParams(
            initial_mean=A @ lv["m00"],
            initial_cov=A @ lv["P00"] @ A.T + lv["Q"],
            transition_matrix=A,
            transition_cov=lv["Q"],
            emission_matrices=tuple(lv["C"]),
            emission_offsets=tuple(lv["d"]),
            emission_covs=tuple(lv["R"]),
        )

    if impl == "mmpgm_smooth":

        def fn():
            with torch.no_grad():
                return rts_smoother(params_of(_leaves(raw)), obs).means.double().cpu()

        return fn
    kw = MMPGM_KEYWORDS[impl]
    mask = masks if impl == "mmpgm_masked" else None

    def fn():
        ll = kalman_log_likelihood(params_of(_leaves(raw)), obs, mask, **kw)
        ll.sum().backward()
        return ll.detach().double().cpu()

    return fn


def _build_pyro(impl, cfg, device, dtype_name, raw, obs, masks):
    import pyro.distributions as pdist
    import torch

    X = torch.cat(obs, -1)

    def fn():
        lv = _leaves(raw)
        Rb = torch.block_diag(*lv["R"])
        hmm = pdist.GaussianHMM(
            pdist.MultivariateNormal(lv["m00"], lv["P00"]),
            lv["A"].T,
            pdist.MultivariateNormal(torch.zeros_like(lv["m00"]), lv["Q"]),
            torch.cat(lv["C"], 0).T,
            pdist.MultivariateNormal(torch.cat(lv["d"]), Rb),
            duration=cfg["T"],
        )
        ll = hmm.log_prob(X)
        ll.sum().backward()
        return ll.detach().double().cpu()

    return fn


def _build_pykalman(impl, cfg, device, dtype_name, raw, obs, masks):
    import numpy as np
    import pykalman
    import torch

    if device != "cpu":
        raise RuntimeError("pykalman is CPU only")

    def npy(v):
        return [x.double().numpy() for x in v] if isinstance(v, list) else v.double().numpy()

    r = {k: npy(v) for k, v in raw.items()}
    A = r["A"]
    kf = pykalman.KalmanFilter(
        transition_matrices=A,
        observation_matrices=np.concatenate(r["C"], 0),
        transition_covariance=r["Q"],
        observation_covariance=torch.block_diag(*[torch.from_numpy(x) for x in r["R"]]).numpy(),
        transition_offsets=np.zeros(A.shape[0]),
        observation_offsets=np.concatenate(r["d"]),
        initial_state_mean=A @ r["m00"],
        initial_state_covariance=A @ r["P00"] @ A.T + r["Q"],
    )
    X = torch.cat(obs, -1).double().cpu().numpy()
    if impl == "pykalman_smooth":
        return lambda: torch.from_numpy(np.stack([kf.smooth(X[n])[0] for n in range(X.shape[0])]))
    return lambda: torch.tensor([kf.loglikelihood(X[n]) for n in range(X.shape[0])])


def _build_dynamax(impl, cfg, device, dtype_name, raw, obs, masks):
    import jax
    import numpy as np
    import torch

    jax.config.update("jax_enable_x64", dtype_name == "float64")
    import jax.numpy as jnp
    from dynamax.linear_gaussian_ssm import inference as dyn_seq
    from dynamax.linear_gaussian_ssm import parallel_inference as dyn_par

    mod = dyn_par if impl.endswith("_parallel") else dyn_seq

    def jx(v):
        if isinstance(v, list):
            return [jnp.asarray(x.cpu().numpy()) for x in v]
        return jnp.asarray(v.cpu().numpy())

    r = {k: jx(v) for k, v in raw.items()}
    Y = jnp.asarray(torch.cat(obs, -1).cpu().numpy())

    def make(rr):
        A = rr["A"]
        return dyn_seq.make_lgssm_params(
            A @ rr["m00"],
            A @ rr["P00"] @ A.T + rr["Q"],
            A,
            rr["Q"],
            jnp.concatenate(rr["C"], 0),
            jax.scipy.linalg.block_diag(*rr["R"]),
            emissions_bias=jnp.concatenate(rr["d"]),
        )

    def total_ll(rr):
        lls = jax.vmap(lambda y: mod.lgssm_filter(make(rr), y).marginal_loglik)(Y)
        return lls.sum(), lls

    if "smoother" in impl:

        def smoothed(rr):
            return jax.vmap(lambda y: mod.lgssm_smoother(make(rr), y).smoothed_means)(Y)

        jf = jax.jit(smoothed)
    elif impl.startswith("dynamax_filter_grad"):
        jf = jax.jit(jax.value_and_grad(total_ll, has_aux=True))
    else:
        jf = jax.jit(lambda rr: total_ll(rr)[1])

    def fn():
        out = jf(r)
        jax.block_until_ready(out)
        if impl.startswith("dynamax_filter_grad"):
            out = out[0][1]
        return torch.from_numpy(np.asarray(out).astype(np.float64))

    return fn


# implementation name -> builder(impl, cfg, device, dtype_name, raw, obs, masks) -> fn, where
# fn() runs one timed evaluation and returns the per-sequence values compared in `agreement`
BUILDERS = {
    **{name: _build_mmpgm for name in (*MMPGM_KEYWORDS, "mmpgm_smooth")},
    "pyro_gaussian_hmm": _build_pyro,
    "pykalman": _build_pykalman,
    "pykalman_smooth": _build_pykalman,
    **{
        name: _build_dynamax
        for name in (
            "dynamax_filter",
            "dynamax_filter_grad",
            "dynamax_smoother",
            "dynamax_filter_parallel",
            "dynamax_smoother_parallel",
        )
    },
}
assert set(BUILDERS) == set(IMPLS)


def _run_impl(impl, cfg, device, dtype_name, queue):
    try:
        import torch

        dtype = getattr(torch, dtype_name)
        raw, obs, masks = _make_problem(cfg, device, dtype)
        if impl not in BUILDERS:
            raise ValueError(f"impl: expected one of {sorted(BUILDERS)}, got {impl!r}")
        fn = BUILDERS[impl](impl, cfg, device, dtype_name, raw, obs, masks)

        sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base_rss = _rss_mib()
        t0 = time.perf_counter()
        ll = fn()  # warm-up (also the value used for agreement; includes JAX compile)
        sync()
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(min(cfg["reps"], MAX_REPS.get(impl, cfg["reps"]))):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
        queue.put(
            dict(
                ok=True,
                median_s=statistics.median(times),
                first_s=first_s,
                peak_mib=max(peak, 0.0),
                ll=ll.tolist(),
            )
        )
    except Exception as exc:  # report, don't crash the whole benchmark
        queue.put(dict(ok=False, error=f"{type(exc).__name__}: {exc}"))


def _env(device, dtype_name, threads):
    import numpy
    import torch

    env = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=numpy.__version__,
        device=device,
        dtype=dtype_name,
        torch_threads=threads,
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        processor=platform.processor() or None,
    )
    for mod in ("pyro", "pykalman", "jax", "dynamax"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny size, for smoke tests")
    ap.add_argument(
        "--configs", default="B,B10k,L", help="comma-separated config names (default B,B10k,L)"
    )
    ap.add_argument("--impls", default=None, help="comma-separated (default: all; fewer for B10k)")
    ap.add_argument(
        "--device", default="cpu",
        help="cpu (default) or cuda[:i]: the torch implementations run there (pykalman is CPU "
        "only: listed under errors); a CUDA device torch does not see is an error",
    )  # fmt: skip
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in workers")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import add_malloc_argument, apply_malloc, check_device

    add_malloc_argument(ap)
    args = ap.parse_args(argv)

    try:  # before any worker: no silent CPU run, no worker failing one by one
        args.device = check_device(args.device)
    except ValueError as err:
        ap.error(str(err))
    names = ["quick"] if args.quick else [c for c in args.configs.split(",") if c]
    ctx = mp.get_context("spawn")
    malloc = apply_malloc(args.malloc)  # what holds here holds in the workers
    medians = {}
    for name in names:
        if args.impls:
            impls = [i for i in args.impls.split(",") if i]
        else:
            impls = DEFAULT_IMPLS.get(name, IMPLS)
        cfg = dict(CONFIGS[name])
        if args.reps is not None:
            cfg["reps"] = args.reps
        results = {}
        for impl in impls:
            q = ctx.Queue()
            proc = ctx.Process(
                target=_worker,
                args=(impl, cfg, args.device, args.dtype, args.threads, args.malloc, q),
            )
            proc.start()
            try:
                res = q.get(timeout=WORKER_TIMEOUT_S)
            except queue.Empty:  # a hung or killed worker: an error in the JSON, not a hang
                res = dict(ok=False, error=f"no result after {WORKER_TIMEOUT_S} s")
                proc.kill()
            proc.join()
            results[impl] = res
        ok = {k: v for k, v in results.items() if v["ok"]}
        ref = ok.get("mmpgm")
        out = dict(
            benchmark="lds_speed",
            config={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            median_s={k: round(v["median_s"], 6) for k, v in ok.items()},
            speedup={},
            peak_mib={k: round(v["peak_mib"], 2) for k, v in ok.items()},
            agreement={},
            compile_s={
                k: round(v["first_s"] - v["median_s"], 3)
                for k, v in ok.items()
                if k.startswith("dynamax")
            },
            env=dict(_env(args.device, args.dtype, args.threads), malloc=malloc),
        )
        import numpy as np

        for k, v in ok.items():
            smooth = "smooth" in k
            ref = ok.get("mmpgm_smooth" if smooth else "mmpgm")
            if ref is None or v is ref:
                continue
            out["speedup"][k] = round(v["median_s"] / ref["median_s"], 3)
            if k == "mmpgm_masked":
                continue
            a, b = np.asarray(v["ll"]), np.asarray(ref["ll"])
            if smooth:
                rel = float(np.abs(a - b).max() / np.abs(b).max())
            else:
                rel = float((np.abs(a - b) / np.maximum(np.abs(b), 1e-300)).max())
            out["agreement"][k] = float(f"{rel:.3g}")
        medians[name] = out["median_s"]
        if name == "B10k" and "B" in medians:
            out["growth_vs_B"] = {
                k: round(v / medians["B"][k], 2)
                for k, v in out["median_s"].items()
                if k in medians["B"]
            }
        out["targets"] = _targets(out["median_s"])
        errors = {k: v["error"] for k, v in results.items() if not v["ok"]}
        if errors:
            out["errors"] = errors
        print(json.dumps(out), flush=True)


def _targets(med: dict) -> dict:
    """The issue-16 targets this run can check, each ``{"ratio", "target", "met"}``: the masked
    path at most 3x the unmasked one and faster than Pyro's unmasked GaussianHMM; the smoother at
    most dynamax's; the default method within 1.2x of the best of the package's methods."""
    out = {}

    def check(name, num, den, target):
        if num in med and den in med:
            ratio = med[num] / med[den]
            out[name] = dict(ratio=round(ratio, 3), target=target, met=ratio <= target)

    check("mmpgm_masked/mmpgm", "mmpgm_masked", "mmpgm", 3.0)
    check("mmpgm_masked/pyro_gaussian_hmm", "mmpgm_masked", "pyro_gaussian_hmm", 1.0)
    check("mmpgm_smooth/dynamax_smoother", "mmpgm_smooth", "dynamax_smoother", 1.0)
    own = [k for k in ("mmpgm_sequential", "mmpgm_parallel", "mmpgm_exact") if k in med]
    if "mmpgm" in med and own:
        best = min(own, key=med.get)
        ratio = med["mmpgm"] / min(med["mmpgm"], med[best])
        out["mmpgm/best_own"] = dict(ratio=round(ratio, 3), target=1.2, met=ratio <= 1.2, best=best)
    return out


def _worker(impl, cfg, device, dtype_name, threads, malloc, queue):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.join(here, ".."), here]
    from _common import apply_malloc

    apply_malloc(malloc)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _run_impl(impl, cfg, device, dtype_name, queue)


if __name__ == "__main__":
    main()
