"""Saving models: a config (constructor arguments) plus the state dict, and the class registry.

Lives beside the models (not in :mod:`mmpgm.io`) so that the model modules never import a layer
above them; :func:`mmpgm.io.load_model` reads what :func:`save_model` writes.
"""

from __future__ import annotations

import copy
import hashlib

import torch

from .._validation import check_output_path

__all__ = [
    "FORMAT_VERSION",
    "SavableModel",
    "register",
    "registered_classes",
    "content_digest",
    "save_model",
]

FORMAT_VERSION = 1
"""Version of the model-file layout; :func:`mmpgm.io.load_model` refuses newer files."""

_REGISTRY: dict = {}


class SavableModel:
    """Mixin for models built from JSON-friendly constructor arguments kept in ``self._config``:
    ``config()`` returns them, ``from_config(config)`` rebuilds an (unfitted) model, ``save(path)``
    writes config and state dict for :func:`mmpgm.load_model`."""

    def config(self) -> dict:
        """Constructor arguments; ``type(model).from_config(model.config())``."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def save(self, path) -> None:
        """Save to ``path``; read back with :func:`mmpgm.load_model`."""
        save_model(self, path)


def content_digest(content) -> str:
    """SHA-256 of a nested structure of dicts, lists, tuples, tensors and plain values (dict
    keys in sorted order; every tensor by dtype, shape and bytes), stored in model files and
    checkpoints: torch's zip reader does not check its records' CRCs, so a flipped bit inside a
    tensor would otherwise load silently."""
    h = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for key in sorted(obj, key=repr):
                h.update(repr(key).encode())
                feed(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
            for item in obj:
                feed(item)
        else:
            h.update(f"V{obj!r}".encode())

    feed(content)
    return h.hexdigest()


def register(cls):
    """Class decorator: make ``cls`` loadable by name with :func:`mmpgm.load_model`."""
    _REGISTRY[cls.__name__] = cls
    return cls


def registered_classes() -> dict:
    """A copy of the registry, class name -> class."""
    return dict(_REGISTRY)


def save_model(model, path) -> None:
    """Write ``model`` (its class name, constructor config and state dict) to ``path``.

    The file holds only dicts, lists, strings, numbers and tensors, so it loads with
    ``torch.load(weights_only=True)``: loading it can never run code.
    """
    if not isinstance(model, SavableModel):
        raise TypeError(f"model: {type(model).__name__} cannot be saved (not an mmpgm model)")
    check_output_path("path", path)
    p = next(iter(model.parameters()))
    content = {
        "class": type(model).__name__,
        "config": model.config(),
        "state_dict": model.state_dict(),
        "dtype": str(p.dtype).replace("torch.", ""),
    }
    content["state_digest"] = content_digest(content)
    torch.save({**content, "mmpgm_format": FORMAT_VERSION}, path)
