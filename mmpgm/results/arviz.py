"""Every conversion of an mmpgm result to :class:`arviz.InferenceData`, in one module.

Written against the 0.2x ``InferenceData`` API that installs on Python 3.10-3.11 (ArviZ 1.x
moves to ``xarray.DataTree``; only this module would change). The result types' ``to_arviz()``
methods call the functions here; nothing else in the package imports ArviZ.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import torch

from ._padding import mask_padding

__all__ = [
    "hmm_posterior_to_arviz",
    "lds_posterior_to_arviz",
    "mixture_posterior_to_arviz",
    "mvrnn_posterior_to_arviz",
    "mvrnn_imputation_to_arviz",
    "parameter_chains_to_arviz",
    "loo",
    "ParetoKWarning",
]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _log_likelihood_group(post) -> dict:
    """``{"sequence_log_likelihood": (chain=1, draw, sequence)}`` under the Laplace parameter
    draws, or ``{}``: one point estimate is not a pointwise posterior quantity, and
    :func:`arviz.loo` on it would fail inside ArviZ (it then says the group is missing)."""
    if getattr(post, "pointwise_log_likelihood", None) is None:
        return {}
    return {"sequence_log_likelihood": _np(post.pointwise_log_likelihood)[None]}


def _parameters(post) -> dict:
    """``parameter_samples`` (the Laplace draws) as ``(chain=1, draw, ...)`` arrays, or ``{}``."""
    drawn = getattr(post, "parameter_samples", None)
    return {k: _np(v)[None] for k, v in drawn.items()} if drawn else {}


def _assemble(posterior, latent_states, log_likelihood, constant, dims, coords, parameters=None):
    """One :class:`arviz.InferenceData` in the package's layout.

    ``posterior``: the parameter draws when there are any (``parameters``; the latent summaries
    then join ``latent_states``, whose draws are path draws, not parameter draws), else small
    per-sequence summaries of the latent draws (what :func:`arviz.summary` should see: a few
    rows per sequence, not one per frame); ``latent_states``: the full latent paths ``(chain,
    draw, sequence, time, ...)``; ``log_likelihood`` only when pointwise (Laplace parameter
    draws, whose total per draw fills ``posterior`` when nothing else does);
    ``constant_data``: marginals and moments.
    """
    if parameters:
        latent_states = {**latent_states, **posterior}
        posterior = parameters
    if not posterior and log_likelihood:  # ArviZ's loo needs a posterior group
        posterior = {"total_log_likelihood": sum(v.sum(-1) for v in log_likelihood.values())}
    idata = az.from_dict(
        posterior=posterior or None,
        log_likelihood=log_likelihood or None,
        constant_data=constant or None,
        dims=dims,
        coords=coords,
    )
    if latent_states:
        dataset = az.dict_to_dataset(latent_states, coords=coords, dims=dims)
        idata.add_groups({"latent_states": dataset})
    return idata


def _occupancy(paths: np.ndarray, lengths: torch.Tensor, num_values: int) -> np.ndarray:
    """``(S, N, T)`` paths (-1 on padding) -> ``(S, N, K)`` fraction of each sequence's frames
    spent in each value."""
    onehot = paths[..., None] == np.arange(num_values)
    return onehot.sum(-2) / np.maximum(_np(lengths), 1)[None, :, None]


def hmm_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of a :class:`mmpgm.results.Posterior` (see its ``to_arviz``)."""
    N, T = next(iter(post.marginals.values())).shape[:2]
    dims, coords = {}, {"sequence": np.arange(N), "time": np.arange(T)}
    posterior, latent, constant = {}, {}, {}
    for name, p in post.marginals.items():
        value = f"{name}_value"
        coords[value] = np.arange(p.shape[-1])
        constant[f"{name}_marginal"] = _np(p)
        dims[f"{name}_marginal"] = ["sequence", "time", value]
    paths = post.samples if post.samples is not None else post.map
    if paths is not None:
        for name, z in paths.items():
            draws = z if post.samples is not None else z[None]  # (S, N, T)
            masked = mask_padding(draws, post.lengths, time_dim=-1, fill=-1)
            latent[f"{name}_state"] = masked[None]
            dims[f"{name}_state"] = ["sequence", "time"]
            K = post.marginals[name].shape[-1]
            posterior[f"{name}_occupancy"] = _occupancy(masked, post.lengths, K)[None]
            dims[f"{name}_occupancy"] = ["sequence", f"{name}_value"]
    ll = _log_likelihood_group(post)
    dims["sequence_log_likelihood"] = ["sequence"]
    return _assemble(posterior, latent, ll, constant, dims, coords, _parameters(post))


