"""Saving and loading models: a config (constructor arguments) plus the state dict."""

from __future__ import annotations

import copy

import torch

_REGISTRY = {}


class SavableModel:
    """Mixin for models built from JSON-friendly constructor arguments kept in ``self._config``:
    ``config()`` returns them, ``from_config(config)`` rebuilds an (unfitted) model, ``save(path)``
    writes config and state dict for :func:`load_model`."""

    def config(self) -> dict:
        """Constructor arguments; ``type(model).from_config(model.config())``."""
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def save(self, path) -> None:
        """Save to ``path``; read back with :func:`mmpgm.load_model`."""
        save_model(self, path)


def register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


def save_model(model, path) -> None:
    """Write ``model`` (its class name, constructor config and state dict) to ``path``."""
    if not hasattr(model, "config"):
        raise TypeError(f"model: {type(model).__name__} cannot be saved (no config())")
    p = next(iter(model.parameters()))
    torch.save(
        {"class": type(model).__name__, "config": model.config(), "state_dict": model.state_dict(),
         "dtype": str(p.dtype).replace("torch.", ""), "mmpgm_format": 1},
        path,
    )


def load_model(path, map_location="cpu"):
    """Load a model written by ``model.save(path)`` / :func:`save_model`."""
    from . import models  # noqa: F401  (registers the classes)

    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("mmpgm_format") != 1:
        raise ValueError(f"{path}: not an mmpgm model file")
    name = state["class"]
    if name not in _REGISTRY:
        raise ValueError(f"{path}: unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    model = _REGISTRY[name].from_config(state["config"])
    model = model.to(dtype=getattr(torch, state["dtype"]))
    model.load_state_dict(state["state_dict"])
    model._mmpgm_fitted = True
    return model
