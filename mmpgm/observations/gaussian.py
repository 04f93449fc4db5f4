r"""Gaussian emissions indexed by (shared state, private state).

Priors (weak, data-scaled by :meth:`init_from_data`) make MAP fitting stable:
:math:`\mu_{ij} \sim N(\mu_0, \tau^2 I)`; diagonal variances
:math:`\sigma^2_{ijd} \sim \mathrm{InverseGamma}(\alpha_0, \beta_0)`; full covariances
:math:`\Sigma_{ij} \sim \mathrm{InverseWishart}(\nu_0, \Psi_0)` (unnormalized density).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from ..ops.gaussian import diagonal_gaussian_linear_terms, diagonal_gaussian_state_log_probs
from ..ops.kmeans import kmeans_plus_plus
from .base import ObservationModel


def _variance_floor(x: torch.Tensor) -> torch.Tensor:
    """Smallest variance trusted per feature of ``x (F, D)``: a few ulps of its mean square, so
    the floor scales with the data's units (an absolute floor made fits on data measured in
    tiny units wrong). A feature that is identically 0 has no units of its own: it takes the
    largest mean square of the modality's features (1 where all are 0, e.g. a constant feature
    after standardization), not the smallest positive float, whose prior let SVI shrink the
    variance until float32 overflowed."""
    mean_square = x.square().mean(0)
    fallback = mean_square.max()
    fallback = torch.where(fallback > 0, fallback, torch.ones_like(fallback))
    mean_square = torch.where(mean_square > 0, mean_square, fallback)
    return 16 * torch.finfo(x.dtype).eps * mean_square


class _GaussianBase(ObservationModel):
    def __init__(self, obs_dim, num_shared_states, num_private_states):
        super().__init__(obs_dim, num_shared_states, num_private_states)
        K = (num_shared_states, num_private_states)
        g = torch.Generator().manual_seed(0)
        self.loc = PyroParam(torch.randn(K + (obs_dim,), generator=g))
        # prior hyper-parameters (buffers, set from data scale by init_from_data)
        self.register_buffer("prior_loc", torch.zeros(obs_dim))
        self.register_buffer("prior_scale", torch.full((obs_dim,), 10.0))
        self.register_buffer("prior_var", torch.full((obs_dim,), 0.01))  # prior mode of variance

    @property
    def data_dim(self):
        return self.obs_dim

    def _loc_log_prior(self):
        return dist.Normal(self.prior_loc, self.prior_scale).log_prob(self.loc).sum()

    def _set_prior_from(self, x):
        mean = x.mean(0)
        var = (
            x.var(0, unbiased=False).clamp_min(_variance_floor(x))
            if x.shape[0] > 1
            else torch.ones_like(mean)
        )
        self.prior_loc = mean.detach().to(self.prior_loc)
        self.prior_scale = (10.0 * var.sqrt()).detach().to(self.prior_scale)
        self.prior_var = (0.01 * var).detach().to(self.prior_var)
        return mean, var

    def _loc_given_precision(self, sx, n, precision):
        """Mode of mu given the covariance: ``(n P + T)^{-1} (P sx + T mu0)``, T = prior
        precision."""
        prior_prec = 1.0 / self.prior_scale**2
        if precision.dim() == 3:  # diagonal (K_s, K_m, D)
            return (precision * sx + prior_prec * self.prior_loc) / (
                n[..., None] * precision + prior_prec
            )
        A = n[..., None, None] * precision + torch.diag_embed(prior_prec)
        b = (precision @ sx[..., None]).squeeze(-1) + prior_prec * self.prior_loc
        return torch.linalg.solve(A, b[..., None]).squeeze(-1)

    def mean(self):
        return self.loc

    rescalable = True

    def _check_units(self, shift, scale):
        """``shift``, ``scale`` as ``(obs_dim,)`` tensors of the model's dtype/device."""
        out = []
        for name, v in (("shift", shift), ("scale", scale)):
            v = torch.as_tensor(v).to(self.loc)
            if v.shape != (self.obs_dim,) or not bool(torch.isfinite(v).all()):
                raise ValueError(
                    f"{name}: expected {self.obs_dim} finite values (obs_dim), got shape "
                    f"{tuple(v.shape)}"
                )
            out.append(v)
        if not bool((out[1] > 0).all()):
            raise ValueError(f"scale: expected positive values, got {out[1].tolist()}")
        return out

    @torch.no_grad()
    def _rescale_loc_and_prior(self, shift, scale):
        r""":math:`\mu \to (\mu - m) / s`, :math:`\mu_0 \to (\mu_0 - m) / s`,
        :math:`\tau \to \tau / s`, the prior variance mode :math:`\to v / s^2`."""
        self.loc = (self.loc - shift) / scale
        self.prior_loc = (self.prior_loc - shift) / scale
        self.prior_scale = self.prior_scale / scale
        self.prior_var = self.prior_var / scale.square()


