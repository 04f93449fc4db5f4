r"""Towers :math:`G_W` of a siamese encoder (paper section 6.3): networks mapping one item
``(..., D)`` to its embedding ``(..., E)``.

:class:`~mmpgm.SiameseEncoder` accepts *any* ``nn.Module`` with that contract as its tower; the
towers here are the package's own, rebuilt from :meth:`config` when a saved encoder is loaded
(a user's own tower is passed again to :func:`mmpgm.load_model`, see
:class:`~mmpgm.SiameseEncoder`). :func:`build_tower` is the registry's one entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_int

__all__ = ["MLPTower", "build_tower", "tower_classes"]


class MLPTower(nn.Module):
    r"""Feed-forward tower :math:`G_W(x) = W_L\,\phi(\dots \phi(W_1 x + b_1) \dots) + b_L`.

    Parameters
    ----------
    input_dim : int
        :math:`D`, size of one item (a frame vector; stack context frames into it yourself).
    hidden_dims : sequence of int
        Sizes of the hidden layers (``()`` = a linear map).
    embed_dim : int
        :math:`E`, size of the embedding.
    activation : {"relu", "tanh", "elu"}
        :math:`\phi`.

    ``forward(x (..., D)) -> (..., E)``.
    """

    _ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (128, 64),
        embed_dim: int = 16,
        activation: str = "relu",
    ):
        super().__init__()
        check_int("input_dim", input_dim)
        check_int("embed_dim", embed_dim)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise ValueError(
                f"hidden_dims: expected a sequence of positive ints, got {hidden_dims!r}"
            )
        for k, h in enumerate(hidden_dims):
            check_int(f"hidden_dims[{k}]", h)
        if activation not in self._ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {sorted(self._ACTIVATIONS)}, got {activation!r}"
            )
        self.input_dim = input_dim
        self.embed_dim = embed_dim
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.activation = activation
        layers: list[nn.Module] = []
        prev = input_dim
        for h in self.hidden_dims:
            layers += [nn.Linear(prev, h), self._ACTIVATIONS[activation]()]
            prev = h
        layers.append(nn.Linear(prev, embed_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def config(self) -> dict:
        """JSON-friendly constructor arguments plus ``"class"``: ``build_tower(config)``."""
        return {
            "class": type(self).__name__,
            "input_dim": self.input_dim,
            "hidden_dims": list(self.hidden_dims),
            "embed_dim": self.embed_dim,
            "activation": self.activation,
        }


_TOWERS = {"MLPTower": MLPTower}


def tower_classes() -> dict:
    """Name -> class of the package's towers (those :func:`build_tower` rebuilds)."""
    return dict(_TOWERS)


def build_tower(config: dict) -> nn.Module:
    """Rebuild a package tower from its :meth:`MLPTower.config` (``{"class": name, **args}``)."""
    if not isinstance(config, dict) or config.get("class") not in _TOWERS:
        raise ValueError(
            f"tower: expected the config of one of the package's towers {sorted(_TOWERS)}, got "
            f"{config!r}"
        )
    args = {k: v for k, v in config.items() if k != "class"}
    return _TOWERS[config["class"]](**args)
