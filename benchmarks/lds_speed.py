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
* ``mmpgm_parallel``: :func:`mmpgm.ops.kalman.parallel_kalman_filter`
  (associative scan) log-likelihood + backward.
* ``mmpgm_masked``: default method with ~20% of each modality missing
  (no peer supports this; timing only, not in ``agreement``).
* ``pykalman``: ``KalmanFilter.loglikelihood`` in a loop over sequences
  (numpy, no gradient); the two modalities are stacked with a
  block-diagonal observation covariance.
* ``pyro_gaussian_hmm``: ``pyro.distributions.GaussianHMM.log_prob`` +
  backward (no masks).  Pyro's first observation follows one transition from
  its initial state, so the benchmark parameterises the prior of ``z_1`` as
  ``init_mean = A m_0``, ``init_cov = A P_0 A^T + Q`` for every library.

``peak_mib`` is the growth of the process' peak resident set size during
the timed calls (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).

Usage::

    python benchmarks/lds_speed.py            # config B (and L)
    python benchmarks/lds_speed.py --quick    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time

CONFIGS = {
    # latent 6, two modalities (6 + 4), N=64, T=500
    "B": dict(name="B", S=6, dims=(6, 4), N=64, T=500, reps=5),
    # a long single sequence: where the time-parallel scan can win
    "L": dict(name="L", S=2, dims=(2,), N=1, T=20000, reps=3),
    "quick": dict(name="quick", S=3, dims=(2, 1), N=4, T=20, reps=3),
}

IMPLS = ["mmpgm", "mmpgm_sequential", "mmpgm_parallel", "mmpgm_masked", "pykalman", "pyro_gaussian_hmm"]


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
        Z @ C.T + d + torch.randn(N, T, C.shape[0], generator=g, dtype=torch.float64) @ torch.linalg.cholesky(R).T
        for C, d, R in zip(raw["C"], raw["d"], raw["R"])
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


def _run_impl(impl, cfg, device, dtype_name, queue):
    try:
        import numpy as np
        import torch

        dtype = getattr(torch, dtype_name)
        raw, obs, masks = _make_problem(cfg, device, dtype)

        if impl.startswith("mmpgm"):
            from mmpgm.ops.kalman import LinearGaussianParams, kalman_log_likelihood, parallel_kalman_filter

            def fn():
                lv = _leaves(raw)
                A = lv["A"]
                params = LinearGaussianParams(
                    init_mean=A @ lv["m00"],
                    init_cov=A @ lv["P00"] @ A.T + lv["Q"],
                    transition_matrix=A,
                    transition_cov=lv["Q"],
                    emission_matrices=tuple(lv["C"]),
                    emission_offsets=tuple(lv["d"]),
                    emission_covs=tuple(lv["R"]),
                )
                if impl == "mmpgm_parallel":
                    ll = parallel_kalman_filter(params, obs).log_likelihood
                elif impl == "mmpgm_sequential":
                    ll = kalman_log_likelihood(params, obs, method="sequential")
                elif impl == "mmpgm_masked":
                    ll = kalman_log_likelihood(params, obs, masks)
                else:
                    ll = kalman_log_likelihood(params, obs)
                ll.sum().backward()
                return ll.detach().double().cpu()

        elif impl == "pyro_gaussian_hmm":
            import pyro.distributions as pdist

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

        elif impl == "pykalman":
            import pykalman

            if device != "cpu":
                raise RuntimeError("pykalman is CPU only")
            r = {k: ([x.double().numpy() for x in v] if isinstance(v, list) else v.double().numpy()) for k, v in raw.items()}
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

            def fn():
                return torch.tensor([kf.loglikelihood(X[n]) for n in range(X.shape[0])])

        else:
            raise ValueError(impl)

        sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base_rss = _rss_mib()
        ll = fn()  # warm-up (also the value used for agreement)
        sync()
        times = []
        for _ in range(cfg["reps"]):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
        queue.put(dict(ok=True, median_s=statistics.median(times), peak_mib=max(peak, 0.0), ll=ll.tolist()))
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
    for mod in ("pyro", "pykalman"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny size, for smoke tests")
    ap.add_argument("--configs", default="B,L", help="comma-separated config names (default B,L)")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in workers")
    args = ap.parse_args(argv)
    names = ["quick"] if args.quick else [c for c in args.configs.split(",") if c]
    impls = [i for i in args.impls.split(",") if i]
    ctx = mp.get_context("spawn")
    for name in names:
        cfg = dict(CONFIGS[name])
        if args.reps is not None:
            cfg["reps"] = args.reps
        results = {}
        for impl in impls:
            q = ctx.Queue()
            proc = ctx.Process(target=_worker, args=(impl, cfg, args.device, args.dtype, args.threads, q))
            proc.start()
            res = q.get()
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
            env=_env(args.device, args.dtype, args.threads),
        )
        if ref is not None:
            for k, v in ok.items():
                if k == "mmpgm":
                    continue
                out["speedup"][k] = round(v["median_s"] / ref["median_s"], 3)
                if k != "mmpgm_masked":
                    rel = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(v["ll"], ref["ll"]))
                    out["agreement"][k] = float(f"{rel:.3g}")
        errors = {k: v["error"] for k, v in results.items() if not v["ok"]}
        if errors:
            out["errors"] = errors
        print(json.dumps(out), flush=True)


def _worker(impl, cfg, device, dtype_name, threads, queue):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _run_impl(impl, cfg, device, dtype_name, queue)


if __name__ == "__main__":
    main()
