"""The implementations timed by ``hmm_speed.py``: one builder per name, in :data:`BUILDERS`.

A builder takes the :class:`Problem` (model, data, configuration, options and the sizes derived
from them) and the implementation's name, and returns ``(run, extra)``: ``run()`` does one
log-likelihood (+ gradient) evaluation and returns the total log-likelihood as a float;
``extra`` holds e.g. the compile time. A builder raises :class:`Skip` (with the reason) for an
implementation that cannot or should not run on the configuration.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BUILDERS", "Problem", "Skip", "build_impl", "product_size", "zero_grads"]


class Skip(Exception):
    """An implementation that cannot or should not run on this configuration (reason)."""


def product_size(cfg) -> int:
    return cfg["K_s"] * cfg["K_m"] ** len(cfg["dims"])


class Problem(NamedTuple):
    """What every builder reads: ``P`` product states, ``dense_work = P^2 N T``."""

    model: object
    data: object
    cfg: dict
    opts: object
    P: int
    N: int
    T: int
    dense_work: int
    names: list
    sizes: tuple

    @classmethod
    def make(cls, model, data, cfg, opts):
        P, N, T = product_size(cfg), cfg["N"], cfg["T"]
        names = list(model.modalities)
        return cls(model, data, cfg, opts, P, N, T, P * P * N * T, names, model.chain_sizes)


def _kron_t(mats):
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


def product_emission_params(params, names, sizes):
    """Per-product-state ``(P, sum D)`` means and scales: modality ``m`` depends on
    ``(shared, private_m)``; the product index is row-major over ``(K_s, K_1..K_M)``."""
    M = len(names)
    locs, scales = [], []
    for i, m in enumerate(names):
        for src, out in ((params["loc"][m], locs), (params["scale"][m], scales)):
            D = src.shape[-1]
            shape = [sizes[0]] + [1] * M + [D]
            shape[1 + i] = sizes[1 + i]
            out.append(src.reshape(shape).expand(tuple(sizes) + (D,)))
    P = math.prod(sizes)
    return torch.cat(locs, -1).reshape(P, -1), torch.cat(scales, -1).reshape(P, -1)


def _leaf_params(model):
    """Constrained parameter values as fresh float64 leaves (requires_grad) for the peers."""
    prm = model.params
    names = list(model.modalities)
    leaf = lambda t: t.detach().clone().requires_grad_(True)  # noqa: E731
    return {
        "init": [leaf(prm.shared_initial_probs)] + [leaf(prm.private_initial_probs[m]) for m in names],
        "trans": [leaf(prm.shared_transition_probs)] + [leaf(prm.private_transition_probs[m]) for m in names],
        "loc": {m: leaf(prm.emissions[m]["loc"]) for m in names},
        "scale": {m: leaf(prm.emissions[m]["scale"]) for m in names},
    }


def zero_grads(tensors):
    """Drop the ``.grad`` of leaf tensors before the next backward."""
    for t in tensors:
        t.grad = None


# --------------------------------------------------------------------------- builders
def _build_mmpgm(p, name):
    """``MultimodalHMM.log_likelihood(data).sum().backward()``."""
    model, data = p.model, p.data

    def run():
        model.zero_grad(set_to_none=True)
        ll = model.log_likelihood(data).sum()
        ll.backward()
        return ll.item()

    return run, {}


def _build_mmpgm_transition(p, name):
    """The full path with the joint transition forced dense / chain-wise by keyword."""
    model, data, opts = p.model, p.data, p.opts
    if name == "mmpgm_dense" and p.dense_work > opts.max_dense_work:
        raise Skip(f"P^2*N*T = {p.dense_work:.2e} > --max-dense-work {opts.max_dense_work:.0e}")
    from mmpgm.ops.hmm import factorial_log_likelihood

    transition = "dense" if name == "mmpgm_dense" else "chainwise"
    data = model.check_data(data)
    chains = [model.shared_chain] + [model.private_chains[m] for m in model.modalities]

    def run():
        # MultimodalHMM.log_likelihood (emission log-probs and chain probabilities from the
        # model's parameters) with the transition chosen by keyword
        model.zero_grad(set_to_none=True)
        ll = factorial_log_likelihood(
            [c.initial_probs for c in chains],
            [c.transition_probs for c in chains],
            model.log_emissions(data),
            transition=transition,
        ).sum()
        ll.backward()
        return ll.item()

    return run, {}


def _build_mmpgm_ops(p, name):
    """Only the ops' log-likelihood + backward, on precomputed ``log_emissions``."""
    model, data = p.model, p.data
    from mmpgm.ops.hmm import factorial_log_likelihood

    lp = _leaf_params(model)
    with torch.no_grad():
        logE = model.log_emissions(data).detach().contiguous().clone()
    logE.requires_grad_(True)
    leaves = lp["init"] + lp["trans"] + [logE]

    def run():
        zero_grads(leaves)
        ll = factorial_log_likelihood(lp["init"], lp["trans"], logE).sum()
        ll.backward()
        return ll.item()

    return run, {}


