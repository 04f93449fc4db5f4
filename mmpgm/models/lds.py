r"""Multimodal linear dynamical system (paper section 5.2.5, eq. 28-39, with continuous states).

The state :math:`z_t = [z^s_t, z^1_t, \dots, z^M_t]` has one shared block and one private block per
modality, each with its own linear-Gaussian dynamics, and modality :math:`m` sees the shared block
and its own private block only:

.. math::
    z^b_1 &\sim \mathcal N(\mu^b_0, P^b_0), \qquad
    z^b_t = A_b z^b_{t-1} + w^b_t, \quad w^b_t \sim \mathcal N(0, Q_b), \quad b \in \{s, 1..M\}, \\
    x^m_t &= C^m_s z^s_t + C^m_m z^m_t + d^m + v^m_t, \qquad v^m_t \sim \mathcal N(0, R_m).

So :math:`A = \mathrm{blockdiag}(A_s, A_1, \dots, A_M)`, :math:`Q` likewise, and the emission matrix
of modality :math:`m` is zero on the other modalities' private blocks. Inference is exact
(:mod:`mmpgm.ops.kalman`): Kalman filter, RTS smoother, FFBS, per-modality masks.

Parameterization. :math:`Q_b`, :math:`P^b_0` and a full :math:`R_m` are stored as Cholesky
factors (``lower_cholesky`` constraint), a diagonal :math:`R_m` as positive standard deviations.
With ``stable=True``, :math:`A_b = \rho\, W_b / \max(1, \lVert W_b \rVert_2)` with
:math:`\rho` = ``max_spectral_norm`` < 1, so :math:`\lVert A_b \rVert_2 \le \rho` and the
dynamics are stable. Because the latent basis is free (:math:`z \to T z` changes :math:`A` to
:math:`T A T^{-1}`), this loses nothing: every matrix of spectral radius below :math:`\rho` is
similar to one of spectral norm below :math:`\rho`.

Priors (weak, conjugate, for MAP; hyperparameters in brackets):

* :math:`Q_b \sim \mathcal{IW}(\psi_Q I, k_b + 1)` [``prior_noise``],
  :math:`P^b_0 \sim \mathcal{IW}((2k_b + 2) I, k_b + 1)` (mode :math:`I`); :math:`A_b`,
  :math:`\mu^b_0` flat.
* per modality, with :math:`W^m = [C^m_s, C^m_m, d^m]` (``D_m x (k_s + k_m + 1)``) and
  :math:`\Lambda_0 = \mathrm{diag}(\lambda_C, .., \lambda_C, \lambda_d)`:
  :math:`W^m \mid R_m \sim \mathcal{MN}(0, R_m, \Lambda_0^{-1})` and
  :math:`R_m \sim \mathcal{IW}(\Psi_m, D_m + 1)` (full) or
  :math:`R_{m,ii} \sim \mathrm{InvGamma}(1, \Psi_{m,ii})` (diag), where
  :math:`\Psi_m = \psi_R \mathrm{diag}(\mathrm{Var}[x^m])` uses the data variances recorded by
  :meth:`MultimodalLDS.init_from_data` (1 before).

These make the EM M-step exact (:meth:`MultimodalLDS.em_step`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from ..data import MultimodalData
from ._base import MultimodalModel
from ._savable import register
from ._checks import check_int, check_obs_dims, per_modality
from ..results.lds import LDSImputation, LDSPosterior
from .._pyro import TypedPyroModule
from ..ops import kalman as kops

__all__ = ["MultimodalLDS", "LDSParams", "BlockDynamics", "LinearEmission"]

_LOG_2PI = math.log(2 * math.pi)


def _sym(x):
    return 0.5 * (x + x.mT)


def _inv_wishart_log_prob(X: torch.Tensor, Psi: torch.Tensor, df: float) -> torch.Tensor:
    """log density of the inverse-Wishart :math:`\\mathcal{IW}(\\Psi, \\nu)` at SPD ``X`` ``(p, p)``."""
    p = X.shape[-1]
    LX = torch.linalg.cholesky(X)
    logdet_X = 2 * LX.diagonal().log().sum()
    logdet_Psi = torch.logdet(Psi)
    tr = torch.cholesky_solve(Psi, LX).diagonal().sum()  # tr(X^-1 Psi)
    return (0.5 * df * logdet_Psi - 0.5 * df * p * math.log(2.0)
            - torch.mvlgamma(torch.as_tensor(0.5 * df, dtype=X.dtype), p)
            - 0.5 * (df + p + 1) * logdet_X - 0.5 * tr)


class BlockDynamics(TypedPyroModule):
    r"""One latent block: :math:`z_1 \sim \mathcal N(\mu_0, P_0)`, :math:`z_t = A z_{t-1} + w_t`,
    :math:`w_t \sim \mathcal N(0, Q)`.

    Parameters
    ----------
    dim : int
        ``k``, the block's dimension.
    stable : bool
        Constrain :math:`\lVert A \rVert_2 \le` ``max_spectral_norm``.
    """

    def __init__(self, dim: int, stable: bool = True, max_spectral_norm: float = 0.999):
        super().__init__()
        self.dim = dim
        self.stable = bool(stable)
        self.max_spectral_norm = float(max_spectral_norm)
        eye = torch.eye(dim)
        self.weight = nn.Parameter(0.9 * eye / (self.max_spectral_norm if stable else 1.0))
        self.transition_scale_tril = PyroParam(eye * math.sqrt(1 - 0.81), constraint=constraints.lower_cholesky)
        self.init_loc = nn.Parameter(torch.zeros(dim))
        self.init_scale_tril = PyroParam(eye.clone(), constraint=constraints.lower_cholesky)

    @property
    def transition_matrix(self) -> torch.Tensor:
        W = self.weight
        if not self.stable:
            return W
        norm = torch.linalg.matrix_norm(W, ord=2)
        return self.max_spectral_norm * W / norm.clamp_min(1.0)

    @property
    def transition_cov(self) -> torch.Tensor:
        L = self.transition_scale_tril
        return L @ L.mT

    @property
    def init_cov(self) -> torch.Tensor:
        L = self.init_scale_tril
        return L @ L.mT

    @torch.no_grad()
    def set_transition_matrix(self, A: torch.Tensor) -> None:
        if self.stable:
            norm = float(torch.linalg.matrix_norm(A, ord=2))
            if norm > self.max_spectral_norm * (1 + 1e-12):
                raise ValueError(
                    f"transition matrix: expected spectral norm <= {self.max_spectral_norm} "
                    f"(stable=True), got {norm:.6g}")
            A = A / self.max_spectral_norm
        self.weight.copy_(A.to(self.weight))


class LinearEmission(TypedPyroModule):
    r"""Emission of one modality: :math:`x_t = C_s z^s_t + C_p z^p_t + d + v_t`,
    :math:`v_t \sim \mathcal N(0, R)`, ``noise`` ``"diag"`` or ``"full"`` :math:`R`."""

    def __init__(self, obs_dim: int, shared_dim: int, private_dim: int, noise: str = "diag"):
        super().__init__()
        self.obs_dim, self.shared_dim, self.private_dim, self.noise = obs_dim, shared_dim, private_dim, noise
        g = torch.Generator().manual_seed(0)
        self.shared_weight = nn.Parameter(0.1 * torch.randn(obs_dim, shared_dim, generator=g))
        self.private_weight = nn.Parameter(0.1 * torch.randn(obs_dim, private_dim, generator=g))
        self.offset = nn.Parameter(torch.zeros(obs_dim))
        if noise == "diag":
            self.noise_scale = PyroParam(torch.ones(obs_dim), constraint=constraints.positive)
        else:
            self.noise_scale_tril = PyroParam(torch.eye(obs_dim), constraint=constraints.lower_cholesky)
        # data variances that set the scale of the noise prior (see init_from_data)
        self.register_buffer("data_var", torch.ones(obs_dim))

    @property
    def weight(self) -> torch.Tensor:
        """``(D, k_s + k_p)`` :math:`[C_s, C_p]`."""
        return torch.cat([self.shared_weight, self.private_weight], -1)

    @property
    def noise_cov(self) -> torch.Tensor:
        if self.noise == "diag":
            return torch.diag_embed(self.noise_scale.square())
        L = self.noise_scale_tril
        return L @ L.mT

    @torch.no_grad()
    def set_noise_cov(self, R: torch.Tensor) -> None:
        if self.noise == "diag":
            self.noise_scale = R.diagonal().sqrt()
        else:
            self.noise_scale_tril = torch.linalg.cholesky(R)


class LDSParams(NamedTuple):
    r"""Parameters of a :class:`MultimodalLDS` (constrained values, detached).

    transition_matrices, transition_covs, init_means, init_covs : dict block -> :math:`A_b`
        ``(k_b, k_b)``, :math:`Q_b`, :math:`\mu^b_0` ``(k_b,)``, :math:`P^b_0` (blocks: ``"shared"``
        and every modality with a private block).
    shared_emissions : dict modality -> :math:`C^m_s` ``(D_m, k_s)``.
    private_emissions : dict modality -> :math:`C^m_m` ``(D_m, k_m)``.
    offsets : dict modality -> :math:`d^m` ``(D_m,)``.
    noise_covs : dict modality -> :math:`R_m` ``(D_m, D_m)``.
    """

    transition_matrices: dict
    transition_covs: dict
    init_means: dict
    init_covs: dict
    shared_emissions: dict
    private_emissions: dict
    offsets: dict
    noise_covs: dict


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
        if not 0 < max_spectral_norm < 1:
            raise ValueError(f"max_spectral_norm: expected a float in (0, 1), got {max_spectral_norm!r}")
        if not prior_precision > 0 or not prior_noise > 0:
            raise ValueError(
                f"prior_precision, prior_noise: expected positive floats, got {prior_precision!r}, {prior_noise!r}")
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
            {b: BlockDynamics(k, stable, max_spectral_norm) for b, k in blocks.items()})
        self.emissions = PyroModule[nn.ModuleDict](
            {m: LinearEmission(obs_dims[m], shared_dim, private[m], noises[m]) for m in names})
        self._config = dict(obs_dims=dict(obs_dims), shared_dim=shared_dim, private_dim=dict(private),
                            stable=bool(stable), noise=dict(noises), max_spectral_norm=float(max_spectral_norm),
                            prior_precision=float(prior_precision), prior_noise=float(prior_noise))

    # ------------------------------------------------------------------ structure
    def _state_index(self, modality: str) -> torch.Tensor:
        """Indices of the state entries modality ``modality`` sees: shared, then its private block."""
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
            init_mean=torch.cat([d.init_loc for d in dyn]),
            init_cov=torch.block_diag(*[d.init_cov for d in dyn]),
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
                raise TypeError(f"data.obs[{m!r}]: expected floating-point observations, got {x.dtype}")
            bad = data.mask[m][..., None] & ~torch.isfinite(x)
            if bool(bad.any()):
                raise ValueError(
                    f"data.obs[{m!r}]: {int(bad.any(-1).sum())} frames hold NaN/inf where the mask says "
                    "observed; mark them unobserved in data.mask")

    def _ops_inputs(self, data: MultimodalData, exclude=()):
        mask = {m: (torch.zeros_like(data.mask[m]) if m in exclude else data.mask[m]) for m in self.modalities}
        return data.obs, mask, data.lengths

    # ------------------------------------------------------------------ likelihood
    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        r"""Exact, differentiable :math:`\log p(x^{(n)}_{\text{observed}})` per sequence, ``(N,)``."""
        data = self._checked(data)
        obs, mask, lengths = self._ops_inputs(data)
        return kops.kalman_log_likelihood(self.linear_gaussian_params(), obs, mask, lengths=lengths)

    def _emission_prior_terms(self, m):
        e = self.emissions[m]
        k = e.shared_dim + e.private_dim + 1
        lam = torch.full((k,), self.prior_precision, dtype=e.offset.dtype, device=e.offset.device)
        lam[-1] = 1e-6
        psi = self.prior_noise * e.data_var
        return k, lam, psi

    def log_prior(self) -> torch.Tensor:
        """Log density of the (weak, conjugate) parameter prior; see the module docstring."""
        total = self._param().new_zeros(())
        for b in self.block_names:
            d = self.dynamics[b]
            k = d.dim
            eye = torch.eye(k, dtype=total.dtype, device=total.device)
            total = total + _inv_wishart_log_prob(d.transition_cov, self.prior_noise * eye, k + 1)
            total = total + _inv_wishart_log_prob(d.init_cov, (2 * k + 2) * eye, k + 1)
        for m in self.modalities:
            e = self.emissions[m]
            k, lam, psi = self._emission_prior_terms(m)
            W = torch.cat([e.weight, e.offset[:, None]], -1)  # (D, k)
            D = e.obs_dim
            if e.noise == "diag":
                var = e.noise_scale.square()
                # InvGamma(var; 1, psi) = psi / var^2 exp(-psi / var)
                total = total + (psi.log() - 2 * var.log() - psi / var).sum()
                total = total + dist.Normal(0.0, (var[:, None] / lam).sqrt()).log_prob(W).sum()
            else:
                R = e.noise_cov
                total = total + _inv_wishart_log_prob(R, torch.diag(psi), D + 1)
                L = torch.linalg.cholesky(R)
                sol = torch.linalg.solve_triangular(L, W * lam.sqrt(), upper=False)
                total = total + (-0.5 * k * D * _LOG_2PI - k * L.diagonal().log().sum()
                                 + 0.5 * D * lam.log().sum() - 0.5 * sol.square().sum())
        return total

    def num_free_parameters(self) -> int:
        n = 0
        for b in self.block_names:
            k = self.dynamics[b].dim
            n += k * k + k * (k + 1) + k
        for m in self.modalities:
            e = self.emissions[m]
            D = e.obs_dim
            n += D * (e.shared_dim + e.private_dim + 1) + (D if e.noise == "diag" else D * (D + 1) // 2)
        return n

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
        trans = torch.cat([p.transition_matrix.new_zeros(1, S, S), p.transition_matrix.mT.expand(T - 1, S, S)])
        loc = torch.cat([p.init_mean[None], p.init_mean.new_zeros(T - 1, S)])
        cov = torch.cat([p.init_cov[None], p.transition_cov.expand(T - 1, S, S)])
        C = torch.cat([p.emission_matrices[m] for m in self.modalities], 0)
        d = torch.cat([p.emission_offsets[m] for m in self.modalities])
        R = torch.block_diag(*[p.emission_covs[m] for m in self.modalities])
        init = dist.MultivariateNormal(torch.zeros_like(p.init_mean), torch.eye(S, dtype=C.dtype, device=C.device))
        return dist.GaussianHMM(init, trans, dist.MultivariateNormal(loc, _sym(cov)), C.mT,
                                dist.MultivariateNormal(d, _sym(R)), duration=T)

    def model(self, data: MultimodalData, *, program: str | None = None,
              num_sequences: int | None = None):
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
        plate = pyro.plate("sequences", total, subsample=torch.arange(N, device=data.device), dim=-1)
        if program == "collapsed":
            with plate:
                pyro.factor("log_likelihood", self.log_likelihood(data))
        else:  # "gaussian_hmm"
            if not all(bool(data.mask[m].all()) for m in self.modalities):
                raise ValueError("program='gaussian_hmm': needs fully observed, equal-length data; "
                                 "use program='collapsed' for masks and ragged lengths")
            x = torch.cat([data.obs[m] for m in self.modalities], -1)
            with plate:
                pyro.sample("obs", self.pyro_gaussian_hmm(T), obs=x)

    # ------------------------------------------------------------------ initialization
    @torch.no_grad()
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start that respects the shared/private structure.

        1. PCA of the concatenated observations, each modality whitened (missing frames at the
           mean), gives ``k_s`` shared scores (this is MAXVAR generalized CCA: the directions the
           modalities have in common; plain PCA of the standardized data for one modality); :math:`C^m_s, d^m` by least
           squares of each modality on them (observed frames);
        2. PCA of each modality's residuals gives ``k_m`` private scores and :math:`C^m_m`;
        3. :math:`A_b` by least squares of consecutive scores (shrunk into the stable set),
           :math:`Q_b = I - A_b A_b^\\top` (unit stationary variance), :math:`P_0 = I`,
           :math:`R_m` the residual (co)variance; the noise-prior scale is set to the data variance.

        Deterministic (``seed`` is accepted for the :func:`mmpgm.fit` protocol).
        """
        data = self._checked(data)
        p = self._param()
        inside = data.time_mask
        cols, stats = [], {}
        for m in self.modalities:
            x, obs = data.filled(m), data.mask[m]
            if int(obs.sum()) < 2:
                raise ValueError(f"data.obs[{m!r}]: need at least 2 observed frames to initialize, got {int(obs.sum())}")
            mu = x[obs].mean(0)
            sd = x[obs].std(0).clamp_min(1e-8)
            stats[m] = (mu, sd)
            self.emissions[m].data_var.copy_(sd.square())
            z = torch.where(obs[..., None], (x - mu) / sd, torch.zeros_like(x))
            if len(self.modalities) > 1:
                # whiten each modality: PCA of the concatenation is then MAXVAR generalized CCA,
                # whose leading directions are those the modalities share (private variance,
                # however large, is not favoured)
                zo = z[obs]
                cov = zo.mT @ zo / zo.shape[0]
                cov = cov + 1e-3 * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                evals, evecs = torch.linalg.eigh(cov)
                z = z @ (evecs * evals.rsqrt()) @ evecs.mT
            else:
                z = z / math.sqrt(z.shape[-1])
            cols.append(z)
        X = torch.cat(cols, -1)  # (N, T, sum D)
        F = X[inside]
        _, _, Vh = torch.linalg.svd(F - F.mean(0), full_matrices=False)
        ks = self.shared_dim
        V = Vh[:ks].mT
        if V.shape[-1] < ks:
            V = torch.cat([V, V.new_zeros(V.shape[0], ks - V.shape[-1])], -1)
        zs = X @ V
        zs = zs / zs[inside].std(0).clamp_min(1e-8)
        scores = {"shared": zs}
        for m in self.modalities:
            e = self.emissions[m]
            x, obs = data.filled(m), data.mask[m]
            Z = torch.cat([zs[obs], torch.ones_like(zs[obs][:, :1])], -1)
            W = torch.linalg.lstsq(Z, x[obs]).solution.mT  # (D, ks + 1)
            e.shared_weight.copy_(W[:, :ks])
            e.offset.copy_(W[:, -1])
            resid = x - zs @ W[:, :ks].mT - W[:, -1]
            km = self.private_dims[m]
            if km > 0:
                r = resid[obs]
                _, _, Vr = torch.linalg.svd(r - r.mean(0), full_matrices=False)
                Vm = Vr[:km].mT
                if Vm.shape[-1] < km:
                    Vm = torch.cat([Vm, Vm.new_zeros(Vm.shape[0], km - Vm.shape[-1])], -1)
                zm = torch.where(obs[..., None], resid @ Vm, torch.zeros(()).to(resid))
                zm = zm / zm[obs].std(0).clamp_min(1e-8)
                scores[m] = zm
                Cm = torch.linalg.lstsq(zm[obs], resid[obs]).solution.mT
                e.private_weight.copy_(Cm)
                resid = resid - zm @ Cm.mT
            r = resid[obs]
            Rm = r.mT @ r / r.shape[0]
            floor = 1e-2 * e.data_var
            Rm = Rm + torch.diag(floor)
            e.set_noise_cov(Rm if e.noise == "full" else torch.diag(Rm.diagonal()))
        for b in self.block_names:
            d = self.dynamics[b]
            z = scores[b]
            ok = inside if b == "shared" else data.mask[b]
            pair = ok[:, :-1] & ok[:, 1:]
            k = d.dim
            eye = torch.eye(k, dtype=p.dtype, device=p.device)
            if int(pair.sum()) > k:
                z0, z1 = z[:, :-1][pair], z[:, 1:][pair]
                A = torch.linalg.solve(z0.mT @ z0 + 1e-6 * eye, z0.mT @ z1).mT
            else:
                A = 0.9 * eye
            norm = float(torch.linalg.matrix_norm(A, ord=2))
            cap = 0.95 * (d.max_spectral_norm if d.stable else 1.0)
            A = A * min(1.0, cap / max(norm, 1e-12))
            d.set_transition_matrix(A)
            d.transition_scale_tril = torch.linalg.cholesky(_sym(eye - A @ A.mT) + 1e-3 * eye)
            d.init_loc.zero_()
            d.init_scale_tril = eye

    # ------------------------------------------------------------------ EM
    def _smoothed_second_moments(self, data):
        obs, mask, lengths = self._ops_inputs(data)
        lg = self.linear_gaussian_params()
        lg = kops.LinearGaussianParams(*[{k: v.detach() for k, v in x.items()} if isinstance(x, dict)
                                         else (x.detach() if isinstance(x, torch.Tensor) else x) for x in lg])
        sm = kops.rts_smoother(lg, obs, mask, lengths=lengths)
        return sm

    @torch.no_grad()
    def em_step(self, data: MultimodalData) -> torch.Tensor:
        """One exact MAP-EM step (closed-form M-step from smoothed moments); returns the log joint
        ``sum_n log p(x_n) + log p(theta)`` at the parameters *before* the update.

        E-step: RTS smoother (means, covariances, lag-one cross-covariances). M-step, block by
        block (each maximizes its own part of the expected complete-data log joint, so the log
        joint never decreases):

        * emissions: per modality, a Bayesian multivariate regression of :math:`x^m_t` on
          :math:`[z^s_t, z^m_t, 1]` over the frames where :math:`m` is observed (normal-inverse-
          Wishart / inverse-gamma mode), so the zero blocks of :math:`C^m` stay zero;
        * dynamics: per block, :math:`A_b = S_{10} S_{00}^{-1}` over transitions inside the
          sequences (with ``stable=True``, the furthest point towards it from the current
          :math:`A_b` inside the stable set: the expected log joint is concave in :math:`A_b`, so
          this still improves it), then :math:`Q_b` given :math:`A_b` (inverse-Wishart mode);
        * initial state: :math:`\\mu_0` the mean of the first smoothed states, :math:`P_0` the
          inverse-Wishart mode.
        """
        data = self._checked(data)
        sm = self._smoothed_second_moments(data)
        log_joint = sm.log_likelihood.sum() + self.log_prior()
        mean, cov, cross = sm.means, sm.covs, sm.cross_covs
        N, T, S = mean.shape
        second = cov + mean[..., :, None] * mean[..., None, :]  # E[z_t z_t^T]
        inside = data.time_mask
        dtype, device = mean.dtype, mean.device
        # ---- emissions
        for m in self.modalities:
            e = self.emissions[m]
            idx = self._state_index(m)
            obs = data.mask[m]
            x = data.obs[m][obs]  # (n, D)
            n = x.shape[0]
            if n == 0:
                continue
            mz = mean[obs][:, idx]  # (n, k-1)
            Ezz = second[obs][:, idx][:, :, idx].sum(0)
            Ez = mz.sum(0)
            k = idx.numel() + 1
            Szz = torch.zeros(k, k, dtype=dtype, device=device)
            Szz[:-1, :-1] = Ezz
            Szz[:-1, -1] = Ez
            Szz[-1, :-1] = Ez
            Szz[-1, -1] = n
            Sxz = torch.cat([x.mT @ mz, x.sum(0)[:, None]], -1)  # (D, k)
            Sxx = x.mT @ x
            _, lam, psi = self._emission_prior_terms(m)
            Pz = _sym(Szz + torch.diag(lam))
            W = torch.linalg.solve(Pz, Sxz.mT).mT  # (D, k)
            resid = _sym(Sxx - W @ Pz @ W.mT)
            D = e.obs_dim
            ks = e.shared_dim
            e.shared_weight.copy_(W[:, :ks])
            e.private_weight.copy_(W[:, ks:-1])
            e.offset.copy_(W[:, -1])
            if e.noise == "diag":
                var = (2 * psi + resid.diagonal()) / (n + k + 4)
                e.noise_scale = var.clamp_min(torch.finfo(dtype).tiny).sqrt()
            else:
                R = (torch.diag(psi) + resid) / (n + k + 2 * D + 2)
                e.set_noise_cov(_sym(R))
        # ---- dynamics and initial state
        pair = (inside[:, 1:]).reshape(-1)  # transition t -> t+1 inside the sequence
        for b in self.block_names:
            d = self.dynamics[b]
            s0, s1 = self.block_slices[b]
            k = d.dim
            eye = torch.eye(k, dtype=dtype, device=device)
            if T > 1 and bool(pair.any()):
                E11 = second[:, 1:, s0:s1, s0:s1].reshape(-1, k, k)[pair].sum(0)
                E00 = second[:, :-1, s0:s1, s0:s1].reshape(-1, k, k)[pair].sum(0)
                E10 = (cross[:, :, s0:s1, s0:s1]
                       + mean[:, 1:, s0:s1, None] * mean[:, :-1, None, s0:s1]).reshape(-1, k, k)[pair].sum(0)
                n = int(pair.sum())
                A_old = d.transition_matrix
                A_new = torch.linalg.solve(_sym(E00), E10.mT).mT
                if d.stable:
                    A_new = self._feasible_step(A_old, A_new, d.max_spectral_norm)
                d.set_transition_matrix(A_new)
                A = d.transition_matrix
                Sres = _sym(E11 - A @ E10.mT - E10 @ A.mT + A @ E00 @ A.mT)
                Qn = (self.prior_noise * eye + Sres) / (n + 2 * k + 2)
                d.transition_scale_tril = torch.linalg.cholesky(_sym(Qn))
            first = inside[:, 0]
            m1 = mean[first, 0, s0:s1]
            P1 = cov[first, 0, s0:s1, s0:s1]
            mu0 = m1.mean(0)
            dev = m1 - mu0
            P0 = ((2 * k + 2) * eye + P1.sum(0) + dev.mT @ dev) / (m1.shape[0] + 2 * k + 2)
            d.init_loc.copy_(mu0)
            d.init_scale_tril = torch.linalg.cholesky(_sym(P0))
        return log_joint

    @staticmethod
    def _feasible_step(A_old, A_new, rho):
        """Largest ``a`` in [0, 1] with ``||A_old + a (A_new - A_old)||_2 <= rho`` (bisection)."""
        def norm(a):
            return float(torch.linalg.matrix_norm(A_old + a * (A_new - A_old), ord=2))

        if norm(1.0) <= rho:
            return A_new
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if norm(mid) <= rho:
                lo = mid
            else:
                hi = mid
        return A_old + lo * (A_new - A_old)

    # ------------------------------------------------------------------ posteriors
    def _split_blocks(self, mean, cov):
        means, covs = {}, {}
        for b, (s0, s1) in self.block_slices.items():
            means[b] = mean[..., s0:s1]
            covs[b] = cov[..., s0:s1, s0:s1]
        return means, covs

    def posterior(self, data: MultimodalData, *, causal: bool = False, num_samples: int = 0,
                  seed: int | None = None, map_path: bool = True) -> LDSPosterior:
        """Exact Gaussian posterior over the states (see :func:`mmpgm.infer`).

        Smoothed (RTS) moments, or filtered ones with ``causal=True``; ``num_samples`` joint
        state paths by forward-filter backward-sample (``seed`` makes them reproducible); the
        joint mode (``map_path``) is the smoothed mean.
        """
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples: expected a non-negative int, got {num_samples!r}")
        data = self._checked(data)
        obs, mask, lengths = self._ops_inputs(data)
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            sm = kops.rts_smoother(lg, obs, mask, lengths=lengths) if (map_path or not causal) else None
            if causal:
                f = kops.kalman_filter(lg, obs, mask, lengths=lengths, method="sequential")
                mean, cov, cross, ll = f.means, f.covs, None, f.log_likelihood
            else:
                mean, cov, cross, ll = sm.means, sm.covs, sm.cross_covs, sm.log_likelihood
            samples = None
            if num_samples:
                gen = torch.Generator(device=mean.device)
                gen.manual_seed(int(torch.randint(2**31, (1,))) if seed is None else seed)
                samples = kops.ffbs_sample(lg, obs, mask, lengths=lengths, num_samples=num_samples, generator=gen)
        means, covs = self._split_blocks(mean, cov)
        return LDSPosterior(
            means=means, covs=covs, state_mean=mean, state_cov=cov, cross_covs=cross,
            map=sm.means if map_path else None, samples=samples, log_likelihood=ll,
            lengths=data.lengths, causal=causal, block_slices=dict(self.block_slices),
            pointwise_log_likelihood=None)

    def impute(self, data: MultimodalData, modality: str) -> LDSImputation:
        r"""Posterior predictive of ``modality`` from the other modalities.

        Every frame of ``modality`` is masked out, the states are smoothed on the others, and
        :math:`p(x^m_t \mid x^{-m}) = \mathcal N(C^m m_t + d^m, C^m P_t C^{m\top} + R_m)`.
        """
        if modality not in self.modalities:
            raise ValueError(f"modality: unknown modality {modality!r}; the model has {list(self.modalities)}")
        data = self._checked(data)
        obs, mask, lengths = self._ops_inputs(data, exclude=(modality,))
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            sm = kops.rts_smoother(lg, obs, mask, lengths=lengths)
            C = lg.emission_matrices[modality]
            mean = sm.means @ C.mT + lg.emission_offsets[modality]
            covariance = _sym(C @ sm.covs @ C.mT + lg.emission_covs[modality])
        return LDSImputation(mean=mean, covariance=covariance, state_mean=sm.means, state_cov=sm.covs)

    # ------------------------------------------------------------------ sampling
    def sample(self, num_sequences: int, num_timesteps: int, seed: int | None = None):
        """Draw sequences from the model.

        Returns
        -------
        data : MultimodalData
        latents : dict
            ``"shared"`` and each modality with a private block -> ``(N, T, k_b)`` state paths.
        """
        check_int("num_sequences", num_sequences)
        check_int("num_timesteps", num_timesteps)
        p = self._param()
        gen = torch.Generator(device=p.device)
        gen.manual_seed(int(torch.randint(2**31, (1,))) if seed is None else seed)
        N, T, S = num_sequences, num_timesteps, self.state_dim
        kw = dict(generator=gen, dtype=p.dtype, device=p.device)
        with torch.no_grad():
            lg = self.linear_gaussian_params()
            L0 = torch.linalg.cholesky(lg.init_cov)
            LQ = torch.linalg.cholesky(lg.transition_cov)
            z = torch.empty(N, T, S, dtype=p.dtype, device=p.device)
            z[:, 0] = lg.init_mean + torch.randn(N, S, **kw) @ L0.mT
            for t in range(1, T):
                z[:, t] = z[:, t - 1] @ lg.transition_matrix.mT + torch.randn(N, S, **kw) @ LQ.mT
            obs = {}
            for m in self.modalities:
                C, d, R = lg.emission_matrices[m], lg.emission_offsets[m], lg.emission_covs[m]
                LR = torch.linalg.cholesky(R)
                obs[m] = z @ C.mT + d + torch.randn(N, T, C.shape[0], **kw) @ LR.mT
        latents = {b: z[..., s0:s1].clone() for b, (s0, s1) in self.block_slices.items()}
        return MultimodalData(obs), latents

    # ------------------------------------------------------------------ parameters, I/O
    @property
    def params(self) -> LDSParams:
        """The constrained parameter values (detached copies)."""
        def det(x):
            return x.detach().clone()

        dyn = self.dynamics
        return LDSParams(
            transition_matrices={b: det(dyn[b].transition_matrix) for b in self.block_names},
            transition_covs={b: det(dyn[b].transition_cov) for b in self.block_names},
            init_means={b: det(dyn[b].init_loc) for b in self.block_names},
            init_covs={b: det(dyn[b].init_cov) for b in self.block_names},
            shared_emissions={m: det(self.emissions[m].shared_weight) for m in self.modalities},
            private_emissions={m: det(self.emissions[m].private_weight) for m in self.modalities},
            offsets={m: det(self.emissions[m].offset) for m in self.modalities},
            noise_covs={m: det(self.emissions[m].noise_cov) for m in self.modalities},
        )

    def set_params(self, params: LDSParams) -> "MultimodalLDS":
        """Overwrite the parameters with ``params`` (validated: shapes, finite values, SPD
        covariances, stability, diagonal ``R`` for ``noise="diag"``)."""
        if not isinstance(params, LDSParams):
            raise TypeError(f"params: expected LDSParams, got {type(params).__name__}")
        p = self._param()
        conv = dict(device=p.device, dtype=p.dtype)

        def get(field, key, shape):
            table = getattr(params, field)
            if not isinstance(table, Mapping) or key not in table:
                raise ValueError(f"params.{field}: expected an entry for {key!r}")
            v = torch.as_tensor(table[key]).to(**conv)
            if tuple(v.shape) != tuple(shape):
                raise ValueError(f"params.{field}[{key!r}]: expected shape {tuple(shape)}, got {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"params.{field}[{key!r}]: expected finite values")
            return v

        def spd(name, v):
            if not torch.allclose(v, v.mT, rtol=1e-6, atol=1e-10 * float(v.abs().max().clamp_min(1))):
                raise ValueError(f"{name}: expected a symmetric positive-definite matrix, got a non-symmetric one")
            ev = torch.linalg.eigvalsh(_sym(v))
            if float(ev.min()) <= 0:
                raise ValueError(f"{name}: expected a symmetric positive-definite matrix, "
                                 f"got smallest eigenvalue {float(ev.min()):.3g}")
            return torch.linalg.cholesky(_sym(v))

        with torch.no_grad():
            for b in self.block_names:
                d = self.dynamics[b]
                k = d.dim
                A = get("transition_matrices", b, (k, k))
                LQ = spd(f"params.transition_covs[{b!r}]", get("transition_covs", b, (k, k)))
                L0 = spd(f"params.init_covs[{b!r}]", get("init_covs", b, (k, k)))
                mu = get("init_means", b, (k,))
                d.set_transition_matrix(A)
                d.transition_scale_tril = LQ
                d.init_scale_tril = L0
                d.init_loc.copy_(mu)
            for m in self.modalities:
                e = self.emissions[m]
                D = e.obs_dim
                Cs = get("shared_emissions", m, (D, e.shared_dim))
                Cm = get("private_emissions", m, (D, e.private_dim))
                dm = get("offsets", m, (D,))
                R = get("noise_covs", m, (D, D))
                spd(f"params.noise_covs[{m!r}]", R)
                if e.noise == "diag" and bool((R - torch.diag(R.diagonal())).abs().max() > 0):
                    raise ValueError(f"params.noise_covs[{m!r}]: expected a diagonal matrix (noise='diag')")
                e.shared_weight.copy_(Cs)
                e.private_weight.copy_(Cm)
                e.offset.copy_(dm)
                e.set_noise_cov(_sym(R))
        return self
