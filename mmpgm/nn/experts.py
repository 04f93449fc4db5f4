r"""Per-modality expert networks of the gated mixture (paper eq. 14).

An expert :math:`f_m` reads only its own stream :math:`x^m` (standardized, unobserved frames
zeroed) and its observation mask, and returns per-frame output parameters and the activations
of its last hidden layer (used by the co-learning regularizer, eq. 18-20). Both variants are
strictly causal:

* ``"mlp"``: a feed-forward net on the stacked frames :math:`x^m_{t-k}, \dots, x^m_t`
  (``context = k`` past frames, zero before the start);
* ``"recurrent"``: a per-frame input layer followed by a GRU over :math:`x^m_{\le t}`.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_choice

__all__ = ["Expert", "causal_context", "check_choice"]


def causal_context(x: torch.Tensor, context: int) -> torch.Tensor:
    """Stack ``x (N, T, D)`` with its ``context`` previous frames (zeros before t=0):
    ``(N, T, D*(context+1))``."""
    if context == 0:
        return x
    frames = [x]
    for k in range(1, context + 1):
        shifted = torch.zeros_like(x)
        if k < x.shape[1]:
            shifted[:, k:] = x[:, :-k]
        frames.append(shifted)
    return torch.cat(frames, -1)


class Expert(nn.Module):
    r"""One modality's expert.

    Parameters
    ----------
    in_dim : int
        ``D_m``.
    out_dim : int
        Number of output parameters per frame (1 logit, ``K`` class logits, or loc and scale).
    hidden_dim : int
        Width ``H`` of the hidden layers (and of the GRU state).
    num_layers : int
        Hidden layers of the feed-forward part.
    kind : {"mlp", "recurrent"}
    context : int
        Past frames stacked to the input (both kinds).

    ``forward(x (N, T, D_m), mask (N, T)) -> (out (N, T, out_dim), hidden (N, T, H))``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 32,
        num_layers: int = 1,
        kind: str = "mlp",
        context: int = 0,
    ):
        super().__init__()
        check_choice("expert", kind, ("mlp", "recurrent"))
        self.kind = kind
        self.context = context
        width = (in_dim + 1) * (context + 1)
        layers = []
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.Tanh()]
            width = hidden_dim
        self.body = nn.Sequential(*layers)
        self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True) if kind == "recurrent" else None
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        m = mask.to(x.dtype)[..., None]
        inp = causal_context(torch.cat([x * m, m], -1), self.context)
        h = self.body(inp)
        if self.rnn is not None:
            h, _ = self.rnn(h)
        return self.out(h), h
