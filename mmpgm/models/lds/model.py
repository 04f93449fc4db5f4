"""The :class:`MultimodalLDS` model: structure, Pyro programs, posteriors, imputation,
sampling and parameters (the math is in the package docstring, :mod:`mmpgm.models.lds`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ... import _validation
from ..._validation import check_bool, check_float
from ...data import MultimodalData
from ...ops import kalman as kops
from ...ops.kalman import robust as kalman_robust
from ...ops.kalman.chunked import kalman_filter_chunk
from ...ops.linalg import symmetrize
from ...results.lds import LDSImputation, LDSPosterior
from .._base import MultimodalModel
from .._checks import check_int, check_obs_dims, check_sensor_faults, per_modality
from .._chunks import check_chunk_size, time_slice
from .._savable import register
from . import em, faults, init, priors
from . import params as params_io
from .blocks import BlockDynamics, LinearEmission
from .em_chunked import em_statistics_chunked
from .params import LDSParams

__all__ = ["MultimodalLDS", "LDSParams"]


@register
class MultimodalLDS(MultimodalModel):
    r"""Multimodal linear dynamical system with a shared latent block and private blocks.

    Parameters
    ----------
    obs_dims : Mapping[str, int]
        Modality name -> ``D_m``.
    shared_dim : int
        :math:`k_s`, dimension of the shared block (>= 1).
    private_dim : int or Mapping[str, int]
        :math:`k_m` per modality (0 = no private block for that modality).
    stable : bool
        Constrain every :math:`A_b` to spectral norm <= ``max_spectral_norm`` (< 1).
    noise : {"diag", "full"}
        Observation-noise covariance :math:`R_m`, for all modalities or per modality (a dict).
    max_spectral_norm : float
        :math:`\rho` of the stable parameterization.
    prior_precision : float
        :math:`\lambda_C`, prior precision of the emission weights (relative to the noise).
    prior_noise : float
        :math:`\psi_R = \psi_Q`: scale of the inverse-Wishart / inverse-gamma noise priors
        (relative to the data variance for :math:`R`).
    sensor_faults : bool, list of str or Mapping[str, bool]
        Modalities with an outlier-robust observation model (``True``: all): per observed frame
        an indicator :math:`f^m_t \sim \mathrm{Bernoulli}(\rho_m)` (iid over frames); when
        :math:`f^m_t = 1`, :math:`x^m_t` comes from a broad background density :math:`g_m`
        that does not depend on :math:`z` (a Cauchy per dimension around the data's median,
        ``fault_scale`` times its robust spread), else from the usual emission.  Inference is
        mean-field variational (:math:`q(z) q(f)`, the q(z) step the exact masked Kalman
        smoother with frames reweighted by :math:`1 - q(f)`;
        :mod:`mmpgm.ops.kalman.robust`), learning variational EM or SVI on the bound; the
        model, its background and prior are in :mod:`mmpgm.models.lds.faults`.
        :meth:`log_likelihood` is then the variational bound (<= the exact log-likelihood).
    fault_scale : float
        :math:`\kappa`, inflation of the background's scale (robust standard deviations).
    fault_rate_floor : float
        Lower bound of :math:`\rho_m` (prior: flat on ``[fault_rate_floor, 1/2]``), so that a
        fit on clean data keeps the fault model alive.
    fault_iters : int
        Most mean-field updates of :math:`q(f)` per inference (per frame when causal).
    fault_tol : float
        Stop the updates when :math:`q(f)` changes by less than this (max over frames).

    Examples
    --------
    >>> model = MultimodalLDS({"pos": 3, "imu": 3}, shared_dim=4, private_dim=1)
    >>> data, latents = model.sample(num_sequences=2, num_timesteps=50, seed=0)
    >>> model.log_likelihood(data).shape
    torch.Size([2])
    """

    PROGRAMS = ("collapsed", "gaussian_hmm")
    """Pyro programs (:meth:`model`): ``"collapsed"`` (default; Kalman filter, masks and ragged
    lengths) and ``"gaussian_hmm"`` (a ``pyro.distributions.GaussianHMM`` site, fully observed
    equal-length data only)."""

    def __init__(
        self,
        obs_dims: Mapping[str, int],
        shared_dim: int = 2,
        private_dim=1,
        stable: bool = True,
        noise="diag",
        max_spectral_norm: float = 0.999,
        prior_precision: float = 1e-2,
        prior_noise: float = 1e-3,
        sensor_faults=False,
        fault_scale: float = 4.0,
        fault_rate_floor: float = 1e-2,
        fault_iters: int = 20,
        fault_tol: float = 1e-4,
    ):
        super().__init__()
        names = check_obs_dims(obs_dims)
        check_int("shared_dim", shared_dim)
        private = per_modality(private_dim, names, "private_dim")
        for m in names:
            check_int(f"private_dim[{m!r}]", private[m], allow_zero=True)
        noises = per_modality(noise, names, "noise")
        for m in names:
            if noises[m] not in ("diag", "full"):
                raise ValueError(f"noise[{m!r}]: expected 'diag' or 'full', got {noises[m]!r}")
        if (
            isinstance(max_spectral_norm, bool)
            or not isinstance(max_spectral_norm, (int, float))
            or not 0 < max_spectral_norm < 1
        ):
            raise ValueError(
                f"max_spectral_norm: expected a float in (0, 1), got {max_spectral_norm!r}"
            )
        check_float("prior_precision", prior_precision, positive=True)
        check_bool("stable", stable)
        check_float("prior_noise", prior_noise, positive=True)
        fault_modalities = check_sensor_faults(sensor_faults, names)
        check_float("fault_scale", fault_scale, positive=True)
        check_float("fault_rate_floor", fault_rate_floor, positive=True)
        if not fault_rate_floor < 0.25:
            raise ValueError(
                f"fault_rate_floor: expected a float in (0, 0.25), got {fault_rate_floor!r}"
            )
        check_int("fault_iters", fault_iters, allow_zero=True)
        check_float("fault_tol", fault_tol, minimum=0.0)
        self.modalities = names
        self.obs_dims = dict(obs_dims)
        self.shared_dim = shared_dim
        self.private_dims = private
        self.stable = bool(stable)
        self.prior_precision = float(prior_precision)
        self.prior_noise = float(prior_noise)
        blocks = {"shared": shared_dim}
        blocks.update({m: private[m] for m in names if private[m] > 0})
        self.block_names = tuple(blocks)
        self.block_slices = {}
        o = 0
        for b, k in blocks.items():
            self.block_slices[b] = (o, o + k)
            o += k
        self.state_dim = o
        self.dynamics = PyroModule[nn.ModuleDict](
            {b: BlockDynamics(k, stable, max_spectral_norm) for b, k in blocks.items()}
        )
        self.emissions = PyroModule[nn.ModuleDict](
            {m: LinearEmission(obs_dims[m], shared_dim, private[m], noises[m]) for m in names}
        )
        self._config = dict(
            obs_dims=dict(obs_dims),
            shared_dim=shared_dim,
            private_dim=dict(private),
            stable=bool(stable),
            noise=dict(noises),
            max_spectral_norm=float(max_spectral_norm),
            prior_precision=float(prior_precision),
            prior_noise=float(prior_noise),
        )
        self.fault_modalities = fault_modalities
        self.fault_scale = float(fault_scale)
        self.fault_rate_floor = float(fault_rate_floor)
        self.fault_iters = int(fault_iters)
        self.fault_tol = float(fault_tol)
        if fault_modalities:
            self.faults = PyroModule[nn.ModuleDict](
                {m: faults.SensorFault(obs_dims[m], fault_rate_floor) for m in fault_modalities}
            )
            self._config.update(
                sensor_faults=list(fault_modalities),
                fault_scale=float(fault_scale),
                fault_rate_floor=float(fault_rate_floor),
                fault_iters=int(fault_iters),
                fault_tol=float(fault_tol),
            )

    # ------------------------------------------------------------------ structure
    def _state_index(self, modality: str) -> torch.Tensor:
        """Indices of the state entries modality ``modality`` sees: shared, then its private
        block."""
        a, e = self.block_slices["shared"]
        idx = list(range(a, e))
        if modality in self.block_slices:
            a, e = self.block_slices[modality]
            idx += list(range(a, e))
        return torch.tensor(idx, dtype=torch.long, device=self._param().device)

    def emission_matrix(self, modality: str) -> torch.Tensor:
        """``(D_m, S)`` :math:`C^m` in the full state space (zero on other private blocks)."""
        e = self.emissions[modality]
        pieces = []
        for blk in self.block_names:
            s0, s1 = self.block_slices[blk]
            if blk == "shared":
                pieces.append(e.shared_weight)
            elif blk == modality:
                pieces.append(e.private_weight)
            else:
                pieces.append(e.shared_weight.new_zeros(e.obs_dim, s1 - s0))
        return torch.cat(pieces, -1)

    def linear_gaussian_params(self) -> kops.LinearGaussianParams:
        """The model as :class:`mmpgm.ops.kalman.LinearGaussianParams` (differentiable)."""
        dyn = [self.dynamics[b] for b in self.block_names]
        return kops.LinearGaussianParams(
            initial_mean=torch.cat([d.init_loc for d in dyn]),
            initial_cov=torch.block_diag(*[d.initial_cov for d in dyn]),
            transition_matrix=torch.block_diag(*[d.transition_matrix for d in dyn]),
            transition_cov=torch.block_diag(*[d.transition_cov for d in dyn]),
            emission_matrices={m: self.emission_matrix(m) for m in self.modalities},
            emission_offsets={m: self.emissions[m].offset for m in self.modalities},
            emission_covs={m: self.emissions[m].noise_cov for m in self.modalities},
        )

    # ------------------------------------------------------------------ data
    def _check_observations(self, data) -> None:
        """Floating-point observations, finite wherever the mask says observed."""
        for m in self.modalities:
            x = data.obs[m]
            if not x.is_floating_point():
                raise TypeError(
                    f"data.obs[{m!r}]: expected floating-point observations, got {x.dtype}"
                )
            bad = data.mask[m][..., None] & ~torch.isfinite(x)
            if bool(bad.any()):
                raise ValueError(
                    f"data.obs[{m!r}]: {int(bad.any(-1).sum())} frames hold NaN/inf where the mask "
                    "says "
                    "observed; mark them unobserved in data.mask"
                )

    def _ops_inputs(self, data: MultimodalData, exclude=()):
        mask = {
            m: (torch.zeros_like(data.mask[m]) if m in exclude else data.mask[m])
            for m in self.modalities
        }
        return data.obs, mask, data.lengths

    # ------------------------------------------------------------------ likelihood
    def log_likelihood(
        self, data: MultimodalData, *, chunk_size: int | None = None
    ) -> torch.Tensor:
        r"""Exact, differentiable :math:`\log p(x^{(n)}_{\text{observed}})` per sequence,
        ``(N,)``.

        ``chunk_size``: filter ``chunk_size`` frames at a time, the filtered mean and covariance
        carried across chunks (:func:`mmpgm.ops.kalman.chunked.kalman_filter_chunk`): the same
        log-likelihood with the moments of one chunk in memory, :math:`O(N \cdot
        \text{chunk} \cdot S^2)` instead of :math:`O(N T S^2)`, without gradient (for
        evaluating long sequences); not with ``sensor_faults``.

        With ``sensor_faults``: the variational bound :math:`\mathcal L_n \le \log p(x^{(n)})`
        at the mean-field fixed point, differentiable in the parameters
        (:func:`mmpgm.models.lds.faults.bound`)."""
        data = self._checked(data)
        chunk_size = check_chunk_size(chunk_size)
        if self.fault_modalities:
            if chunk_size is not None:
                raise ValueError(
                    "chunk_size: not available with sensor_faults (the bound is a mean-field "
                    f"fixed point over the whole sequence), got {chunk_size}; use chunk_size=None"
                )
            return faults.bound(self, data)
        obs, mask, lengths = self._ops_inputs(data)
        params = self.linear_gaussian_params()
        if chunk_size is None:
            return kops.kalman_log_likelihood(params, obs, mask, lengths=lengths)
        total, carry = 0.0, None
        with torch.no_grad():
            for start in range(0, data.num_timesteps, chunk_size):
                piece = time_slice(self, data, start, start + chunk_size)
                obs, mask, lengths = self._ops_inputs(piece)
                carry, ll = kalman_filter_chunk(params, obs, mask, lengths, carry)
                total = total + ll
        return total

    def log_prior(self) -> torch.Tensor:
        """Log density of the weak conjugate parameter prior
        (:func:`mmpgm.models.lds.priors.log_prior`;
        the prior is described in the package docstring; with ``sensor_faults`` plus the
        fault rates' truncated flat prior)."""
        total = priors.log_prior(self)
        for m in self.fault_modalities:
            total = total + self.faults[m].log_prior()
        return total

    def num_free_parameters(self) -> int:
        n = 0
        for b in self.block_names:
            k = self.dynamics[b].dim
            n += k * k + k * (k + 1) + k
        for m in self.modalities:
            e = self.emissions[m]
            D = e.obs_dim
            n += D * (e.shared_dim + e.private_dim + 1) + (
                D if e.noise == "diag" else D * (D + 1) // 2
            )
        return n + len(self.fault_modalities)

    # ------------------------------------------------------------------ Pyro programs
    def pyro_gaussian_hmm(self, num_timesteps: int) -> dist.GaussianHMM:
        r"""The model as a :class:`pyro.distributions.GaussianHMM` over the concatenated
        observations ``(T, sum_m D_m)`` (modalities in ``self.modalities`` order), fully observed.

        Pyro's ``GaussianHMM`` starts from a state *before* the first observation and multiplies
        on the right; step 1 uses a zero transition matrix and noise :math:`\mathcal N(\mu_0, P_0)`
        so that :math:`z_1 \sim \mathcal N(\mu_0, P_0)`, later steps :math:`A^\top` and :math:`Q`.
        """
        check_int("num_timesteps", num_timesteps)
        p = self.linear_gaussian_params()
        S, T = self.state_dim, num_timesteps
        trans = torch.cat(
            [p.transition_matrix.new_zeros(1, S, S), p.transition_matrix.mT.expand(T - 1, S, S)]
        )
        loc = torch.cat([p.initial_mean[None], p.initial_mean.new_zeros(T - 1, S)])
        cov = torch.cat([p.initial_cov[None], p.transition_cov.expand(T - 1, S, S)])
        C = torch.cat([p.emission_matrices[m] for m in self.modalities], 0)
        d = torch.cat([p.emission_offsets[m] for m in self.modalities])
        R = torch.block_diag(*[p.emission_covs[m] for m in self.modalities])
        init = dist.MultivariateNormal(
            torch.zeros_like(p.initial_mean), torch.eye(S, dtype=C.dtype, device=C.device)
        )
        return dist.GaussianHMM(
            init,
            trans,
            dist.MultivariateNormal(loc, symmetrize(cov)),
            C.mT,
            dist.MultivariateNormal(d, symmetrize(R)),
            duration=T,
        )

    def model(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """The generative program.

        ``program="collapsed"`` (default, the fast path :func:`mmpgm.fit` trains): the states are
        integrated out exactly by the Kalman filter (:func:`mmpgm.ops.kalman.kalman_log_likelihood`,
        per-modality masks, ragged lengths) and enter as one ``pyro.factor`` per sequence inside the
        ``sequences`` plate, after a global ``log_prior`` factor.
        ``program="gaussian_hmm"``: the observations are a ``pyro.sample`` site of
        :meth:`pyro_gaussian_hmm` (fully observed, equal-length data only); same loss.

        ``num_sequences`` is the full dataset size when ``data`` is a minibatch.
        """
        data = self._checked(data)
        N, T = data.num_sequences, data.num_timesteps
        total = N if num_sequences is None else num_sequences
        program = self.check_program(program)
        pyro.factor("log_prior", self.log_prior())
        plate = pyro.plate(
            "sequences", total, subsample=torch.arange(N, device=data.device), dim=-1
        )
        if program == "collapsed":
            with plate:
                pyro.factor("log_likelihood", self.log_likelihood(data))
        else:  # "gaussian_hmm"
            if self.fault_modalities:
                raise ValueError(
                    "program='gaussian_hmm': not available with sensor_faults; use "
                    "program='collapsed' (the variational bound)"
                )
            if not all(bool(data.mask[m].all()) for m in self.modalities):
                raise ValueError(
                    "program='gaussian_hmm': needs fully observed, equal-length data; "
                    "use program='collapsed' for masks and ragged lengths"
                )
            x = torch.cat([data.obs[m] for m in self.modalities], -1)
            with plate:
                pyro.sample("obs", self.pyro_gaussian_hmm(T), obs=x)

    # ------------------------------------------------------------------ initialization
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start that respects the shared/private structure
        (:func:`mmpgm.models.lds.init.init_from_data`).

        With ``sensor_faults``: first the backgrounds (:func:`mmpgm.models.lds.faults.
        fit_background`), then the start on the data with gross outliers of the faulty
        modalities masked (robust z-score above 8, :func:`mmpgm.models.lds.faults.robust_mask`),
        and the fault rates reset to 0.05."""
        if not self.fault_modalities:
            return init.init_from_data(self, data, seed)
        data = self._checked(data)
        faults.fit_background(self, data)
        init.init_from_data(self, faults.robust_mask(self, data), seed)
        for m in self.fault_modalities:
            self.faults[m].set_rate(0.05)

    # ------------------------------------------------------------------ EM
    def em_step(self, data: MultimodalData) -> torch.Tensor:
        """One exact MAP-EM step (closed-form M-step from smoothed moments); returns the log joint
        before the update (:func:`mmpgm.models.lds.em.em_step`)."""
        return em.em_step(self, data)

    def em_statistics(self, data: MultimodalData, *, chunk_size: int | None = None) -> dict:
        """The E-step's summed sufficient statistics (:func:`mmpgm.models.lds.em.em_statistics`);
        ``em_step`` is ``em_update(em_statistics(data))``.

        ``chunk_size``: the smoother run ``chunk_size`` frames at a time
        (:func:`mmpgm.models.lds.em_chunked.em_statistics_chunked`), the same statistics with
        the moments of one chunk in memory; not with ``sensor_faults``."""
        if check_chunk_size(chunk_size) is None:
            return em.em_statistics(self, data)
        if self.fault_modalities:
            raise ValueError(
                "chunk_size: not available with sensor_faults (the variational E-step is a "
                f"fixed point over whole sequences), got {chunk_size}; use chunk_size=None"
            )
        return em_statistics_chunked(self, self._checked(data), chunk_size)

    def em_update(self, stats: dict) -> None:
        """The closed-form M-step from summed statistics (:func:`mmpgm.models.lds.em.em_update`)."""
        em.em_update(self, stats)

    # ------------------------------------------------------------------ posteriors
    def _split_blocks(self, mean, cov):
        means, covs = {}, {}
        for b, (s0, s1) in self.block_slices.items():
            means[b] = mean[..., s0:s1]
            covs[b] = cov[..., s0:s1, s0:s1]
        return means, covs

    def posterior(
        self,
        data: MultimodalData,
        *,
        causal: bool = False,
        num_samples: int = 0,
        seed: int | None = None,
        map_path: bool = True,
    ) -> LDSPosterior:
        """Exact Gaussian posterior over the states (see :func:`mmpgm.infer`).

        Smoothed (RTS) moments, or filtered ones with ``causal=True``; ``num_samples`` joint
        state paths by forward-filter backward-sample (``seed`` makes them reproducible); the
        joint mode (``map_path``) is the smoothed mean.

        With ``sensor_faults`` the moments, draws and mode are those of the mean-field
        :math:`q(z)` (:mod:`mmpgm.ops.kalman.robust`; ``causal=True``: the frame-by-frame
        fixed point of :func:`~mmpgm.ops.kalman.robust.robust_filter`), ``log_likelihood`` is the
        variational bound, and ``fault_probs`` holds :math:`q(f^m_t = 1)` per faulty modality
        ``(N, T)`` (smoothed, or filtered when ``causal``; the prior rate where the modality is
        masked, 0 on padding).
        """
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples: expected a non-negative int, got {num_samples!r}")
        data = self._checked(data)
        if self.fault_modalities:
            return self._fault_posterior(data, causal, num_samples, seed, map_path)
        obs, mask, lengths = self._ops_inputs(data)
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            sm = (
                kops.rts_smoother(lg, obs, mask, lengths=lengths)
                if (map_path or not causal)
                else None
            )
            if causal:
                f = kops.kalman_filter(lg, obs, mask, lengths=lengths, method="sequential")
                mean, cov, cross, ll = f.means, f.covs, None, f.log_likelihood
            else:
                mean, cov, cross, ll = sm.means, sm.covs, sm.cross_covs, sm.log_likelihood
            samples = None
            if num_samples:
                gen = torch.Generator(device=mean.device)
                gen.manual_seed(int(torch.randint(2**31, (1,))) if seed is None else seed)
                samples = kops.ffbs_sample(
                    lg, obs, mask, lengths=lengths, num_samples=num_samples, generator=gen
                )
        means, covs = self._split_blocks(mean, cov)
        return LDSPosterior(
            mean=means,
            covariance=covs,
            state_mean=mean,
            state_covariance=cov,
            cross_covariance=cross,
            map=sm.means if map_path else None,
            samples=samples,
            log_likelihood=ll,
            lengths=data.lengths,
            causal=causal,
            block_slices=dict(self.block_slices),
            pointwise_log_likelihood=None,
        )

    def _fault_posterior(self, data, causal, num_samples, seed, map_path) -> LDSPosterior:
        obs, mask, lengths = self._ops_inputs(data)
        kw = dict(num_iters=self.fault_iters, tol=self.fault_tol)
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            lb, rates = faults.fault_inputs(self, data)
            rates = {m: v.detach() for m, v in rates.items()}
            sm = None
            if map_path or not causal or num_samples:
                sm = kalman_robust.robust_smoother(lg, obs, mask, lb, rates, lengths, **kw)
            if causal:
                fr = kalman_robust.robust_filter(lg, obs, mask, lb, rates, lengths, **kw)
                mean, cov, cross = fr.moments.means, fr.moments.covs, None
                ll, r = fr.bound, fr.fault_probs
            else:
                mean, cov, cross = sm.moments.means, sm.moments.covs, sm.moments.cross_covs
                ll, r = sm.bound, sm.fault_probs
            samples = None
            if num_samples:
                gen = torch.Generator(device=mean.device)
                gen.manual_seed(int(torch.randint(2**31, (1,))) if seed is None else seed)
                w = {m: 1.0 - v for m, v in sm.fault_probs.items()}
                filt = kalman_robust.reweighted_filter(lg, obs, mask, w, lengths)
                samples = kalman_robust.sample_from_filter(
                    lg.transition_matrix, filt, num_samples, generator=gen
                )
        means, covs = self._split_blocks(mean, cov)
        return LDSPosterior(
            mean=means,
            covariance=covs,
            state_mean=mean,
            state_covariance=cov,
            cross_covariance=cross,
            map=sm.moments.means if map_path else None,
            samples=samples,
            log_likelihood=ll,
            lengths=data.lengths,
            causal=causal,
            block_slices=dict(self.block_slices),
            pointwise_log_likelihood=None,
            fault_probs=faults.fault_outputs(self, data, r),
        )

    def impute(self, data: MultimodalData, modality: str) -> LDSImputation:
        r"""Posterior predictive of ``modality`` from the other modalities.

        Every frame of ``modality`` is masked out, the states are smoothed on the others, and
        :math:`p(x^m_t \mid x^{-m}) = \mathcal N(C^m m_t + d^m, C^m P_t C^{m\top} + R_m)`.
        With ``sensor_faults`` the states are the mean-field :math:`q(z)` given the others
        (their faulty frames down-weighted) and the prediction is that of a working sensor.
        """
        if modality not in self.modalities:
            raise ValueError(
                f"modality: unknown modality {modality!r}; the model has {list(self.modalities)}"
            )
        data = self._checked(data)
        obs, mask, lengths = self._ops_inputs(data, exclude=(modality,))
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            if self.fault_modalities:
                sm = faults.e_step(self, data, exclude=(modality,))[0].moments
            else:
                sm = kops.rts_smoother(lg, obs, mask, lengths=lengths)
            C = lg.emission_matrices[modality]
            mean = sm.means @ C.mT + lg.emission_offsets[modality]
            covariance = symmetrize(C @ sm.covs @ C.mT + lg.emission_covs[modality])
        return LDSImputation(
            mean=mean, covariance=covariance, state_mean=sm.means, state_covariance=sm.covs
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, num_sequences: int, num_timesteps: int, seed: int | None = None):
        """Draw sequences from the model.

        Returns
        -------
        data : MultimodalData
        latents : dict
            ``"shared"`` and each modality with a private block -> ``(N, T, k_b)`` state paths;
            with ``sensor_faults`` also ``"faults"``: modality -> ``(N, T)`` bool indicators
            :math:`f^m_t` (where true, the frame is a draw from the background).
        """
        check_int("num_sequences", num_sequences)
        check_int("num_timesteps", num_timesteps)
        _validation.check_int("seed", seed, minimum=0, allow_none=True)
        p = self._param()
        gen = torch.Generator(device=p.device)
        gen.manual_seed(int(torch.randint(2**31, (1,))) if seed is None else seed)
        N, T, S = num_sequences, num_timesteps, self.state_dim
        kw = dict(generator=gen, dtype=p.dtype, device=p.device)
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            L0 = torch.linalg.cholesky(lg.initial_cov)
            LQ = torch.linalg.cholesky(lg.transition_cov)
            z = torch.empty(N, T, S, dtype=p.dtype, device=p.device)
            z[:, 0] = lg.initial_mean + torch.randn(N, S, **kw) @ L0.mT
            for t in range(1, T):
                z[:, t] = z[:, t - 1] @ lg.transition_matrix.mT + torch.randn(N, S, **kw) @ LQ.mT
            obs = {}
            for m in self.modalities:
                C, d, R = lg.emission_matrices[m], lg.emission_offsets[m], lg.emission_covs[m]
                LR = torch.linalg.cholesky(R)
                obs[m] = z @ C.mT + d + torch.randn(N, T, C.shape[0], **kw) @ LR.mT
            flags = {}
            for m in self.fault_modalities:
                f = self.faults[m]
                flags[m] = torch.rand(N, T, **kw) < f.rate
                u = torch.rand(N, T, self.obs_dims[m], **kw)
                bg = f.background_loc + f.background_scale * torch.tan(math.pi * (u - 0.5))
                obs[m] = torch.where(flags[m][..., None], bg, obs[m])
        latents = {b: z[..., s0:s1].clone() for b, (s0, s1) in self.block_slices.items()}
        if self.fault_modalities:
            latents["faults"] = flags
        return MultimodalData(obs), latents

    # ------------------------------------------------------------------ parameters, I/O
    @property
    def params(self) -> LDSParams:
        """The constrained parameter values (detached copies; :class:`LDSParams`)."""
        return params_io.get_params(self)

    def set_params(self, params: LDSParams) -> "MultimodalLDS":
        """Overwrite the parameters with ``params`` (validated: shapes, finite values, SPD
        covariances, stability, diagonal ``R`` for ``noise="diag"``)."""
        return params_io.set_params(self, params)
