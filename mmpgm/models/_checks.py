"""Argument checks shared by the model constructors (one message format everywhere)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .._validation import check_int as _check_int

RESERVED_NAMES = ("shared",)  # names of the shared latent block / chain in every result


def check_int(name: str, value, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive (or non-negative) int
    (:func:`mmpgm._validation.check_int`)."""
    _check_int(name, value, minimum=0 if allow_zero else 1)


def check_obs_dims(obs_dims) -> tuple:
    """Validate a ``{modality: obs_dim}`` mapping; returns the modality names in order."""
    if not isinstance(obs_dims, Mapping) or not obs_dims:
        raise TypeError(
            f"obs_dims: expected a non-empty dict modality -> obs_dim, got {obs_dims!r}"
        )
    for m, d in obs_dims.items():
        if not isinstance(m, str) or not m:
            raise TypeError(f"obs_dims: modality names must be non-empty str, got {m!r}")
        if "." in m:
            raise ValueError(
                f"obs_dims: modality names cannot contain '.' (they name submodules), got {m!r}"
            )
        if m in RESERVED_NAMES:
            raise ValueError(
                f"obs_dims: {m!r} is reserved for the shared latent; rename the modality"
            )
        check_int(f"obs_dims[{m!r}]", d)
    return tuple(obs_dims)


def per_modality(value, names, what: str) -> dict:
    """Expand a scalar setting to every modality, or check a per-modality dict's keys."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(
                f"{what}: unknown modalities {sorted(unknown)}; modalities are {list(names)}"
            )
        missing = set(names) - set(value)
        if missing:
            raise ValueError(f"{what}: missing modalities {sorted(missing)}")
        return dict(value)
    return {m: value for m in names}


def check_finite(name: str, value) -> None:
    """Raise unless ``value`` is a tensor of finite values."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"{name}: expected finite values, got {int((~torch.isfinite(value)).sum())} non-finite"
        )


def check_sensor_faults(value, modalities) -> tuple:
    """The modalities with a fault model, in model order, from the ``sensor_faults`` keyword of
    the HMM and the LDS: ``False`` / ``None`` (none), ``True`` (all), a list/tuple of names, or a
    dict name -> bool; anything else raises naming ``sensor_faults``."""
    if value is None or value is False:
        return ()
    if value is True:
        return tuple(modalities)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(v, bool):
                raise TypeError(f"sensor_faults[{k!r}]: expected a bool, got {v!r}")
        names, chosen = list(value), {k for k, v in value.items() if v}
    elif isinstance(value, (list, tuple)):
        names = list(value)
        for k in names:
            if not isinstance(k, str):
                raise TypeError(f"sensor_faults: expected modality names (str), got {k!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"sensor_faults: expected distinct modality names, got {names}")
        chosen = set(names)
    else:
        raise TypeError(
            "sensor_faults: expected a bool, a list of modality names or a dict name -> bool, "
            f"got {type(value).__name__}"
        )
    unknown = [k for k in names if k not in modalities]
    if unknown:
        raise ValueError(
            f"sensor_faults: unknown modalities {unknown}; the model has {list(modalities)}"
        )
    return tuple(m for m in modalities if m in chosen)


def check_class_labels(name: str, y: torch.Tensor, top: int, inside=None) -> None:
    """Raise unless ``y`` holds integer class labels: ``-1`` (unknown) or a value in
    ``[0, top]`` (NaN and fractions refused, bools read as 0 / 1; ``inside``, a bool tensor of
    ``y``'s shape, limits the range check to the frames inside the sequences)."""
    if y.is_floating_point() and not bool((y == y.round()).all()):
        bad = y[y != y.round()]
        raise ValueError(
            f"{name}: expected integer class labels (-1 = unknown), got non-integers "
            f"{sorted(set(bad.tolist()), key=str)[:5]}"
        )
    bad = (y < -1) | (y > top)
    if inside is not None:
        bad = bad & inside
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected -1 (unknown) or a value in [0, {top}], got "
            f"{sorted(set(y[bad].tolist()))[:5]}"
        )
