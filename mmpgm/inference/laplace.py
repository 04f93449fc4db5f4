"""Approximate parameter-posterior draws around the MAP, for model comparison with ArviZ.

The exact factorial log-likelihood has a hand-written first-order backward pass only, so the
curvature is estimated by the outer product of per-sequence scores (the empirical Fisher
information, diagonal) in the unconstrained parameter space, plus a unit ridge standing in for
the prior's curvature:  ``theta ~ N(theta_MAP, diag(sum_n g_n^2 + 1)^-1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def _unconstrained(model):
    return [p for p in model.parameters() if p.requires_grad]


def parameter_precision(model, data) -> list:
    """Diagonal precision (per parameter tensor) of the Laplace/OPG approximation."""
    data = model.check_data(data)
    params = _unconstrained(model)
    fisher = [torch.zeros_like(p) for p in params]
    for n in range(data.num_sequences):
        ll = model.log_likelihood(data[n]).sum()
        grads = torch.autograd.grad(ll, params, allow_unused=True)
        for f, g in zip(fisher, grads, strict=False):
            if g is not None:
                f.add_(g.detach() ** 2)
    return [f + 1.0 for f in fisher]


def parameter_draws(model, data, num_param_samples: int, seed: int | None = None):
    """Yield ``num_param_samples`` times with the model's parameters set to a Laplace draw (restored
    after)."""
    params = _unconstrained(model)
    precision = parameter_precision(model, data)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    saved = [p.detach().clone() for p in params]
    try:
        for _ in range(num_param_samples):
            with torch.no_grad():
                for p, m, prec in zip(params, saved, precision, strict=False):
                    eps = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
                    p.copy_(m + eps / prec.sqrt())
            yield
    finally:
        with torch.no_grad():
            for p, m in zip(params, saved, strict=False):
                p.copy_(m)


def laplace_log_likelihood_draws(
    model, data, num_param_samples: int, seed: int | None = None
) -> torch.Tensor:
    """``(num_param_samples, N)`` per-sequence log-likelihoods under Laplace parameter draws
    (the ``log_likelihood`` of :func:`laplace_draws`)."""
    return laplace_draws(model, data, num_param_samples, seed).log_likelihood


class LaplaceDraws(NamedTuple):
    """log_likelihood : ``(S, N)`` per-sequence log-likelihoods under ``S`` parameter draws;
    parameters : dict name -> ``(S, ...)`` the drawn parameters in their natural (constrained)
    form (:func:`flatten_params` of ``model.params``), empty for a model without ``params``."""

    log_likelihood: torch.Tensor
    parameters: dict


def flatten_params(params, prefix: str = "") -> dict:
    """A model's ``params`` (a NamedTuple of tensors and dicts of tensors, nested) as one flat
    dict ``"field.key.subkey" -> tensor``; None entries are left out."""
    out = {}
    items = params._asdict().items() if hasattr(params, "_asdict") else params.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value.detach()
        elif isinstance(value, dict) or hasattr(value, "_asdict"):
            out.update(flatten_params(value, prefix=f"{name}."))
    return out


def laplace_draws(model, data, num_param_samples: int, seed: int | None = None) -> LaplaceDraws:
    """Per-sequence log-likelihoods and the parameters themselves under ``num_param_samples``
    Laplace draws (:func:`parameter_draws`)."""
    lls, drawn = [], []
    has_params = hasattr(type(model), "params")
    for _ in parameter_draws(model, data, num_param_samples, seed):
        with torch.no_grad():
            lls.append(model.log_likelihood(data).detach())
            drawn.append(flatten_params(model.params) if has_params else {})
    parameters = {k: torch.stack([d[k] for d in drawn]) for k in drawn[0]} if drawn else {}
    return LaplaceDraws(torch.stack(lls), parameters)
