"""One frame at a time: the streaming filter step and the one-step prediction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .forward_backward import _Model
from .transitions import _Transition, transition_groups


def factorial_filter_step(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emission: torch.Tensor,
    filtered: torch.Tensor | None = None,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
):
    r"""One step of the forward filter, for streaming use (constant memory).

    The same prediction and conditioning, with the same grouping of chains, as one frame of
    :func:`factorial_forward`.

    Parameters
    ----------
    initial_probs, transition_probs, transition, max_group_states
        As in :func:`factorial_log_likelihood`.
    log_emission : ``batch_shape + (K_1, ..., K_C)``
        Log factor of frame ``t`` (0 where nothing is observed).
    filtered : ``batch_shape + (K_1, ..., K_C)``, optional
        :math:`p(z_{t-1} \mid x_{1:t-1})`; None (default) at the first frame.

    Returns
    -------
    filtered : :math:`p(z_t \mid x_{1:t})`, same shape as ``log_emission``.
    log_increment : ``batch_shape``, :math:`\log p(x_t \mid x_{1:t-1})`.
    """
    C = len(initial_probs)
    if filtered is not None and filtered.shape != log_emission.shape:
        raise ValueError(
            f"filtered: expected the shape of log_emission {tuple(log_emission.shape)}, got "
            f"{tuple(filtered.shape)}"
        )
    with torch.no_grad():
        m = _Model(
            initial_probs,
            transition_probs,
            log_emission.unsqueeze(-C - 1),
            transition,
            max_group_states,
        )
        pred = m.init_flat if filtered is None else m.predict(filtered.reshape(m.B, m.P))
        a, c = m.condition(pred, m.E[:, 0])
        out = a.reshape(log_emission.shape)
        return out, (c.log() + m.shift[:, 0]).reshape(m.batch_shape)


def factorial_predict(
    filtered: torch.Tensor,
    transition_probs: Sequence[torch.Tensor],
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> torch.Tensor:
    r"""One-step state prediction :math:`p(z_{t+1} \mid x_{1:t})` from filtered marginals.

    Parameters
    ----------
    filtered : ``batch_shape + (K_1, ..., K_C)``
        :math:`p(z_t \mid x_{1:t})`.
    transition_probs, transition, max_group_states
        As in :func:`factorial_log_likelihood`.

    Returns
    -------
    Tensor, same shape as ``filtered``.
    """
    sizes = tuple(int(a.shape[0]) for a in transition_probs)
    C = len(sizes)
    if filtered.dim() < C or tuple(filtered.shape[filtered.dim() - C :]) != sizes:
        raise ValueError(
            f"filtered: expected shape batch_shape + {sizes}, got {tuple(filtered.shape)}"
        )
    with torch.no_grad():
        step = _Transition(
            sizes, transition_probs, transition_groups(sizes, transition, max_group_states)
        )
        pred = step.predict(filtered.reshape(-1, math.prod(sizes)))
        return pred.reshape(filtered.shape)
