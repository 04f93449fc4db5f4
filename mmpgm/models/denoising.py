r"""Denoising experts, the gated mixture of denoisers, and fine-tuning into a clean embedding:
the robust sound-event pipeline of paper section 6.4 (Fig. 11 a-d).

Data: ``MultimodalData(obs={"noisy": (N, T, D), "clean": (N, T, D)}, labels={"noise_type": (N,)
or (N, T) ints, -1 unknown, ...})``; an *item* is one frame vector ``data.obs[m][n, t]`` ``(D,)``.

(a) :class:`DenoisingExpert`: one denoiser :math:`f` per training noise type, the regression

.. math::
    y_t \mid x_t \sim \mathcal N\big(f(x_t), \mathrm{diag}(\sigma^2)\big),

``x_t`` the noisy item, ``y_t`` the clean one, :math:`\sigma` per feature (learned, or fixed);
frames count where both are observed. :math:`f` is any network ``(..., D) -> (..., D)`` (default
the residual :class:`~mmpgm.nn.denoisers.DenoisingAutoencoder`), run in the units of the noisy
input standardized per feature: :math:`f(x) = \mu + s \odot \mathrm{net}((x - \mu) / s)`.

(b) :class:`GatedDenoisers`: the conditional gated mixture (paper eq. 17) over ``K`` denoisers,

.. math::
    c_t \mid x_t \sim \mathrm{Categorical}(g(x_t)), \qquad
    y_t \mid c_t = k, x_t \sim \mathcal N\big(f_k(x_t), \mathrm{diag}(\sigma_k^2)\big).

The indicator :math:`c_t` is *observed* where the noise type is known (the gate is trained with
it, supervised as in the paper's Fig. 11b) and enumerated (``TraceEnum_ELBO``, parallel) where it
is not; the exact log-likelihood is
:func:`mmpgm.ops.labelled_mixture.labelled_mixture_log_likelihood`.

(c) The siamese encoder :math:`G` of clean items is :class:`mmpgm.SiameseEncoder` (or any module).

(d) :func:`finetune_into_embedding`: train the denoisers (encoder fixed), the encoder (denoisers
fixed) or both so that denoised items land on the clean embedding,

.. math::
    \min \frac{1}{F} \sum_i \Big\lVert \sum_k g_k(x_i)\, G(f_k(x_i)) - G_0(y_i) \Big\rVert^2,

the gate-weighted centre of the denoised embeddings (``weighting="gate"``, the point the
classifier uses) or the embedding of the known noise type's denoiser (``weighting="label"``).
:math:`G_0` is the encoder as it was before fine-tuning (the clean targets are embedded once), so
training the encoder cannot collapse the embedding: the clean map is held as ground truth.

Classification (:func:`gated_centre_classify`): nearest neighbour / class centre of the
gate-weighted centre :math:`\sum_k g_k(x) G(f_k(x))` of the denoised embeddings.

Examples
--------
The four steps of Fig. 11 on ``data`` (per-sequence ``noise_type`` in ``0..K-1`` and ``class``):

>>> experts = [DenoisingExpert(D) for _ in range(K)]  # doctest: +SKIP
>>> for k, e in enumerate(experts):  # (a) one denoiser per noise type  # doctest: +SKIP
...     idx = torch.nonzero(data.labels["noise_type"] == k).flatten()
...     mmpgm.fit(e, data[idx], num_steps=500, lr=1e-2, seed=0)
>>> gated = GatedDenoisers(experts, train_experts=False)  # (b) gate only  # doctest: +SKIP
>>> mmpgm.fit(gated, data, num_steps=300, lr=0.05, seed=0)  # doctest: +SKIP
>>> encoder = mmpgm.SiameseEncoder(MLPTower(D), modality="clean")  # (c)  # doctest: +SKIP
>>> mmpgm.fit(encoder, data, num_steps=500, seed=0)  # doctest: +SKIP
>>> memory = mmpgm.KNNMemory(encoder, centres=True).add(clean_items, classes)  # doctest: +SKIP
>>> finetune_into_embedding(gated, encoder, data, train="denoiser")  # (d)  # doctest: +SKIP
>>> predicted = gated_centre_classify(gated, None, noisy_items, memory)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.ops.indexing import Vindex
from torch import nn

from .._progress import progress_bar
from .._validation import check_bool, check_choice, check_float, check_int
from ..data import MultimodalData
from ..nn.denoisers import DenoiserGate, DenoisingAutoencoder
from ..nn.standardize import Standardizer
from ..ops.labelled_mixture import (
    known_labels,
    labelled_mixture_log_likelihood,
    labelled_mixture_responsibilities,
)
from ..ops.mixture import NEG_LOG
from ..results.denoising import DenoisedResult, DenoisingPosterior, FinetuneResult
from ._base import MultimodalModel
from ._savable import register

__all__ = [
    "DenoisingExpert",
    "GatedDenoisers",
    "finetune_into_embedding",
    "gated_centre_classify",
    "embed_items",
]

_ENUM = {"enumerate": "parallel"}


def _check_name(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name}: expected a non-empty str, got {value!r}")
    return value


def _as_items(model, x, input_dim: int, name: str = "x") -> torch.Tensor:
    """``x`` as a tensor ``(..., D)`` in the model's dtype and device."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: expected a tensor (..., {input_dim}), got {err}") from None
    if x.dim() < 1 or x.shape[-1] != input_dim:
        raise ValueError(
            f"{name}: expected a tensor (..., {input_dim}), got shape {tuple(x.shape)}"
        )
    p = model._param()
    return x.to(device=p.device, dtype=p.dtype)


