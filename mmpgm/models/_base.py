"""``MultimodalModel``: the one protocol every mmpgm model follows.

What :func:`mmpgm.fit` and :func:`mmpgm.infer` rely on, and nothing more:

``PROGRAMS: tuple[str, ...]`` (class attribute)
    The names of the model's Pyro programs. The first is the default (an instance may choose
    another default through :attr:`MultimodalModel.default_program`).
``check_program(program) -> str``
    ``None`` -> the default program; a name in ``PROGRAMS`` -> itself; anything else raises
    ``ValueError("program: expected one of (...) for <Class>, got 'x'")``.
``model(data, *, program=None, num_sequences=None)``, ``guide(...)`` (same signature)
    The Pyro program and its guide (the default guide samples nothing: MAP parameters,
    latents collapsed or enumerated in the model). ``num_sequences`` is the full data-set
    size when ``data`` is a minibatch.
``default_elbo(program=None) -> pyro.infer.ELBO``
    The ELBO that trains ``program`` (here ``Trace_ELBO()``; models with enumerated programs
    return a ``TraceEnum_ELBO`` for those).
``check_data(data) -> MultimodalData``
    A template: the type check (``TypeError`` naming ``data``), ``data.check_modalities`` against
    :attr:`data_dims`, ``data.to(device, dtype)`` of the model's parameters, then the hooks
    ``_check_observations(data)`` and ``_check_labels(data)`` that subclasses override (both
    see the moved data). The returned data carry a private mark naming this model and the
    dtype/device they were checked for.
``check_training_data(data)``
    Raises ``ValueError`` when checked data cannot train the model (a supervised model's target
    label absent or never given); :func:`mmpgm.fit` and the training functions call it.
``_checked(data) -> MultimodalData``
    Cheap: returns ``data`` unchanged when this model has marked it (same dtype and device),
    else runs :meth:`check_data`. Every internal entry (``model``, ``log_likelihood``,
    ``em_step``, ``posterior`` ...) calls it, so data are validated once at the boundary
    (``fit``, ``infer``) and not on every SVI step. :meth:`checked_batches` yields minibatches
    of checked data that stay marked; :meth:`checked_subset` selects sequences of checked data.
``_param()``
    The first parameter: the source of the model's device and dtype.
``posterior(data, *, causal=False, num_samples=0, seed=None, map_path=True)``
    Posterior over the latents (what :func:`mmpgm.infer` returns); abstract.
``log_likelihood(data) -> (N,)``
    Exact where tractable, a bound otherwise; abstract.
``em_step(data)``
    Closed-form EM step where the model has one (:func:`mmpgm.fit` with ``method="em"``);
    the base raises ``NotImplementedError`` and :attr:`has_em_step` is False.
``em_statistics(data) -> dict``, ``em_update(stats)`` (HMM, LDS)
    The E-step's expected sufficient statistics (name -> tensor, sums over sequences) and the
    M-step from them; ``em_step`` is their composition. Data-parallel EM
    (:mod:`mmpgm.inference.distributed`) all-reduces the statistics between them.
``init_from_data(data, seed=0)``
    Data-driven start that :func:`mmpgm.fit` runs before a model's first fit (base: nothing).

The base also brings :class:`~mmpgm.models._savable.SavableModel` (``config``, ``save``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator

import torch
from pyro.infer import ELBO, Trace_ELBO
from pyro.nn import PyroModule

from ..data import MultimodalData
from ._savable import SavableModel

__all__ = ["MultimodalModel"]

_MARK = "_mmpgm_checked_by"  # attribute of a MultimodalData that a model's check_data returned


def _tensor_state(data: MultimodalData) -> tuple:
    """Identity and in-place version of every tensor of ``data``: a check holds while these do."""
    tensors = [data.lengths, *data.obs.values(), *data.mask.values(), *data.labels.values()]
    keys = (tuple(data.obs), tuple(data.mask), tuple(data.labels))
    return keys, tuple((id(t), t._version) for t in tensors)


class MultimodalModel(SavableModel, PyroModule):
    """Base of :class:`~mmpgm.MultimodalHMM`, :class:`~mmpgm.MultimodalLDS`,
    :class:`~mmpgm.MVRNN` and :class:`~mmpgm.GatedMixture` (the protocol is in the module
    docstring of :mod:`mmpgm.models._base`)."""

    PROGRAMS: tuple[str, ...] = ()
    #: Whether the training loss is a Monte Carlo estimate (then the SVI plateau test smooths it).
    STOCHASTIC_OBJECTIVE = False
    # set by mmpgm.fit, mmpgm.load_model and set_params / from_params: init="auto" initializes
    # from data until then, and never overwrites parameters a user set or loaded
    _mmpgm_fitted = False

    # ------------------------------------------------------------------ programs
    @property
    def default_program(self) -> str:
        """The program for ``program=None``: ``PROGRAMS[0]`` unless a model says otherwise."""
        return self.PROGRAMS[0]

    def check_program(self, program) -> str:
        """``None`` -> :attr:`default_program`; a name in ``PROGRAMS`` -> itself; else
        ``ValueError`` naming ``program``."""
        if program is None:
            return self.default_program
        if not isinstance(program, str) or program not in self.PROGRAMS:
            raise ValueError(
                f"program: expected one of {self.PROGRAMS} for {type(self).__name__}, "
                f"got {program!r}"
            )
        return program

    def model(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """The Pyro program ``program`` (one of ``PROGRAMS``; default :attr:`default_program`)."""
        raise NotImplementedError(f"{type(self).__name__}.model")

    def guide(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """MAP guide: parameters are point estimates, latents are collapsed or enumerated in the
        model, so the guide samples nothing."""

    def default_elbo(self, program: str | None = None) -> ELBO:
        """The ELBO that trains ``program``: ``Trace_ELBO()`` unless the model says otherwise."""
        self.check_program(program)
        return Trace_ELBO()

    # ------------------------------------------------------------------ SVI defaults
    def default_svi_options(self) -> dict:
        """Per-model defaults of :func:`mmpgm.fit` (``method="svi"``) for options the caller
        left at ``None``: ``{"lr": ...}``; empty unless a model says otherwise."""
        return {}

    def svi_stage(self, step: int, num_steps: int) -> tuple[int, int]:
        """Called by the SVI loop before step ``step`` of ``num_steps``: set any per-stage
        training state (e.g. the MVRNN's KL annealing) and return ``(stage, num_stages)``. The
        loop restarts its plateau test at each new stage and stops early only in the last.
        Default: one stage."""
        return (0, 1)

    # ------------------------------------------------------------------ data
    def _param(self) -> torch.Tensor:
        """The first parameter: the model's device and dtype."""
        return next(iter(self.parameters()))

    @property
    def data_dims(self) -> dict:
        """Modality -> the last axis of ``data.obs[m]`` the model expects (default ``obs_dims``)."""
        return dict(self.obs_dims)

    def check_data(self, data) -> MultimodalData:
        """Validate ``data`` against the model and move it to the model's device and dtype.

        Type check, modalities and sizes, the move (observed values whose squares overflow the
        model's dtype raise ``ValueError``), then :meth:`_check_observations` and
        :meth:`_check_labels`. The result is marked as checked by this model, so
        :meth:`_checked` passes it through unchanged.
        """
        if not isinstance(data, MultimodalData):
            raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
        data.check_modalities(self.data_dims)
        p = self._param()
        original = data
        data = data.to(device=p.device, dtype=p.dtype)
        limit = math.sqrt(torch.finfo(p.dtype).max)  # squares of larger values overflow
        for m, x in data.obs.items():
            too_big = data.mask[m] & (x.abs() > limit).any(-1)  # inf: the cast overflowed
            if bool(too_big.any()):
                big = float(original.obs[m][too_big.to(original.obs[m].device)].abs().max())
                raise ValueError(
                    f"data.obs[{m!r}]: expected observed values of magnitude <= {limit:.3g} "
                    f"(their squares must fit the model's dtype {p.dtype}), got up to {big:.3g} "
                    f"({original.obs[m].dtype}); rescale the data or convert the model "
                    "(model.to(torch.float64))"
                )
        self._check_observations(data)
        self._check_labels(data)
        if _tensor_state(data) == _tensor_state(original):  # nothing moved or cast: the
            self._mark_checked(original)  # caller's own object passes through next time
        return self._mark_checked(data)

    def check_training_data(self, data: MultimodalData) -> None:
        """Raise ``ValueError`` if checked ``data`` cannot train the model (e.g. a supervised model
        whose target label is absent: it would train to loss 0 and learn nothing). Called by
        :func:`mmpgm.fit` and the training functions of :mod:`mmpgm.inference`; base: nothing."""

    def _check_observations(self, data: MultimodalData) -> None:
        """Hook: raise if the observations do not suit the model (default: nothing)."""

    def _check_labels(self, data: MultimodalData) -> None:
        """Hook: raise if the labels do not suit the model (default: nothing)."""

    def _mark_checked(self, data: MultimodalData) -> MultimodalData:
        p = self._param()
        setattr(data, _MARK, (weakref.ref(self), p.dtype, p.device, _tensor_state(data)))
        return data

    def _is_checked(self, data) -> bool:
        """Whether this model checked ``data`` at its current dtype/device and no tensor of it
        was replaced or written in place since (torch's version counters)."""
        mark = getattr(data, _MARK, None) if isinstance(data, MultimodalData) else None
        if mark is None or mark[0]() is not self:
            return False
        p = self._param()
        return mark[1] == p.dtype and mark[2] == p.device and mark[3] == _tensor_state(data)

    def _checked(self, data) -> MultimodalData:
        """``data`` unchanged when this model checked it already (same dtype/device), else
        :meth:`check_data`."""
        return data if self._is_checked(data) else self.check_data(data)

    def checked_subset(self, data: MultimodalData, index) -> MultimodalData:
        """Sequences ``index`` (int, slice, index tensor; as ``data[index]``) of ``data``
        (checked once here), marked as checked by this model: a shard of data-parallel
        training (:mod:`mmpgm.inference.distributed`)."""
        data = self._checked(data)
        if isinstance(index, torch.Tensor):
            index = index.to(data.device)
        return self._mark_checked(data[index])

    def checked_affine(self, data: MultimodalData, shift: dict, scale: dict) -> MultimodalData:
        """``data`` (checked once here) with ``obs[m]`` replaced by ``(obs[m] - shift[m]) /
        scale[m]`` for the modalities of ``scale`` (masks, lengths, labels shared), marked as
        checked by this model: an affine map of finite data with ``scale > 0`` keeps every
        check true (the standardized units of SVI, :mod:`mmpgm.inference.units`)."""
        data = self._checked(data)
        new = data._replace(lambda v: v, lambda v: v)
        for m in scale:
            new.obs[m] = (data.obs[m] - shift[m]) / scale[m]
        return self._mark_checked(new)

    def checked_batches(
        self, data: MultimodalData, batch_size: int, *, shuffle: bool = False, generator=None
    ) -> Iterator[MultimodalData]:
        """Minibatches of ``data`` (checked once here), each marked as checked by this model."""
        data = self._checked(data)
        for batch in data.batches(batch_size, shuffle=shuffle, generator=generator):
            yield self._mark_checked(batch)

    # ------------------------------------------------------------------ fitting hooks
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start, run by :func:`mmpgm.fit` before the first fit (base: nothing)."""

    # ------------------------------------------------------------------ results
    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        """``(N,)`` log-likelihood per sequence (exact where tractable, else a bound)."""
        raise NotImplementedError(f"{type(self).__name__}.log_likelihood")

    def posterior(
        self,
        data: MultimodalData,
        *,
        causal: bool = False,
        num_samples: int = 0,
        seed: int | None = None,
        map_path: bool = True,
    ):
        """Posterior over the latents of ``data`` (see :func:`mmpgm.infer`)."""
        raise NotImplementedError(f"{type(self).__name__}.posterior")

    def em_step(self, data: MultimodalData) -> torch.Tensor:
        """One closed-form EM step; returns the log joint before the update (where it exists)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form EM step")

    @property
    def has_em_step(self) -> bool:
        """Whether the model overrides :meth:`em_step` (closed-form EM)."""
        return type(self).em_step is not MultimodalModel.em_step