def lds_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of an :class:`mmpgm.results.LDSPosterior`."""
    N, T, S = post.state_mean.shape
    coords = {"sequence": np.arange(N), "time": np.arange(T), "latent": post.latent_names()}
    dims = {
        "state": ["sequence", "time", "latent"],
        "state_time_mean": ["sequence", "latent"],
        "state_mean": ["sequence", "time", "latent"],
        "state_sd": ["sequence", "time", "latent"],
        "sequence_log_likelihood": ["sequence"],
    }
    if post.samples is not None:
        paths = post.samples
    else:
        paths = (post.map if post.map is not None else post.state_mean)[None]
    sd = post.state_covariance.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    nan = float("nan")
    states = mask_padding(paths, post.lengths, time_dim=-2, fill=nan)  # (S, N, T, latent)
    return _assemble(
        {"state_time_mean": np.nanmean(states, axis=-2)[None]},
        {"state": states[None]},
        _log_likelihood_group(post),
        {
            "state_mean": mask_padding(post.state_mean, post.lengths, time_dim=-2, fill=nan),
            "state_sd": mask_padding(sd, post.lengths, time_dim=-2, fill=nan),
        },
        dims,
        coords,
        _parameters(post),
    )


def mixture_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of a :class:`mmpgm.results.MixturePosterior`."""
    N, T, M = post.gate_weights.shape
    coords = {"sequence": np.arange(N), "time": np.arange(T), "expert": list(post.modalities)}
    dims = {
        "gate_weights": ["sequence", "time", "expert"],
        "responsibilities": ["sequence", "time", "expert"],
        "sequence_log_likelihood": ["sequence"],
    }
    constant = {
        "gate_weights": _np(post.gate_weights),
        "responsibilities": _np(post.responsibilities),
        "expert_predictions": _np(post.expert_predictions),
        "predictive": _np(post.predictive),
    }
    if post.expert_predictions.dim() == 4:
        last = "frequency" if post.head == "ratio_mask" else "class"
        dims["expert_predictions"] = ["sequence", "time", "expert", last]
        dims["predictive"] = ["sequence", "time", last]
        coords[last] = np.arange(post.expert_predictions.shape[-1])
    else:
        dims["expert_predictions"] = ["sequence", "time", "expert"]
        dims["predictive"] = ["sequence", "time"]
    draws = (
        post.samples
        if post.samples is not None
        else (post.map[None] if post.map is not None else None)
    )
    posterior, latent = {}, {}
    if draws is not None:
        masked = mask_padding(draws, post.lengths, time_dim=-1, fill=-1)
        latent["expert"] = masked[None]
        dims["expert"] = ["sequence", "time"]
        posterior["expert_occupancy"] = _occupancy(masked, post.lengths, M)[None]
        dims["expert_occupancy"] = ["sequence", "expert"]
    return _assemble(posterior, latent, _log_likelihood_group(post), constant, dims, coords)


