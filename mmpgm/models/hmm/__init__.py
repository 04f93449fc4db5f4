r"""Multimodal hidden Markov model (paper section 5.3, eq. 40-41, Fig. 7).

One shared chain :math:`s_t \in \{1..K_s\}` and one private chain :math:`p^m_t \in \{1..K_m\}` per
modality :math:`m = 1..M`, each with its own initial distribution and transition matrix
(indexed ``(old, new)``):

.. math::
    p(x, s, p) = \prod_{t=1}^T \Big[ p(s_t \mid s_{t-1}) \prod_m p(p^m_t \mid p^m_{t-1})
                 \prod_m p(x^m_t \mid s_t, p^m_t) \Big].

The shared chain carries what all streams have in common (content), the private chains what is
particular to one stream (style). ``K_m = 1`` gives a plain HMM whose state all modalities
share; ``K_s = 1`` gives independent HMMs per modality.

With ``sensor_faults`` each named modality gains a sticky ok / faulty chain :math:`f^m_t`; a
faulty frame is drawn from a broad background density shared by every state
(:mod:`mmpgm.models.hmm.faults`), so a stream that silently fails stops carrying evidence.

Priors for MAP fitting: :math:`\pi, A_{i\cdot} \sim \mathrm{Dirichlet}(\alpha \mathbf 1)` for every
chain, and the weak emission priors of :mod:`mmpgm.observations`.

The package is cut by idea: ``model.py`` (structure, likelihood, programs, posteriors),
``chain.py`` (one Markov chain's parameters and prior), ``params.py`` (:class:`HMMParams`),
``init.py`` (data-driven start), ``faults.py`` (fault chains and background densities).
"""

from .chain import MarkovChain
from .model import MultimodalHMM
from .params import HMMParams

__all__ = ["MarkovChain", "MultimodalHMM", "HMMParams"]
