"""The parameters of the multimodal HMM as a named tuple: read and (validated) write."""

from __future__ import annotations

from collections.abc import Mapping
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
    fault_initial_probs : dict modality -> ``(2,)`` (ok, faulty) start of each fault chain
        (``sensor_faults``), or None.
    fault_transition_probs : dict modality -> ``(2, 2)`` fault-chain transitions, or None.
    fault_backgrounds : dict modality -> ``{"loc": (D,), "scale": (D,), "stuck_scale": (D,),
        "stuck_weight": ()}`` of each background density (Cauchy part and held-value part; see
        :mod:`mmpgm.models.hmm.faults`), or None (then fitted to the emissions' moments).
    """

    shared_initial_probs: torch.Tensor
    shared_transition_probs: torch.Tensor
    private_initial_probs: dict
    private_transition_probs: dict
    emissions: dict
    emission_kinds: dict | None = None
    fault_initial_probs: dict | None = None
    fault_transition_probs: dict | None = None
    fault_backgrounds: dict | None = None


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
        fault_initial_probs={
            m: model.fault_chains[m].initial_probs.detach().clone() for m in model.fault_modalities
        }
        or None,
        fault_transition_probs={
            m: model.fault_chains[m].transition_probs.detach().clone()
            for m in model.fault_modalities
        }
        or None,
        fault_backgrounds={
            m: {
                k: getattr(model.fault_backgrounds[m], k).clone()
                for k in ("loc", "scale", "stuck_scale", "stuck_weight")
            }
            for m in model.fault_modalities
        }
        or None,
    )


def _tensor(name: str, value, shape=None, *, dim=None) -> torch.Tensor:
    """Raise unless ``value`` is a real floating tensor (of ``shape`` / ``dim`` when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-d tensor, got shape {tuple(value.shape)}")
    return value


def _table(name: str, value, keys) -> Mapping:
    """Raise unless ``value`` is a mapping with an entry for every key of ``keys``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a dict modality -> tensor, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"{name}: no entry for modalities {missing}")
    return value


def check_structure(params) -> None:
    """What :meth:`MultimodalHMM.from_params` reads to build the model, checked by name."""
    if not isinstance(params, HMMParams):
        raise TypeError(f"params: expected HMMParams, got {type(params).__name__}")
    _tensor("params.shared_initial_probs", params.shared_initial_probs, dim=1)
    if not isinstance(params.emissions, Mapping) or not params.emissions:
        raise TypeError(
            f"params.emissions: expected a non-empty dict modality -> dict of tensors, got "
            f"{params.emissions!r}"
        )
    names = list(params.emissions)
    _table("params.private_initial_probs", params.private_initial_probs, names)
    for m in names:
        _tensor(f"params.private_initial_probs[{m!r}]", params.private_initial_probs[m], dim=1)
        e = params.emissions[m]
        if not isinstance(e, Mapping):
            raise TypeError(
                f"params.emissions[{m!r}]: expected a dict of tensors, got {type(e).__name__}"
            )
        key = "probs" if "probs" in e else "loc"
        if key not in e:
            raise ValueError(f"params.emissions[{m!r}]: expected a 'loc' or a 'probs' entry")
        v = _tensor(f"params.emissions[{m!r}][{key!r}]", e[key])
        if v.dim() < 1:
            raise ValueError(f"params.emissions[{m!r}][{key!r}]: expected a tensor (..., D)")
    if params.emission_kinds is not None and not isinstance(params.emission_kinds, Mapping):
        raise TypeError(
            f"params.emission_kinds: expected a dict or None, got {params.emission_kinds!r}"
        )


def set_params(model, params: HMMParams, *, complete: bool = False):
    """Overwrite the parameters with the (constrained) values of ``params``.

    Validated first (``ValueError`` / ``TypeError`` naming the parameter; a refused ``params``
    leaves the model unchanged): tensors of the model's shapes; finite values; initial and
    transition probabilities in [0, 1] with rows summing to one (within a tolerance of the
    dtype); emission scales positive, Cholesky factors lower triangular with a positive
    diagonal, categorical probabilities rows summing to one. ``complete``: every emission
    parameter must be given (else a subset of an emission's parameters may be).
    """
    if not isinstance(params, HMMParams):
        raise TypeError(f"params: expected HMMParams, got {type(params).__name__}")
    names = model.modalities
    _table("params.emissions", params.emissions, names)
    _table("params.private_initial_probs", params.private_initial_probs, names)
    _table("params.private_transition_probs", params.private_transition_probs, names)
    K = model.num_shared_states
    check_probabilities(
        "params.shared_initial_probs",
        _tensor("params.shared_initial_probs", params.shared_initial_probs, (K,)),
    )
    check_probabilities(
        "params.shared_transition_probs",
        _tensor("params.shared_transition_probs", params.shared_transition_probs, (K, K)),
    )
    kinds = params.emission_kinds
    if kinds is not None and not isinstance(kinds, Mapping):
        raise TypeError(f"params.emission_kinds: expected a dict or None, got {kinds!r}")
    for m in names:
        Km = model.private_chains[m].num_states
        name = f"params.private_initial_probs[{m!r}]"
        check_probabilities(name, _tensor(name, params.private_initial_probs[m], (Km,)))
        name = f"params.private_transition_probs[{m!r}]"
        check_probabilities(name, _tensor(name, params.private_transition_probs[m], (Km, Km)))
        em = model.emissions[m]
        if kinds is not None and kinds.get(m) is not None and kinds[m] != em.kind:
            raise ValueError(
                f"params.emission_kinds[{m!r}]: the model's emission is {em.kind!r}, got "
                f"{kinds[m]!r}"
            )
        table = params.emissions[m]
        if not isinstance(table, Mapping):
            raise TypeError(
                f"params.emissions[{m!r}]: expected a dict of tensors, got {type(table).__name__}"
            )
        own = {k.replace("_unconstrained", "") for k, _ in em.named_parameters()}
        if complete and own - set(table):
            raise ValueError(
                f"params.emissions[{m!r}]: missing {sorted(own - set(table))} (the {em.kind!r} "
                f"emission has {sorted(own)})"
            )
        for k, v in table.items():
            name = f"params.emissions[{m!r}][{k!r}]"
            if k not in own:
                raise ValueError(
                    f"params.emissions[{m!r}]: unknown parameter {k!r} (the {em.kind!r} "
                    f"emission has {sorted(own)})"
                )
            _tensor(name, v, tuple(getattr(em, k).shape))
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
    _check_faults(model, params)
    p = model._param()
    conv = dict(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        model.shared_chain.initial_probs = params.shared_initial_probs.to(**conv)
        model.shared_chain.transition_probs = params.shared_transition_probs.to(**conv)
        for m in names:
            model.private_chains[m].initial_probs = params.private_initial_probs[m].to(**conv)
            model.private_chains[m].transition_probs = params.private_transition_probs[m].to(**conv)
            for k, v in params.emissions[m].items():
                setattr(model.emissions[m], k, v.to(**conv))
        for m in model.fault_modalities:
            if params.fault_initial_probs is not None:
                model.fault_chains[m].set_probs(
                    params.fault_initial_probs[m].to(**conv),
                    params.fault_transition_probs[m].to(**conv),
                )
            if params.fault_backgrounds is not None:
                bg = model.fault_backgrounds[m]
                for k, v in params.fault_backgrounds[m].items():
                    setattr(bg, k, v.to(**conv))
    model._mmpgm_fitted = True  # the user's parameters: init="auto" keeps them
    return model


def _check_faults(model, params: HMMParams) -> None:
    """The fault-chain entries of ``params``: for exactly the model's fault modalities (or
    None), probabilities inside the chains' floors, backgrounds finite with positive scales."""
    names = list(model.fault_modalities)
    tables = {
        "params.fault_initial_probs": params.fault_initial_probs,
        "params.fault_transition_probs": params.fault_transition_probs,
        "params.fault_backgrounds": params.fault_backgrounds,
    }
    for label, table in tables.items():
        if table is None:
            continue
        if not isinstance(table, Mapping):
            raise TypeError(f"{label}: expected a dict modality -> tensor or None, got {table!r}")
        if sorted(table) != sorted(names):
            raise ValueError(
                f"{label}: expected entries for the fault modalities {names} (sensor_faults), "
                f"got {sorted(table)}"
            )
    if (params.fault_initial_probs is None) != (params.fault_transition_probs is None):
        raise ValueError(
            "params.fault_initial_probs, params.fault_transition_probs: give both or neither"
        )
    for m in names:
        if params.fault_initial_probs is not None:
            name = f"params.fault_initial_probs[{m!r}]"
            init = _tensor(name, params.fault_initial_probs[m], (2,))
            check_probabilities(name, init)
            name = f"params.fault_transition_probs[{m!r}]"
            trans = _tensor(name, params.fault_transition_probs[m], (2, 2))
            check_probabilities(name, trans)
            model.fault_chains[m].check_probs(f"params.fault chain of {m!r}", init, trans)
        if params.fault_backgrounds is not None:
            bg = params.fault_backgrounds[m]
            keys = {"loc", "scale", "stuck_scale", "stuck_weight"}
            if not isinstance(bg, Mapping) or not {"loc", "scale"} <= set(bg) <= keys:
                raise ValueError(
                    f"params.fault_backgrounds[{m!r}]: expected a dict with 'loc' and 'scale' "
                    f"(and optionally 'stuck_scale', 'stuck_weight'), got {bg!r}"
                )
            D = tuple(model.fault_backgrounds[m].loc.shape)
            for k in sorted(set(bg)):
                name = f"params.fault_backgrounds[{m!r}][{k!r}]"
                check_finite(name, _tensor(name, bg[k], () if k == "stuck_weight" else D))
            for k in ("scale", "stuck_scale"):
                if k in bg and bool((bg[k] <= 0).any()):
                    raise ValueError(
                        f"params.fault_backgrounds[{m!r}][{k!r}]: expected positive scales, got "
                        f"min {float(bg[k].min()):.3g}"
                    )
            w = bg.get("stuck_weight")
            if w is not None and not 0.0 <= float(w) < 1.0:
                raise ValueError(
                    f"params.fault_backgrounds[{m!r}]['stuck_weight']: expected a value in "
                    f"[0, 1), got {float(w):.3g}"
                )
