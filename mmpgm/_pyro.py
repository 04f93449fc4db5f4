"""The Pyro-settings policy, and the typed ``PyroModule`` base of every parameter module.

Policy: **mmpgm changes no Pyro setting**, on import or on use. Its models hold their parameters
as module attributes (``PyroParam`` s of ``PyroModule`` s) and mmpgm never runs them inside a
``PyroModule.__call__`` context, so with either value of ``pyro.settings module_local_params``
their parameters stay in the modules (like ``torch.nn.Module`` s) and never enter Pyro's global
parameter store: two models never share parameters by name, and a user's own ``PyroModule`` s
keep whatever behaviour the user chose. ``tests/test_pyro_policy.py`` pins this for both values.
"""

from __future__ import annotations

import torch
from pyro.nn import PyroModule


class TypedPyroModule(PyroModule):
    """``PyroModule`` where ``self.p = tensor`` for an existing ``PyroParam`` ``p`` casts the
    value to the parameter's dtype and device (plain ``PyroModule`` adopts the value's dtype, so
    assigning a float32 tensor to a float64 model would silently mix precisions)."""

    def __setattr__(self, name, value):
        if (
            isinstance(value, torch.Tensor)
            and not isinstance(value, torch.nn.Parameter)
            and name in self.__dict__.get("_pyro_params", {})
        ):
            current = getattr(self, name + "_unconstrained")
            if value.shape != current.shape:
                raise ValueError(
                    f"{type(self).__name__}.{name}: expected shape {tuple(current.shape)}, "
                    f"got {tuple(value.shape)}"
                )
            value = value.to(dtype=current.dtype, device=current.device)
        super().__setattr__(name, value)
