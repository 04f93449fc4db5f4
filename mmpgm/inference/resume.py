"""Resuming a fit from its checkpoint: the one place where SVI and EM read one back."""

from __future__ import annotations

import torch

from . import checkpoint as ckpt
from .distributed import read_checkpoint as dist_read

__all__ = ["resume"]


def resume(path, head: dict, model, generator: torch.Generator, device, comm=None, optim=None):
    """Load the checkpoint at ``path`` (if any) into ``model`` (and ``optim``) and restore the
    random state; returns ``(losses, start_step)``, ``([], 0)`` when there is none yet.

    The file is read by rank 0 and broadcast under torch.distributed (``comm``); a checkpoint
    of another fit (``head`` differs), a foreign or truncated file raise ``ValueError`` naming
    ``path`` (:func:`mmpgm.inference.checkpoint.check_compatible`); a state that does not fit
    this model raises ``ValueError`` too.
    """
    read = dist_read if comm is None else comm.read_checkpoint
    state = read(path, head)
    if state is None:
        return [], 0
    try:
        model.load_state_dict(state["model"])
        if optim is not None:
            optim.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"checkpoint: {path} does not fit this {type(model).__name__} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "delete it or pass another path"
        ) from None
    ckpt.set_rng_state(state["rng"], generator, device)
    return [float(v) for v in state["losses"]], int(state["step"])
