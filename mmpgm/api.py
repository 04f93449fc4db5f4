"""``mmpgm.fit`` and ``mmpgm.infer``: the two entry points every model shares.

Both take a :class:`~mmpgm.models.MultimodalModel` and follow its protocol
(:mod:`mmpgm.models._base`): the data are validated once here (``model.check_data``) and the
checked data are passed down, ``program`` names one of ``model.PROGRAMS``.
"""

from __future__ import annotations

import copy
import warnings

import pyro
from pyro.infer import ELBO

from ._validation import check_bool, check_choice, check_float, check_int, check_output_path
from .data import MultimodalData
from .data_shards import ShardedData
from .inference.distributed import check_distributed
from .inference.em import check_em, fit_em
from .inference.result import RESTART_SPREAD_WARN, ConvergenceWarning, FitResult
from .inference.streaming import fit_em_stream, fit_svi_stream
from .inference.svi import fit_svi
from .models import MultimodalModel

__all__ = ["fit", "infer"]

_METHODS = ("svi", "em")


def _check_model(model) -> None:
    if not isinstance(model, MultimodalModel):
        raise TypeError(
            "model: expected an mmpgm model (a MultimodalModel: MultimodalHMM, MultimodalLDS, "
            f"MVRNN or GatedMixture), got {type(model).__name__}"
        )


