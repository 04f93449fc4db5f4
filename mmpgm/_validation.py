"""The one place for checks of user arguments: ints, floats, options, probabilities.

Every check raises ``ValueError`` (``TypeError`` for a value of the wrong kind where noted)
whose message names the argument, what was expected and what was got, in one format:
``"<name>: expected <what>, got <value>"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection

import torch

__all__ = [
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_probabilities",
    "check_positive_definite",
    "probability_atol",
    "check_path",
    "check_output_path",
    "as_real_tensor",
]


def check_int(name: str, value, *, minimum: int = 1, allow_none: bool = False):
    """Return ``value`` if it is an int ``>= minimum`` (bools are refused), else raise.

    ``allow_none`` lets ``None`` through (an optional argument left unset).
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        if minimum == 1:
            what = "a positive int"
        elif minimum == 0:
            what = "a non-negative int"
        else:
            what = f"an int >= {minimum}"
        if allow_none:
            what += " or None"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return value


def check_float(
    name: str,
    value,
    *,
    minimum: float | None = None,
    positive: bool = False,
    allow_none: bool = False,
) -> float | None:
    """Return ``float(value)`` if it is a finite real number (``> 0`` when ``positive``,
    ``>= minimum`` when given), else raise."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        what = "a finite positive float" if positive else "a finite float"
        if minimum is not None:
            what += f" >= {minimum}"
        if allow_none:
            what += " or None"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    """Return ``value`` if it is a bool (``True`` / ``False``, numpy's included), else raise."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_choice(name: str, value, choices: Collection):
    """Return ``value`` if it is one of ``choices``, else raise."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def probability_atol(dtype: torch.dtype) -> float:
    """Tolerance on a probability row's sum: a few hundred ulps of ``dtype``."""
    return 256 * torch.finfo(dtype).eps


def check_probabilities(
    name: str, value: torch.Tensor, *, dim: int = -1, atol: float | None = None
):
    """Raise unless ``value`` holds finite probabilities in [0, 1] whose rows along ``dim`` sum to
    one within ``atol`` (default :func:`probability_atol` of its dtype); names the worst row."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()) or bool((value > 1).any()):
        bad = int(((~torch.isfinite(value)) | (value < 0) | (value > 1)).sum())
        raise ValueError(
            f"{name}: expected finite probabilities in [0, 1], got {bad} entries outside"
        )
    tol = probability_atol(value.dtype) if atol is None else atol
    err = (value.sum(dim) - 1).abs()
    if err.numel() and float(err.max()) > tol:
        worst = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise ValueError(
            f"{name}: expected rows summing to 1 (within {tol:.1e}), got row {worst} "
            f"summing to {float(value.sum(dim)[worst] if worst else value.sum(dim)):.6g}"
        )
    return value


def check_positive_definite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise unless ``value`` is a finite symmetric positive-definite matrix ``(..., k, k)``
    (symmetric to a relative 1e-6); returns the Cholesky factor of its symmetric part."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < 2 or value.shape[-1] != value.shape[-2]:
        raise ValueError(f"{name}: expected a square matrix, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: expected finite values")
    scale = float(value.abs().max().clamp_min(1)) if value.numel() else 1.0
    if not torch.allclose(value, value.mT, rtol=1e-6, atol=1e-10 * scale):
        raise ValueError(
            f"{name}: expected a symmetric positive-definite matrix, got a non-symmetric one"
        )
    sym = 0.5 * (value + value.mT)
    ev = torch.linalg.eigvalsh(sym)
    if ev.numel() and float(ev.min()) <= 0:
        raise ValueError(
            f"{name}: expected a symmetric positive-definite matrix, "
            f"got smallest eigenvalue {float(ev.min()):.3g}"
        )
    L, info = torch.linalg.cholesky_ex(sym)
    if bool((info != 0).any()):
        raise ValueError(
            f"{name}: expected a symmetric positive-definite matrix, got one too close to "
            f"singular for a Cholesky factor (smallest eigenvalue {float(ev.min()):.3g})"
        )
    return L


def check_path(name: str, path) -> str:
    """Return ``os.fspath(path)`` if ``path`` is a non-empty ``str`` or ``os.PathLike``, else
    raise ``TypeError``."""
    if isinstance(path, (str, os.PathLike)):
        p = os.fspath(path)
        if isinstance(p, str) and p:
            return p
    raise TypeError(f"{name}: expected a file path (str or os.PathLike), got {path!r}")


def check_output_path(name: str, path) -> str:
    """:func:`check_path` for a file about to be written: its folder must exist and the path
    must not be a folder (``ValueError`` naming ``name``), so a run fails before its work,
    not after."""
    p = check_path(name, path)
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise ValueError(
            f"{name}: expected a path in an existing folder, got {p!r} (folder {folder!r} "
            "does not exist; create it first)"
        )
    if os.path.isdir(p):
        raise ValueError(f"{name}: expected a file path, got the folder {p!r}")
    return p


def as_real_tensor(name: str, value, *, dtype=None, device=None) -> torch.Tensor:
    """``value`` (a tensor, numpy array, nested list or number) as a real tensor, cast to
    ``dtype`` / moved to ``device`` when given; ``TypeError`` naming ``name`` for anything else
    (strings, objects, bool or complex values, which a cast would silently turn into numbers)."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name}: expected a real numeric array, got {type(value).__name__}")
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{name}: expected a real numeric array, got {type(value).__name__} ({err})"
            ) from None
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name}: expected a real numeric array, got dtype {t.dtype}")
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype, device=device)
    return t
