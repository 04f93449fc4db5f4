r"""Sensor faults as latent variables of the multimodal HMM (paper sections 4.4, 7.7).

For every modality :math:`m` named in ``sensor_faults`` a sticky binary Markov chain
:math:`f^m_t \in \{\text{ok}, \text{faulty}\}` joins the factorial model:

.. math::
    f^m_1 \sim \mathrm{Bernoulli}(\pi^f_m), \quad
    p(f^m_t = 1 \mid f^m_{t-1} = 0) = a_m, \quad
    p(f^m_t = 1 \mid f^m_{t-1} = 1) = b_m,

    x^m_t \mid s_t, p^m_t, f^m_t \sim
    \begin{cases} p(x^m_t \mid s_t, p^m_t) & f^m_t = 0 \\
                  q_m(x^m_t) & f^m_t = 1, \end{cases}

where :math:`q_m` is a broad **background density shared by every state**: a frame explained
by it carries no evidence about :math:`s_t` or :math:`p^m_t` (the likelihood ratio between any
two states is one), so a stream that silently fails stops steering the shared state.

The background is a two-part mixture:

.. math::
    q_m(x_t \mid x_{t-1}) = (1 - w_m) \prod_d \mathrm{Cauchy}(x_{td}; \ell_d, \sigma_d)
        + w_m \prod_d \mathcal N(x_{td}; x_{t-1,d}, (\epsilon \sigma_d)^2),

a product of per-dimension Cauchy (Student-t, one degree of freedom) densities centred on the
median of the pooled observed frames with scale ``BACKGROUND_INFLATION`` times their standard
deviation (heavy-tailed, so values far outside the training range, a spike or a drifting
sensor, are explained by it; broad, so clean frames are not), and a **held-value** part
(``STUCK_WEIGHT``, ``STUCK_RELATIVE_SCALE`` :math:`= \epsilon`): a sensor that repeats its
previous reading (stuck, frozen driver, sample-and-hold) has a vanishing density under any
emission of spread :math:`\gg \epsilon \sigma` but a huge one here. The held-value part is
used only where the previous frame of that stream is observed, and it is switched off
(:math:`w_m = 0`) for a stream whose clean training frames already repeat (a quantized sensor
at rest: more than ``STUCK_MAX_CLEAN_RATE`` of consecutive pairs within
:math:`3 \epsilon \sigma`), so it never flags normal behaviour. The background depends on the
observed previous frame, not on any latent, so inference stays exact. A categorical modality's
background is uniform. It is fitted once
(:meth:`~mmpgm.MultimodalHMM.fit_fault_background`, called by the data-driven start) and held
fixed while fitting: it is a reference density, not a parameter. When the likelihoods of
several models are compared (classification), give every model the same background (fit each
on the same pooled data) so that a faulty frame adds the same evidence to every class.

Priors (MAP-EM and SVI): :math:`a_m \sim \mathrm{Beta}(2, 100)` (mode 0.01),
:math:`b_m \sim \mathrm{Beta}(20, 2)` (mode 0.95), :math:`\pi^f_m \sim \mathrm{Beta}(2, 20)`
(mode 0.05), and the values are kept inside floors (``a_m >= 1e-3``, ``b_m >= 0.8``,
``pi^f_m >= 1e-3``): training data are usually clean, and without the floors the fault chain
would be switched off by the first fit and could not wake at test time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from ..._pyro import TypedPyroModule
from .._checks import check_sensor_faults

__all__ = [
    "BACKGROUND_INFLATION",
    "STUCK_MAX_CLEAN_RATE",
    "STUCK_RELATIVE_SCALE",
    "STUCK_WEIGHT",
    "previous_frames",
    "repeat_rate",
    "FaultBackground",
    "FaultChain",
    "fault_chain_name",
    "resolve_sensor_faults",
]

#: Scale of the background density in units of the pooled standard deviation of each
#: dimension. Chosen on the package's generated data (``tests/models/test_hmm_faults.py``):
#: large enough that a clean frame is almost never claimed by it, small enough that a frame
#: a few standard deviations off its state is.
BACKGROUND_INFLATION = 2.0
#: Weight :math:`w_m` of the held-value part of the background (where not switched off).
STUCK_WEIGHT = 0.5
#: Spread of the held-value part, relative to the pooled standard deviation per dimension.
STUCK_RELATIVE_SCALE = 1e-3
#: Largest fraction of consecutive clean training frames that repeat (within 3 held-value
#: spreads in every dimension) for which the held-value part stays on.
STUCK_MAX_CLEAN_RATE = 0.005

# (lower, upper) bounds of the fault chain's probabilities and the Beta prior (a, b) of each.
_BOUNDS = {
    "initial_fault_prob": (1e-3, 0.5),
    "fault_onset_prob": (1e-3, 0.5),
    "fault_persistence_prob": (0.8, 1.0 - 1e-4),
}
_PRIORS = {
    "initial_fault_prob": (2.0, 20.0),
    "fault_onset_prob": (2.0, 100.0),
    "fault_persistence_prob": (20.0, 2.0),
}
_STARTS = {"initial_fault_prob": 0.05, "fault_onset_prob": 0.01, "fault_persistence_prob": 0.95}


def fault_chain_name(modality: str) -> str:
    """Name of the fault chain of ``modality`` in posteriors and samples: ``"<modality>_fault"``."""
    return f"{modality}_fault"


def resolve_sensor_faults(value, modalities: Sequence[str]) -> tuple:
    """:func:`mmpgm.models._checks.check_sensor_faults`, plus the HMM's own rule: the fault
    chains' names (``"<modality>_fault"``) must not clash with a modality's name."""
    chosen = check_sensor_faults(value, modalities)
    clash = sorted({fault_chain_name(m) for m in chosen} & set(modalities))
    if clash:
        raise ValueError(
            f"sensor_faults: modality names {clash} clash with the fault chains' names "
            "('<modality>_fault'); rename the modalities"
        )
    return chosen


class FaultChain(TypedPyroModule):
    r"""The two-state (ok / faulty) Markov chain of one modality, with floors and Beta priors.

    Attributes ``initial_probs`` ``(2,)`` and ``transition_probs`` ``(2, 2)`` (indexed (old,
    new), state 1 = faulty) present it like a :class:`~mmpgm.models.hmm.MarkovChain` to the
    factorial ops.
    """

    num_states = 2

    def __init__(self):
        super().__init__()
        for name, (lo, hi) in _BOUNDS.items():
            setattr(
                self,
                name,
                PyroParam(torch.tensor(_STARTS[name]), constraint=constraints.interval(lo, hi)),
            )

    @property
    def initial_probs(self) -> torch.Tensor:
        p = self.initial_fault_prob
        return torch.stack([1 - p, p])

    @property
    def transition_probs(self) -> torch.Tensor:
        a, b = self.fault_onset_prob, self.fault_persistence_prob
        return torch.stack([torch.stack([1 - a, a]), torch.stack([1 - b, b])])

    def log_prior(self) -> torch.Tensor:
        total = 0.0
        for name, (a, b) in _PRIORS.items():
            p = getattr(self, name)
            total = total + dist.Beta(p.new_tensor(a), p.new_tensor(b)).log_prob(p)
        return total

    def num_free_parameters(self) -> int:
        return 3

    def set_probs(self, initial_probs: torch.Tensor, transition_probs: torch.Tensor) -> None:
        """Set from ``(2,)`` / ``(2, 2)`` probabilities, clamped into the floors."""
        values = {
            "initial_fault_prob": initial_probs[1],
            "fault_onset_prob": transition_probs[0, 1],
            "fault_persistence_prob": transition_probs[1, 1],
        }
        with torch.no_grad():
            for name, v in values.items():
                lo, hi = _BOUNDS[name]
                width = hi - lo
                setattr(self, name, v.clamp(lo + 1e-6 * width, hi - 1e-6 * width))

    @staticmethod
    def check_probs(name: str, initial_probs: torch.Tensor, transition_probs: torch.Tensor):
        """Raise ``ValueError`` unless the probabilities lie inside the chain's floors."""
        values = {
            "initial_fault_prob": (f"{name}.initial_probs[1]", initial_probs[1]),
            "fault_onset_prob": (f"{name}.transition_probs[0, 1]", transition_probs[0, 1]),
            "fault_persistence_prob": (f"{name}.transition_probs[1, 1]", transition_probs[1, 1]),
        }
        for key, (label, v) in values.items():
            lo, hi = _BOUNDS[key]
            if not lo <= float(v) <= hi:
                raise ValueError(
                    f"{label}: expected a value in [{lo:g}, {hi:g}] (the fault chain's floors), "
                    f"got {float(v):.3g}"
                )

    @torch.no_grad()
    def m_step(self, initial_counts, transition_counts) -> None:
        """MAP update from expected counts (Beta priors), clamped into the floors."""

        def mode(name, hits, total):
            a, b = _PRIORS[name]
            return (hits + a - 1) / (total + a + b - 2)

        p0 = mode("initial_fault_prob", initial_counts[1], initial_counts.sum())
        a = mode("fault_onset_prob", transition_counts[0, 1], transition_counts[0].sum())
        b = mode("fault_persistence_prob", transition_counts[1, 1], transition_counts[1].sum())
        self.set_probs(
            torch.stack([1 - p0, p0]),
            torch.stack([torch.stack([1 - a, a]), torch.stack([1 - b, b])]),
        )


