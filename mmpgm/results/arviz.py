"""Every conversion of an mmpgm result to :class:`arviz.InferenceData`, in one module.

Written against the 0.2x ``InferenceData`` API that installs on Python 3.10-3.11 (ArviZ 1.x
moves to ``xarray.DataTree``; only this module would change). The result types' ``to_arviz()``
methods call the functions here; nothing else in the package imports ArviZ.
"""

from __future__ import annotations

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
]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _sequence_log_likelihood(post) -> np.ndarray:
    """``(chain=1, draw, sequence)``: the Laplace parameter draws when present, else one draw."""
    if getattr(post, "pointwise_log_likelihood", None) is not None:
        return _np(post.pointwise_log_likelihood)[None]
    return _np(post.log_likelihood)[None, None]


def hmm_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of a :class:`mmpgm.results.Posterior` (see its ``to_arviz``)."""
    N, T = next(iter(post.marginals.values())).shape[:2]
    posterior, dims, coords = {}, {}, {"sequence": np.arange(N), "time": np.arange(T)}
    paths = post.samples if post.samples is not None else post.map
    if paths is not None:
        for name, z in paths.items():
            draws = z if post.samples is not None else z[None]  # (S, N, T)
            posterior[f"{name}_state"] = mask_padding(draws, post.lengths, time_dim=-1, fill=-1)[
                None
            ]
            dims[f"{name}_state"] = ["sequence", "time"]
    constant = {}
    for name, p in post.marginals.items():
        key = f"{name}_marginal"
        constant[key] = _np(p)
        dims[key] = ["sequence", "time", f"{name}_value"]
        coords[f"{name}_value"] = np.arange(p.shape[-1])
    ll = _sequence_log_likelihood(post)
    dims["sequence_log_likelihood"] = ["sequence"]
    if not posterior:  # arviz needs a posterior group for some functions; give the draws index
        posterior = {"log_likelihood_draw": ll.sum(-1)}
    return az.from_dict(
        posterior=posterior,
        log_likelihood={"sequence_log_likelihood": ll},
        constant_data=constant,
        dims=dims,
        coords=coords,
    )


def lds_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of an :class:`mmpgm.results.LDSPosterior`."""
    N, T, S = post.state_mean.shape
    coords = {"sequence": np.arange(N), "time": np.arange(T), "latent": post.latent_names()}
    dims = {
        "state": ["sequence", "time", "latent"],
        "state_mean": ["sequence", "time", "latent"],
        "state_sd": ["sequence", "time", "latent"],
        "sequence_log_likelihood": ["sequence"],
    }
    if post.samples is not None:
        paths = post.samples
    else:
        paths = (post.map if post.map is not None else post.state_mean)[None]
    sd = post.state_cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    nan = float("nan")
    return az.from_dict(
        posterior={"state": mask_padding(paths, post.lengths, time_dim=-2, fill=nan)[None]},
        log_likelihood={"sequence_log_likelihood": _sequence_log_likelihood(post)},
        constant_data={
            "state_mean": mask_padding(post.state_mean, post.lengths, time_dim=-2, fill=nan),
            "state_sd": mask_padding(sd, post.lengths, time_dim=-2, fill=nan),
        },
        dims=dims,
        coords=coords,
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
    ll = _np(post.log_likelihood)[None, None]
    draws = (
        post.samples
        if post.samples is not None
        else (post.map[None] if post.map is not None else None)
    )
    if draws is not None:
        posterior = {"expert": mask_padding(draws, post.lengths, time_dim=-1, fill=-1)[None]}
        dims["expert"] = ["sequence", "time"]
    else:
        posterior = {"log_likelihood_draw": ll.sum(-1)}
    return az.from_dict(
        posterior=posterior,
        log_likelihood={"sequence_log_likelihood": ll},
        constant_data=constant,
        dims=dims,
        coords=coords,
    )


def mvrnn_posterior_to_arviz(post) -> az.InferenceData:
    """:class:`arviz.InferenceData` of an :class:`mmpgm.results.MVRNNPosterior`."""
    N, T = post.elbo.shape
    coords = {"sequence": np.arange(N), "time": np.arange(T)}
    dims, posterior, constant = {}, {}, {}
    for b, mu in post.mean.items():
        dim = f"z_{b}_dim"
        coords[dim] = np.arange(mu.shape[-1])
        draws = post.samples[b] if post.samples is not None else mu[None]
        posterior[f"z_{b}"] = mask_padding(draws, post.lengths, time_dim=-2, fill=float("nan"))[
            None
        ]
        dims[f"z_{b}"] = ["sequence", "time", dim]
        for key, val in ((f"z_{b}_mean", mu), (f"z_{b}_scale", post.scale[b])):
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
    dims["sequence_elbo"] = ["sequence"]
    return az.from_dict(
        posterior=posterior,
        log_likelihood={"sequence_elbo": _sequence_log_likelihood(post)},
        constant_data=constant,
        dims=dims,
        coords=coords,
    )


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
