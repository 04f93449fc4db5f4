"""Streaming filter of a :class:`mmpgm.MultimodalHMM`: one frame in, filtered posterior and
one-step prediction out.

Memory is constant in the number of frames seen; each step equals the corresponding step of the
batch forward filter (``mmpgm.infer(..., causal=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from .._validation import check_bool, check_int
from ..models.hmm import MultimodalHMM
from ..ops import hmm as ops
from ._frames import check_frame, frame_array

__all__ = ["FilterState", "HMMFilter"]


class FilterState(NamedTuple):
    r"""State of a streaming filter after frame ``t``.

    The names are shared with :class:`mmpgm.online.LDSFilterState` where they mean the same
    (``step``, ``predicted``, ``predicted_covariance``, ``log_likelihood``, ``log_increment``)
    and with :class:`mmpgm.results.Posterior` (``marginals``).

    step : number of frames consumed.
    marginals : dict chain -> ``(N, K)`` filtered :math:`p(z_t \mid x_{1:t})` (fault chains, with
        ``sensor_faults``, as ``"<modality>_fault"``; column 1 = faulty).
    predicted_marginals : dict chain -> ``(N, K)`` one-step prediction
        :math:`p(z_{t+1} \mid x_{1:t})`.
    predicted : dict modality -> ``(N, D)`` predicted observation mean (None when the filter was
        made with ``predict_observations=False``)
        :math:`E[x^m_{t+1} \mid x_{1:t}] = \sum_{s, p} p(s_{t+1}, p^m_{t+1} \mid x_{1:t})
        \mu_{s p}` (class probabilities for a categorical modality; the working-sensor part
        with ``sensor_faults``), as :meth:`HMMFilter.predict_observation`.
    predicted_covariance : dict modality -> ``(N, D, D)`` the matching
        :math:`\mathrm{Cov}[x^m_{t+1} \mid x_{1:t}]` (law of total covariance over the states).
    log_likelihood : ``(N,)`` :math:`\log p(x_{1:t})`.
    log_increment : ``(N,)`` :math:`\log p(x_t \mid x_{1:t-1})`.

    ``predicted`` changed meaning: it held the chains' one-step prediction, now
    ``predicted_marginals``, and is the predicted observation, as in the LDS filter.
    """

    step: int
    marginals: dict
    predicted_marginals: dict
    predicted: dict
    predicted_covariance: dict
    log_likelihood: torch.Tensor
    log_increment: torch.Tensor


class HMMFilter:
    """Online forward filter of a :class:`mmpgm.MultimodalHMM`.

    Parameters
    ----------
    model : MultimodalHMM
    num_sequences : int
        Number of streams filtered in parallel (``N``).
    predict_observations : bool
        Fill ``FilterState.predicted`` / ``predicted_covariance`` at every step (default). The
        moments cost about as much as the filter step itself on small models; a real-time user
        who reads only the marginals passes False (they are then None;
        :meth:`predict_observation` still gives them on demand).

    Examples
    --------
    >>> f = HMMFilter(model)
    >>> state = f.step({"audio": x_audio_t})          # video missing at this frame
    >>> state.marginals["shared"], state.predicted["video"], state.predicted_covariance["video"]
    """

    def __init__(self, model, num_sequences: int = 1, *, predict_observations: bool = True):
        if not isinstance(model, MultimodalHMM):
            raise TypeError(f"model: expected a MultimodalHMM, got {type(model).__name__}")
        check_int("num_sequences", num_sequences)
        check_bool("predict_observations", predict_observations)
        self.model = model
        self.num_sequences = num_sequences
        self.predict_observations = predict_observations
        self.reset()

    def reset(self) -> None:
        self._filtered = None
        self._log_likelihood = None
        self._step = 0
        self._previous = {}  # fault modality -> (last frame, observed): the held-value part

    def _frame_log_emission(self, frame: Mapping):
        """The frame's product-space log factor ``(N,) + chain_sizes``, and the fault streams'
        ``(frame, observed)`` that the next frame's held-value part compares against."""
        model = self.model
        p = model._param()
        N = self.num_sequences
        check_frame(frame, model.modalities)
        state_lps, fault_lps, seen = {}, {}, {}
        for m in model.modalities:
            if m not in frame or frame[m] is None:
                continue
            x = frame_array(m, frame[m], N, model.data_dims[m], p.dtype, p.device)
            observed = ~torch.isnan(x).any(-1)
            x = torch.where(observed[:, None], x, torch.zeros_like(x))
            lp = model.emissions[m].log_prob(x)
            state_lps[m] = torch.where(observed[:, None, None], lp, torch.zeros_like(lp))
            if m in model.fault_modalities:
                prev, prev_obs = self._previous.get(
                    m, (torch.zeros_like(x), torch.zeros_like(observed))
                )
                bg = model.fault_backgrounds[m].log_prob(x, prev, prev_obs)
                fault_lps[m] = torch.where(observed, bg, torch.zeros_like(bg))
                seen[m] = (x, observed)
        return model.combine_log_factors(state_lps, fault_lps, (N,)), seen

    @torch.no_grad()
    def step(self, frame: Mapping) -> FilterState:
        """Consume one frame: ``frame`` maps (any subset of) modality names to ``(N, D)`` arrays;
        absent modalities and NaN rows are missing."""
        model = self.model
        chains = model._chains()
        init = [c.initial_probs.detach() for c in chains]
        trans = [c.transition_probs.detach() for c in chains]
        logE, self._previous = self._frame_log_emission(frame)  # absent now: unobserved next
        self._filtered, inc = ops.factorial_filter_step(init, trans, logE, self._filtered)
        self._log_likelihood = inc if self._log_likelihood is None else self._log_likelihood + inc
        self._step += 1
        predicted = ops.factorial_predict(self._filtered, trans)
        C = len(chains)
        names = model.chain_names
        moments = (
            {m: self._observation_moments(predicted, m) for m in model.modalities}
            if self.predict_observations
            else None
        )
        return FilterState(
            step=self._step,
            marginals=dict(zip(names, ops.chain_marginals(self._filtered, C), strict=False)),
            predicted_marginals=dict(zip(names, ops.chain_marginals(predicted, C), strict=False)),
            predicted=None if moments is None else {m: v[0] for m, v in moments.items()},
            predicted_covariance=(
                None if moments is None else {m: v[1] for m, v in moments.items()}
            ),
            log_likelihood=self._log_likelihood.clone(),
            log_increment=inc,
        )

    @torch.no_grad()
    def predict_observation(self, modality: str):
        """One-step predictive mean and covariance of ``modality`` at the next frame:
        ``((N, D), (N, D, D))``."""
        if self._filtered is None:
            raise ValueError("predict_observation: call step() at least once first")
        model = self.model
        if modality not in model.modalities:
            raise ValueError(
                f"modality: unknown modality {modality!r}; the model has {list(model.modalities)}"
            )
        trans = [c.transition_probs.detach() for c in model._chains()]
        return self._observation_moments(ops.factorial_predict(self._filtered, trans), modality)

    def _observation_moments(self, pred: torch.Tensor, modality: str):
        """Mean ``(N, D)`` and covariance ``(N, D, D)`` of ``modality`` under the product-space
        state distribution ``pred`` ``(N,) + chain_sizes``."""
        model = self.model
        i = model.modalities.index(modality)
        C = len(model.chain_names)
        dims = [1 + c for c in range(1, C) if c != i + 1]
        w = (pred.sum(dims) if dims else pred).flatten(1)  # (N, K_s K_m)
        e = model.emissions[modality]
        mu, cov = e.mean().detach(), e.covariance().detach()  # (K_s, K_m, D), (.., D, D)
        D = mu.shape[-1]
        mean = w @ mu.reshape(-1, D)
        second = (w @ (cov + mu[..., :, None] * mu[..., None, :]).reshape(-1, D * D)).unflatten(
            -1, (D, D)
        )  # E[x x^T], the law of total covariance's first term
        return mean, second - mean[:, :, None] * mean[:, None, :]