def mvrnn_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of an :class:`mmpgm.results.MVRNNPosterior`."""
    N, T = post.elbo.shape
    coords = {"sequence": np.arange(N), "time": np.arange(T)}
    dims, posterior, latent, constant = {}, {}, {}, {}
    variance = post.variance
    for b, mu in post.mean.items():
        dim = f"z_{b}_dim"
        coords[dim] = np.arange(mu.shape[-1])
        draws = post.samples[b] if post.samples is not None else mu[None]
        masked = mask_padding(draws, post.lengths, time_dim=-2, fill=float("nan"))
        latent[f"z_{b}"] = masked[None]
        dims[f"z_{b}"] = ["sequence", "time", dim]
        posterior[f"z_{b}_time_mean"] = np.nanmean(masked, axis=-2)[None]
        dims[f"z_{b}_time_mean"] = ["sequence", dim]
        sd = variance[b].clamp_min(0).sqrt()
        for key, val in ((f"z_{b}_mean", mu), (f"z_{b}_sd", sd)):
            constant[key] = _np(val)
            dims[key] = ["sequence", "time", dim]
        constant[f"kl_{b}"] = _np(post.kl[b])
        dims[f"kl_{b}"] = ["sequence", "time"]
    constant["elbo"] = _np(post.elbo)
    dims["elbo"] = ["sequence", "time"]
    for m, r in post.reconstruction.items():
        constant[f"reconstruction_{m}"] = _np(r)
        constant[f"observed_{m}"] = _np(post.mask[m])
        dims[f"reconstruction_{m}"] = dims[f"observed_{m}"] = ["sequence", "time"]
    # the per-sequence ELBO is a bound at one set of weights, not a pointwise log-likelihood
    # under posterior draws: it goes to constant_data, and there is no log_likelihood group
    constant["sequence_elbo"] = _np(post.elbo.sum(-1))
    dims["sequence_elbo"] = ["sequence"]
    return _assemble(posterior, latent, {}, constant, dims, coords)


def mvrnn_imputation_to_arviz(imputation) -> az.InferenceData:
    """``posterior_predictive`` group with ``x`` of dims ``(chain, draw, sequence, time,
    feature)``."""
    return az.from_dict(
        posterior_predictive={"x": _np(imputation.samples)[None]},
        dims={"x": ["sequence", "time", "feature"]},
    )


def parameter_chains_to_arviz(chains: list) -> az.InferenceData:
    """Stack per-chain parameter draws as ArviZ chains.

    Parameters
    ----------
    chains : list of dict
        One dict per chain, name -> ``(num_draws, ...)`` numpy array; every chain has the same
        names and shapes.
    """
    posterior = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
    return az.from_dict(posterior=posterior)


class ParetoKWarning(UserWarning):
    r"""PSIS-LOO is unreliable for some sequences (Pareto shape :math:`\hat k` above ArviZ's
    threshold): leaving one of them out moves the posterior too much for importance sampling."""


def loo(result, *, warn: bool = True):
    r"""PSIS-LOO (:func:`arviz.loo`, pointwise) of a result's ``to_arviz()``, with the Pareto-k
    diagnostic surfaced.

    Parameters
    ----------
    result : a result type with ``to_arviz()``, or an :class:`arviz.InferenceData`
        Needs a ``log_likelihood`` group: per-sequence log-likelihoods under parameter draws
        (``mmpgm.infer(model, data, num_param_samples=S)``, on the data the model was fitted
        to).
    warn : bool
        Emit a :class:`ParetoKWarning` naming how many sequences have a bad :math:`\hat k`.

    Returns
    -------
    arviz.ELPDData
        ArviZ's result (``elpd_loo``, ``se``, ``p_loo``, ``pareto_k`` ...).

    Raises
    ------
    ValueError
        When there is no ``log_likelihood`` group, naming how to get one.
    """
    idata = result if isinstance(result, az.InferenceData) else result.to_arviz()
    if "log_likelihood" not in idata.groups():
        raise ValueError(
            "result: PSIS-LOO needs per-sequence log-likelihoods under parameter draws, and this "
            "result has none; use mmpgm.infer(model, data, num_param_samples=200) on the "
            "training data (neural models have no Laplace draws), or compare on held-out "
            "sequences with mmpgm.diagnostics.held_out_comparison"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        out = az.loo(idata, pointwise=True)
    k = np.asarray(out.pareto_k).reshape(-1)
    threshold = float(getattr(out, "good_k", 0.7) or 0.7)
    bad = int((k > threshold).sum())
    if warn and bad:
        warnings.warn(
            f"loo: Pareto k > {threshold:.2f} for {bad} of {k.size} sequences, so the PSIS-LOO "
            "estimate is unreliable (leaving out one long sequence moves the parameter posterior "
            "far). Compare on held-out sequences (mmpgm.diagnostics.held_out_comparison) or "
            "with BIC (mmpgm.diagnostics.information_criteria) instead",
            ParetoKWarning,
            stacklevel=2,
        )
    return out
