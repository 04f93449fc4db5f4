"""Loading models written by ``model.save(path)``.

The file is read with ``torch.load(weights_only=True)``, which unpickles only tensors and plain
containers, so a crafted file cannot run code; its header is checked before anything is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from . import models  # noqa: F401  (importing the models registers their classes)
from ._validation import check_path
from .models._savable import FORMAT_VERSION, content_digest, registered_classes, save_model

__all__ = ["load_model", "save_model"]

_DTYPES = ("float16", "bfloat16", "float32", "float64")


def load_model(path, map_location="cpu", **overrides):
    """Load a model written by ``model.save(path)`` / :func:`mmpgm.save_model`.

    ``overrides`` replace entries of the saved constructor config before the model is built
    (a dict entry is updated key by key from a dict override), for arguments that a config
    cannot hold: a user's own network, passed again untrained, whose saved weights are then
    loaded into it, e.g. ``load_model(path, tower=MyTower())`` for a
    :class:`~mmpgm.SiameseEncoder`, or ``load_model(path, emission={"spec":
    EmbeddingObservation(MyEncoder(), K_s, K_m)})`` for an HMM with an embedding modality.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (``IsADirectoryError`` for a folder).
    TypeError
        If ``path`` is not a str or ``os.PathLike``.
    ValueError
        If ``path`` is not an mmpgm model file (a foreign file, a truncated file, a file with a
        code-running payload), has a newer format version, names an unknown model class, or
        is corrupted (its contents do not match the SHA-256 digest :func:`save_model` wrote
        with them; files written before the digest existed load without the check).
    """
    check_path("path", path)
    if isinstance(map_location, str):
        try:
            torch.device(map_location)
        except RuntimeError:
            raise ValueError(
                f"map_location: expected a device such as 'cpu' or 'cuda:0', got {map_location!r}"
            ) from None
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: we refuse it below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001  weights_only runs no code: any failure = foreign file
        # (UnpicklingError, BadZipFile, RuntimeError, EOFError, IndexError, ... from torch's reader)
        raise ValueError(
            f"{path}: not an mmpgm model file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if not isinstance(state, dict) or "mmpgm_format" not in state:
        raise ValueError(f"{path}: not an mmpgm model file (no mmpgm header)")
    version = state["mmpgm_format"]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{path}: model-file format {version!r} is not supported by this mmpgm "
            f"(supports 1..{FORMAT_VERSION}); upgrade mmpgm"
        )
    for key, kind in (("class", str), ("config", dict), ("state_dict", dict), ("dtype", str)):
        if not isinstance(state.get(key), kind):
            raise ValueError(
                f"{path}: not an mmpgm model file ({key!r}: expected "
                f"{kind.__name__}, got {type(state.get(key)).__name__})"
            )
    digest = state.get("state_digest")  # absent in files written before it existed
    if digest is not None:
        content = {k: state[k] for k in ("class", "config", "state_dict", "dtype")}
        try:
            ok = digest == content_digest(content)
        except (TypeError, RuntimeError) as err:  # a tensor that cannot be read back
            raise ValueError(f"{path}: corrupted mmpgm model file ({err})") from None
        if not ok:
            raise ValueError(
                f"{path}: corrupted mmpgm model file (its contents do not match the SHA-256 "
                "digest written with them)"
            )
    classes = registered_classes()
    name = state["class"]
    if name not in classes:
        raise ValueError(f"{path}: unknown model class {name!r}; known: {sorted(classes)}")
    if state["dtype"] not in _DTYPES:
        raise ValueError(f"{path}: dtype: expected one of {_DTYPES}, got {state['dtype']!r}")
    config = dict(state["config"])
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(
                f"{key}: not a constructor argument saved for {name} (saved: {sorted(config)})"
            )
        if isinstance(config[key], Mapping) and isinstance(value, Mapping):
            value = {**config[key], **value}
        config[key] = value
    try:
        model = classes[name].from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: config does not build a {name}: {err}") from None
    model = model.to(dtype=getattr(torch, state["dtype"]))
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"{path}: state_dict does not fit a {name} with this config: {str(err).splitlines()[0]}"
        ) from None
    model._mmpgm_fitted = True
    return model