def _build_hmmlearn(p, name):
    """hmmlearn's ``GaussianHMM.score`` on the flattened product-state model (no gradient)."""
    model, data, opts = p.model, p.data, p.opts
    P, N, T, names, sizes, dense_work = p.P, p.N, p.T, p.names, p.sizes, p.dense_work
    if dense_work > opts.max_dense_work:
        est = dense_work * (4.7e-9 if name == "hmmlearn_log" else 1.3e-9)
        raise Skip(
            f"P^2*N*T = {dense_work:.2e} > --max-dense-work {opts.max_dense_work:.0e} "
            f"(its product-space forward would take ~{est:.0f} s here)"
        )
    try:
        from hmmlearn.hmm import GaussianHMM
    except ImportError as e:
        raise Skip(f"hmmlearn not importable: {e}") from None
    prm = model.params
    with torch.no_grad():
        loc, scale = product_emission_params(
            {
                "loc": {m: prm.emissions[m]["loc"] for m in names},
                "scale": {m: prm.emissions[m]["scale"] for m in names},
            },
            names,
            sizes,
        )
        start = _kron_t([prm.shared_initial_probs[None]] + [prm.private_initial_probs[m][None] for m in names])[
            0
        ]
        trans = _kron_t([prm.shared_transition_probs] + [prm.private_transition_probs[m] for m in names])
    impl = name.split("_", 1)[1]
    hmm = GaussianHMM(
        n_components=P, covariance_type="diag", implementation=impl, init_params="", params=""
    )
    hmm.n_features = loc.shape[1]
    hmm.startprob_ = start.numpy().copy()
    hmm.transmat_ = trans.numpy().copy()
    hmm.means_ = loc.numpy().copy()
    hmm.covars_ = (scale**2).numpy().copy()
    X = torch.cat([data.obs[m] for m in names], -1).reshape(N * T, -1).numpy().astype(np.float64)
    lengths = np.full(N, T)

    def run():
        return float(hmm.score(X, lengths))

    return run, {"gradient": False}


def _build_pyro_trace_enum(p, name):
    """``TraceEnum_ELBO`` over the enumerated program + backward."""
    model, data = p.model, p.data
    from pyro.infer import TraceEnum_ELBO

    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        log_prior = float(model.log_prior())

    def run():
        model.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(model.model, model.guide, data, program="enumerated")
        loss.backward()
        return -loss.item() - log_prior

    return run, {}