class DiagonalGaussianObservation(_GaussianBase):
    r""":math:`x_t \mid s_t=i, p_t=j \sim N(\mu_{ij}, \mathrm{diag}(\sigma^2_{ij}))`."""

    kind = "diag"

    alpha0 = 1.0  # InverseGamma shape of the variance prior

    def __init__(self, obs_dim, num_shared_states, num_private_states):
        super().__init__(obs_dim, num_shared_states, num_private_states)
        K = (num_shared_states, num_private_states)
        self.scale = PyroParam(torch.ones(K + (obs_dim,)), constraint=constraints.positive)

    def log_prob(self, x):
        """``x (..., D)`` -> ``(..., K_s, K_m)``: one matrix product of the expanded square,
        centred at the mean of the means (:func:`mmpgm.ops.gaussian.
        diagonal_gaussian_state_log_probs`)."""
        return diagonal_gaussian_state_log_probs(x, self.loc, self.scale)

    def masked_log_prob(self, x, mask):
        """The mask enters the matrix product's features (a missing frame's are 0), so no
        filling or masking pass; a subclass that changes :meth:`log_prob` (e.g. an embedding)
        gets the generic :meth:`ObservationModel.masked_log_prob` instead."""
        if type(self).log_prob is not DiagonalGaussianObservation.log_prob:
            return super().masked_log_prob(x, mask)
        return diagonal_gaussian_state_log_probs(x, self.loc, self.scale, mask)

    @property
    def linear_feature_dim(self):
        return 2 * self.obs_dim + 1 if self._linear_log_prob_applies() else None

    def _linear_log_prob_applies(self) -> bool:
        cls = type(self)
        return (
            cls.log_prob is DiagonalGaussianObservation.log_prob
            and cls.masked_log_prob is DiagonalGaussianObservation.masked_log_prob
        )

    def linear_log_prob(self, x, mask, *, out=None):
        """The expanded square (:func:`mmpgm.ops.gaussian.diagonal_gaussian_linear_terms`, as
        :meth:`masked_log_prob`); None for a subclass that changes :meth:`log_prob` or
        :meth:`masked_log_prob`."""
        if not self._linear_log_prob_applies():
            return None
        return diagonal_gaussian_linear_terms(x, self.loc, self.scale, mask, out=out)

    def distribution(self, shared, private):
        loc = Vindex(self.loc)[shared, private, :]
        scale = Vindex(self.scale)[shared, private, :]
        return dist.Normal(loc, scale).to_event(1)

    def log_prior(self):
        beta0 = self.prior_var * (self.alpha0 + 1.0)  # so the prior mode is prior_var
        # InverseGamma(alpha0, beta0) density of var = scale^2, written in log scale: torch's
        # (a transformed Gamma) overflows its gradient in float32 for data scales ~1e8
        a = self.alpha0
        log_scale = self.scale.log()
        log_var_prior = (
            a * beta0.log() - math.lgamma(a) - 2 * (a + 1.0) * log_scale - beta0 * self.scale**-2
        )
        return self._loc_log_prior() + log_var_prior.sum()

    def covariance(self):
        return torch.diag_embed(self.scale**2)

    def sample_at(self, shared, private, generator=None):
        loc, scale = self.loc[shared, private], self.scale[shared, private]
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + scale * eps

    def sufficient_statistics(self, x, weights):
        """``n (K_s, K_m)``: summed weights; ``sx``, ``sxx (K_s, K_m, D)``: weighted sums of
        :math:`x_d` and :math:`x_d^2`."""
        return {
            "n": weights.sum(0),
            "sx": torch.einsum("fij,fd->ijd", weights, x),
            "sxx": torch.einsum("fij,fd->ijd", weights, x * x),
        }

    @torch.no_grad()
    def m_step_from_statistics(self, stats):
        n, sx, sxx = stats["n"], stats["sx"], stats["sxx"]
        mu = self._loc_given_precision(sx, n, self.scale**-2)
        ss = (sxx - 2 * mu * sx + n[..., None] * mu**2).clamp_min(0.0)
        beta0 = self.prior_var * (self.alpha0 + 1.0)
        var = (beta0 + 0.5 * ss) / (self.alpha0 + 1.0 + 0.5 * n[..., None])
        self.loc = mu
        self.scale = var.sqrt()

    @torch.no_grad()
    def init_from_data(self, x, generator=None, means=None):
        """Priors from the scale of ``x (F, D)``; means from ``means (K_s, K_m, D)`` or k-means++
        seeds; variances from the spread of ``x`` around its nearest mean."""
        self._set_prior_from(x)
        if means is None:
            means = kmeans_plus_plus(x, self.num_shared_states * self.num_private_states, generator)
        means = means.reshape(self.loc.shape).to(self.loc)
        nearest = torch.cdist(x, means.reshape(-1, self.obs_dim)).argmin(-1)
        var = ((x - means.reshape(-1, self.obs_dim)[nearest]) ** 2).mean(0)
        var = var.clamp_min(1e-6 * self.prior_var.max() / 0.01)  # relative: units-invariant
        self.loc = means
        self.scale = var.sqrt().expand(self.scale.shape).clone().to(self.scale)

    def num_free_parameters(self):
        return self.num_shared_states * self.num_private_states * 2 * self.obs_dim

    @torch.no_grad()
    def rescale_(self, shift, scale):
        r"""Units :math:`x' = (x - m) / s` (see :meth:`ObservationModel.rescale_`):
        :math:`\mu \to (\mu - m) / s`, :math:`\sigma \to \sigma / s`, and the prior's
        :math:`\mu_0, \tau, \sigma^2_0` alike. Exact: the InverseGamma and Normal priors
        change by the constant :math:`3 \sum_{ijd} \log s_d`."""
        shift, scale = self._check_units(shift, scale)
        self._rescale_loc_and_prior(shift, scale)
        self.scale = self.scale / scale


