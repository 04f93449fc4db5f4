r"""Exact inference in factorial hidden Markov models (torch only).

A factorial HMM has ``C`` independent Markov chains :math:`z^c_t \in \{0..K_c-1\}` with initial
distributions :math:`\pi_c` and transition matrices :math:`A_c` (indexed ``(old, new)``, rows sum
to one), coupled only through the per-frame emission factor

.. math::
    p(x_{1:T}, z_{1:T}) = \prod_c \pi_c(z^c_1) \prod_{t>1} \prod_c A_c(z^c_{t-1}, z^c_t)
        \prod_t \exp \ell_t(z^1_t, \dots, z^C_t),

where ``log_emissions[..., t, k_1, ..., k_C]`` :math:`= \ell_t(k_1..k_C)` is any log-factor
(for the multimodal HMM, the sum over modalities of :math:`\log p(x^m_t | s_t, p^m_t)`, zero on
missing frames). Padding frames past a sequence's length carry ``log_emissions = 0`` and then
contribute exactly nothing, so ragged batches need no special case here.

All routines are batched over leading dimensions of ``log_emissions`` and work in the scaled
probability domain: each frame's factor is divided by its maximum and each forward message is
normalized, so nothing underflows while products stay plain matrix products.

How the joint transition is applied is the keyword ``transition`` of every routine (checked in
one place, :func:`transition_groups`):

``"dense"``
    one product-space Kronecker matrix, cost per step :math:`(\prod_c K_c)^2`;
``"chainwise"``
    one chain at a time, never forming a product-space matrix, cost per step
    :math:`\prod_c K_c \sum_c K_c`;
``"grouped"``
    adjacent chains grouped greedily into Kronecker blocks of at most ``max_group_states``
    states (default :data:`GROUP_MAX_STATES`), each block applied as one matrix;
``"auto"`` (default)
    picks by size from the measured constants :data:`GROUP_MAX_STATES` (sum-product routines:
    ``"grouped"``) and :data:`DENSE_MAX_STATES` (:func:`factorial_viterbi`: ``"dense"`` up to
    it, ``"chainwise"`` above). Only ``"auto"`` and the default of ``"grouped"`` read them.

All choices are exact; they differ only in rounding and speed.

The log-likelihood is a custom autograd function whose backward pass is the exact backward
recursion (hand-written because no torch/Pyro routine does the factored backward pass without
materializing the product-space transition); its gradient with respect to ``log_emissions`` is
the smoothed posterior, which :func:`factorial_smooth` returns directly.
"""

from .chunked import (
    ChunkFilterResult,
    ChunkSmoothResult,
    factorial_filter_chunk,
    factorial_smooth_chunked,
)
from .emissions import shared_private_linear_log_factor, shared_private_log_factor
from .forward_backward import (
    chain_marginals,
    factorial_forward,
    factorial_log_likelihood,
    factorial_smooth,
)
from .sampling import factorial_sample
from .streaming import factorial_filter_step, factorial_predict
from .transitions import chain_groups, transition_groups, use_dense
from .types import (
    DENSE_MAX_STATES,
    GROUP_MAX_STATES,
    TRANSITIONS,
    ForwardResult,
    SmoothResult,
    ViterbiResult,
)
from .viterbi import factorial_viterbi

__all__ = [
    "DENSE_MAX_STATES",
    "GROUP_MAX_STATES",
    "TRANSITIONS",
    "ForwardResult",
    "SmoothResult",
    "ViterbiResult",
    "factorial_forward",
    "factorial_log_likelihood",
    "factorial_smooth",
    "factorial_viterbi",
    "shared_private_log_factor",
    "shared_private_linear_log_factor",
    "factorial_sample",
    "chain_marginals",
    "chain_groups",
    "transition_groups",
    "factorial_filter_step",
    "factorial_predict",
    "use_dense",
    "factorial_filter_chunk",
    "factorial_smooth_chunked",
    "ChunkFilterResult",
    "ChunkSmoothResult",
]
