"""Observation likelihoods of the MVRNN decoders: diagonal Gaussian and Bernoulli, and the
factory that accepts a name or a ready module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.gaussian import gaussian_log_prob
from .heads import _inv_scale, split_loc_scale

__all__ = ["GaussianLikelihood", "BernoulliLikelihood", "LIKELIHOODS", "make_likelihood"]


class GaussianLikelihood(nn.Module):
    r"""Diagonal Gaussian observation model :math:`\mathcal N(x; \mu, \mathrm{diag}\,\sigma^2)`;
    the decoder emits ``2 D`` numbers (loc, raw scale with :math:`\sigma = \mathrm{softplus} +
    10^{-3}`)."""

    kind = "gaussian"

    def __init__(self, obs_dim: int):
        super().__init__()
        self.obs_dim = obs_dim
        self.num_params = 2 * obs_dim

    def log_prob(self, x, raw):
        loc, scale = split_loc_scale(raw)
        return gaussian_log_prob(x, loc, scale)

    def mean(self, raw):
        return raw[..., : self.obs_dim]

    def variance(self, raw):
        return split_loc_scale(raw)[1].pow(2)

    def sample(self, raw, generator=None):
        loc, scale = split_loc_scale(raw)
        eps = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
        return loc + scale * eps

    def distribution(self, raw):
        import pyro.distributions as dist

        loc, scale = split_loc_scale(raw)
        return dist.Normal(loc, scale).to_event(1)

    @torch.no_grad()
    def init_bias(self, bias: torch.Tensor, x: torch.Tensor) -> None:
        """Start the decoder at the data's per-dimension mean and standard deviation (``x``:
        observed frames ``(F, D)``)."""
        D = self.obs_dim
        mu = x.mean(0)
        sd = x.std(0) if x.shape[0] > 1 else torch.ones_like(mu)
        bias[:D] = mu.to(bias)
        bias[D:] = _inv_scale(sd.clamp_min(0.05)).to(bias)


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli observations in ``{0, 1}`` (the decoder emits ``D`` logits)."""

    kind = "bernoulli"

    def __init__(self, obs_dim: int):
        super().__init__()
        self.obs_dim = obs_dim
        self.num_params = obs_dim

    def check_values(self, name, x, mask):
        """Observed frames must hold values in [0, 1] (binary data or probabilities): outside
        it the cross-entropy is no log-likelihood and training runs to minus infinity."""
        v = x[mask]
        bad = (v < 0) | (v > 1)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected values in [0, 1] for likelihood='bernoulli' on the observed "
                f"frames, got {int(bad.sum())} outside (e.g. {float(v[bad][0]):.6g})"
            )

    def log_prob(self, x, raw):
        return -F.binary_cross_entropy_with_logits(raw, x, reduction="none").sum(-1)

    def mean(self, raw):
        return torch.sigmoid(raw)

    def variance(self, raw):
        p = torch.sigmoid(raw)
        return p * (1 - p)

    def sample(self, raw, generator=None):
        return torch.bernoulli(torch.sigmoid(raw), generator=generator)

    def distribution(self, raw):
        import pyro.distributions as dist

        return dist.Bernoulli(logits=raw).to_event(1)

    @torch.no_grad()
    def init_bias(self, bias, x):
        p = x.mean(0).clamp(0.01, 0.99)
        bias[:] = torch.log(p / (1 - p)).to(bias)


LIKELIHOODS = {"gaussian": GaussianLikelihood, "bernoulli": BernoulliLikelihood}


def make_likelihood(spec, obs_dim: int, name: str = "likelihood") -> nn.Module:
    """A likelihood module from a name in :data:`LIKELIHOODS` or a ready module (which must have
    ``num_params``, ``log_prob(x, raw)``, ``mean(raw)``, ``variance(raw)``, ``sample(raw,
    generator)``, ``distribution(raw)`` and ``kind``; and may have ``check_values(name, x,
    mask)``, which the model calls on the observed frames of its data)."""
    if isinstance(spec, str):
        if spec not in LIKELIHOODS:
            raise ValueError(
                f"{name}: expected one of {sorted(LIKELIHOODS)} or a module, got {spec!r}"
            )
        return LIKELIHOODS[spec](obs_dim)
    needed = ("num_params", "log_prob", "mean", "variance", "sample", "distribution", "kind")
    if not isinstance(spec, nn.Module) or not all(hasattr(spec, a) for a in needed):
        raise TypeError(
            f"{name}: expected a likelihood name or an nn.Module with {needed}, got {spec!r}"
        )
    return spec
