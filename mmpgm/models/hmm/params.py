"""The parameters of the multimodal HMM as a named tuple: read and (validated) write."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..._validation import check_probabilities
from .._checks import check_finite

__all__ = ["HMMParams", "get_params", "set_params"]


class HMMParams(NamedTuple):
    """Parameters of a :class:`MultimodalHMM` (constrained values, detached).

    shared_initial_probs : ``(K_s,)`` :math:`\\pi^s`.
    shared_transition_probs : ``(K_s, K_s)`` :math:`A^s` indexed (old, new).
    private_initial_probs : dict modality -> ``(K_m,)`` :math:`\\pi^m`.
    private_transition_probs : dict modality -> ``(K_m, K_m)`` :math:`A^m`.
    emissions : dict modality -> dict of emission tensors indexed ``(K_s, K_m, ...)``
        (``loc`` and ``scale`` for ``"diag"``, ``loc`` and ``scale_tril`` for ``"full"``,
        ``probs`` for ``"categorical"``).
    emission_kinds : dict modality -> the observation model's name (``"diag"``, ``"full"``,
        ``"categorical"``), or None to infer it from the keys of ``emissions``.
    """

    shared_initial_probs: torch.Tensor
    shared_transition_probs: torch.Tensor
    private_initial_probs: dict
    private_transition_probs: dict
    emissions: dict
    emission_kinds: dict | None = None


def get_params(model) -> HMMParams:
    """The constrained parameter values of ``model`` (detached copies)."""

    def clean(name):
        return name.replace("_unconstrained", "")

    return HMMParams(
        shared_initial_probs=model.shared_chain.initial_probs.detach().clone(),
        shared_transition_probs=model.shared_chain.transition_probs.detach().clone(),
        private_initial_probs={
            m: model.private_chains[m].initial_probs.detach().clone() for m in model.modalities
        },
        private_transition_probs={
            m: model.private_chains[m].transition_probs.detach().clone() for m in model.modalities
        },
        emissions={
            m: {
                clean(k): getattr(model.emissions[m], clean(k)).detach().clone()
                for k, _ in model.emissions[m].named_parameters()
            }
            for m in model.modalities
        },
        emission_kinds={m: model.emissions[m].kind for m in model.modalities},
    )


def set_params(model, params: HMMParams):
    """Overwrite the parameters with the (constrained) values of ``params``.

    Validated first (``ValueError`` naming the parameter): finite values; initial and
    transition probabilities in [0, 1] with rows summing to one (within a tolerance of the
    dtype); emission scales positive, Cholesky factors lower triangular with a positive
    diagonal, categorical probabilities rows summing to one.
    """
    if not isinstance(params, HMMParams):
        raise TypeError(f"params: expected HMMParams, got {type(params).__name__}")
    missing = [m for m in model.modalities if m not in params.emissions]
    if missing:
        raise ValueError(f"params.emissions: no entry for modalities {missing}")
    check_probabilities("params.shared_initial_probs", params.shared_initial_probs)
    check_probabilities("params.shared_transition_probs", params.shared_transition_probs)
    for m in model.modalities:
        check_probabilities(f"params.private_initial_probs[{m!r}]", params.private_initial_probs[m])
        check_probabilities(
            f"params.private_transition_probs[{m!r}]", params.private_transition_probs[m]
        )
        for k, v in params.emissions[m].items():
            name = f"params.emissions[{m!r}][{k!r}]"
            check_finite(name, v)
            if k == "scale" and bool((v <= 0).any()):
                raise ValueError(f"{name}: expected positive scales, got min {float(v.min()):.3g}")
            if k == "scale_tril":
                diag = v.diagonal(dim1=-2, dim2=-1)
                if bool((diag <= 0).any()) or bool((v.triu(1) != 0).any()):
                    raise ValueError(
                        f"{name}: expected lower-triangular Cholesky factors with a positive "
                        f"diagonal, got smallest diagonal entry {float(diag.min()):.3g}"
                    )
            if k == "probs":
                check_probabilities(name, v)
    p = model._param()
    conv = dict(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        model.shared_chain.initial_probs = params.shared_initial_probs.to(**conv)
        model.shared_chain.transition_probs = params.shared_transition_probs.to(**conv)
        for m in model.modalities:
            model.private_chains[m].initial_probs = params.private_initial_probs[m].to(**conv)
            model.private_chains[m].transition_probs = params.private_transition_probs[m].to(**conv)
            for k, v in params.emissions[m].items():
                if not hasattr(model.emissions[m], k):
                    raise ValueError(f"params.emissions[{m!r}]: unknown parameter {k!r}")
                setattr(model.emissions[m], k, v.to(**conv))
    return model