class FaultBackground(TypedPyroModule):
    r"""The broad, state-independent density :math:`q_m` of one modality's faulty frames.

    Continuous modalities: buffers ``loc`` and ``scale`` ``(D,)`` of the Cauchy part,
    ``stuck_scale`` ``(D,)`` and ``stuck_weight`` (0-d) of the held-value part (see the module
    docstring); categorical: uniform over ``num_categories``.
    """

    def __init__(self, data_dim: int, num_categories: int | None = None):
        super().__init__()
        self.num_categories = num_categories
        self.register_buffer("loc", torch.zeros(data_dim))
        self.register_buffer("scale", torch.ones(data_dim))
        self.register_buffer("stuck_scale", torch.full((data_dim,), STUCK_RELATIVE_SCALE))
        self.register_buffer("stuck_weight", torch.tensor(STUCK_WEIGHT))

    def log_prob(self, x: torch.Tensor, previous=None, previous_observed=None) -> torch.Tensor:
        """``x (..., D)`` -> ``(...,)``; ``previous`` ``(..., D)`` is the stream's previous frame
        and ``previous_observed`` ``(...)`` where it was observed (the held-value part applies
        there only)."""
        if self.num_categories is not None:
            return torch.full(
                x.shape[:-1], -math.log(self.num_categories), dtype=x.dtype, device=x.device
            )
        z = (x - self.loc) / self.scale
        broad = (-math.log(math.pi) - self.scale.log() - torch.log1p(z * z)).sum(-1)
        w = float(self.stuck_weight)
        if previous is None or w <= 0:
            return broad
        held = torch.distributions.Normal(previous, self.stuck_scale).log_prob(x).sum(-1)
        mix = torch.logaddexp(broad + math.log1p(-w), held + math.log(w))
        return torch.where(previous_observed, mix, broad)

    def distribution(self, previous=None, previous_observed=None):
        """The Pyro distribution of a frame (``event_dim = 1`` for continuous data)."""
        if self.num_categories is not None:
            probs = self.loc.new_full((self.num_categories,), 1.0 / self.num_categories)
            return dist.Categorical(probs)
        return _Background(self, previous, previous_observed)

    def sample(self, shape, generator=None) -> torch.Tensor:
        """``shape + (D,)`` draws of the broad part (class indices ``shape + (1,)`` for a
        categorical modality)."""
        if self.num_categories is not None:
            k = torch.randint(
                self.num_categories,
                tuple(shape) + (1,),
                generator=generator,
                device=self.loc.device,
            )
            return k.to(self.loc.dtype)
        u = torch.rand(
            tuple(shape) + self.loc.shape,
            generator=generator,
            dtype=self.loc.dtype,
            device=self.loc.device,
        )
        return self.loc + self.scale * torch.tan(math.pi * (u - 0.5))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, mask: torch.Tensor, inflation: float = BACKGROUND_INFLATION):
        """Centre and scale from the observed frames of ``x (N, T, D)`` (``mask (N, T)``); the
        held-value part is switched off when more than ``STUCK_MAX_CLEAN_RATE`` of their
        consecutive pairs repeat (:func:`repeat_rate`). No-op for a categorical stream."""
        if self.num_categories is not None or not bool(mask.any()):
            return
        x = x.to(self.loc)
        frames = x[mask]
        loc = frames.median(0).values
        sd = frames.std(0) if frames.shape[0] > 1 else torch.ones_like(loc)
        floor = (16 * torch.finfo(x.dtype).eps * frames.square().mean(0)).sqrt()  # unit-relative
        sd = sd.clamp_min(floor).clamp_min(torch.finfo(x.dtype).tiny)
        self.loc = loc
        self.scale = inflation * sd
        self.stuck_scale = STUCK_RELATIVE_SCALE * sd
        stuck_on = repeat_rate(x, mask, sd) <= STUCK_MAX_CLEAN_RATE
        self.stuck_weight = self.stuck_weight.new_tensor(STUCK_WEIGHT if stuck_on else 0.0)

    @torch.no_grad()
    def fit_to_moments(
        self, mean: torch.Tensor, covariance: torch.Tensor, inflation: float = BACKGROUND_INFLATION
    ) -> None:
        """Centre and scale from the per-state emission moments ``(K_s, K_m, D)`` /
        ``(K_s, K_m, D, D)`` (equal-weight mixture): the start when no data are at hand."""
        if self.num_categories is not None:
            return
        mean = mean.reshape(-1, mean.shape[-1])
        var = covariance.diagonal(dim1=-2, dim2=-1).reshape(-1, mean.shape[-1])
        centre = mean.mean(0)
        sd = (var.mean(0) + (mean - centre).square().mean(0)).sqrt()
        self.loc = centre.to(self.loc)
        self.scale = (inflation * sd).to(self.scale)
        self.stuck_scale = (STUCK_RELATIVE_SCALE * sd).to(self.stuck_scale)


