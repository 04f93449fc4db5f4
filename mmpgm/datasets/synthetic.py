"""Seeded synthetic multimodal data with a known shared/private structure."""

from __future__ import annotations

import torch

from ..models.hmm import MultimodalHMM


def demo_hmm(seed: int = 0, dtype=torch.float64) -> MultimodalHMM:
    r"""The embedded demo model: three streams of a speaker (``audio`` 4-d, ``video`` 6-d, ``flow``
    2-d), a shared chain with 3 states (silence / speech / laughter-like) and 2 private states per
    stream (e.g. microphone gain, lighting, head motion).

    Emission means are additive, :math:`\mu^m_{sp} = c^m_s + d^m_p`, so the shared state moves
    every stream together while each private state shifts one stream alone.
    """
    g = torch.Generator().manual_seed(seed)
    dims = {"audio": 4, "video": 6, "flow": 2}
    model = MultimodalHMM(dims, num_shared_states=3, num_private_states=2).to(dtype)
    with torch.no_grad():
        model.shared_chain.initial_probs = torch.tensor([0.6, 0.3, 0.1])
        model.shared_chain.transition_probs = torch.tensor(
            [[0.90, 0.08, 0.02], [0.10, 0.85, 0.05], [0.10, 0.10, 0.80]]
        )
        for m, d in dims.items():
            model.private_chains[m].initial_probs = torch.tensor([0.7, 0.3])
            model.private_chains[m].transition_probs = torch.tensor([[0.95, 0.05], [0.10, 0.90]])
            shared = 2.5 * torch.randn(3, d, generator=g)
            private = 1.5 * torch.randn(2, d, generator=g)
            model.emissions[m].loc = shared[:, None, :] + private[None, :, :]
            model.emissions[m].scale = 0.6 + 0.3 * torch.rand(3, 2, d, generator=g)
    return model
