"""The multimodal HMM's emission factor: the previous path against the current one, paired.

For the ``hmm_speed`` configurations (float64, one process, interleaved repeats), times

``emis_previous`` / ``emis_current``
    ``log_emissions(data).backward(G)`` (forward and backward of the product-space emission
    factor alone, ``G`` a fixed random gradient): the previous path (uncentred three-product
    expansion of the diagonal Gaussian, ``torch.where`` masking of the filled data, summed by
    broadcasting, reductions in the backward) and ``MultimodalHMM.log_emissions`` as it is;
``model_previous`` / ``model_current``
    ``MultimodalHMM.log_likelihood(data).sum().backward()`` with either emission path;
``ops``
    ``factorial_log_likelihood`` + backward on precomputed ``log_emissions`` (the
    ``mmpgm_ops`` of ``hmm_speed.py``).

Prints one JSON line per configuration: medians, minima and the model/ops ratios (medians and
minima; on a shared machine the minima are the less disturbed estimate), plus the largest
difference between the two paths' log-emissions.

Usage::

    python benchmarks/hmm_emission_paths.py --configs A1,A2 --repeats 31 [--threads 0]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    _here = Path(__file__).resolve().parent
    sys.path.insert(0, str(_here))
    sys.path.insert(1, str(_here.parent))
    from _common import emit, env_info
    from hmm_speed import CONFIGS, make_problem, set_threads
else:  # pragma: no cover
    from ._common import emit, env_info
    from .hmm_speed import CONFIGS, make_problem, set_threads

import torch


def previous_log_emissions(model, data):
    """``MultimodalHMM.log_emissions`` before the fast path (diagonal-Gaussian modalities, no
    fault chains, no labels)."""
    N, T, M = data.num_sequences, data.num_timesteps, len(model.modalities)
    total = None
    for i, m in enumerate(model.modalities):
        e = model.emissions[m]
        x = data.filled(m)
        D = e.obs_dim
        prec = e.scale.reshape(-1, D) ** -2
        mu = e.loc.reshape(-1, D)
        quad = (x**2) @ prec.T - 2 * x @ (mu * prec).T + (mu**2 * prec).sum(-1)
        const = e.scale.reshape(-1, D).log().sum(-1) + 0.5 * D * math.log(2 * math.pi)
        lp = (-0.5 * quad - const).reshape(x.shape[:-1] + e.state_shape)
        lp = torch.where(data.mask[m][..., None, None], lp, torch.zeros((), dtype=lp.dtype))
        shape = [N, T, lp.shape[-2]] + [1] * M
        shape[3 + i] = lp.shape[-1]
        total = lp.reshape(shape) if total is None else total + lp.reshape(shape)
    return total.expand((N, T) + model.chain_sizes)


def bench(cname, cfg, repeats):
    from mmpgm.ops.hmm import factorial_log_likelihood

    model, data = make_problem(cfg, 0)
    data = model.check_data(data)
    assert not model.fault_modalities
    current = model.log_emissions

    def previous(d, exclude=()):
        assert not exclude
        return previous_log_emissions(model, d)

    with torch.no_grad():
        logE0 = current(data).contiguous().clone()
        max_diff = float((previous(data) - logE0).abs().max())
    G = torch.randn(logE0.shape, generator=torch.Generator().manual_seed(1), dtype=logE0.dtype)
    chains = model._chains()
    init = [c.initial_probs.detach().clone().requires_grad_() for c in chains]
    trans = [c.transition_probs.detach().clone().requires_grad_() for c in chains]
    logE0.requires_grad_(True)

    def emis(fn):
        def run():
            model.zero_grad(set_to_none=True)
            fn(data).backward(G)

        return run

    def full(fn):
        def run():
            model.zero_grad(set_to_none=True)
            model.log_emissions = fn  # instance attribute shadows the method
            try:
                model.log_likelihood(data).sum().backward()
            finally:
                del model.log_emissions

        return run

    def ops():
        for t in init + trans + [logE0]:
            t.grad = None
        factorial_log_likelihood(init, trans, logE0).sum().backward()

    fns = {
        "emis_previous": emis(previous),
        "emis_current": emis(current),
        "model_previous": full(previous),
        "model_current": full(current),
        "ops": ops,
    }
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}
    return {
        "benchmark": "hmm_emission_paths",
        "config": {"name": cname, **{k: list(v) if k == "dims" else v for k, v in cfg.items()}},
        "median_s": med,
        "min_s": mins,
        "model_over_ops": {
            "previous_median": med["model_previous"] / med["ops"],
            "current_median": med["model_current"] / med["ops"],
            "previous_min": mins["model_previous"] / mins["ops"],
            "current_min": mins["model_current"] / mins["ops"],
        },
        "max_abs_diff_log_emissions": max_diff,
        "repeats": repeats,
        "env": env_info({}),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="A1,A2")
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default")
    opts = p.parse_args(argv)
    set_threads(opts.threads)
    torch.set_default_dtype(torch.float64)
    for cname in [c.strip() for c in opts.configs.split(",") if c.strip()]:
        if cname not in CONFIGS:
            print(f"unknown config {cname!r}; choose from {list(CONFIGS)}", file=sys.stderr)
            return 2
        rec = bench(cname, CONFIGS[cname], opts.repeats)
        emit(rec)
        r = rec["model_over_ops"]
        print(
            f"{cname}: emission fwd+bwd {rec['min_s']['emis_previous'] * 1e3:.1f} -> "
            f"{rec['min_s']['emis_current'] * 1e3:.1f} ms (min); model/ops previous "
            f"{r['previous_median']:.2f} (min {r['previous_min']:.2f}), current "
            f"{r['current_median']:.2f} (min {r['current_min']:.2f})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
