"""Speed, memory and agreement of the multimodal HMM log-likelihood + gradient against peers.

Workload (float64): the exact log-likelihood of a multimodal HMM with diagonal-Gaussian
emissions (one shared chain ``K_s``, one private chain ``K_m`` per modality) on data sampled
from a random model, **plus its gradient with respect to all parameters**. Implementations,
all on the same data in the same run:

``mmpgm``
    ``MultimodalHMM.log_likelihood(data).sum().backward()`` (emission log-probs included).
``mmpgm_ops``
    only :func:`mmpgm.ops.hmm.factorial_log_likelihood` + backward, given precomputed
    ``log_emissions`` (requires grad, as in the full path).
``mmpgm_dense`` / ``mmpgm_factored``
    the full path with the product-space transition forced by keyword:
    ``factorial_log_likelihood(..., transition="dense" / "chainwise")`` on the model's chain
    probabilities and ``log_emissions`` (the dense one only where ``P^2 N T <=
    --max-dense-work``); ``mmpgm`` runs ``transition="auto"``.
``hmmlearn_log`` / ``hmmlearn_scaling``
    ``GaussianHMM(covariance_type="diag").score(X, lengths)`` on the flattened product-state
    model (``P = K_s K_m^M`` states, start = Kronecker product of the chain initials, transition
    = Kronecker product of the chain transitions, per-state means/variances = the modalities'
    concatenated); no gradient (``"gradient": false`` in the JSON).
``pyro_trace_enum``
    ``TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, data,
    program="enumerated")`` + backward (its value minus the log prior is the log-likelihood).
``pyro_discrete_hmm``
    ``pyro.distributions.DiscreteHMM`` on the product space (time-varying transition logits
    whose first slice carries the initial distribution, observation ``Normal(...).to_event(1)``
    batched over ``P``) + backward; skipped when the ``(N, T, P, P)`` tensor it builds exceeds
    ``--max-discrete-hmm-gib``.
``dynamax``
    ``dynamax.hidden_markov_model.hmm_filter`` on the product space, ``jax.jit`` of
    ``value_and_grad`` of the summed marginal log-likelihood over a ``vmap`` over sequences
    (x64 enabled; Kronecker products and emission log-probs inside the jitted function);
    ahead-of-time compile time reported in ``compile_s``.

Output: one JSON line per configuration (``DESIGN.md`` section 8); ``speedup[impl] =
median_s[impl] / median_s["mmpgm"]``; ``agreement[impl]`` = relative difference of the total
log-likelihood to mmpgm's; ``peak_mib`` = extra peak RSS of one call, each implementation
measured in a fresh subprocess (``--quick``: in-process). ``--crossover`` instead times the
``transition="dense"`` vs ``"chainwise"`` ops for products 8..512 and prints the measured
crossover (to set ``DENSE_MAX_STATES``).

The builders of the implementations are in ``_hmm_impls.py`` (``BUILDERS``).

Usage::

    python benchmarks/hmm_speed.py                    # A1, A2, A3, all peers
    python benchmarks/hmm_speed.py --quick            # tiny sizes, CI smoke (< 30 s)
    python benchmarks/hmm_speed.py --configs A2 --peers hmmlearn_log,dynamax --repeats 7
    python benchmarks/hmm_speed.py --crossover
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `mmpgm` and `_common` importable
    _here = Path(__file__).resolve().parent
    sys.path.insert(0, str(_here))
    sys.path.insert(1, str(_here.parent))
    from _common import (
        PeakRSS,
        add_malloc_argument,
        apply_malloc,
        check_device,
        cuda_peak_mib,
        emit,
        env_info,
        rel_diff,
        run_worker,
        synchronized,
        time_interleaved,
    )  # fmt: skip
    from _hmm_impls import Skip, build_impl, product_size, zero_grads
else:  # pragma: no cover - imported as benchmarks.hmm_speed
    from ._common import (
        PeakRSS,
        add_malloc_argument,
        apply_malloc,
        check_device,
        cuda_peak_mib,
        emit,
        env_info,
        rel_diff,
        run_worker,
        synchronized,
        time_interleaved,
    )  # fmt: skip
    from ._hmm_impls import Skip, build_impl, product_size, zero_grads

import torch

BENCHMARK = "hmm_speed"

CONFIGS = {
    "A1": dict(dims=(6, 4), K_s=3, K_m=3, N=256, T=100),
    "A2": dict(dims=(8, 6, 4), K_s=4, K_m=4, N=64, T=75),
    "A3": dict(dims=(8, 6, 4), K_s=8, K_m=8, N=16, T=200),
}
QUICK_CONFIGS = {  # same modality structure, tiny sizes
    "A1": dict(dims=(6, 4), K_s=3, K_m=2, N=8, T=12),
    "A2": dict(dims=(8, 6, 4), K_s=2, K_m=2, N=4, T=10),
    "A3": dict(dims=(8, 6, 4), K_s=3, K_m=2, N=3, T=8),
}
MMPGM_IMPLS = ("mmpgm", "mmpgm_ops", "mmpgm_dense", "mmpgm_factored")
PEERS = ("hmmlearn_log", "hmmlearn_scaling", "pyro_trace_enum", "pyro_discrete_hmm", "dynamax")
NO_GRADIENT = ("hmmlearn_log", "hmmlearn_scaling")


# --------------------------------------------------------------------------- problem set-up
def make_problem(cfg, seed: int):
    """A random float64 ``MultimodalHMM`` and ``N`` sequences of length ``T`` sampled from it."""
    from mmpgm.models.hmm import HMMParams, MultimodalHMM

    names = [f"m{i}" for i in range(len(cfg["dims"]))]
    model = MultimodalHMM(dict(zip(names, cfg["dims"], strict=True)), cfg["K_s"], cfg["K_m"]).to(
        torch.float64
    )
    g = torch.Generator().manual_seed(seed)

    def chain(K):
        init = torch.distributions.Dirichlet(torch.ones(K, dtype=torch.float64)).sample()
        # sticky random rows: Dirichlet(1 + 4 K * I) has a mean self-transition near 0.8
        conc = torch.ones(K, K, dtype=torch.float64) + 4.0 * K * torch.eye(K, dtype=torch.float64)
        trans = torch.distributions.Dirichlet(conc).sample()
        return init, trans

    torch.manual_seed(seed)  # Dirichlet.sample uses the global generator
    s_init, s_trans = chain(cfg["K_s"])
    p_init, p_trans, emis = {}, {}, {}
    for m, D in zip(names, cfg["dims"], strict=True):
        p_init[m], p_trans[m] = chain(cfg["K_m"])
        loc = 1.5 * torch.randn(cfg["K_s"], cfg["K_m"], D, generator=g, dtype=torch.float64)
        scale = 0.6 + 0.8 * torch.rand(cfg["K_s"], cfg["K_m"], D, generator=g, dtype=torch.float64)
        emis[m] = {"loc": loc, "scale": scale}
    model.set_params(HMMParams(s_init, s_trans, p_init, p_trans, emis))
    data, _ = model.sample(cfg["N"], cfg["T"], seed=seed + 1)
    return model, data


# --------------------------------------------------------------------------- memory worker
def memory_worker(opts) -> None:
    """Subprocess entry: set up the problem, run ``opts.memory_worker`` once as warm-up (unless
    ``--worker-warmup 0``), then once under :class:`PeakRSS`; print ``{"peak_mib", "method"}``."""
    cfg = json.loads(opts.worker_config)
    torch.set_default_dtype(torch.float64)
    model, data = make_problem(cfg, opts.seed)
    run, _ = build_impl(opts.memory_worker, model, data, cfg, opts)
    for _ in range(opts.worker_warmup):
        run()
    with PeakRSS() as pk:
        run()
    emit({"peak_mib": pk.extra_mib, "method": pk.method})


def measure_memory(impl, cfg, opts, median_s):
    argv = [
        Path(__file__).resolve(),
        "--memory-worker",
        impl,
        "--worker-config",
        json.dumps(cfg),
        "--seed",
        opts.seed,
        "--threads",
        opts.threads,
        "--worker-warmup",
        0 if median_s > 2.0 else 1,
        "--malloc",
        "default",  # run_worker's MALLOC_* settings make RSS follow live allocations
        "--max-dense-work",
        opts.max_dense_work,
        "--max-discrete-hmm-gib",
        opts.max_discrete_hmm_gib,
    ]
    timeout = 120 + 6 * median_s
    return run_worker(argv, timeout_s=timeout)


# --------------------------------------------------------------------------- one configuration
def bench_config(cname, cfg, impls, opts, log):
    model, data = make_problem(cfg, opts.seed)
    device = getattr(opts, "device", "cpu")
    if device != "cpu":  # the mmpgm paths on the GPU; the peers are CPU libraries
        model, data = model.to(device), data.to(device=device)
    P = product_size(cfg)
    record = {
        "benchmark": BENCHMARK,
        "config": {
            "name": cname,
            "modalities": len(cfg["dims"]),
            "dims": list(cfg["dims"]),
            "K_s": cfg["K_s"],
            "K_m": cfg["K_m"],
            "product_states": P,
            "chains": len(cfg["dims"]) + 1,
            "N": cfg["N"],
            "T": cfg["T"],
            "dtype": "float64",
            "quick": bool(opts.quick),
            "workload": "log-likelihood + gradient w.r.t. all parameters",
            "device": getattr(opts, "device", "cpu"),
        },
        "median_s": {},
        "speedup": {},
        "peak_mib": {},
        "agreement": {},
    }
    runs, extras, skipped = {}, {}, {}
    for impl in impls:
        t0 = time.perf_counter()
        if device != "cpu" and not impl.startswith("mmpgm"):
            skipped[impl] = f"a CPU peer; --device {device} times the mmpgm paths only"
            continue
        try:
            runs[impl], extras[impl] = build_impl(impl, model, data, cfg, opts)
            runs[impl] = synchronized(runs[impl], device)
        except Skip as e:
            skipped[impl] = str(e)
            log(f"  [{cname}] skip {impl}: {e}")
        except Exception as e:  # noqa: BLE001 - report, go on with the others
            skipped[impl] = f"error while building: {type(e).__name__}: {e}"[:300]
            log(f"  [{cname}] {impl} failed to build: {e}")
        else:
            log(f"  [{cname}] built {impl} ({time.perf_counter() - t0:.1f} s)")
    values = {}

    def recording(impl, fn):
        def call():
            values[impl] = fn()

        return call

    timings = time_interleaved(
        {k: recording(k, f) for k, f in runs.items()},
        repeats=opts.repeats,
        warmup=opts.warmup,
        budget_s=opts.budget_s,
    )
    for impl, rec in timings.items():
        if "error" in rec:
            skipped[impl] = "error while running: " + rec["error"]
            log(f"  [{cname}] {impl} failed: {rec['error']}")
            continue
        record["median_s"][impl] = rec["median_s"]
    ref_t = record["median_s"].get("mmpgm")
    ref_v = values.get("mmpgm")
    for impl, t in record["median_s"].items():
        if impl == "mmpgm":
            continue
        if ref_t:
            record["speedup"][impl] = t / ref_t
        if ref_v is not None and impl in values:
            record["agreement"][impl] = rel_diff(values[impl], ref_v)
    # peak memory
    peak_method = "inprocess_vmhwm" if opts.quick or opts.no_subprocess else "subprocess_vmhwm"
    for impl in record["median_s"]:
        if device != "cpu":
            peak_method = "cuda_max_memory_allocated"
            record["peak_mib"][impl] = cuda_peak_mib(runs[impl], device)
        elif opts.quick or opts.no_subprocess:
            try:
                with PeakRSS() as pk:
                    runs[impl]()
                record["peak_mib"][impl] = pk.extra_mib
                if pk.method != "vmhwm_reset":
                    peak_method = "inprocess_ru_maxrss"
            except Exception as e:  # noqa: BLE001
                record["peak_mib"][impl] = None
                log(f"  [{cname}] peak memory of {impl} failed: {e}")
        else:
            res = measure_memory(impl, cfg, opts, record["median_s"][impl])
            record["peak_mib"][impl] = res.get("peak_mib")
            if "error" in res:
                log(f"  [{cname}] peak memory of {impl}: {res['error']}")
            elif res.get("method") != "vmhwm_reset":
                peak_method = "subprocess_ru_maxrss"
            log(f"  [{cname}] peak {impl}: {res.get('peak_mib')}")
    record["compile_s"] = {k: v["compile_s"] for k, v in extras.items() if "compile_s" in v}
    record["gradient"] = {k: extras[k].get("gradient", True) for k in record["median_s"]}
    record["repeats"] = {
        k: len(v.get("times_s", [])) for k, v in timings.items() if "error" not in v
    }
    record["times_s"] = {k: v.get("times_s") for k, v in timings.items() if "error" not in v}
    record["warmup_s"] = {k: v.get("warmup_s") for k, v in timings.items() if "error" not in v}
    record["log_likelihood"] = values.get("mmpgm")
    record["skipped"] = skipped
    record["peak_method"] = peak_method
    record["env"] = env_info({"seed": opts.seed, "malloc": opts.malloc_applied})
    return record


# --------------------------------------------------------------------------- crossover
CROSSOVER_SHAPES = {
    2: [(2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16), (16, 32)],
    3: [(2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8)],
    4: [(2, 2, 2, 2), (2, 2, 2, 4), (2, 2, 4, 4), (2, 4, 4, 4), (4, 4, 4, 4), (4, 4, 4, 8)],
}


def crossover(opts, log):
    """Time ``factorial_log_likelihood`` + backward with ``transition="dense"`` vs
    ``"chainwise"`` for products 8..512 (2, 3 and 4 chains), and pick the ``DENSE_MAX_STATES``
    that minimizes the mean slowdown relative to the faster choice over all measured shapes."""
    from mmpgm.ops import hmm as ops

    N, T = (8, 20) if opts.quick else (opts.crossover_n, opts.crossover_t)
    g = torch.Generator().manual_seed(opts.seed)
    rows = []
    for C, shapes in CROSSOVER_SHAPES.items():
        for sizes in shapes:
            init = [
                torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64))
                .sample()
                .requires_grad_()
                for k in sizes
            ]
            trans = [
                torch.distributions.Dirichlet(torch.ones(k, k, dtype=torch.float64))
                .sample()
                .requires_grad_()
                for k in sizes
            ]
            logE = (
                3 * torch.randn((N, T) + sizes, generator=g, dtype=torch.float64)
            ).requires_grad_()
            leaves = init + trans + [logE]

            def make(transition, init=init, trans=trans, logE=logE, leaves=leaves):
                def run():
                    zero_grads(leaves)
                    ll = ops.factorial_log_likelihood(
                        init, trans, logE, transition=transition
                    ).sum()
                    ll.backward()

                return run

            t = time_interleaved(
                {"dense": make("dense"), "factored": make("chainwise")},
                repeats=opts.repeats,
                warmup=opts.warmup,
                budget_s=opts.budget_s / 4,
            )
            row = {
                "chains": C,
                "sizes": list(sizes),
                "product_states": math.prod(sizes),
                "dense_s": t["dense"].get("median_s"),
                "factored_s": t["factored"].get("median_s"),
            }
            row["dense_over_factored"] = row["dense_s"] / row["factored_s"]
            rows.append(row)
            log(
                f"  crossover C={C} sizes={sizes} P={row['product_states']}: "
                f"dense {row['dense_s']:.4f} s, "
                f"factored {row['factored_s']:.4f} s, ratio {row['dense_over_factored']:.2f}"
            )
    candidates = sorted({0} | {r["product_states"] for r in rows})

    def mean_regret(th):
        return sum(
            (r["dense_s"] if r["product_states"] <= th else r["factored_s"])
            / min(r["dense_s"], r["factored_s"])
            for r in rows
        ) / len(rows)

    regrets = {th: mean_regret(th) for th in candidates}
    best = min(candidates, key=lambda th: (round(regrets[th], 3), th))
    per_chain = {}
    for C in CROSSOVER_SHAPES:
        rs = sorted((r for r in rows if r["chains"] == C), key=lambda r: r["product_states"])
        # largest measured product at which dense still won (single noisy inversions below it
        # do not end the dense range)
        wins = [r["product_states"] for r in rs if r["dense_s"] < r["factored_s"]]
        per_chain[str(C)] = max(wins, default=0)
    result = {
        "benchmark": "hmm_dense_crossover",
        "config": {
            "name": "crossover",
            "N": N,
            "T": T,
            "dtype": "float64",
            "quick": bool(opts.quick),
            "workload": "factorial_log_likelihood + backward, dense vs per-chain transition",
        },
        "rows": rows,
        "dense_faster_up_to": per_chain,
        "mean_regret": {str(k): v for k, v in regrets.items()},
        "suggested_DENSE_MAX_STATES": best,
        "current_DENSE_MAX_STATES": ops.DENSE_MAX_STATES,
        "env": env_info({"seed": opts.seed, "malloc": opts.malloc_applied}),
    }
    emit(result)
    log(
        f"dense faster up to P = {per_chain} (by number of chains); "
        f"suggested DENSE_MAX_STATES = {best} (mean slowdown {regrets[best]:.3f}x vs best "
        f"choice; current value {ops.DENSE_MAX_STATES}: "
        f"{mean_regret(ops.DENSE_MAX_STATES):.3f}x)"
    )


# --------------------------------------------------------------------------- summary / main
def summarize(records, log):
    for r in records:
        c = r["config"]
        log(
            f"\n{c['name']}: {c['modalities']} modalities dims {c['dims']}, "
            f"K_s={c['K_s']} K_m={c['K_m']} "
            f"(P={c['product_states']}), N={c['N']} T={c['T']}, float64"
        )
        log(f"  {'impl':<19}{'median s':>11}{'x mmpgm':>10}{'rel diff':>11}{'peak MiB':>10}  note")
        for impl, t in sorted(r["median_s"].items(), key=lambda kv: kv[1]):
            sp = r["speedup"].get(impl)
            ag = r["agreement"].get(impl)
            pk = r["peak_mib"].get(impl)
            note = []
            if not r["gradient"].get(impl, True):
                note.append("no gradient")
            if impl in r.get("compile_s", {}):
                note.append(f"compile {r['compile_s'][impl]:.2f} s")
            note.append(f"n={r['repeats'].get(impl)}")
            log(
                f"  {impl:<19}{t:>11.4f}{(f'{sp:.2f}' if sp else '-'):>10}"
                f"{(f'{ag:.1e}' if ag is not None else '-'):>11}"
                f"{(f'{pk:.1f}' if pk is not None else '-'):>10}  {', '.join(note)}"
            )
        for impl, why in r["skipped"].items():
            log(f"  {impl:<19} skipped: {why}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 repeat, in-process memory (CI smoke)"
    )
    add_malloc_argument(p)
    p.add_argument("--configs", default="A1,A2,A3", help="comma-separated config names (A1,A2,A3)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda[:i]: the mmpgm paths run there (the peers are CPU libraries "
        "and are skipped); peak memory is then torch.cuda.max_memory_allocated",
    )
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated peers (default all: {','.join(PEERS)}); 'none': mmpgm only",
    )
    p.add_argument(
        "--impls",
        default=",".join(MMPGM_IMPLS),
        help="comma-separated mmpgm variants (mmpgm is always run)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per implementation (default 5; quick 1)",
    )
    p.add_argument("--warmup", type=int, default=1, help="warm-up calls before timing (default 1)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=40.0,
        help="time budget per implementation and config; slow ones get fewer repeats (default 40)",
    )
    p.add_argument(
        "--max-dense-work",
        type=float,
        default=5e9,
        help="skip O(P^2 N T) product-space CPU paths (hmmlearn, mmpgm_dense) above this "
        "(default 5e9)",
    )
    p.add_argument(
        "--max-discrete-hmm-gib",
        type=float,
        default=4.0,
        help="skip pyro_discrete_hmm when its (N,T,P,P) tensor exceeds this many GiB (default 4)",
    )
    p.add_argument("--no-subprocess", action="store_true", help="measure peak memory in-process")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of torch (and of XLA for dynamax when 1); 0 = leave the "
        "libraries' defaults. Default 1: on a shared 2-core machine a second thread "
        "that gets descheduled stalls every parallel op (measured 10-30x slowdowns)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--crossover",
        action="store_true",
        help="time dense vs per-chain ops for P = 8..512 instead",
    )
    p.add_argument("--crossover-n", type=int, default=64)
    p.add_argument("--crossover-t", type=int, default=75)
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-warmup", type=int, default=1, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.repeats is None:
        opts.repeats = 1 if opts.quick else 5
    if opts.quick:
        opts.warmup = min(opts.warmup, 1)
    return opts


def set_threads(n):
    """Pin torch's (and XLA's, set before jax is imported) intra-op thread count."""
    if not n:
        return
    torch.set_num_threads(n)
    if n == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


def main(argv=None) -> int:
    opts = parse_args(argv)
    set_threads(opts.threads)
    opts.malloc_applied = apply_malloc(opts.malloc)
    if opts.memory_worker:
        memory_worker(opts)
        return 0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        opts.device = check_device(opts.device)
    except ValueError as e:
        log(str(e))
        return 2
    torch.set_default_dtype(torch.float64)
    if opts.crossover:
        crossover(opts, log)
        return 0
    table = QUICK_CONFIGS if opts.quick else CONFIGS
    names = [c.strip() for c in opts.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in table]
    if unknown:
        log(f"unknown configs {unknown}; choose from {list(table)}")
        return 2
    peers = (
        []
        if opts.peers.strip().lower() == "none"
        else [x.strip() for x in opts.peers.split(",") if x.strip()]
    )
    bad = [x for x in peers if x not in PEERS]
    variants = [x.strip() for x in opts.impls.split(",") if x.strip()]
    bad += [x for x in variants if x not in MMPGM_IMPLS]
    if bad:
        log(f"unknown implementations {bad}; peers: {list(PEERS)}, variants: {list(MMPGM_IMPLS)}")
        return 2
    impls = ["mmpgm"] + [v for v in variants if v != "mmpgm"] + peers
    records = []
    t0 = time.perf_counter()
    for cname in names:
        log(f"== {cname} ({time.perf_counter() - t0:.0f} s)")
        rec = bench_config(cname, table[cname], impls, opts, log)
        emit(rec)
        records.append(rec)
    summarize(records, log)
    log(
        f"\ntotal {time.perf_counter() - t0:.0f} s; torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
