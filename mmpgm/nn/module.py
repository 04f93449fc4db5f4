"""A PyroModule whose parameters keep their dtype and device when values are assigned."""

from __future__ import annotations

import pyro
import torch
from pyro.nn import PyroModule

# PyroModule parameters live in the modules (like torch.nn.Module), not in Pyro's global
# parameter store, so two models never share parameters by name. Every mmpgm model imports this.
pyro.settings.set(module_local_params=True)


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
