"""``mmpgm.fit`` and ``mmpgm.infer``: the two entry points every model shares."""

from __future__ import annotations

import copy

import pyro

from .data import MultimodalData
from .inference.em import fit_em
from .inference.result import FitResult
from .inference.svi import fit_svi

__all__ = ["fit", "infer"]

_METHODS = ("svi", "em")


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def fit(
    model,
    data: MultimodalData,
    *,
    method: str = "svi",
    num_steps: int | None = None,
    lr: float = 0.05,
    batch_size: int | None = None,
    seed: int = 0,
    clip_norm: float | None = 10.0,
    patience: int | None = None,
    tol: float | None = None,
    num_restarts: int = 1,
    init: str = "auto",
    enumerate: bool = False,
    elbo=None,
    checkpoint: str | None = None,
    checkpoint_every: int = 50,
    progress: bool | None = None,
) -> FitResult:
    """Fit ``model`` to ``data`` (MAP point estimate of the parameters).

    Parameters
    ----------
    model : PyroModule
        A model with ``model(data)``/``guide(data)`` (e.g. :class:`mmpgm.MultimodalHMM`).
    data : MultimodalData
    method : {"svi", "em"}
        ``"svi"``: Adam on ``Trace_ELBO`` of the collapsed program (exact marginal likelihood,
        the default fast path), or ``TraceEnum_ELBO`` over the enumerated program with
        ``enumerate=True``. ``"em"``: closed-form Baum-Welch / MAP-EM where the model has it.
    num_steps : int
        Maximum optimizer steps (epochs when ``batch_size`` is set) or EM iterations.
        Default 1000 (svi) or 200 (em).
    lr, clip_norm : float
        Adam learning rate; gradient-norm clipping (None = off).
    batch_size : int, optional
        Sequences per minibatch (the likelihood is rescaled to the full data set).
    seed : int
        Seeds Pyro/torch, the data-driven initialization and minibatch order: same seed, same result.
    patience, tol : early stopping: stop when the loss per frame has not improved by ``tol``
        for ``patience`` steps (0 = never stop early). Defaults: svi 100 / 1e-4, em 5 / 1e-6.
    num_restarts : int
        Fit from this many data-driven initializations (seeds ``seed .. seed+R-1``) and keep the
        best final loss.
    elbo : pyro.infer.ELBO, optional
        The ELBO for ``method="svi"``; default ``model.default_elbo()`` when the model defines
        it, else ``Trace_ELBO`` (``TraceEnum_ELBO`` with ``enumerate=True``).
    init : {"auto", "data", "none"}
        ``"auto"`` initializes from data on the first fit of a model only.
    checkpoint : str, optional
        Path of a checkpoint file (svi): saved every ``checkpoint_every`` steps and resumed from
        when it exists.
    progress : bool, optional
        tqdm progress bar; default on only when stderr is a terminal.

    Returns
    -------
    FitResult
    """
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if init not in ("auto", "data", "none"):
        raise ValueError(f"init: expected 'auto', 'data' or 'none', got {init!r}")
    num_steps = num_steps if num_steps is not None else (1000 if method == "svi" else 200)
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("batch_size", batch_size, allow_none=True)
    _check_positive_int("num_restarts", num_restarts)
    if not lr > 0:
        raise ValueError(f"lr: expected a positive float, got {lr!r}")
    if method == "em" and (batch_size is not None or enumerate or checkpoint is not None):
        raise ValueError("method='em': batch_size, enumerate and checkpoint apply to method='svi' only")
    if patience is None:
        patience = 100 if method == "svi" else 5
    elif patience == 0:
        patience = None  # early stopping off
    if tol is None:
        tol = 1e-4 if method == "svi" else 1e-6
    if hasattr(model, "check_data"):
        data = model.check_data(data)

    do_init = init == "data" or (init == "auto" and not getattr(model, "_mmpgm_fitted", False))
    if checkpoint is not None and num_restarts > 1:
        raise ValueError("checkpoint: not supported with num_restarts > 1")
    start_state = copy.deepcopy(model.state_dict())
    best = None
    for r in range(num_restarts):
        pyro.set_rng_seed(seed + r)
        if r > 0:
            model.load_state_dict(start_state)
        if do_init and hasattr(model, "init_from_data"):
            model.init_from_data(data, seed=seed + r)
        if method == "em":
            result = fit_em(model, data, num_steps=num_steps, patience=patience, tol=tol, progress=progress)
        else:
            result = fit_svi(
                model, data, num_steps=num_steps, lr=lr, batch_size=batch_size, seed=seed + r,
                clip_norm=clip_norm, patience=patience, tol=tol, progress=progress,
                checkpoint=checkpoint, checkpoint_every=checkpoint_every, enumerate=enumerate,
                elbo=elbo if elbo is not None else (
                    model.default_elbo() if hasattr(model, "default_elbo") and not enumerate else None),
            )
        if best is None or result.final_loss < best[0].final_loss:
            best = (result, copy.deepcopy(model.state_dict()) if num_restarts > 1 else None)
    if num_restarts > 1:
        model.load_state_dict(best[1])
    model._mmpgm_fitted = True
    return best[0]


def infer(
    model,
    data: MultimodalData,
    *,
    causal: bool = False,
    num_samples: int = 0,
    seed: int | None = None,
    map_path: bool = True,
    num_param_samples: int = 0,
):
    """Posterior over the latent variables of ``data`` under a fitted ``model``.

    Parameters
    ----------
    causal : bool
        Filtered marginals :math:`p(z_t | x_{1:t})` (online, nothing from the future) instead of
        smoothed :math:`p(z_t | x_{1:T})`.
    num_samples : int
        Posterior state-path draws (forward-filter backward-sample), ``(S, N, T)`` per chain.
    seed : int, optional
        Seed of the path draws and of the parameter draws.
    map_path : bool
        Compute the joint MAP path (Viterbi).
    num_param_samples : int
        Parameter draws from a Laplace approximation of the parameter posterior (Gaussian in the
        unconstrained space at the MAP, diagonal Hessian); their per-sequence log-likelihoods fill
        ``Posterior.pointwise_log_likelihood`` so ``to_arviz()`` supports ``arviz.loo``.

    Returns
    -------
    Posterior
    """
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
    if not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples: expected a non-negative int, got {num_samples!r}")
    if not isinstance(num_param_samples, int) or num_param_samples < 0:
        raise ValueError(f"num_param_samples: expected a non-negative int, got {num_param_samples!r}")
    post = model.posterior(data, causal=causal, num_samples=num_samples, seed=seed, map_path=map_path)
    if num_param_samples:
        if "pointwise_log_likelihood" not in getattr(type(post), "_fields", ()):
            raise ValueError(
                f"num_param_samples: Laplace parameter draws are not available for "
                f"{type(model).__name__} (its posterior has no pointwise log-likelihood; a "
                f"diagonal Laplace over neural-network weights is not a useful posterior), got "
                f"{num_param_samples}; use 0"
            )
        from .inference.laplace import laplace_log_likelihood_draws

        draws = laplace_log_likelihood_draws(model, data, num_param_samples, seed=seed)
        post = post._replace(pointwise_log_likelihood=draws)
    return post