def previous_frames(x: torch.Tensor, mask: torch.Tensor):
    """``x (..., T, D)``, ``mask (..., T)`` -> each frame's previous frame and whether it was
    observed (False at ``t = 0``)."""
    prev = torch.cat([torch.zeros_like(x[..., :1, :]), x[..., :-1, :]], -2)
    observed = torch.cat([torch.zeros_like(mask[..., :1]), mask[..., :-1]], -1)
    return prev, observed


def repeat_rate(x: torch.Tensor, mask: torch.Tensor, sd: torch.Tensor) -> float:
    """Fraction of consecutive observed frame pairs of ``x (N, T, D)`` whose every dimension
    moved less than three held-value spreads (``STUCK_RELATIVE_SCALE * sd``)."""
    prev, prev_obs = previous_frames(x, mask)
    pairs = mask & prev_obs
    if not bool(pairs.any()):
        return 0.0
    still = ((x - prev).abs() < 3 * STUCK_RELATIVE_SCALE * sd).all(-1)
    return float((still & pairs).sum()) / float(pairs.sum())


class _Background(dist.TorchDistribution):
    """:meth:`FaultBackground.log_prob` as a Pyro distribution (for the enumerated program;
    log_prob only)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, background, previous=None, previous_observed=None):
        self.background = background
        self.previous, self.previous_observed = previous, previous_observed
        batch = () if previous is None else tuple(previous.shape[:-1])
        super().__init__(batch, background.loc.shape, validate_args=False)

    def log_prob(self, value):
        return self.background.log_prob(value, self.previous, self.previous_observed)
