"""Interface shared by observation models."""

from __future__ import annotations

import torch

from .._pyro import TypedPyroModule
from .._validation import check_int


class ObservationModel(TypedPyroModule):
    r"""Emission model :math:`p(x_t \mid s_t = i, p_t = j)` of one modality.

    Parameters are indexed ``(shared_state, private_state, ...)``, shape
    ``(num_shared_states, num_private_states, ...)``.

    Subclasses implement :meth:`log_prob` (all state pairs at once, for the exact ops),
    :meth:`distribution` (for the Pyro program, indexed by enumerated state tensors),
    :meth:`log_prior`, :meth:`mean` / :meth:`covariance` (per-state predictive moments, for
    imputation), :meth:`sample_at` and :meth:`m_step` (closed-form MAP update for EM).
    """

    #: whether observations are integer class indices (stored in a float tensor)
    discrete = False
    #: whether :meth:`rescale_` is implemented (the model can be re-expressed in other units of
    #: ``x``; :func:`mmpgm.fit` then runs SVI on standardized data)
    rescalable = False

    def __init__(self, obs_dim: int, num_shared_states: int, num_private_states: int):
        super().__init__()
        check_int("obs_dim", obs_dim)
        check_int("num_shared_states", num_shared_states)
        check_int("num_private_states", num_private_states)
        self.obs_dim = obs_dim
        self.num_shared_states = num_shared_states
        self.num_private_states = num_private_states

    @property
    def state_shape(self) -> tuple[int, int]:
        return (self.num_shared_states, self.num_private_states)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., obs_dim)`` -> ``(..., num_shared_states, num_private_states)``."""
        raise NotImplementedError

    def masked_log_prob(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob` where ``mask (...)`` is True, exactly 0 elsewhere:
        ``x (..., obs_dim)`` -> ``(..., num_shared_states, num_private_states)``. ``x`` may hold
        anything (NaN included) where ``mask`` is False. Default: ``log_prob`` of ``x`` with
        the missing frames set to 0, then masked; subclasses may do it faster."""
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        lp = self.log_prob(torch.where(mask[..., None], x, zero))
        return torch.where(mask[..., None, None], lp, zero.to(lp.dtype))

    #: ``R``, the number of features of :meth:`linear_log_prob`; None where the log-density is
    #: not linear in fixed features of ``x`` (then :meth:`linear_log_prob` returns None)
    linear_feature_dim = None

    def linear_log_prob(self, x: torch.Tensor, mask: torch.Tensor, *, out=None):
        r"""The masked log-density as features times weights, or None where it is not linear
        in fixed features of ``x``.

        Returns ``(features, weights)`` with ``features (R, F)`` (``R =``
        :attr:`linear_feature_dim`, ``F = mask.numel()`` frames, frames last, 0 on a missing
        frame) and ``weights (R, K_s, K_m)`` such that ``einsum("rf,rij->fij", features,
        weights)`` is :meth:`masked_log_prob` flattened over the frames; the multimodal HMM then
        forms its product-space factor with matrix products alone
        (:func:`mmpgm.ops.hmm.shared_private_linear_log_factor`). ``out``: an ``(R, F)`` buffer
        the features may be written into (where no gradient to ``x`` is needed; the returned
        features are then ``out``). Default: None.
        """
        return None

    def check_values(self, name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise (``ValueError`` naming ``name``) unless the observed frames of ``x (N, T, D)``
        (``mask (N, T)``) hold values this model can score; default: nothing to check."""

    def distribution(self, shared: torch.Tensor, private: torch.Tensor):
        """A Pyro distribution with ``event_dim = 1`` for the given (broadcast) state indices."""
        raise NotImplementedError

    def log_prior(self) -> torch.Tensor:
        raise NotImplementedError

    def mean(self) -> torch.Tensor:
        """``(K_s, K_m, obs_dim)`` mean of :math:`x` in each state pair."""
        raise NotImplementedError

    def covariance(self) -> torch.Tensor:
        """``(K_s, K_m, obs_dim, obs_dim)`` covariance of :math:`x` in each state pair."""
        raise NotImplementedError

    def sample_at(self, shared, private, generator=None) -> torch.Tensor:
        """Draw ``x`` for index tensors ``shared``, ``private`` of equal shape ``S``: ``S +
        (obs_dim,)``."""
        raise NotImplementedError

    def m_step(self, x: torch.Tensor, weights: torch.Tensor) -> None:
        """Closed-form MAP update from ``x (F, obs_dim)`` and responsibilities ``(F, K_s, K_m)``:
        ``m_step_from_statistics(sufficient_statistics(x, weights))``."""
        self.m_step_from_statistics(self.sufficient_statistics(x, weights))

    def sufficient_statistics(self, x: torch.Tensor, weights: torch.Tensor) -> dict:
        """Name -> tensor of the responsibility-weighted sums over the frames of ``x (F, D)``
        (``weights (F, K_s, K_m)``) that the M-step needs; sums, so the statistics of disjoint
        frame sets add (data-parallel EM all-reduces them, :mod:`mmpgm.inference.distributed`)."""
        raise NotImplementedError

    def m_step_from_statistics(self, stats: dict) -> None:
        """The closed-form MAP update from :meth:`sufficient_statistics` (summed over frames)."""
        raise NotImplementedError

    def num_free_parameters(self) -> int:
        raise NotImplementedError

    def rescale_(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        r"""Re-express the model (parameters and prior hyper-parameters) in the units
        :math:`x' = (x - \mathrm{shift}) / \mathrm{scale}`, in place.

        ``shift``, ``scale`` are ``(obs_dim,)`` (``scale > 0``). Afterwards the model's density
        of :math:`x'` is the pushforward of the old density of :math:`x`,
        :math:`\log p'(x') = \log p(x) + \sum_d \log \mathrm{scale}_d`, and its
        :meth:`log_prior` differs from the old one by a constant (the log-Jacobian of the
        parameter map), so MAP fits in either unit system are the same fit. The inverse map is
        ``rescale_(-shift / scale, 1 / scale)``. Only models with :attr:`rescalable` True
        implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be rescaled (rescalable=False)")

    def init_from_data(self, x: torch.Tensor, generator=None, means=None) -> None:
        """Data-driven initialization from observed frames ``x (F, obs_dim)`` (and optionally
        given per-state means ``(K_s, K_m, obs_dim)``)."""
        raise NotImplementedError
