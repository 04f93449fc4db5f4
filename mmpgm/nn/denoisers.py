r"""Denoising networks of the section 6.4 pipeline (paper Fig. 11a-b).

* :class:`DenoisingAutoencoder`: a denoising autoencoder [Vincent et al., 2010] on one item
  (a frame vector ``(..., D)``): an encoder MLP down to a bottleneck and a mirrored decoder.
  With ``residual=True`` (default) it predicts the *correction*,
  :math:`f(x) = x + \mathrm{dec}(\mathrm{enc}(x))`, and the decoder's last layer starts at zero,
  so an untrained denoiser is the identity (it starts from the noisy input instead of from
  noise, and learns only what the noise changed).
* :class:`DenoiserGate`: the conditional gate (paper eq. 17) over ``K`` denoisers, logits
  ``(..., K)`` of :math:`p(c_t \mid x_t)` from one item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_bool, check_int

__all__ = ["DenoisingAutoencoder", "DenoiserGate"]


def _check_dims(name: str, dims) -> tuple[int, ...]:
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        raise TypeError(f"{name}: expected a sequence of positive ints, got {dims!r}")
    for i, d in enumerate(dims):
        check_int(f"{name}[{i}]", d)
    return tuple(int(d) for d in dims)


class DenoisingAutoencoder(nn.Module):
    r"""Denoising autoencoder ``(..., D) -> (..., D)``.

    Parameters
    ----------
    input_dim : int
        ``D``, the item size.
    hidden_dims : sequence of int
        Widths of the encoder's hidden layers (the decoder mirrors them).
    bottleneck_dim : int
        Width of the code.
    residual : bool
        Output :math:`x + \mathrm{dec}(\mathrm{enc}(x))` with the last decoder layer
        zero-initialized (identity at the start; default), or :math:`\mathrm{dec}(\mathrm{enc}
        (x))` with PyTorch's default initialization.

    ``forward(x (..., D)) -> (..., D)``: ReLU after every hidden layer and the code, linear
    output.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (256,),
        bottleneck_dim: int = 64,
        *,
        residual: bool = True,
    ):
        super().__init__()
        check_int("input_dim", input_dim)
        hidden_dims = _check_dims("hidden_dims", hidden_dims)
        check_int("bottleneck_dim", bottleneck_dim)
        self.residual = check_bool("residual", residual)
        self.input_dim = input_dim
        self.hidden_dims = hidden_dims
        self.bottleneck_dim = bottleneck_dim
        widths = (input_dim, *hidden_dims, bottleneck_dim)
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            enc += [nn.Linear(a, b), nn.ReLU()]
        dec: list[nn.Module] = []
        back = widths[::-1]
        for i, (a, b) in enumerate(zip(back[:-1], back[1:], strict=True)):
            dec.append(nn.Linear(a, b))
            if i < len(back) - 2:
                dec.append(nn.ReLU())
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        if self.residual:
            last = self.decoder[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x: expected a last axis of size input_dim={self.input_dim}, got shape "
                f"{tuple(x.shape)}"
            )
        out = self.decoder(self.encoder(x))
        return x + out if self.residual else out


class DenoiserGate(nn.Module):
    r"""Conditional gate over ``K`` denoisers: ``(..., D) -> (..., K)`` logits,
    :math:`\mathrm{Linear}(\tanh(\mathrm{Linear}(x)))` (paper eq. 17 on one item)."""

    def __init__(self, input_dim: int, num_experts: int, hidden_dim: int = 64):
        super().__init__()
        check_int("input_dim", input_dim)
        check_int("num_experts", num_experts)
        check_int("hidden_dim", hidden_dim)
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
