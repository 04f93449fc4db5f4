r"""The two penalties of the gated mixture (Tikhonov regularizers, not part of the likelihood).

* **Co-learning** (eq. 18-20): :math:`\mathcal L_{co} = \sum_t \sum_m \lambda_m \lVert z^*_{m,t}
  - \hat\zeta_t \rVert^2` on the first ``n`` hidden units :math:`z^*_m` of each expert,
  :math:`\hat\zeta_t` their mean over the experts observed at frame ``t``;
* **expert fit**: :math:`-\beta \sum_t \sum_m \log p(y_t \mid f_m)` over the labelled frames
  where stream ``m`` is observed (every expert is also trained as a predictor on its own).

Shapes: ``hidden`` ``M`` x ``(N, T, H)``, ``available (N, T, M)`` bool, ``log_component
(N, T, M)``, ``labelled (N, T)`` bool; both penalties are per frame, ``(N, T)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..._validation import check_float

__all__ = ["co_learning_penalty", "co_learning_weights", "expert_fit_penalty"]


def co_learning_weights(value, names) -> dict:
    r""":math:`\lambda_m` per modality from one float or a mapping with every name (checked
    non-negative)."""
    if isinstance(value, Mapping):
        if set(value) != set(names):
            raise ValueError(
                f"co_learning_weight: expected a weight for each of {list(names)}, "
                f"got keys {sorted(value)}"
            )
        lam = {m: check_float(f"co_learning_weight[{m!r}]", value[m]) for m in names}
    else:
        lam = {m: check_float("co_learning_weight", value) for m in names}
    if any(not v >= 0 for v in lam.values()):
        raise ValueError(f"co_learning_weight: expected non-negative weights, got {lam}")
    return lam


def co_learning_penalty(hidden, available, weights, units: int) -> torch.Tensor:
    r""":math:`\sum_m \lambda_m \lVert z^*_{m,t} - \hat\zeta_t \rVert^2` per frame ``(N, T)``
    over the observed experts; ``weights (M,)`` are the :math:`\lambda_m`."""
    z = torch.stack([h[..., :units] for h in hidden], 2)  # (N, T, M, n)
    a = available.to(z.dtype)[..., None]
    zeta = (z * a).sum(2, keepdim=True) / a.sum(2, keepdim=True).clamp_min(1.0)
    dist2 = ((z - zeta) ** 2).sum(-1)  # (N, T, M)
    return (weights.to(z.dtype) * dist2 * available.to(z.dtype)).sum(-1)


def expert_fit_penalty(log_component, labelled, available, weight: float) -> torch.Tensor:
    r""":math:`-\beta \sum_m \log p(y_t \mid f_m)` per frame ``(N, T)`` over the experts whose
    stream is observed at a labelled frame (``weight`` :math:`= \beta`)."""
    w = available & labelled[..., None]
    return -weight * torch.where(w, log_component, torch.zeros_like(log_component)).sum(-1)
