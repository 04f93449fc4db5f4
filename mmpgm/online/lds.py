r"""Streaming Kalman filter of a :class:`mmpgm.models.lds.MultimodalLDS`: one frame in, the
filtered state and one-step predictions out, with constant memory.

Each :meth:`LDSFilter.step` performs the same Cholesky-form measurement update as the batch filter
:func:`mmpgm.ops.kalman.kalman_filter` (missing modality rows removed exactly), so after ``t``
frames the state equals ``mmpgm.infer(model, data, causal=True)`` at frame ``t``.

With a model fitted with ``sensor_faults``, each step runs the same per-frame mean-field fixed
point as the batch causal posterior (:func:`mmpgm.ops.kalman.robust.robust_condition`, at most
``model.fault_iters`` updates): the frame is conditioned with weights :math:`1 - q(f^m_t)` and
:attr:`LDSFilterState.fault_probs` gives the filtered fault probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from .._validation import check_int
from ..models.lds import MultimodalLDS
from ..models.lds import faults as lds_faults
from ..ops.kalman import robust as kalman_robust
from ..ops.kalman import steps as kalman_steps
from ..results._deprecated import deprecated_fields
from ._frames import check_frame, frame_array

__all__ = ["LDSFilter", "LDSFilterState"]


def _sym(x):
    return 0.5 * (x + x.mT)


def _predicted_pairs(state):
    """modality -> ``(mean, covariance)``, the old ``predicted_obs`` form."""
    return {m: (v, state.predicted_covariance[m]) for m, v in state.predicted.items()}


@deprecated_fields(
    means="mean",
    covs="covariance",
    cov="state_covariance",
    predicted_mean="predicted_state_mean",
    predicted_cov="predicted_state_covariance",
    predicted_obs=("predicted", _predicted_pairs),
)
class LDSFilterState(NamedTuple):
    r"""State of the streaming LDS filter after frame ``t``.

    The names are those of :class:`mmpgm.results.LDSPosterior` (per-block ``mean`` and
    ``covariance``, the whole ``state_mean`` and ``state_covariance``) and of the HMM's
    :class:`mmpgm.online.FilterState` (``step``, ``predicted``, ``predicted_covariance``,
    ``log_likelihood``, ``log_increment``).

    step : number of frames consumed.
    mean : dict block -> ``(N, k_b)`` filtered :math:`E[z^b_t \mid x_{1:t}]` (``"shared"``,
        modalities).
    covariance : dict block -> ``(N, k_b, k_b)`` the matching filtered covariances.
    state_mean : ``(N, S)`` filtered :math:`E[z_t \mid x_{1:t}]` (all blocks).
    state_covariance : ``(N, S, S)`` filtered :math:`\mathrm{Cov}[z_t \mid x_{1:t}]`.
    predicted_state_mean, predicted_state_covariance : ``(N, S)``, ``(N, S, S)`` one-step
        prediction :math:`p(z_{t+1} \mid x_{1:t})`.
    predicted : dict modality -> ``(N, D)`` predicted observation mean
        :math:`E[x^m_{t+1} \mid x_{1:t}] = C^m m_{t+1|t} + d^m`.
    predicted_covariance : dict modality -> ``(N, D, D)``
        :math:`\mathrm{Cov}[x^m_{t+1} \mid x_{1:t}] = C^m P_{t+1|t} C^{m\top} + R_m`.
    log_likelihood : ``(N,)`` :math:`\log p(x_{1:t})`.
    log_increment : ``(N,)`` :math:`\log p(x_t \mid x_{1:t-1})` (with sensor faults: the
        frame's variational bound on it, and ``log_likelihood`` their sum).
    fault_probs : dict modality -> ``(N,)`` filtered :math:`q(f^m_t = 1)` of the modalities
        with ``sensor_faults`` (the prior rate where the modality is missing), or None.

    The old names ``means``, ``covs``, ``cov``, ``predicted_mean``, ``predicted_cov`` and
    ``predicted_obs`` (modality -> ``(mean, covariance)``) still read, with a FutureWarning,
    for one release. ``mean`` changed meaning: it was the whole state's mean (now
    ``state_mean``) and is the per-block dict, as in :class:`~mmpgm.results.LDSPosterior`.
    """

    step: int
    mean: dict
    covariance: dict
    state_mean: torch.Tensor
    state_covariance: torch.Tensor
    predicted_state_mean: torch.Tensor
    predicted_state_covariance: torch.Tensor
    predicted: dict
    predicted_covariance: dict
    log_likelihood: torch.Tensor
    log_increment: torch.Tensor
    fault_probs: dict | None = None


class LDSFilter:
    """Online Kalman filter of a :class:`~mmpgm.models.lds.MultimodalLDS`.

    Parameters
    ----------
    model : MultimodalLDS
        Its current parameters are read (detached) at construction and on :meth:`reset`.
    num_sequences : int
        Number of streams filtered in parallel (``N``).

    Examples
    --------
    >>> f = LDSFilter(model, num_sequences=1)
    >>> state = f.step({"imu": imu_t})          # position sensor missing at this frame
    >>> state.state_mean, state.predicted["position"], state.predicted_covariance["position"]
    """

    def __init__(self, model, num_sequences: int = 1):
        if not isinstance(model, MultimodalLDS):
            raise TypeError(f"model: expected a MultimodalLDS, got {type(model).__name__}")
        check_int("num_sequences", num_sequences)
        self.model = model
        self.num_sequences = num_sequences
        self.reset()

    def reset(self) -> None:
        """Forget all frames (and re-read the model's parameters)."""
        with torch.no_grad():
            p = self.model.linear_gaussian_params()
            self._A = p.transition_matrix.detach()
            self._Q = _sym(p.transition_cov.detach())
            self._C = {m: p.emission_matrices[m].detach() for m in self.model.modalities}
            self._d = {m: p.emission_offsets[m].detach() for m in self.model.modalities}
            self._R = {m: _sym(p.emission_covs[m].detach()) for m in self.model.modalities}
            self._faults = {
                m: (f.background_loc.clone(), f.background_scale.clone(), f.rate.detach().clone())
                for m, f in (
                    (m, self.model.faults[m]) for m in getattr(self.model, "fault_modalities", ())
                )
            }
            N, S = self.num_sequences, self.model.state_dim
            self._pred_m = p.initial_mean.detach().expand(N, S).clone()
            self._pred_P = _sym(p.initial_cov.detach()).expand(N, S, S).clone()
        self._log_likelihood = torch.zeros(
            self.num_sequences, dtype=self._A.dtype, device=self._A.device
        )
        self._step = 0

    def _frame(self, frame: Mapping):
        model = self.model
        check_frame(frame, model.modalities)
        N = self.num_sequences
        ys, rows = [], []
        for m in model.modalities:
            D = model.obs_dims[m]
            if m not in frame or frame[m] is None:
                x = self._A.new_zeros(N, D)
                observed = torch.zeros(N, dtype=torch.bool, device=x.device)
            else:
                x = frame_array(m, frame[m], N, D, self._A.dtype, self._A.device)
                observed = ~torch.isnan(x).any(-1)
                x = torch.where(observed[:, None], x - self._d[m], torch.zeros_like(x))
            ys.append(x)
            rows.append(observed[:, None].expand(N, D))
        return torch.cat(ys, -1), torch.cat(rows, -1)

    @torch.no_grad()
    def step(self, frame: Mapping) -> LDSFilterState:
        """Consume one frame: ``frame`` maps (any subset of) modality names to ``(N, D_m)``
        arrays; absent modalities and rows with NaN are missing (a frame with nothing observed
        is a pure prediction step)."""
        y, rows = self._frame(frame)
        model = self.model
        C = torch.cat([self._C[m] for m in model.modalities], 0)  # (D, S)
        R = torch.block_diag(*[self._R[m] for m in model.modalities])
        fm, fP = self._pred_m, self._pred_P
        fault_probs = None
        if self._faults:
            fm, fP, inc, fault_probs = self._robust_update(y, rows, C, R)
        elif bool(rows.any()):  # the batch filter's update (raises NumericalError if not SPD)
            u = kalman_steps.condition(fm, fP, C, R, y, rows)
            fm, fP = u.mean, u.cov
            inc = kalman_steps.innovation_log_prob(u.chol, u.innovation, rows.sum(-1).to(y.dtype))
        else:
            inc = torch.zeros_like(self._log_likelihood)
        self._log_likelihood = self._log_likelihood + inc
        self._step += 1
        self._pred_m, self._pred_P = kalman_steps.predict(fm, fP, self._A, self._Q)
        means, covs = {}, {}
        for b, (s0, s1) in model.block_slices.items():
            means[b], covs[b] = fm[:, s0:s1], fP[:, s0:s1, s0:s1]
        predicted = {mm: self._predict_obs(mm) for mm in model.modalities}
        return LDSFilterState(
            step=self._step,
            mean=means,
            covariance=covs,
            state_mean=fm,
            state_covariance=fP,
            predicted_state_mean=self._pred_m,
            predicted_state_covariance=self._pred_P,
            predicted={mm: v[0] for mm, v in predicted.items()},
            predicted_covariance={mm: v[1] for mm, v in predicted.items()},
            log_likelihood=self._log_likelihood.clone(),
            log_increment=inc,
            fault_probs=fault_probs,
        )

    def _robust_update(self, y, rows, C, R):
        """The sensor-fault update of one frame (see the module docstring)."""
        model = self.model
        segs, o = {}, 0
        for m in model.modalities:
            segs[m] = (o, o + model.obs_dims[m])
            o += model.obs_dims[m]
        lbs, rates, observed = {}, {}, {}
        for m, (loc, scale, rate) in self._faults.items():
            a, e = segs[m]
            observed[m] = rows[:, a]
            x = y[:, a:e] + self._d[m]
            lb = lds_faults.log_background(x, loc, scale)
            lbs[m] = torch.where(observed[m], lb, torch.zeros_like(lb))
            rates[m] = rate
        fm, fP = self._pred_m, self._pred_P
        if bool(rows.any()):
            u, r, inc, _ = kalman_robust.robust_condition(
                fm, fP, C, R, y, rows, segs, lbs, rates,
                num_iters=model.fault_iters, tol=model.fault_tol,
            )  # fmt: skip
            fm, fP = u.mean, u.cov
        else:
            r = {m: torch.zeros_like(self._log_likelihood) for m in self._faults}
            inc = torch.zeros_like(self._log_likelihood)
        probs = {m: torch.where(observed[m], r[m], rates[m].to(r[m])) for m in r}
        return fm, fP, inc, probs

    def _predict_obs(self, modality):
        C = self._C[modality]
        return self._pred_m @ C.mT + self._d[modality], _sym(
            C @ self._pred_P @ C.mT + self._R[modality]
        )

    @torch.no_grad()
    def predict_observation(self, modality: str):
        """Predictive mean and covariance of ``modality`` at the next frame: ``((N, D), (N, D, D))``
        (before any frame: the prior predictive of the first frame)."""
        if modality not in self.model.modalities:
            raise ValueError(
                f"modality: unknown modality {modality!r}; the model has "
                f"{list(self.model.modalities)}"
            )
        return self._predict_obs(modality)