def _build_pyro_discrete_hmm(p, name):
    """``pyro.distributions.DiscreteHMM`` on the product space + backward."""
    opts, data = p.opts, p.data
    P, T, names, sizes, dense_work = p.P, p.T, p.names, p.sizes, p.dense_work
    model = p.model
    gib = dense_work * 8 / 2**30
    if gib > opts.max_discrete_hmm_gib:
        raise Skip(
            f"its (N, T, P, P) float64 tensor would take {gib:.1f} GiB "
            f"> --max-discrete-hmm-gib {opts.max_discrete_hmm_gib}"
        )
    import pyro.distributions as dist

    lp = _leaf_params(model)
    leaves = lp["init"] + lp["trans"] + list(lp["loc"].values()) + list(lp["scale"].values())
    x = torch.cat([data.obs[m] for m in names], -1)

    def run():
        zero_grads(leaves)
        init = _kron_t([p[None] for p in lp["init"]])[0]
        trans = _kron_t(lp["trans"])
        loc, scale = product_emission_params(lp, names, sizes)
        # The state before the first frame is integrated out through a first transition
        # whose rows are all the initial distribution.
        logits = torch.cat([init.log().expand(1, P, P), trans.log().expand(T - 1, P, P)], 0)
        d = dist.DiscreteHMM(
            torch.zeros(P, dtype=x.dtype), logits, dist.Normal(loc, scale).to_event(1)
        )
        ll = d.log_prob(x).sum()
        ll.backward()
        return ll.item()

    return run, {}


def _build_dynamax(p, name):
    """dynamax's ``hmm_filter``: jitted ``value_and_grad`` over a ``vmap`` over sequences."""
    model, data = p.model, p.data
    P, N, T, names, sizes = p.P, p.N, p.T, p.names, p.sizes
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from dynamax.hidden_markov_model.inference import hmm_filter
    except Exception as e:  # noqa: BLE001 - any import problem means: skip
        raise Skip(f"dynamax/jax not importable: {type(e).__name__}: {e}") from None
    prm = model.params
    xs = [jnp.asarray(data.obs[m].numpy()) for m in names]
    args = (
        [jnp.asarray(prm.shared_initial_probs.numpy())]
        + [jnp.asarray(prm.private_initial_probs[m].numpy()) for m in names],
        [jnp.asarray(prm.shared_transition_probs.numpy())]
        + [jnp.asarray(prm.private_transition_probs[m].numpy()) for m in names],
        [jnp.asarray(prm.emissions[m]["loc"].numpy()) for m in names],
        [jnp.asarray(prm.emissions[m]["scale"].numpy()) for m in names],
    )
    M = len(names)

    def total_ll(inits, transs, locs, scales):
        init = inits[0]
        trans = transs[0]
        for a, b in zip(inits[1:], transs[1:], strict=True):
            init = jnp.kron(init, a)
            trans = jnp.kron(trans, b)
        total = 0.0
        for i, (x, loc, scale) in enumerate(zip(xs, locs, scales, strict=True)):
            z = (x[:, :, None, None, :] - loc) / scale
            lp = (
                -0.5 * jnp.sum(z * z, -1)
                - jnp.sum(jnp.log(scale), -1)
                - 0.5 * x.shape[-1] * math.log(2 * math.pi)
            )
            shape = [N, T, sizes[0]] + [1] * M
            shape[3 + i] = sizes[1 + i]
            total = total + lp.reshape(shape)
        ll = jnp.broadcast_to(total, (N, T) + tuple(sizes)).reshape(N, T, P)
        per_seq = jax.vmap(lambda l: hmm_filter(init, trans, l).marginal_loglik)(ll)
        return per_seq.sum()

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(total_ll, argnums=(0, 1, 2, 3))).lower(*args).compile()
    compile_s = time.perf_counter() - t0

    def run():
        value, grads = compiled(*args)
        jax.block_until_ready(grads)
        return float(value)

    return run, {"compile_s": compile_s}


BUILDERS = {
    "mmpgm": _build_mmpgm,
    "mmpgm_ops": _build_mmpgm_ops,
    "mmpgm_dense": _build_mmpgm_transition,
    "mmpgm_factored": _build_mmpgm_transition,
    "hmmlearn_log": _build_hmmlearn,
    "hmmlearn_scaling": _build_hmmlearn,
    "pyro_trace_enum": _build_pyro_trace_enum,
    "pyro_discrete_hmm": _build_pyro_discrete_hmm,
    "dynamax": _build_dynamax,
}


def build_impl(name, model, data, cfg, opts):
    """``(run, extra)`` of implementation ``name`` (a key of :data:`BUILDERS`)."""
    if name not in BUILDERS:
        raise ValueError(f"name: expected one of {list(BUILDERS)}, got {name!r}")
    return BUILDERS[name](Problem.make(model, data, cfg, opts), name)
