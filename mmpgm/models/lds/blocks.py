"""Parameter blocks of the multimodal LDS: one dynamics block per latent block, one linear
emission per modality."""

from __future__ import annotations

import math

import torch
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import constraints

from ..._pyro import TypedPyroModule


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
        self.transition_scale_tril = PyroParam(
            eye * math.sqrt(1 - 0.81), constraint=constraints.lower_cholesky
        )
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
    def initial_cov(self) -> torch.Tensor:
        L = self.init_scale_tril
        return L @ L.mT

    @torch.no_grad()
    def set_transition_matrix(self, A: torch.Tensor) -> None:
        if self.stable:
            norm = float(torch.linalg.matrix_norm(A, ord=2))
            if norm > self.max_spectral_norm * (1 + 1e-12):
                raise ValueError(
                    f"transition matrix: expected spectral norm <= {self.max_spectral_norm} "
                    f"(stable=True), got {norm:.6g}"
                )
            A = A / self.max_spectral_norm
        self.weight.copy_(A.to(self.weight))


class LinearEmission(TypedPyroModule):
    r"""Emission of one modality: :math:`x_t = C_s z^s_t + C_p z^p_t + d + v_t`,
    :math:`v_t \sim \mathcal N(0, R)`, ``noise`` ``"diag"`` or ``"full"`` :math:`R`."""

    def __init__(self, obs_dim: int, shared_dim: int, private_dim: int, noise: str = "diag"):
        super().__init__()
        self.obs_dim, self.shared_dim, self.private_dim, self.noise = (
            obs_dim,
            shared_dim,
            private_dim,
            noise,
        )
        g = torch.Generator().manual_seed(0)
        self.shared_weight = nn.Parameter(0.1 * torch.randn(obs_dim, shared_dim, generator=g))
        self.private_weight = nn.Parameter(0.1 * torch.randn(obs_dim, private_dim, generator=g))
        self.offset = nn.Parameter(torch.zeros(obs_dim))
        if noise == "diag":
            self.noise_scale = PyroParam(torch.ones(obs_dim), constraint=constraints.positive)
        else:
            self.noise_scale_tril = PyroParam(
                torch.eye(obs_dim), constraint=constraints.lower_cholesky
            )
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
