r"""Gate networks of the gated mixture (paper eq. 15-17).

The gate reads all streams (standardized, unobserved frames zeroed, plus the observation masks)
and gives, per frame, logits of the expert indicator :math:`c_t`:

* :class:`ConditionalGate` (``recurrent=False``, eq. 17): :math:`p(c_t \mid x_t) =
  \mathrm{softmax}(\mathrm{MLP}(x_{t-k..t}))`;
* :class:`ConditionalGate` (``recurrent=True``, eq. 15): the logits read a causal GRU state
  :math:`h'_t` over :math:`x_{\le t}`;
* :class:`MarkovGate` (eq. 16): :math:`p(c_1 \mid x_1)` and transition logits
  :math:`B_{ij} + u_t(x)_{ij}`, a learned base matrix ``B`` (sticky at start) whose rows are
  modulated by the network output :math:`u_t` at frame ``t``.

All are strictly causal. Masking of unobserved experts is done by the model
(:func:`mmpgm.ops.mixture.masked_log_weights`).
"""

from __future__ import annotations

import torch
from torch import nn

from .experts import causal_context

__all__ = ["GateEncoder", "ConditionalGate", "MarkovGate"]


class GateEncoder(nn.Module):
    """Features ``(N, T, H)`` from all streams: MLP over ``context`` past frames, optionally a
    GRU."""

    def __init__(self, in_dims, hidden_dim: int = 32, context: int = 0, recurrent: bool = False):
        super().__init__()
        width = sum(d + 1 for d in in_dims) * (context + 1)
        self.context = context
        self.body = nn.Sequential(nn.Linear(width, hidden_dim), nn.Tanh())
        self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True) if recurrent else None

    def forward(self, xs, masks):
        cols = []
        for x, mask in zip(xs, masks, strict=True):
            m = mask.to(x.dtype)[..., None]
            cols += [x * m, m]
        h = self.body(causal_context(torch.cat(cols, -1), self.context))
        if self.rnn is not None:
            h, _ = self.rnn(h)
        return h


class ConditionalGate(nn.Module):
    """``forward(xs, masks) -> logits (N, T, M)`` (eq. 17, or eq. 15 with ``recurrent=True``)."""

    def __init__(self, in_dims, hidden_dim: int = 32, context: int = 0, recurrent: bool = False):
        super().__init__()
        self.encoder = GateEncoder(in_dims, hidden_dim, context, recurrent)
        self.head = nn.Linear(hidden_dim, len(in_dims))

    def forward(self, xs, masks):
        return self.head(self.encoder(xs, masks))


class MarkovGate(nn.Module):
    """``forward(xs, masks) -> (initial_logits (N, M), transition_logits (N, T, M, M))`` (eq. 16).

    ``transition_logits[n, t, i, j]`` are the logits of
    :math:`p(c_t = j \\mid c_{t-1} = i, x_{\\le t})`; ``stickiness`` is the initial extra logit on
    staying with the same expert.
    """

    def __init__(
        self,
        in_dims,
        hidden_dim: int = 32,
        context: int = 0,
        recurrent: bool = False,
        stickiness: float = 2.0,
    ):
        super().__init__()
        M = len(in_dims)
        self.num_experts = M
        self.encoder = GateEncoder(in_dims, hidden_dim, context, recurrent)
        self.head = nn.Linear(hidden_dim, M + M * M)
        self.base_initial = nn.Parameter(torch.zeros(M))
        self.base_transition = nn.Parameter(stickiness * torch.eye(M))

    def forward(self, xs, masks):
        M = self.num_experts
        u = self.head(self.encoder(xs, masks))
        N, T = u.shape[:2]
        initial = self.base_initial + u[:, 0, :M]
        transition = self.base_transition + u[..., M:].reshape(N, T, M, M)
        return initial, transition
