r"""The forward filter over a long sequence in chunks of frames, the filter state carried over.

The scaled forward recursion of :mod:`mmpgm.ops.hmm.forward_backward` needs of the past only
the normalized filtered message :math:`\alpha_{t-1} = p(z_{t-1} \mid x_{1:t-1})`, and the
log-likelihood is the sum of the per-frame log-normalizers,
:math:`\log p(x_{1:T}) = \sum_t \log p(x_t \mid x_{1:t-1})`. So a sequence cut into chunks
:math:`[t_0, t_1)` is filtered exactly by running each chunk from the previous chunk's last
message (the first chunk from the initial distribution) and adding the chunks'
log-likelihood increments :math:`\log p(x_{t_0:t_1-1} \mid x_{1:t_0-1})`: memory
:math:`O(\text{chunk})` instead of :math:`O(T)`, the same arithmetic as the unchunked filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .forward_backward import _Model

__all__ = ["ChunkFilterResult", "factorial_filter_chunk"]


class ChunkFilterResult(NamedTuple):
    """Result of :func:`factorial_filter_chunk`.

    filtered : ``batch_shape + (K_1, ..., K_C)``, :math:`p(z_{t_1 - 1} \\mid x_{1:t_1-1})`, the
        carried state of the next chunk.
    log_likelihood : ``batch_shape``, :math:`\\log p(x_{t_0:t_1-1} \\mid x_{1:t_0-1})`.
    """

    filtered: torch.Tensor
    log_likelihood: torch.Tensor


def factorial_filter_chunk(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    filtered: torch.Tensor | None = None,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> ChunkFilterResult:
    r"""Forward-filter the frames ``t0 .. t1-1`` of a sequence from the carried state.

    Parameters
    ----------
    initial_probs, transition_probs, transition, max_group_states
        As in :func:`~mmpgm.ops.hmm.factorial_log_likelihood`.
    log_emissions : tensor ``batch_shape + (T_chunk, K_1, ..., K_C)``
        The chunk's log factors (0 on missing and padding frames).
    filtered : tensor ``batch_shape + (K_1, ..., K_C)``, optional
        :math:`p(z_{t_0-1} \mid x_{1:t_0-1})`, the ``filtered`` of the previous chunk; None for
        the first chunk (then the initial distribution predicts the first frame).

    Returns
    -------
    ChunkFilterResult
        The last filtered message and the chunk's log-likelihood increment. Summed over the
        chunks of a sequence the increments are :func:`factorial_log_likelihood` of the whole
        sequence. Not differentiable (evaluation in bounded memory).
    """
    C = len(initial_probs)
    shape = log_emissions.shape[: -C - 1] + log_emissions.shape[-C:]
    if filtered is not None and filtered.shape != shape:
        raise ValueError(
            f"filtered: expected the shape batch_shape + state sizes {tuple(shape)} of "
            f"log_emissions {tuple(log_emissions.shape)}, got {tuple(filtered.shape)}"
        )
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, transition, max_group_states)
        pred = m.init_flat if filtered is None else m.predict(filtered.reshape(m.B, m.P))
        log_norm = torch.zeros(m.B, dtype=m.E.dtype, device=m.E.device)
        a = None
        for t in range(m.T):
            if t:
                pred = m.predict(a)
            a, c = m.condition(pred, m.E[:, t])
            log_norm = log_norm + c.log()
        ll = log_norm + m.shift.sum(-1)
        return ChunkFilterResult(a.reshape(shape), ll.reshape(m.batch_shape))