class FullGaussianObservation(_GaussianBase):
    r""":math:`x_t \mid s_t=i, p_t=j \sim N(\mu_{ij}, L_{ij} L_{ij}^\top)` (full covariance)."""

    kind = "full"

    def __init__(self, obs_dim, num_shared_states, num_private_states):
        super().__init__(obs_dim, num_shared_states, num_private_states)
        K = (num_shared_states, num_private_states)
        self.scale_tril = PyroParam(
            torch.eye(obs_dim).expand(K + (obs_dim, obs_dim)).clone(),
            constraint=constraints.lower_cholesky,
        )

    @property
    def nu0(self):
        return self.obs_dim + 2.0

    def log_prob(self, x):
        d = dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril)
        return d.log_prob(x[..., None, None, :])

    def distribution(self, shared, private):
        loc = Vindex(self.loc)[shared, private, :]
        tril = Vindex(self.scale_tril)[shared, private, :, :]
        return dist.MultivariateNormal(loc, scale_tril=tril)

    def log_prior(self):
        D = self.obs_dim
        L = self.scale_tril
        logdet = 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        psi = torch.diag_embed(self.prior_var * (self.nu0 + D + 1))  # prior mode = prior_var
        Linv = torch.linalg.solve_triangular(
            L, torch.eye(D, dtype=L.dtype, device=L.device), upper=False
        )
        trace = (psi.diagonal() * (Linv**2).sum(-2)).sum(-1)  # tr(Psi Sigma^-1), Psi diagonal
        iw = (-0.5 * (self.nu0 + D + 1) * logdet - 0.5 * trace).sum()
        return self._loc_log_prior() + iw

    def covariance(self):
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    def sample_at(self, shared, private, generator=None):
        loc, L = self.loc[shared, private], self.scale_tril[shared, private]
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + (L @ eps[..., None]).squeeze(-1)

    @torch.no_grad()
    def sufficient_statistics(self, x, weights):
        """``n (K_s, K_m)``, ``sx (K_s, K_m, D)``, ``sxx (K_s, K_m, D, D)``: weighted sums of
        1, :math:`x` and :math:`x x^\\top`."""
        return {
            "n": weights.sum(0),
            "sx": torch.einsum("fij,fd->ijd", weights, x),
            "sxx": torch.einsum("fij,fd,fe->ijde", weights, x, x),
        }

    @torch.no_grad()
    def m_step_from_statistics(self, stats):
        D = self.obs_dim
        n, sx, sxx = stats["n"], stats["sx"], stats["sxx"]
        cov = self.covariance()
        mu = self._loc_given_precision(sx, n, torch.linalg.inv(cov))
        outer = mu[..., :, None] * sx[..., None, :]
        S = (
            sxx
            - outer
            - outer.transpose(-1, -2)
            + n[..., None, None] * mu[..., :, None] * mu[..., None, :]
        )
        # the scatter about the mean cancels sxx's terms: for a feature constant over a state's
        # frames it is 0 up to rounding of about eps * sxx_dd, of either sign, far above the
        # prior's share there; a ridge of a few ulps of sxx_dd keeps the covariance positive
        # definite (the Cholesky failed: EM on data with a constant feature raised)
        ridge = 16 * torch.finfo(S.dtype).eps * sxx.diagonal(dim1=-2, dim2=-1).abs()
        psi = torch.diag_embed(self.prior_var * (self.nu0 + D + 1) + ridge)
        cov = (psi + S) / (self.nu0 + n[..., None, None] + D + 1)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        self.loc = mu
        self.scale_tril = torch.linalg.cholesky(cov)

    @torch.no_grad()
    def init_from_data(self, x, generator=None, means=None):
        """Priors from the scale of ``x (F, D)``; means from ``means`` or k-means++ seeds;
        covariances from the spread of ``x`` around its nearest mean."""
        self._set_prior_from(x)
        if means is None:
            means = kmeans_plus_plus(x, self.num_shared_states * self.num_private_states, generator)
        means = means.reshape(self.loc.shape).to(self.loc)
        flat = means.reshape(-1, self.obs_dim)
        xc = x - flat[torch.cdist(x, flat).argmin(-1)]
        self.loc = means
        ridge = 1e-6 * float(self.prior_var.max()) / 0.01  # relative to the data's variance
        cov = xc.T @ xc / max(1, x.shape[0]) + ridge * torch.eye(
            self.obs_dim, dtype=x.dtype, device=x.device
        )
        self.scale_tril = (
            torch.linalg.cholesky(cov).expand(self.scale_tril.shape).clone().to(self.scale_tril)
        )

    def num_free_parameters(self):
        D = self.obs_dim
        return self.num_shared_states * self.num_private_states * (D + D * (D + 1) // 2)

    @torch.no_grad()
    def rescale_(self, shift, scale):
        r"""Units :math:`x' = (x - m) / s` (see :meth:`ObservationModel.rescale_`):
        :math:`\mu \to (\mu - m) / s`, :math:`L \to S^{-1} L` (so
        :math:`\Sigma \to S^{-1} \Sigma S^{-1}`, :math:`S = \mathrm{diag}(s)`; still lower
        triangular with a positive diagonal), and the prior's :math:`\mu_0, \tau, \Psi_0`
        alike. Exact: the priors change by a constant."""
        shift, scale = self._check_units(shift, scale)
        self._rescale_loc_and_prior(shift, scale)
        self.scale_tril = self.scale_tril / scale[:, None]