def fit(
    model,
    data: MultimodalData,
    *,
    method: str = "svi",
    program: str | None = None,
    num_steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    clip_norm: float | None = 10.0,
    patience: int | None = None,
    tol: float | None = None,
    num_restarts: int = 1,
    init: str = "auto",
    elbo=None,
    checkpoint: str | None = None,
    checkpoint_every: int = 50,
    progress: bool | None = None,
    distributed: bool | str = False,
    chunk_size: int | None = None,
) -> FitResult:
    """Fit ``model`` to ``data`` (MAP point estimate of the parameters).

    Parameters
    ----------
    model : MultimodalModel
        :class:`mmpgm.MultimodalHMM`, :class:`mmpgm.MultimodalLDS`, :class:`mmpgm.MVRNN` or
        :class:`mmpgm.GatedMixture` (anything else raises ``TypeError``).
    data : MultimodalData or ShardedData
        Validated once here (``model.check_data``) and moved to the model's device and dtype.
        A :class:`~mmpgm.data_shards.ShardedData` corpus (``.npz`` shards, larger than memory)
        is streamed a few shards at a time and each part checked as it is read: EM (HMM, LDS)
        is exactly the in-memory EM; SVI is full-batch (gradients accumulated over the shards)
        without ``batch_size``, else minibatches drawn across shards; the data-driven start
        sees the first ``cache_shards`` shards; no ``checkpoint``
        (:mod:`mmpgm.inference.streaming`).
    method : {"svi", "em"}
        ``"svi"``: Adam on ``model.default_elbo(program)`` of the Pyro program ``program``.
        For :class:`~mmpgm.MultimodalHMM` (Gaussian emissions) and
        :class:`~mmpgm.MultimodalLDS` SVI standardizes internally
        (:mod:`mmpgm.inference.units`): the data-driven start and Adam run on the data shifted
        and scaled per feature (mean and standard deviation of the observed frames; the LDS
        scaled only), with the model and its priors re-expressed in those units, and the fitted
        model is mapped back to the data's units. The MAP problem is the same, so the fit does
        not depend on the units of the data (``x * 1e-8`` gives the fit of ``x`` scaled), and
        ``lr`` is a step in standard deviations. The MVRNN and the gated mixture are fitted in
        the data's units.
        ``"em"``: the model's EM: closed-form Baum-Welch / MAP-EM (``model.em_step``) for the
        HMM and the LDS, the Appendix-A EM
        (:func:`mmpgm.inference.em_mixture.fit_em_mixture`) for the gated mixture; the MVRNN has
        no EM (``ValueError``).
    program : str, optional
        ``method="svi"`` only: which Pyro program trains, one of ``model.PROGRAMS`` (default
        the first, the model's fast exact or vectorized program):

        * MultimodalHMM: ``"collapsed"`` (chains summed out by the factorial forward
          algorithm), ``"enumerated"`` (per-step sites, ``TraceEnum_ELBO``);
        * MultimodalLDS: ``"collapsed"`` (Kalman filter), ``"gaussian_hmm"`` (Pyro's
          ``GaussianHMM``; fully observed, equal-length data);
        * GatedMixture: ``"enumerated"`` (expert indicators enumerated), ``"collapsed"``;
        * MVRNN: ``"vectorized"`` (one pass, ELBO as a factor), ``"sites"`` (per-frame sites).

        The exact programs of one model give the same loss. An unknown name raises
        ``ValueError``.
    num_steps : int
        Maximum optimizer steps (epochs when ``batch_size`` is set) or EM iterations.
        Default 1000 (svi), 200 (em) or 20 (em of a GatedMixture, whose iterations each run
        several Adam M-steps).
    lr : float, optional
        Adam learning rate: default ``model.default_svi_options()["lr"]`` where the model
        gives one (the MVRNN with its default KL annealing: 1e-2), else 0.05 (svi); for the
        gated mixture's EM, the learning rate of its M-steps (default that of
        :func:`~mmpgm.inference.em_mixture.fit_em_mixture`). Models with stages (the MVRNN's KL
        annealing, :meth:`~mmpgm.models.MultimodalModel.svi_stage`) stop early only in their
        last stage; a sampled or minibatch objective is judged on a 10-step moving average.
    clip_norm : float, optional
        Gradient-norm clipping (svi; None = off).
    batch_size : int, optional
        Sequences per minibatch (the likelihood is rescaled to the full data set); svi, and the
        gated mixture's EM. A ``batch_size`` of at least the number of sequences gives one
        batch of all of them per epoch (the full-batch objective).
    seed : int
        Seeds Pyro/torch, the data-driven initialization and minibatch order: same seed, same
        result.
    patience, tol : int, float, optional
        Early stopping: stop when the loss per frame has not improved by ``tol`` for
        ``patience`` steps (0 = never stop early). With svi the first two such plateaus (in the
        last stage) divide Adam's learning rate by 10 and the test starts again; the fit
        stops on the third (Adam at a fixed rate hovers around the optimum). Defaults: svi
        100 / 1e-4, em 5 / 1e-6 (the gated mixture's EM runs all ``num_steps`` iterations).
    num_restarts : int
        Fit from this many data-driven initializations (seeds ``seed .. seed+R-1``) and keep the
        best final loss; every restart's final loss is in ``FitResult.restart_losses``, and a
        :class:`~mmpgm.inference.result.ConvergenceWarning` says when they differ by more than
        ``RESTART_SPREAD_WARN`` nats/frame (different optima). The same warning says when a fit
        with early stopping on reaches ``num_steps`` before converging.
    init : {"auto", "data", "none"}
        ``"auto"`` initializes from data (``model.init_from_data``) on the first fit of a model
        only, and never over parameters the user set (``from_params`` / ``set_params``) or
        loaded (:func:`mmpgm.load_model`); ``"data"`` always; ``"none"`` never. The HMM's
        data-driven start is itself multi-start (a Gaussian mixture from 8 seedings, see
        :func:`mmpgm.models.hmm.init.init_from_data`); ``num_restarts`` repeats the whole fit.
    elbo : pyro.infer.ELBO, optional
        The ELBO for ``method="svi"``; default ``model.default_elbo(program)``.
    checkpoint : str or path-like, optional
        Path of a checkpoint file (svi, and the closed-form EM of the HMM and LDS): written
        every ``checkpoint_every`` steps (and at the end) and resumed from when it exists. It
        holds the model's (and Adam's) state, the losses, every random state the loop draws
        from (torch's CPU and CUDA generators, numpy's and Python ``random``'s, the minibatch
        order), so a resumed fit equals the uninterrupted one bitwise (pass the larger
        ``num_steps`` to continue), and a header (model class, config, dtype, a fingerprint of
        the data: sizes, modalities, label names, a content hash; and ``lr``, ``batch_size``,
        ``seed``, ``program``, ``clip_norm``, the ELBO, and the units the model state is saved
        in: standardized for the HMM and the LDS; for EM ``method="em"``). A checkpoint of
        another fit (any of these differs; ``num_steps``, ``patience``, ``tol`` may), a file that
        is not a checkpoint (foreign, truncated, a model file, a newer format) raise
        ``ValueError`` naming the path. Writes are atomic (temp file in the same folder, fsync,
        rename; temp files of a killed run are removed on the next start), so the file is always
        readable; it loads with ``torch.load(weights_only=True)``.
    checkpoint_every : int
        Steps between checkpoints.
    progress : bool, optional
        tqdm progress bar; default on only when stderr is a terminal.
    distributed : bool or "auto"
        Data-parallel training over the processes of an initialized ``torch.distributed``
        process group (:mod:`mmpgm.inference.distributed`; run under ``torchrun``, gloo on the
        CPU, NCCL with the model on each rank's GPU). Every rank passes the same full ``data``;
        rank ``r`` of ``W`` works on sequences ``r, r + W, ...`` (none repeated). EM (HMM,
        LDS): the E-step statistics are all-reduced, every rank runs the same M-step. SVI (every
        family): the gradients of each step's global minibatch are all-reduced. Rank 0 alone
        writes the checkpoint and shows progress; the result equals the single-process fit up
        to floating-point summation order. ``True`` without an initialized process group raises
        ``ValueError``; ``"auto"`` uses one when it is initialized, else trains in one process.
    chunk_size : int, optional
        ``method="em"`` of the HMM and the LDS (not with the LDS's ``sensor_faults``): run
        each E-step ``chunk_size`` frames at a time (``model.em_statistics(data,
        chunk_size=)``: forward-backward / Kalman smoothing in chunks with the messages carried
        across them), the same fit with memory :math:`O(\text{chunk})` instead of
        :math:`O(T)` per sequence, for long sequences.

    Returns
    -------
    FitResult
        Losses per observed frame (negative log joint, in the data's units also where SVI ran
        standardized), method, steps run, convergence flag, wall time.

    Raises
    ------
    TypeError
        ``model`` is not a :class:`~mmpgm.models.MultimodalModel`, or ``data`` not a
        :class:`MultimodalData`.
    ValueError
        An unknown ``method`` or ``program``, ``method="em"`` for a model without EM, an
        option that does not apply to the method, or a ``checkpoint`` in a folder that does not
        exist (raised before any training).

    Examples
    --------
    >>> model = mmpgm.MultimodalHMM({"accel": 3, "gyro": 3}, num_shared_states=4)
    >>> data, _ = model.sample(5, 20, seed=0)
    >>> result = mmpgm.fit(model, data, num_steps=50, progress=False)
    >>> result = mmpgm.fit(model, data, program="enumerated", num_steps=5, progress=False)
    """
    _check_model(model)
    streamed = isinstance(data, ShardedData)
    if not isinstance(data, MultimodalData) and not streamed:
        raise TypeError(
            f"data: expected a MultimodalData or ShardedData, got {type(data).__name__}"
        )
    check_choice("method", method, _METHODS)
    check_choice("init", init, ("auto", "data", "none"))
    check_float("lr", lr, positive=True, allow_none=True)
    check_float("clip_norm", clip_norm, positive=True, allow_none=True)
    check_float("tol", tol, minimum=0.0, allow_none=True)
    check_int("patience", patience, minimum=0, allow_none=True)
    check_int("seed", seed, minimum=0)
    check_int("checkpoint_every", checkpoint_every)
    if progress is not None:
        check_bool("progress", progress)
    if elbo is not None and not isinstance(elbo, ELBO):
        raise TypeError(
            f"elbo: expected a pyro.infer.ELBO instance (e.g. pyro.infer.Trace_ELBO()) or None, "
            f"got {elbo!r}"
        )
    if checkpoint is not None:
        check_output_path("checkpoint", checkpoint)  # a missing folder fails before training
    comm = check_distributed(distributed)
    em_kind = None
    if method == "em":
        em_kind = check_em(model)
        if program is not None or elbo is not None:
            raise ValueError("method='em': program and elbo apply to method='svi' only")
        if checkpoint is not None and em_kind == "mixture":
            raise ValueError(
                "checkpoint: applies to method='svi' and the closed-form EM of the HMM and LDS, "
                "not to the gated mixture's EM"
            )
        if comm is not None and em_kind == "mixture":
            raise ValueError(
                "distributed: the gated mixture's EM (method='em') runs in one process; use "
                "method='svi' for data-parallel training of a GatedMixture"
            )
        if chunk_size is not None and em_kind == "mixture":
            raise ValueError(
                "chunk_size: applies to the closed-form EM of the HMM and the LDS, not to the "
                f"gated mixture's EM; got {chunk_size!r}"
            )
        if batch_size is not None and em_kind != "mixture":
            raise ValueError(
                f"batch_size: applies to method='svi' (and the gated mixture's EM), not to the "
                f"closed-form EM of {type(model).__name__}; got {batch_size!r}"
            )
    else:
        program = model.check_program(program)
        if chunk_size is not None:
            raise ValueError(
                f"chunk_size: applies to method='em' (HMM, LDS), got {chunk_size!r} with "
                "method='svi'"
            )
    check_int("chunk_size", chunk_size, allow_none=True)
    if num_steps is None:
        num_steps = 1000 if method == "svi" else (20 if em_kind == "mixture" else 200)
    check_int("num_steps", num_steps)
    check_int("batch_size", batch_size, allow_none=True)
    check_int("num_restarts", num_restarts)
    if lr is None and method == "svi":
        lr = model.default_svi_options().get("lr", 0.05)
    if patience is None:
        patience = 100 if method == "svi" else 5
    elif patience == 0:
        patience = None  # early stopping off
    if tol is None:
        tol = 1e-4 if method == "svi" else 1e-6
    if streamed:
        if checkpoint is not None:
            raise ValueError(
                "checkpoint: not supported when fitting a streamed ShardedData corpus; got "
                f"{checkpoint!r} (use checkpoint=None, or load_all() a corpus that fits in memory)"
            )
        if em_kind == "mixture":
            raise ValueError(
                "data: the gated mixture's EM (method='em') needs the data in memory, got a "
                "ShardedData; use method='svi' or ShardedData.load_all()"
            )
        data.check_modalities(model.data_dims)
    else:
        data = model.check_data(data)  # the one validation; everything below gets checked data
        model.check_training_data(data)

    do_init = init == "data" or (init == "auto" and not model._mmpgm_fitted)
    if checkpoint is not None and num_restarts > 1:
        raise ValueError("checkpoint: not supported with num_restarts > 1")
    start_state = copy.deepcopy(model.state_dict())
    best, finals = None, []
    for r in range(num_restarts):
        pyro.set_rng_seed(seed + r)
        if r > 0:
            model.load_state_dict(start_state)
        if do_init and method == "em" and not streamed:  # (svi: in its standardized units)
            model.init_from_data(data, seed=seed + r)
        # the options every training function takes, then what each adds
        common = dict(num_steps=num_steps, patience=patience, tol=tol, progress=progress, comm=comm)
        init_seed = seed + r if do_init else None
        svi = dict(
            lr=lr, batch_size=batch_size, seed=seed + r, clip_norm=clip_norm, program=program,
            elbo=elbo, init_seed=init_seed,
        )  # fmt: skip
        saved = dict(checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        if streamed and method == "em":
            result = fit_em_stream(
                model, data, **common, init_seed=init_seed, chunk_size=chunk_size
            )
        elif streamed:
            result = fit_svi_stream(model, data, **common, **svi)
        elif method == "em":
            result = fit_em(
                model, data, **common, lr=lr, batch_size=batch_size, seed=seed + r, **saved,
                chunk_size=chunk_size,
            )  # fmt: skip
        else:
            result = fit_svi(model, data, **common, **svi, **saved)
        finals.append(result.final_loss)
        if best is None or result.final_loss < best[0].final_loss:
            best = (result, copy.deepcopy(model.state_dict()) if num_restarts > 1 else None)
    if num_restarts > 1:
        model.load_state_dict(best[1])
    model._mmpgm_fitted = True
    result = best[0]
    if num_restarts > 1:
        result = result._replace(restart_losses=tuple(finals))
    if comm is None or comm.is_root:  # one warning per fit, not one per rank
        _warn_about(result, num_steps, patience, method)
    return result


def _warn_about(result: FitResult, num_steps: int, patience, method: str) -> None:
    """:class:`ConvergenceWarning` when the fit hit its step cap without converging (with early
    stopping on) or its restarts ended in different optima."""
    stopped_early_possible = patience is not None
    if stopped_early_possible and not result.converged and result.num_steps >= num_steps:
        warnings.warn(
            f"fit: stopped at the step cap num_steps={num_steps} before the loss per frame "
            f"settled (method={method!r}, last loss {result.final_loss:.6g}); pass a larger "
            "num_steps (or patience=0 to run a fixed number of steps without this warning)",
            ConvergenceWarning,
            stacklevel=3,
        )
    finals = [f for f in result.restart_losses if f == f]
    if len(finals) > 1 and max(finals) - min(finals) > RESTART_SPREAD_WARN:
        warnings.warn(
            f"fit: the {len(finals)} restarts ended in different optima (final loss per frame "
            f"{', '.join(f'{f:.4f}' for f in finals)}); the best is kept. Their spread says the "
            "objective has several basins here: more restarts may find a better one",
            ConvergenceWarning,
            stacklevel=3,
        )


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
    model : MultimodalModel
        A fitted model; ``model.posterior(data, causal=, num_samples=, seed=, map_path=)`` is
        called with the data validated once here.
    data : MultimodalData
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
        ``Posterior.pointwise_log_likelihood`` so ``to_arviz()`` supports ``arviz.loo``, and the
        drawn parameters (natural form, ``"field.key"`` names) fill ``parameter_samples``, which
        ``to_arviz()`` puts in the ``posterior`` group (HMM and LDS; the neural models have none).

    Returns
    -------
    Posterior
        The model's result type (``Posterior``, ``LDSPosterior``, ``MixturePosterior``,
        ``MVRNNPosterior``).
    """
    _check_model(model)
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
    check_int("num_samples", num_samples, minimum=0)
    check_int("num_param_samples", num_param_samples, minimum=0)
    check_int("seed", seed, minimum=0, allow_none=True)
    check_bool("causal", causal)
    check_bool("map_path", map_path)
    data = model.check_data(data)
    post = model.posterior(
        data, causal=causal, num_samples=num_samples, seed=seed, map_path=map_path
    )
    if num_param_samples:
        if "pointwise_log_likelihood" not in getattr(type(post), "_fields", ()):
            raise ValueError(
                f"num_param_samples: Laplace parameter draws are not available for "
                f"{type(model).__name__} (its posterior has no pointwise log-likelihood; a "
                f"diagonal Laplace over neural-network weights is not a useful posterior), got "
                f"{num_param_samples}; use 0"
            )
        from .inference.laplace import laplace_draws

        draws = laplace_draws(model, data, num_param_samples, seed=seed)
        post = post._replace(
            pointwise_log_likelihood=draws.log_likelihood, parameter_samples=draws.parameters
        )
    return post
