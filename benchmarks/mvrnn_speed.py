"""Speed benchmark D: one MVRNN training step (forward, backward, Adam).

Prints one JSON object per line (DESIGN.md section 8)::

    {"benchmark": "mvrnn_speed", "config": {"name": "D", ...}, "median_s": {impl: s},
     "speedup": {peer: peer_s / mmpgm_s}, "peak_mib": {impl: MiB},
     "agreement": {peer: rel. difference of the loss under the same noise}, "env": {...}}

Workload: batch 16, T=75, 2 modalities of 64 features, hidden 64, latent 16 (shared and private),
float32, every frame observed. Implementations (same parameters, each step = zero_grad, loss,
backward, Adam step):

* ``mmpgm``: the default training path, ``model.default_elbo().differentiable_loss(model.model,
  model.guide, data)`` (vectorized program: one pass, analytic KL, ``pyro.factor``).
* ``mmpgm_no_pyro``: the same one-pass loss called directly (``-model.sequence_elbo(data).sum()``),
  i.e. the Pyro overhead is ``mmpgm - mmpgm_no_pyro``.
* ``torch_plain``: an equivalent plain-PyTorch VRNN loss with analytic KL written here, the usual
  way (every network called on concatenated inputs inside the time loop, ``nn.GRUCell``), on the
  same modules and the same noise: its loss agrees with mmpgm's to float rounding.
* ``pyro_trace_elbo``, ``pyro_meanfield_elbo``: the per-frame site program
  (``program="sites"``) under ``Trace_ELBO`` (Monte Carlo KL) and ``TraceMeanField_ELBO``
  (analytic KL, the same objective as mmpgm).
* ``pyro_jit_trace_elbo``, ``pyro_jit_meanfield_elbo``: ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO``
  on the site program; ``mmpgm_jit``: ``JitTrace_ELBO`` on the vectorized program. Their
  compile time (the first three calls: trace, profiling runs) is in ``compile_s``, or why
  it was given up (``--jit-budget-s``).

``agreement`` compares losses under the same noise where the noise can be shared (``torch_plain``,
``mmpgm_no_pyro``, ``pyro_meanfield_elbo`` replayed on the draws of mmpgm's noise); for
``pyro_trace_elbo`` it is the relative difference of a mean over ``--agree-draws`` seeded draws
(Monte Carlo, so only roughly equal).

The site-program JIT variants are left out at full size by default (recorded under
``skipped``): tracing 75 steps of per-frame sites gives a huge graph (one measured run: compile
21 s, then 7.7 s per step). ``peak_mib`` is measured in-process after the timed calls, so it
under-reports.

Measured on the shared 2-core machine (one run, ``--threads 1``, config D): mmpgm 108 ms,
torch_plain 230 ms (mmpgm 0.47x the plain step), mmpgm_no_pyro 109 ms, mmpgm_jit 99 ms
(compile 27 s), pyro_trace_elbo 382 ms, pyro_meanfield_elbo 373 ms; loss agreement with
torch_plain 0 (float32, same noise), with pyro_meanfield_elbo 1.4e-7.

Usage::

    python benchmarks/mvrnn_speed.py            # config D (about 1 minute)
    python benchmarks/mvrnn_speed.py --quick    # tiny sizes, < 30 s
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    PeakRSS, check_device, emit, env_info, rel_diff, synchronized, time_interleaved,
)  # fmt: skip

CONFIGS = {
    "D": dict(name="D", N=16, T=75, dims=(64, 64), hidden=64, latent=16),
    "quick": dict(name="quick", N=4, T=8, dims=(6, 5), hidden=8, latent=3),
}
IMPLS = ["mmpgm", "mmpgm_no_pyro", "torch_plain", "pyro_trace_elbo", "pyro_meanfield_elbo",
         "pyro_jit_trace_elbo", "pyro_jit_meanfield_elbo", "mmpgm_jit"]
# JIT of the 75-step site program: measured once on the 2-core machine, JitTraceMeanField_ELBO
# compiled in 21 s and then took 7.7 s per step (58x mmpgm); a run with both site-program JIT
# variants had not finished after 16 minutes. They run with --quick, or when named in --impls.
SLOW_AT_FULL_SIZE = {
    "pyro_jit_trace_elbo": "torch.jit trace of the 75-step site program: impractically slow (see source)",
    "pyro_jit_meanfield_elbo": "torch.jit trace of the 75-step site program: compile 21 s, 7.7 s per step "
                               "in one measured run (58x mmpgm); name it in --impls to time it",
}


def plain_loss(net, xs, masks, noise, time_mask=None):
    """Plain-PyTorch multimodal VRNN negative ELBO with analytic KL (the usual per-step code).

    ``xs[m]`` ``(T, N, D)``, ``masks[m]`` ``(T, N)`` bool (observed, inside the length),
    ``noise`` as ``MVRNNNet.draw_noise``, ``time_mask`` ``(T, N)`` (default all True). Gaussian
    likelihoods only. A missing modality has no expert, its private posterior is its prior and it
    has no reconstruction term; padding frames contribute nothing.
    """
    import torch
    import torch.nn.functional as F

    def gauss(head, inp):
        loc, raw = head(inp).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-3

    def kl(ql, qs, pl, ps):
        return (torch.log(ps / qs) + (qs ** 2 + (ql - pl) ** 2) / (2 * ps ** 2) - 0.5).sum(-1)

    mods = list(xs)
    T, N, _ = xs[mods[0]].shape
    H = net.hidden_dim
    h_s = xs[mods[0]].new_zeros(N, H)
    h_m = {m: xs[m].new_zeros(N, H) for m in mods}
    total = 0.0
    for t in range(T):
        o = {m: masks[m][t].to(xs[m].dtype)[:, None] for m in mods}
        inside = 1.0 if time_mask is None else time_mask[t].to(xs[mods[0]].dtype)
        x = {m: xs[m][t] * o[m] for m in mods}
        pl, ps = gauss(net.prior_shared, h_s)
        prec, num = ps ** -2, pl * ps ** -2
        for m in mods:
            el, es = gauss(net.experts[m], torch.cat([x[m], h_s], -1))
            prec = prec + o[m] * es ** -2
            num = num + o[m] * el * es ** -2
        ql, qs = num / prec, prec.rsqrt()
        z_s = ql + qs * noise["shared"][t]
        total = total - (inside * kl(ql, qs, pl, ps)).sum()
        new_h = {}
        for m in mods:
            ppl, pps = gauss(net.prior_private[m], h_m[m])
            qql, qqs = gauss(net.encoders[m], torch.cat([x[m], h_m[m], z_s], -1))
            qql, qqs = o[m] * qql + (1 - o[m]) * ppl, o[m] * qqs + (1 - o[m]) * pps
            z_m = qql + qqs * noise[m][t]
            total = total - (inside * kl(qql, qqs, ppl, pps)).sum()
            dl, ds = gauss(net.decoders[m], torch.cat([z_m, z_s, h_m[m]], -1))
            lp = (-0.5 * ((x[m] - dl) / ds) ** 2 - ds.log() - 0.9189385332046727).sum(-1)
            total = total + (o[m][:, 0] * lp).sum()
            new_h[m] = net.gru_private[m](torch.cat([x[m], o[m], z_m], -1), h_m[m])
        h_s = net.gru_shared(torch.cat([v for m in mods for v in (x[m], o[m])] + [z_s], -1), h_s)
        h_m = new_h
    return -total


def build(cfg, seed=0, device="cpu"):
    import torch

    import mmpgm  # noqa: F401  (module-local Pyro params)
    from mmpgm import MultimodalData
    from mmpgm.models.mvrnn import MVRNN

    torch.manual_seed(seed)
    dims = {f"m{i}": d for i, d in enumerate(cfg["dims"])}
    g = torch.Generator().manual_seed(seed + 1)
    obs = {m: torch.randn(cfg["N"], cfg["T"], d, generator=g) for m, d in dims.items()}
    data = MultimodalData(obs)
    model = MVRNN(dims, hidden_dim=cfg["hidden"], shared_dim=cfg["latent"], private_dim=cfg["latent"])
    model.init_from_data(data)
    model = model.to(device)
    return model, model.check_data(data)


def run_config(cfg, impls, repeats, budget_s, agree_draws, jit_budget_s=120.0, device="cpu"):
    import pyro
    import torch
    from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

    model, data = build(cfg, device=device)
    params = list(model.parameters())
    optim = torch.optim.Adam(params, lr=1e-3)
    xs, masks, tm = model._inputs(data)
    T, N = cfg["T"], cfg["N"]

    def step(loss_fn):
        def f():
            optim.zero_grad()
            loss = loss_fn()
            loss.backward()
            optim.step()
            return loss
        return synchronized(f, device)

    elbos = {"mmpgm": model.default_elbo(), "pyro_trace_elbo": Trace_ELBO(),
             "pyro_meanfield_elbo": TraceMeanField_ELBO(),
             "pyro_jit_trace_elbo": JitTrace_ELBO(ignore_jit_warnings=True),
             "pyro_jit_meanfield_elbo": JitTraceMeanField_ELBO(ignore_jit_warnings=True),
             "mmpgm_jit": JitTrace_ELBO(ignore_jit_warnings=True)}
    # JIT ELBOs trace a function of tensors: pass the data as a flat tuple and rebuild it inside
    mods = model.modalities
    flat = tuple(data.obs[m] for m in mods) + tuple(data.mask[m] for m in mods) + (data.lengths,)

    def rebuild(args):
        d = object.__new__(type(data))
        d.obs = dict(zip(mods, args[: len(mods)]))
        d.mask = dict(zip(mods, args[len(mods): 2 * len(mods)]))
        d.lengths, d.labels, d.meta = args[-1], {}, {}
        return d

    # JIT ELBOs find the parameters through param sites: register the networks with pyro.module
    def jit_model(*args, program="vectorized"):
        pyro.module("mvrnn", model.net)
        return model.model(rebuild(args), program=program)

    def jit_guide(*args, program="vectorized"):
        pyro.module("mvrnn", model.net)
        return model.guide(rebuild(args), program=program)

    losses = {
        "mmpgm": lambda: elbos["mmpgm"].differentiable_loss(model.model, model.guide, data),
        "mmpgm_no_pyro": lambda: -model.sequence_elbo(data).sum(),
        "torch_plain": lambda: plain_loss(model.net, xs, masks, model.net.draw_noise(T, N)),
        "mmpgm_jit": lambda: elbos["mmpgm_jit"].differentiable_loss(jit_model, jit_guide, *flat),
    }
    for k in ("pyro_jit_trace_elbo", "pyro_jit_meanfield_elbo"):
        losses[k] = (lambda e: lambda: e.differentiable_loss(jit_model, jit_guide, *flat, program="sites"))(elbos[k])
    for k in ("pyro_trace_elbo", "pyro_meanfield_elbo"):
        losses[k] = (lambda e: lambda: e.differentiable_loss(model.model, model.guide, data, program="sites"))(elbos[k])
    fns = {k: step(losses[k]) for k in impls if k in losses}

    # agreement under the same noise (before any optimizer step changes the parameters)
    agreement, extra = {}, {}
    with torch.no_grad():
        pyro.set_rng_seed(0)
        ref = float(losses["mmpgm"]())
        if "mmpgm_no_pyro" in impls:
            pyro.set_rng_seed(0)
            agreement["mmpgm_no_pyro"] = rel_diff(float(losses["mmpgm_no_pyro"]()), ref)
        if "torch_plain" in impls:
            pyro.set_rng_seed(0)
            agreement["torch_plain"] = rel_diff(float(losses["torch_plain"]()), ref)
    if "pyro_meanfield_elbo" in impls:
        # the site program's guide draws its own noise; give mmpgm the same latents instead
        pyro.set_rng_seed(0)
        with torch.no_grad():
            mf = float(TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, data, program="sites"))
            pyro.set_rng_seed(0)
            tr = pyro.poutine.trace(model.guide).get_trace(data, program="sites")
            lat = {b: torch.stack([tr.nodes[f"z_{b}_{t}"]["value"] for t in range(T)]) for b in model.blocks}
            ref_lat = float(-model.sequence_elbo(data, latents=lat).sum())
        agreement["pyro_meanfield_elbo"] = rel_diff(mf, ref_lat)
    if "pyro_trace_elbo" in impls and agree_draws:
        with torch.no_grad():
            a = b = 0.0
            for s in range(agree_draws):
                pyro.set_rng_seed(100 + s)
                a += float(Trace_ELBO().differentiable_loss(model.model, model.guide, data, program="sites"))
                pyro.set_rng_seed(100 + s)
                b += float(losses["mmpgm"]())
        agreement["pyro_trace_elbo"] = rel_diff(a, b)
        extra["pyro_trace_elbo_agreement_draws"] = agree_draws

    compile_s = {}

    def _alarm(signum, frame):
        raise TimeoutError(f"compile exceeded --jit-budget-s {jit_budget_s:.0f} s")

    for k in [k for k in fns if "jit" in k]:  # compile outside the timed region
        t0 = time.perf_counter()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(jit_budget_s)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(3):  # trace, then the profiling executor's optimizing runs
                    fns[k]()
            compile_s[k] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            compile_s[k] = f"{type(e).__name__}: {e}"[:200]
            fns.pop(k)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timing = time_interleaved(fns, repeats=repeats, warmup=1, budget_s=budget_s)
    median_s = {k: v["median_s"] for k, v in timing.items() if "median_s" in v}
    errors = {k: v["error"] for k, v in timing.items() if "error" in v}
    peak = {}
    for k, fn in fns.items():
        if k in median_s:
            with PeakRSS() as pr:
                fn()
            peak[k] = pr.extra_mib
    base = median_s.get("mmpgm")
    speedup = {k: v / base for k, v in median_s.items() if k != "mmpgm" and base}
    rec = {
        "benchmark": "mvrnn_speed",
        "config": {"name": cfg["name"], "N": N, "T": T, "modalities": len(cfg["dims"]), "dims": list(cfg["dims"]),
                   "hidden_dim": cfg["hidden"], "shared_dim": cfg["latent"], "private_dim": cfg["latent"],
                   "dtype": "float32", "step": "zero_grad + loss + backward + Adam"},
        "median_s": median_s,
        "speedup": speedup,
        "peak_mib": peak,
        "peak_method": "in-process, after the timed calls (under-reports: freed memory is reused)",
        "agreement": agreement,
        "compile_s": compile_s,
        "times_s": {k: v.get("times_s") for k, v in timing.items()},
        "loss": ref,
        "env": env_info({"torch_threads_requested": torch.get_num_threads()}),
    }
    if "torch_plain" in median_s and base:
        rec["ratio_to_torch_plain"] = base / median_s["torch_plain"]
    if errors:
        rec["errors"] = errors
    rec.update(extra)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny size, for smoke tests (< 30 s)")
    ap.add_argument("--impls", default=None, help=f"comma-separated subset of {IMPLS} (default: all, "
                    "except the site-program JIT variants at full size)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = library default)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: model, data and "
                    "every implementation (all are torch) run there")
    ap.add_argument("--agree-draws", type=int, default=None)
    ap.add_argument("--jit-budget-s", type=float, default=None,
                    help="give up compiling a JIT variant after this long (default 120, quick 20)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS["quick" if args.quick else "D"]
    skipped = {}
    if args.impls is None:
        impls = list(IMPLS)
        if not args.quick:
            skipped = dict(SLOW_AT_FULL_SIZE)
            impls = [k for k in impls if k not in skipped]
    else:
        impls = [s for s in args.impls.split(",") if s]
    unknown = set(impls) - set(IMPLS)
    if unknown:
        ap.error(f"--impls: unknown {sorted(unknown)}; known {IMPLS}")
    repeats = args.repeats or (3 if args.quick else 7)
    budget = args.budget_s or (3.0 if args.quick else 20.0)
    draws = args.agree_draws if args.agree_draws is not None else (4 if args.quick else 8)
    jit_budget = args.jit_budget_s or (20.0 if args.quick else 120.0)
    try:
        device = check_device(args.device)
    except ValueError as e:
        ap.error(str(e))
    rec = run_config(cfg, impls, repeats, budget, draws, jit_budget, device=device)
    rec.setdefault("config", {})["device"] = device
    if skipped:
        rec["skipped"] = skipped
    emit(rec)
    ms = rec["median_s"]
    print("  ".join(f"{k}={v * 1e3:.1f}ms" for k, v in ms.items()), file=sys.stderr)
    if "ratio_to_torch_plain" in rec:
        print(f"mmpgm / torch_plain = {rec['ratio_to_torch_plain']:.2f}x; agreement {rec['agreement']}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
