r"""Categorical emissions: :math:`x_t \mid s_t=i, p_t=j \sim \mathrm{Categorical}(\theta_{ij})`."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from .base import ObservationModel


class CategoricalObservation(ObservationModel):
    r"""Categorical emission over ``num_categories`` symbols.

    Data for this modality has ``obs_dim = 1`` holding the class index (NaN or a negative value =
    missing). Prior: :math:`\theta_{ij} \sim \mathrm{Dirichlet}(\alpha \mathbf{1})` with
    ``alpha = 1.1`` (keeps every probability positive under MAP).
    """

    discrete = True
    kind = "categorical"
    concentration = 1.1

    def __init__(self, num_categories, num_shared_states, num_private_states):
        if not isinstance(num_categories, int) or num_categories < 2:
            raise ValueError(f"num_categories: expected an int >= 2, got {num_categories!r}")
        super().__init__(num_categories, num_shared_states, num_private_states)
        self.num_categories = num_categories
        g = torch.Generator().manual_seed(0)
        probs = torch.rand(num_shared_states, num_private_states, num_categories, generator=g) + 1.0
        self.probs = PyroParam(probs / probs.sum(-1, keepdim=True), constraint=constraints.simplex)

    @property
    def data_dim(self):
        return 1

    def check_values(self, name, x, mask):
        """Observed frames must hold a category index ``0 .. num_categories - 1`` (a value out of
        range would otherwise be clamped into it)."""
        v = x[..., 0][mask]
        bad = (v != v.round()) | (v < 0) | (v > self.num_categories - 1)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected category indices in [0, {self.num_categories - 1}] on the "
                f"observed frames (NaN or a negative int = missing), got "
                f"{sorted(set(v[bad].tolist()))[:5]}"
            )

    def _index(self, x):
        return x[..., 0].clamp(0, self.num_categories - 1).long()

    def log_prob(self, x):
        idx = self._index(x)
        logp = self.probs.log()  # (K_s, K_m, C)
        return logp.permute(2, 0, 1)[idx]  # (..., K_s, K_m)

    def distribution(self, shared, private):
        return dist.Categorical(Vindex(self.probs)[shared, private, :])

    def pyro_value(self, x):
        return self._index(x)

    def log_prior(self):
        conc = torch.full_like(self.probs, self.concentration)
        return dist.Dirichlet(conc).log_prob(self.probs).sum()

    def mean(self):
        return self.probs

    def covariance(self):
        p = self.probs
        return torch.diag_embed(p) - p[..., :, None] * p[..., None, :]

    def sample_at(self, shared, private, generator=None):
        p = self.probs[shared, private]
        flat = p.reshape(-1, self.num_categories)
        draw = torch.multinomial(flat, 1, generator=generator).reshape(p.shape[:-1] + (1,))
        return draw.to(p.dtype)

    def sufficient_statistics(self, x, weights):
        """``counts (K_s, K_m, C)``: weighted category counts."""
        onehot = torch.nn.functional.one_hot(self._index(x), self.num_categories).to(weights)
        return {"counts": torch.einsum("fij,fc->ijc", weights, onehot)}

    @torch.no_grad()
    def m_step_from_statistics(self, stats):
        counts = stats["counts"] + (self.concentration - 1.0)
        self.probs = counts / counts.sum(-1, keepdim=True)

    @torch.no_grad()
    def init_from_data(self, x, generator=None, means=None):
        onehot = torch.nn.functional.one_hot(self._index(x), self.num_categories).to(self.probs)
        freq = onehot.mean(0) + 0.1
        noise = torch.rand(self.probs.shape, generator=generator, dtype=self.probs.dtype).to(
            self.probs.device
        )
        p = freq * (0.5 + noise)
        self.probs = p / p.sum(-1, keepdim=True)

    def num_free_parameters(self):
        return self.num_shared_states * self.num_private_states * (self.num_categories - 1)