# ---------------------------------------------------------------------- (a) one denoiser
@register
class DenoisingExpert(MultimodalModel):
    r"""One denoiser as a regression model, :math:`y_t \sim \mathcal N(f(x_t), \sigma^2)`
    (module docstring, step a).

    Parameters
    ----------
    input_dim : int
        ``D``, the size of an item (of both the noisy and the clean stream).
    network : nn.Module, optional
        Any ``(..., D) -> (..., D)`` module, run on the standardized noisy item and mapped back
        to the data's units. Default a
        :class:`~mmpgm.nn.denoisers.DenoisingAutoencoder` ``(D, hidden_dims, bottleneck_dim,
        residual)``. A model with a custom network cannot be saved by config (:meth:`save`
        raises); save its ``state_dict`` instead.
    noisy, clean : str
        Modality names of the noisy input and the clean target.
    hidden_dims, bottleneck_dim, residual
        Of the default network (ignored when ``network`` is given).
    sigma : float, sequence of D floats, or None
        Fixed observation scale (data units), or ``None`` (default): learned per feature,
        started at the root mean square of ``clean - f(noisy)`` by :meth:`init_from_data`.
    standardize : bool
        Run the network in standardized units (per-feature mean and std of the noisy frames,
        set by :meth:`init_from_data`; default). ``False`` keeps the network's output as the
        prediction, ``f(x) = network(x)``.

    Examples
    --------
    >>> expert = DenoisingExpert(40)
    >>> result = mmpgm.fit(expert, data, num_steps=300, lr=1e-2, seed=0)  # doctest: +SKIP
    >>> expert.denoise(data.obs["noisy"])  # doctest: +SKIP
    """

    PROGRAMS = ("regression",)

    def __init__(
        self,
        input_dim: int,
        *,
        network: nn.Module | None = None,
        noisy: str = "noisy",
        clean: str = "clean",
        hidden_dims: Sequence[int] = (256,),
        bottleneck_dim: int = 64,
        residual: bool = True,
        sigma=None,
        standardize: bool = True,
    ):
        super().__init__()
        check_int("input_dim", input_dim)
        self.noisy = _check_name("noisy", noisy)
        self.clean = _check_name("clean", clean)
        if noisy == clean:
            raise ValueError(
                f"clean: expected a modality other than noisy={noisy!r}, got {clean!r}"
            )
        self.standardize = check_bool("standardize", standardize)
        self.input_dim = input_dim
        self.custom_network = network is not None
        if network is None:
            network = DenoisingAutoencoder(
                input_dim, hidden_dims, bottleneck_dim, residual=residual
            )
            hidden_dims = network.hidden_dims
        elif not isinstance(network, nn.Module):
            raise TypeError(f"network: expected a torch nn.Module, got {type(network).__name__}")
        self.network = network
        self.standardizer = Standardizer(input_dim)
        self.learn_sigma = sigma is None
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(torch.zeros(input_dim))
            fixed = None
        else:
            fixed = self._check_sigma(sigma, input_dim)
            self.register_buffer("fixed_sigma", fixed)
        # the network's dtype/device decides the model's (a user network may be float64)
        p = next(iter(network.parameters()), None)
        if p is not None:
            self.standardizer.to(device=p.device, dtype=p.dtype)
            if self.learn_sigma:
                self.log_sigma.data = self.log_sigma.data.to(device=p.device, dtype=p.dtype)
            else:
                self.fixed_sigma = self.fixed_sigma.to(device=p.device, dtype=p.dtype)
        self._config = dict(
            input_dim=input_dim, noisy=noisy, clean=clean, hidden_dims=list(hidden_dims),
            bottleneck_dim=bottleneck_dim, residual=bool(residual),
            sigma=None if fixed is None else fixed.tolist(), standardize=bool(standardize),
        )  # fmt: skip

    @staticmethod
    def _check_sigma(sigma, input_dim: int) -> torch.Tensor:
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            check_float("sigma", sigma, positive=True)
            return torch.full((input_dim,), float(sigma))
        try:
            s = torch.as_tensor(sigma, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            s = None
        if s is None or s.shape != (input_dim,) or not bool((torch.isfinite(s) & (s > 0)).all()):
            raise ValueError(
                f"sigma: expected None (learned), a positive float or {input_dim} positive "
                f"floats, got {sigma!r}"
            )
        return s.clone()

    @property
    def has_network_weights(self) -> bool:
        """Whether the network has parameters (``nn.Identity`` has none)."""
        return next(iter(self.network.parameters()), None) is not None

    def _param(self) -> torch.Tensor:
        """The first parameter, or the standardizer's buffer when there is none (a fixed
        sigma and a parameterless network): the model's device and dtype."""
        return next(iter(self.parameters()), self.standardizer.loc)

    def save(self, path) -> None:
        """Save to ``path`` (:func:`mmpgm.load_model`); default network only."""
        if self.custom_network:
            raise TypeError(
                "save: a DenoisingExpert with a custom network cannot be rebuilt from its config; "
                "save model.state_dict() with torch.save and rebuild the model with the network"
            )
        super().save(path)

    # ------------------------------------------------------------------ data
    @property
    def data_dims(self) -> dict:
        return {self.noisy: self.input_dim, self.clean: self.input_dim}

    @property
    def obs_dims(self) -> dict:
        return self.data_dims

    def _evidence(self, data: MultimodalData) -> torch.Tensor:
        return data.mask[self.noisy] & data.mask[self.clean]

    def check_training_data(self, data: MultimodalData) -> None:
        if not bool(self._evidence(data).any()):
            raise ValueError(
                f"data: no frame has both {self.noisy!r} and {self.clean!r} observed; there is "
                "nothing to fit"
            )

    # ------------------------------------------------------------------ the denoiser
    def sigma(self) -> torch.Tensor:
        r""":math:`\sigma` ``(D,)`` in the data's units."""
        return self.log_sigma.exp() if self.learn_sigma else self.fixed_sigma

    def _denoise(self, x: torch.Tensor) -> torch.Tensor:
        s = self.standardizer
        return s.loc + s.scale * self.network((x - s.loc) / s.scale)

    def denoise(self, x, *, grad: bool = False) -> torch.Tensor:
        r""":math:`f(x)` of noisy items ``x (..., D)`` -> ``(..., D)`` (no gradient unless
        ``grad=True``)."""
        x = _as_items(self, x, self.input_dim)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self._denoise(x)

    @torch.no_grad()
    def _init_from_items(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Standardizer from noisy items ``x (F, D)`` (when not set) and a learned sigma from
        the residuals ``y - f(x)`` of the pairs (when ``y (F, D)`` is given)."""
        if self.standardize and not bool(self.standardizer.initialized) and x.shape[0] > 0:
            self.standardizer.fit_to(x)
        if self.learn_sigma and y is not None and y.shape[0] > 0:
            rms = (y - self._denoise(x)).square().mean(0).sqrt()
            ref = y.std(0) if y.shape[0] > 1 else y.abs().mean(0)
            floor = torch.clamp(1e-2 * ref, min=torch.finfo(y.dtype).tiny ** 0.5)
            self.log_sigma.copy_(torch.maximum(rms, floor).log())

    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start (called by :func:`mmpgm.fit` before the first fit): the input
        standardization from the observed noisy frames (unless already set) and, for a learned
        sigma, the residual scale of the current network on the frames with both streams.
        Network weights are left alone."""
        data = self._checked(data)
        ev = self._evidence(data)
        x_all = data.obs[self.noisy][data.mask[self.noisy]]
        if self.standardize and not bool(self.standardizer.initialized) and x_all.shape[0]:
            self.standardizer.fit_to(x_all)
        self._init_from_items(data.obs[self.noisy][ev], data.obs[self.clean][ev])

    # ------------------------------------------------------------------ likelihood, program
    def _frame_log_prob(self, data: MultimodalData):
        x, y = data.filled(self.noisy), data.filled(self.clean)
        loc = self._denoise(x)
        return loc, y, self._evidence(data)

    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        r"""Exact :math:`\sum_t \log \mathcal N(y_t; f(x_t), \sigma^2)` per sequence ``(N,)``
        over the frames with both streams observed."""
        data = self._checked(data)
        loc, y, ev = self._frame_log_prob(data)
        lp = dist.Normal(loc, self.sigma()).log_prob(y).sum(-1)
        return torch.where(ev, lp, torch.zeros_like(lp)).sum(-1)

    def model(self, data, *, program=None, num_sequences=None):
        """``clean ~ Normal(f(noisy), sigma).to_event(1)`` per frame, masked to the frames with
        both streams observed (plates ``sequences`` dim -2, ``time`` dim -1)."""
        self.check_program(program)
        data = self._checked(data)
        N, T = data.num_sequences, data.num_timesteps
        loc, y, ev = self._frame_log_prob(data)
        seq = pyro.plate(
            "sequences",
            N if num_sequences is None else num_sequences,
            subsample=torch.arange(N, device=data.device),
            dim=-2,
        )
        with seq, pyro.plate("time", T, dim=-1), poutine.mask(mask=ev):
            pyro.sample(self.clean, dist.Normal(loc, self.sigma()).to_event(1), obs=y)

    def posterior(self, data, *, causal=False, num_samples=0, seed=None, map_path=True):
        """The denoised stream as a one-expert :class:`~mmpgm.results.denoising.DenoisedResult`
        (``gate_weights`` ones ``(N, T, 1)``; NaN where the noisy frame is unobserved). The
        model has no latent variable; the other arguments are accepted and ignored."""
        data = self._checked(data)
        with torch.no_grad():
            loc = self._denoise(data.filled(self.noisy))
            loc = torch.where(data.mask[self.noisy][..., None], loc, torch.nan)
        ones = torch.ones(loc.shape[:-1] + (1,), dtype=loc.dtype, device=loc.device)
        return DenoisedResult(ones, loc[..., None, :], loc)


# ---------------------------------------------------------------------- (b) gated denoisers
@register
class GatedDenoisers(MultimodalModel):
    r"""Conditional gated mixture over ``K`` denoisers (module docstring, step b).

    Parameters
    ----------
    experts : sequence of DenoisingExpert or nn.Module
        The denoisers :math:`f_k` (``K = len(experts)``, index ``k`` = noise type ``k``). A plain
        module ``(..., D) -> (..., D)`` is wrapped in an unstandardized
        :class:`DenoisingExpert` with a learned :math:`\sigma_k` (then ``input_dim`` is needed
        unless another expert gives it). A ``DenoisingExpert`` brings its own :math:`\sigma`.
    gate_hidden : int
        Width of the gate's hidden layer (:class:`~mmpgm.nn.denoisers.DenoiserGate`, on the
        standardized noisy item).
    noise_label : str
        Label of the noise type, ``(N,)`` or ``(N, T)`` ints in ``[-1, K)``; ``-1`` (or NaN in a
        float label) = unknown.
    noisy, clean : str
        Modality names.
    train_experts : bool
        ``False`` freezes the experts (``requires_grad=False``): :func:`mmpgm.fit` then trains
        only the gate (Fig. 11b on pre-trained denoisers), and :meth:`init_from_data` leaves
        them alone; ``True`` (default) makes their parameters trainable. See
        :meth:`set_trainable`.
    input_dim : int, optional
        ``D`` when no expert is a :class:`DenoisingExpert`.

    Notes
    -----
    Programs: ``"enumerated"`` (default): per frame an observed site ``noise_type``
    ``Categorical(g(x_t))`` on the frames with a known label, and an enumerated site ``expert``
    whose distribution is the gate where the label is unknown and a point mass on the label
    where it is known (so the known frames are not counted twice), followed by the masked
    ``clean`` site; ``TraceEnum_ELBO`` sums the enumerated site out. ``"collapsed"``: the same
    log-likelihood in closed form as one factor per sequence.
    """

    PROGRAMS = ("enumerated", "collapsed")

    def __init__(
        self,
        experts,
        *,
        gate_hidden: int = 64,
        noise_label: str = "noise_type",
        noisy: str = "noisy",
        clean: str = "clean",
        train_experts: bool = True,
        input_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(experts, nn.Module) or not isinstance(experts, Sequence) or not experts:
            raise TypeError(
                "experts: expected a non-empty list of DenoisingExpert or nn.Module, got "
                f"{type(experts).__name__}"
            )
        for i, e in enumerate(experts):
            if not isinstance(e, nn.Module):
                raise TypeError(
                    f"experts[{i}]: expected a DenoisingExpert or nn.Module, got {type(e).__name__}"
                )
        check_int("gate_hidden", gate_hidden)
        self.noise_label = _check_name("noise_label", noise_label)
        self.noisy = _check_name("noisy", noisy)
        self.clean = _check_name("clean", clean)
        if noisy == clean:
            raise ValueError(
                f"clean: expected a modality other than noisy={noisy!r}, got {clean!r}"
            )
        check_bool("train_experts", train_experts)
        check_int("input_dim", input_dim, allow_none=True)
        dims = {e.input_dim for e in experts if isinstance(e, DenoisingExpert)}
        if input_dim is not None:
            dims.add(input_dim)
        if len(dims) != 1:
            raise ValueError(
                "input_dim: expected one item size shared by all experts (give input_dim= when "
                f"no expert is a DenoisingExpert), got {sorted(dims) if dims else 'none'}"
            )
        D = dims.pop()
        wrapped = [
            e if isinstance(e, DenoisingExpert)
            else DenoisingExpert(D, network=e, noisy=noisy, clean=clean, standardize=False)
            for e in experts
        ]  # fmt: skip
        # the wrappers' own sigma: set from data by init_from_data even when frozen
        self._wrapped = tuple(not isinstance(e, DenoisingExpert) for e in experts)
        # the dtype/device of the first expert with network weights (an expert whose network
        # has none, e.g. nn.Identity, follows it)
        with_weights = [e for e in wrapped if e.has_network_weights]
        p = (with_weights or wrapped)[0]._param()
        for e in wrapped:
            if not e.has_network_weights:
                e.to(device=p.device, dtype=p.dtype)
        for i, e in enumerate(wrapped):
            q = e._param()
            if q.dtype != p.dtype or q.device != p.device:
                raise ValueError(
                    f"experts[{i}]: expected the dtype/device of the other experts ({p.dtype}, "
                    f"{p.device}), got ({q.dtype}, {q.device})"
                )
        self.input_dim = D
        self.experts = nn.ModuleList(wrapped)
        self.gate_standardizer = Standardizer(D).to(device=p.device, dtype=p.dtype)
        self.gate = DenoiserGate(D, len(wrapped), gate_hidden).to(device=p.device, dtype=p.dtype)
        self.set_trainable(experts=train_experts)
        self._config = dict(
            experts=[e.config() if not e.custom_network else None for e in wrapped],
            gate_hidden=gate_hidden, noise_label=noise_label, noisy=noisy, clean=clean,
            train_experts=bool(train_experts), input_dim=D,
        )  # fmt: skip

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        experts = config.pop("experts")
        if any(c is None for c in experts):
            raise ValueError("config: an expert with a custom network cannot be rebuilt")
        return cls([DenoisingExpert(**c) for c in experts], **config)

    def save(self, path) -> None:
        """Save to ``path`` (:func:`mmpgm.load_model`); experts with the default network only."""
        if any(e.custom_network for e in self.experts):
            raise TypeError(
                "save: experts with a custom network cannot be rebuilt from the config; save "
                "model.state_dict() with torch.save and rebuild the model with the networks"
            )
        super().save(path)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def set_trainable(self, *, experts: bool | None = None, gate: bool | None = None) -> None:
        """Freeze (``False``) or unfreeze (``True``) the experts' parameters (networks and
        sigmas) and the gate's; ``None`` leaves a part as it is. :func:`mmpgm.fit` trains the
        parameters with ``requires_grad``."""
        for name, value, module in (("experts", experts, self.experts), ("gate", gate, self.gate)):
            if value is None:
                continue
            check_bool(name, value)
            for q in module.parameters():
                q.requires_grad_(value)

    # ------------------------------------------------------------------ data
    @property
    def data_dims(self) -> dict:
        return {self.noisy: self.input_dim, self.clean: self.input_dim}

    @property
    def obs_dims(self) -> dict:
        return self.data_dims

    def _check_labels(self, data: MultimodalData) -> None:
        if self.noise_label not in data.labels:
            return
        lab = data.labels[self.noise_label]
        N, T = data.num_sequences, data.num_timesteps
        name = f"data.labels[{self.noise_label!r}]"
        if lab.shape not in ((N,), (N, T)):
            raise ValueError(f"{name}: expected shape ({N},) or ({N}, {T}), got {tuple(lab.shape)}")
        if lab.dtype == torch.bool or (
            lab.is_floating_point() and not bool(((lab == lab.round()) | lab.isnan()).all())
        ):
            raise ValueError(
                f"{name}: expected integer noise types (-1 or NaN unknown), got dtype {lab.dtype}"
            )
        K = self.num_experts
        inside = lab if lab.dim() == 1 else lab[data.time_mask]
        if inside.is_floating_point():
            inside = inside[~inside.isnan()]
        if inside.numel() and (inside.min() < -1 or inside.max() >= K):
            raise ValueError(
                f"{name}: expected noise types in [-1, {K - 1}] (one per expert, -1 unknown), "
                f"got min {int(inside.min())} and max {int(inside.max())}"
            )

    def noise_types(self, data: MultimodalData) -> torch.Tensor:
        """Known noise type per frame ``(N, T)`` int64 of checked ``data``: ``-1`` where unknown,
        padding, or the label is absent."""
        N, T = data.num_sequences, data.num_timesteps
        lab = data.labels.get(self.noise_label)
        if lab is None:
            return torch.full((N, T), -1, dtype=torch.long, device=data.device)
        lab = lab.to(data.device)
        if lab.is_floating_point():
            lab = torch.where(lab.isnan(), torch.full_like(lab, -1), lab)
        lab = lab.long()
        if lab.dim() == 1:
            lab = lab[:, None].expand(N, T)
        return torch.where(data.time_mask, lab, torch.full_like(lab, -1))

    def check_training_data(self, data: MultimodalData) -> None:
        gate_mask = data.mask[self.noisy]
        known = (self.noise_types(data) >= 0) & gate_mask
        ev = gate_mask & data.mask[self.clean]
        if not bool(known.any() or ev.any()):
            raise ValueError(
                f"data: no frame has a known {self.noise_label!r} or both {self.noisy!r} and "
                f"{self.clean!r} observed; there is nothing to fit"
            )

    @torch.no_grad()
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start (called by :func:`mmpgm.fit` on the first fit): the gate's input
        standardization (unless set) and, for every expert not fitted yet, its standardization
        and sigma from the frames of its noise type (all frames when none is labelled with
        it). Fitted or frozen :class:`DenoisingExpert` s and all network weights are left
        alone; the sigma of a wrapped plain module (which only this model owns) is set even
        when the experts are frozen."""
        data = self._checked(data)
        xn, mn = data.obs[self.noisy], data.mask[self.noisy]
        if not bool(self.gate_standardizer.initialized) and bool(mn.any()):
            self.gate_standardizer.fit_to(xn[mn])
        ev = mn & data.mask[self.clean]
        lab = self.noise_types(data)
        for k, (e, wrapped) in enumerate(zip(self.experts, self._wrapped, strict=True)):
            frozen = not any(q.requires_grad for q in e.parameters())
            if e._mmpgm_fitted or (frozen and not wrapped):
                continue  # a fitted or frozen DenoisingExpert is left exactly as it is
            sel = ev & (lab == k)
            if not bool(sel.any()):
                sel = ev
            e._init_from_items(xn[sel], data.obs[self.clean][sel])

    # ------------------------------------------------------------------ the pieces
    def gate_log_weights(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log g_k(x)` ``(..., K)`` of noisy items ``(..., D)`` (with gradient)."""
        return torch.log_softmax(self.gate(self.gate_standardizer(x)), -1)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`f_k(x)` ``(..., K, D)`` of noisy items ``(..., D)`` (with gradient)."""
        return torch.stack([e._denoise(x) for e in self.experts], -2)

    def sigmas(self) -> torch.Tensor:
        r""":math:`\sigma_k` ``(K, D)``."""
        return torch.stack([e.sigma() for e in self.experts], 0)

    def _pieces(self, data: MultimodalData):
        x, y = data.filled(self.noisy), data.filled(self.clean)
        gate_mask = data.mask[self.noisy]
        ev = gate_mask & data.mask[self.clean]
        log_w = self.gate_log_weights(x)
        per = self.expert_outputs(x)
        sig = self.sigmas()
        lc = dist.Normal(per, sig).log_prob(y[..., None, :]).sum(-1)
        return log_w, per, sig, lc, y, self.noise_types(data), gate_mask, ev

    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        r"""Exact :math:`\log p(y, c^*_{\mathcal K} \mid x)` per sequence ``(N,)``: the gate's
        log weight of the known noise types plus the clean frames' log-likelihood under their
        expert, and the mixture :math:`\log \sum_k g_k \mathcal N(y_t; f_k, \sigma_k^2)` on
        frames of unknown type (differentiable)."""
        data = self._checked(data)
        log_w, _, _, lc, _, lab, gate_mask, ev = self._pieces(data)
        return labelled_mixture_log_likelihood(log_w, lc, lab, gate_mask, ev)

    # ------------------------------------------------------------------ Pyro programs
    def default_elbo(self, program: str | None = None) -> ELBO:
        """``TraceEnum_ELBO(max_plate_nesting=2)`` for ``"enumerated"``, ``Trace_ELBO`` for
        ``"collapsed"`` (same loss)."""
        if self.check_program(program) == "collapsed":
            return Trace_ELBO()
        return TraceEnum_ELBO(max_plate_nesting=2)

    def model(self, data, *, program=None, num_sequences=None):
        """The program (see the class Notes); plates ``sequences`` (dim -2) and ``time``
        (dim -1)."""
        program = self.check_program(program)
        data = self._checked(data)
        N, T = data.num_sequences, data.num_timesteps
        log_w, per, sig, lc, y, lab, gate_mask, ev = self._pieces(data)
        size = N if num_sequences is None else num_sequences
        sub = torch.arange(N, device=data.device)
        if program == "collapsed":
            with pyro.plate("sequences", size, subsample=sub, dim=-1):
                ll = labelled_mixture_log_likelihood(log_w, lc, lab, gate_mask, ev)
                pyro.factor("log_likelihood", ll)
            return
        known, idx = known_labels(lab, gate_mask)
        K = self.num_experts
        onehot = torch.nn.functional.one_hot(idx, K).bool()
        point = torch.where(onehot, torch.zeros_like(log_w), torch.full_like(log_w, NEG_LOG))
        enum_logits = torch.where(known[..., None], point, log_w)
        with pyro.plate("sequences", size, subsample=sub, dim=-2), pyro.plate("time", T, dim=-1):
            with poutine.mask(mask=known):
                pyro.sample("noise_type", dist.Categorical(logits=log_w), obs=idx)
            c = pyro.sample("expert", dist.Categorical(logits=enum_logits), infer=_ENUM)
            loc = Vindex(per)[..., c, :]
            with poutine.mask(mask=ev):
                pyro.sample(self.clean, dist.Normal(loc, sig[c]).to_event(1), obs=y)

    # ------------------------------------------------------------------ results
    def denoise(self, x, *, grad: bool = False) -> DenoisedResult:
        r"""Gate weights ``(..., K)``, every expert's output ``(..., K, D)`` and the gate-weighted
        mix ``(..., D)`` of noisy items ``x (..., D)`` (no gradient unless ``grad=True``)."""
        x = _as_items(self, x, self.input_dim)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            w = self.gate_log_weights(x).exp()
            per = self.expert_outputs(x)
            return DenoisedResult(w, per, (w[..., None] * per).sum(-2))

    def embed_centre(self, x, encoder: nn.Module, *, grad: bool = False) -> torch.Tensor:
        r"""Gate-weighted centre of the denoised embeddings, :math:`\sum_k g_k(x) G(f_k(x))`,
        ``(..., E)`` of noisy items ``x (..., D)`` (``encoder``: :func:`embed_items`)."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            w, per, _ = self.denoise(x, grad=grad)
            z = embed_items(encoder, per, grad=grad)
            return (w.to(z.dtype)[..., None] * z).sum(-2)

    def posterior(self, data, *, causal=False, num_samples=0, seed=None, map_path=True):
        """Gate weights, responsibilities, denoised outputs (see
        :class:`~mmpgm.results.denoising.DenoisingPosterior`). The gate is per frame, so the
        filtered (``causal=True``) and smoothed posteriors are the same. Where the noisy frame
        is unobserved the denoised outputs are NaN and the weights are the gate's at a zero
        (filled) input, unused by the likelihood."""
        check_int("num_samples", num_samples, minimum=0)
        data = self._checked(data)
        with torch.no_grad():
            log_w, per, _, lc, _, lab, gate_mask, ev = self._pieces(data)
            resp = labelled_mixture_responsibilities(log_w, lc, lab, gate_mask, ev)
            w = log_w.exp()
            samples = None
            if num_samples:
                gen = None
                if seed is not None:
                    gen = torch.Generator(device=resp.device).manual_seed(seed)
                N, T, K = resp.shape
                draws = torch.multinomial(resp.reshape(-1, K), num_samples, True, generator=gen)
                samples = draws.T.reshape(num_samples, N, T)
            seen = gate_mask[..., None]
            per = torch.where(seen[..., None], per, torch.nan)
            return DenoisingPosterior(
                gate_weights=w,
                responsibilities=resp,
                per_expert=per,
                mixed=torch.where(seen, (w[..., None] * per).sum(-2), torch.nan),
                map=resp.argmax(-1) if map_path else None,
                samples=samples,
                log_likelihood=labelled_mixture_log_likelihood(log_w, lc, lab, gate_mask, ev),
            )


# ---------------------------------------------------------------------- (c-d) the embedding
def embed_items(encoder: nn.Module, x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """``G(x)``: ``encoder.embed(x, grad=grad)`` when the encoder has an ``embed`` method (e.g.
    :class:`mmpgm.SiameseEncoder`), else ``encoder(x)``; ``x (..., D)`` is cast to the encoder's
    dtype and device (when it has parameters)."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder: expected a torch nn.Module, got {type(encoder).__name__}")
    p = next(iter(encoder.parameters()), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        if callable(getattr(encoder, "embed", None)):
            return encoder.embed(x, grad=grad)
        return encoder(x)


_TRAIN = ("denoiser", "encoder", "both")


def _denoiser_items(denoisers, data, weighting: str):
    """Items with both streams observed: ``x (F, D)``, ``y (F, D)``, known type ``(F,)``."""
    data = denoisers._checked(data)
    ev = data.mask[denoisers.noisy] & data.mask[denoisers.clean]
    if not bool(ev.any()):
        raise ValueError(
            f"data: no frame has both {denoisers.noisy!r} and {denoisers.clean!r} observed; "
            "there is nothing to fine-tune on"
        )
    x, y = data.obs[denoisers.noisy][ev], data.obs[denoisers.clean][ev]
    if isinstance(denoisers, GatedDenoisers):
        if weighting == "label" and denoisers.noise_label not in data.labels:
            raise ValueError(
                f"weighting='label': data.labels has no {denoisers.noise_label!r} "
                f"(labels: {sorted(data.labels)})"
            )
        lab = denoisers.noise_types(data)[ev]
    else:
        lab = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return x, y, lab


def _denoised_embedding(denoisers, encoder, x, lab, weighting: str, y=None):
    r"""The point compared with the clean embedding, ``(F, E)`` with gradient: the gate-weighted
    centre :math:`\sum_k w_k G(f_k(x))`, ``w`` the gate or, where the type is known and
    ``weighting="label"``, one-hot on it; and with clean items ``y (F, D)`` the weighted
    denoising error :math:`\sum_k w_k \lVert f_k(x) - y \rVert^2 / D` ``(F,)`` (else None)."""
    if isinstance(denoisers, DenoisingExpert):
        f = denoisers._denoise(x)[..., None, :]
        w = torch.ones(f.shape[:-1], dtype=f.dtype, device=f.device)
    else:
        w = denoisers.gate_log_weights(x).exp()
        if weighting == "label":
            onehot = torch.nn.functional.one_hot(lab.clamp(min=0), denoisers.num_experts)
            w = torch.where((lab >= 0)[:, None], onehot.to(w.dtype), w)
        f = denoisers.expert_outputs(x)
    z = embed_items(encoder, f, grad=True)
    centre = (w.to(z.dtype)[..., None] * z).sum(-2)
    if y is None:
        return centre, None
    return centre, (w * (f - y[..., None, :]).square().mean(-1)).sum(-1)


def finetune_into_embedding(
    denoisers,
    encoder: nn.Module,
    data: MultimodalData,
    *,
    train: str = "denoiser",
    weighting: str = "gate",
    train_gate: bool = False,
    denoise_weight: float = 0.0,
    num_steps: int = 200,
    lr: float = 1e-3,
    batch_size: int | None = 256,
    seed: int = 0,
    patience: int = 50,
    tol: float = 1e-4,
    progress: bool | None = None,
) -> FinetuneResult:
    r"""Fine-tune so that denoised items land on the clean embedding (paper Fig. 11d).

    Minimizes the mean over the items with both streams observed of

    .. math::
        \Big\lVert \sum_k w_k(x)\, G(f_k(x)) - G_0(y) \Big\rVert^2
        \;\big(+\, \lambda \textstyle\sum_k w_k(x) \lVert f_k(x) - y \rVert^2 / D\big)

    with Adam, where :math:`G_0(y)` are the clean items embedded once before training (the
    clean map held as ground truth, so training the encoder cannot collapse it) and
    :math:`w = g(x)` the gate weights (``weighting="gate"``: the gate-weighted centre that
    :func:`gated_centre_classify` uses) or the one-hot known noise type where it is known
    (``weighting="label"``, the noise type's own expert). Modifies ``denoisers`` and/or
    ``encoder`` in place; parameters not trained are left exactly as they were. Because the
    targets are :math:`G_0(y)`, a :class:`mmpgm.KNNMemory` filled with clean items before
    fine-tuning (it stores their embeddings) stays the right reference for the fine-tuned
    encoder. To compare the three options, fine-tune ``copy.deepcopy`` s of the models.

    Parameters
    ----------
    denoisers : GatedDenoisers or DenoisingExpert
    encoder : nn.Module
        :math:`G`: a module with ``embed(x, grad=...)`` (:class:`mmpgm.SiameseEncoder`) or any
        ``(..., D) -> (..., E)`` module.
    data : MultimodalData
        ``obs`` noisy and clean (the denoisers' modality names), optionally the noise label.
    train : {"denoiser", "encoder", "both"}
        The paper's three options: update the denoisers with the encoder fixed, the encoder
        with the denoisers fixed, or both.
    weighting : {"gate", "label"}
        See above (``"label"`` needs :class:`GatedDenoisers` data with the noise label).
    train_gate : bool
        Also train the gate (with ``train`` "denoiser" or "both"; default ``False``: the gate
        keeps the meaning it learned from the noise types).
    denoise_weight : float
        :math:`\lambda \ge 0`: add :math:`\lambda \sum_k w_k \lVert f_k(x) - y \rVert^2 / D`
        to every item's loss, which keeps the denoisers close to the clean items in input
        space while they move towards the clean embedding (default 0: the paper's loss alone;
        an extension, not in the paper).
    num_steps : int
        Maximum Adam steps (one minibatch of items each).
    lr : float
    batch_size : int or None
        Items per step (``None``: all).
    seed : int
        Seeds the minibatch order and torch's generator: same seed, same result.
    patience, tol
        Stop when the loss (smoothed over 10 steps with minibatches) has not improved by a
        relative ``tol`` for ``patience`` steps (``patience=0``: never stop early).
    progress : bool, optional
        tqdm bar; default on only when stderr is a terminal.

    Returns
    -------
    FinetuneResult
    """
    if not isinstance(denoisers, (GatedDenoisers, DenoisingExpert)):
        raise TypeError(
            "denoisers: expected a GatedDenoisers or DenoisingExpert, got "
            f"{type(denoisers).__name__}"
        )
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder: expected a torch nn.Module, got {type(encoder).__name__}")
    check_choice("train", train, _TRAIN)
    check_choice("weighting", weighting, ("gate", "label"))
    check_bool("train_gate", train_gate)
    if train_gate and (train == "encoder" or not isinstance(denoisers, GatedDenoisers)):
        raise ValueError(
            "train_gate: applies to GatedDenoisers with train='denoiser' or 'both', got "
            f"train={train!r} for {type(denoisers).__name__}"
        )
    check_int("num_steps", num_steps)
    lr = check_float("lr", lr, positive=True)
    check_int("batch_size", batch_size, allow_none=True)
    check_int("seed", seed, minimum=0)
    check_int("patience", patience, minimum=0)
    tol = check_float("tol", tol, minimum=0.0)
    denoise_weight = check_float("denoise_weight", denoise_weight, minimum=0.0)
    x, y, lab = _denoiser_items(denoisers, data, weighting)
    F = x.shape[0]

    if isinstance(denoisers, GatedDenoisers):
        den_params = list(denoisers.experts.parameters())
        gate_params = list(denoisers.gate.parameters())
    else:
        den_params, gate_params = list(denoisers.parameters()), []
    enc_params = list(encoder.parameters())
    trained: list[nn.Parameter] = []
    if train in ("denoiser", "both"):
        trained += den_params + (gate_params if train_gate else [])
    if train in ("encoder", "both"):
        trained += enc_params
    if not trained:
        raise ValueError(f"train={train!r}: the chosen part has no parameters")
    every = {id(q): q for q in den_params + gate_params + enc_params}
    chosen = {id(q) for q in trained}
    flags = {k: q.requires_grad for k, q in every.items()}

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        target = torch.cat([embed_items(encoder, y[i : i + 4096]) for i in range(0, F, 4096)])

    def mean_distance() -> float:
        with torch.no_grad():
            total = 0.0
            for i in range(0, F, 4096):
                z, _ = _denoised_embedding(
                    denoisers, encoder, x[i : i + 4096], lab[i : i + 4096], weighting
                )
                total += float((z - target[i : i + 4096]).square().sum())
            return total / F

    initial = mean_distance()
    stochastic = batch_size is not None and batch_size < F
    window = 10 if stochastic else 1
    losses: list[float] = []
    best, since, converged = math.inf, 0, False
    bar = progress_bar(num_steps, "finetune", None if progress is None else bool(progress))
    t0 = time.perf_counter()
    try:
        for k, q in every.items():
            q.requires_grad_(k in chosen)
        optim = torch.optim.Adam([every[k] for k in every if k in chosen], lr=lr)
        for _ in range(num_steps):
            idx = torch.randperm(F, generator=gen)[:batch_size].to(x.device) if stochastic else None
            if idx is None:
                xb, yb, lb, tb = x, y, lab, target
            else:
                xb, yb, lb, tb = x[idx], y[idx], lab[idx], target[idx]
            optim.zero_grad()
            z, err = _denoised_embedding(
                denoisers, encoder, xb, lb, weighting, yb if denoise_weight > 0 else None
            )
            loss = (z - tb).square().sum(-1).mean()
            if err is not None:
                loss = loss + denoise_weight * err.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"finetune_into_embedding: the loss became {float(loss)}; lower lr"
                )
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if patience:
                smooth = sum(losses[-window:]) / len(losses[-window:])
                if not math.isfinite(best) or smooth < best - tol * abs(best):
                    best, since = smooth, 0
                else:
                    since += 1
                    if since >= patience:
                        converged = True
                        break
    finally:
        bar.close()
        for k, q in every.items():
            q.requires_grad_(flags[k])
    return FinetuneResult(
        np.asarray(losses), len(losses), converged, initial, mean_distance(), train,
        time.perf_counter() - t0,
    )  # fmt: skip


def gated_centre_classify(denoisers, encoder: nn.Module | None, x, memory) -> torch.Tensor:
    r"""Classify noisy items ``x (F, D)`` by the gate-weighted centre of their denoised
    embeddings, :math:`\hat z = \sum_k g_k(x) G(f_k(x))` (paper section 6.4, test time).

    Parameters
    ----------
    denoisers : GatedDenoisers or DenoisingExpert
        (A single expert gives :math:`\hat z = G(f(x))`.)
    encoder : nn.Module or None
        :math:`G` (:func:`embed_items`); ``None``: the memory's own encoder.
    x : Tensor ``(F, D)``
    memory
        The labelled reference, one of

        * a :class:`mmpgm.KNNMemory` with an encoder (filled with clean items): it embeds every
          denoiser's output and searches around their gate-weighted centre
          (``memory.predict(per_expert, weights=gate_weights)``); ``encoder`` must be ``None``
          or the memory's;
        * any object with ``predict(z (F, E)) -> (F,)`` on embeddings (a ``KNNMemory`` without
          encoder, filled with embeddings of clean items): it gets :math:`\hat z`;
        * a pair ``(classes (C,), centres (C, E))`` (what ``KNNMemory.centres()`` returns): the
          nearest centre in Euclidean distance wins.

    Returns
    -------
    Tensor ``(F,)``: the predicted classes.
    """
    if isinstance(denoisers, GatedDenoisers):
        w, per, _ = denoisers.denoise(x)
    elif isinstance(denoisers, DenoisingExpert):
        per = denoisers.denoise(x)[..., None, :]
        w = torch.ones(per.shape[:-1], dtype=per.dtype, device=per.device)
    else:
        raise TypeError(
            "denoisers: expected a GatedDenoisers or DenoisingExpert, got "
            f"{type(denoisers).__name__}"
        )
    own = None if isinstance(memory, tuple) else getattr(memory, "encoder", None)
    if own is not None:
        if encoder is not None and encoder is not own:
            raise ValueError(
                "encoder: expected None or the memory's own encoder (the memory embeds the "
                "denoised items itself), got another module"
            )
        return memory.predict(per, weights=w)
    if encoder is None:
        raise ValueError("encoder: expected an nn.Module (the memory has no encoder), got None")
    z = embed_items(encoder, per)
    z = (w.to(z.dtype)[..., None] * z).sum(-2)
    if isinstance(memory, tuple):
        if len(memory) != 2:
            raise ValueError(
                f"memory: expected (classes (C,), centres (C, E)), got {len(memory)} items"
            )
        classes, centres = (torch.as_tensor(v) for v in memory)
        if (
            centres.dim() != 2
            or centres.shape[-1] != z.shape[-1]
            or classes.shape != centres.shape[:1]
        ):
            raise ValueError(
                f"memory: expected classes (C,) and centres (C, {z.shape[-1]}), got "
                f"{tuple(classes.shape)} and {tuple(centres.shape)}"
            )
        d = torch.cdist(z, centres.to(device=z.device, dtype=z.dtype))
        return classes.to(z.device)[d.argmin(-1)]
    if not callable(getattr(memory, "predict", None)):
        raise TypeError(
            "memory: expected a KNNMemory, an object with predict(z) or (classes, centres), "
            f"got {type(memory).__name__}"
        )
    return memory.predict(z)
