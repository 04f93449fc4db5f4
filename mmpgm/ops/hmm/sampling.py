"""Forward-filter backward-sample of joint paths."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..._validation import check_int
from .forward_backward import _Model, _small_steps_single_thread
from .viterbi import _unravel


@_small_steps_single_thread
def factorial_sample(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> torch.Tensor:
    r"""Forward-filter backward-sample joint state paths :math:`z_{1:T} \sim p(z | x)`.

    Parameters
    ----------
    initial_probs, transition_probs, log_emissions, transition, max_group_states
        As in :func:`factorial_log_likelihood` (``transition`` is that of the forward filter;
        the backward draws are chain-wise). Every choice consumes ``generator`` identically.
    num_samples : int
        Number of paths ``S`` per sequence.
    generator : torch.Generator, optional
        Source of randomness (default: torch's global one).

    Returns
    -------
    Tensor ``(num_samples,) + batch_shape + (T, C)`` int64.
    """
    check_int("num_samples", num_samples)
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, transition, max_group_states)
        alphas, _, _ = m.forward()
        S, B, T, P, sizes = num_samples, m.B, m.T, m.P, m.sizes
        C = len(sizes)

        def draw(probs):  # probs (S*B, P)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

        out = torch.empty(S, B, T, dtype=torch.long, device=alphas.device)
        w = alphas[:, -1].expand(S, B, P).reshape(S * B, P)
        cur = draw(w)
        out[:, :, -1] = cur.reshape(S, B)
        for t in range(T - 2, -1, -1):
            nxt = _unravel(cur, sizes)
            w = alphas[:, t].expand(S, B, P).reshape(S * B, 1, P).reshape((S * B,) + tuple(sizes))
            for c in range(C):
                col = m.trans[c][:, nxt[c]].transpose(0, 1)  # (S*B, K_c): A_c(z_c, next_c)
                shape = [S * B] + [1] * C
                shape[c + 1] = sizes[c]
                w = w * col.reshape(shape)
            cur = draw(w.reshape(S * B, P))
            out[:, :, t] = cur.reshape(S, B)
        path = torch.stack(_unravel(out, sizes), -1)
        return path.reshape((S,) + m.batch_shape + (T, C))
