"""The :class:`MultimodalHMM` model (the math is in the package docstring,
:mod:`mmpgm.models.hmm`)."""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule
from pyro.ops.indexing import Vindex
from torch import nn

from ..._validation import check_float, check_int
from ...data import MultimodalData
from ...observations import ObservationModel, make_observation
from ...ops import hmm as ops
from ...ops.hmm.chunked import factorial_filter_chunk, factorial_smooth_chunked
from ...results.hmm import Imputation, Posterior
from .._base import MultimodalModel
from .._checks import check_class_labels, check_obs_dims, per_modality
from .._chunks import check_chunk_size, time_slice
from .._savable import register
from . import init
from . import params as params_io
from .chain import MarkovChain
from .faults import (
    FaultBackground,
    FaultChain,
    fault_chain_name,
    previous_frames,
    resolve_sensor_faults,
)
from .params import HMMParams

__all__ = ["MarkovChain", "MultimodalHMM", "HMMParams"]


@register
class MultimodalHMM(MultimodalModel):
    r"""Multimodal HMM with a shared chain and one private chain per modality.

    Parameters
    ----------
    obs_dims : Mapping[str, int]
        Modality name -> ``obs_dim`` (for a categorical modality: its number of categories;
        its data then has ``obs_dim = 1`` holding the class index).
    num_shared_states : int
        :math:`K_s`.
    num_private_states : int or Mapping[str, int]
        :math:`K_m` (1 = no private chain for that modality).
    emission : str, ObservationModel or Mapping
        ``"diag"`` (diagonal Gaussian, default), ``"full"`` (full-covariance Gaussian) or
        ``"categorical"``, per modality or for all; or a ready :class:`ObservationModel`.
    concentration : float
        Dirichlet prior concentration of initial and transition rows (>= 1).
    sensor_faults : bool, list of str or Mapping[str, bool]
        Give these modalities (``True``: all) a latent ok / faulty chain :math:`f^m_t` whose
        faulty frames come from a broad background density shared by every state, so a stream
        that silently fails is detected and discounted (:mod:`mmpgm.models.hmm.faults`).
        The fault chains are named ``"<modality>_fault"`` in posteriors and samples;
        :attr:`Posterior.fault_probs` gives :math:`p(f^m_t = 1 \mid x)`.

    Examples
    --------
    >>> model = MultimodalHMM({"accel": 3, "gyro": 3}, num_shared_states=4, num_private_states=2)
    >>> data, latents = model.sample(num_sequences=5, num_timesteps=20, seed=0)
    >>> model.log_likelihood(data).shape
    torch.Size([5])
    """

    PROGRAMS = ("collapsed", "enumerated")
    """Pyro programs (:meth:`model`): ``"collapsed"`` (default; the chains summed out exactly by
    :mod:`mmpgm.ops.hmm`) and ``"enumerated"`` (per-step sites for ``TraceEnum_ELBO``)."""

    def __init__(
        self,
        obs_dims: Mapping[str, int],
        num_shared_states: int = 2,
        num_private_states=1,
        emission="diag",
        concentration: float = 1.5,
        sensor_faults=False,
    ):
        super().__init__()
        names = check_obs_dims(obs_dims)
        private = per_modality(num_private_states, names, "num_private_states")
        sizes = {"num_shared_states": num_shared_states}
        sizes.update({f"num_private_states[{m!r}]": private[m] for m in names})
        for name, k in sizes.items():
            check_int(name, k)
        emissions = per_modality(emission, names, "emission")
        check_float("concentration", concentration, minimum=1.0)
        self.modalities = names
        self.shared_chain = MarkovChain(num_shared_states, concentration)
        self.private_chains = PyroModule[nn.ModuleDict](
            {m: MarkovChain(private[m], concentration) for m in names}
        )
        self.emissions = PyroModule[nn.ModuleDict](
            {
                m: make_observation(emissions[m], obs_dims[m], num_shared_states, private[m])
                for m in names
            }
        )
        for m in names:
            e = self.emissions[m]
            if not isinstance(e, ObservationModel) or e.state_shape != (
                num_shared_states,
                private[m],
            ):
                raise ValueError(
                    f"emission[{m!r}]: expected an ObservationModel with state shape "
                    f"{(num_shared_states, private[m])}, got {getattr(e, 'state_shape', e)!r}"
                )
            if e.obs_dim != obs_dims[m]:
                raise ValueError(
                    f"emission[{m!r}]: expected an ObservationModel of obs_dim {obs_dims[m]} "
                    f"(obs_dims[{m!r}]), got {e.obs_dim}"
                )
        self.fault_modalities = resolve_sensor_faults(sensor_faults, names)
        for m in self.fault_modalities:
            if getattr(self.emissions[m], "kind_name", None) == "embedding":
                raise ValueError(
                    f"sensor_faults: modality {m!r} has an embedding emission, a likelihood of "
                    "its features G(x), which a background density of the raw frames x cannot "
                    "be weighed against; leave it out of sensor_faults (or fit the HMM on "
                    "encoder.embed_data(data) with a Gaussian emission and faults on that)"
                )
        self.fault_chains = PyroModule[nn.ModuleDict](
            {m: FaultChain() for m in self.fault_modalities}
        )
        self.fault_backgrounds = nn.ModuleDict(
            {
                m: FaultBackground(
                    self.emissions[m].data_dim,
                    self.emissions[m].num_categories if self.emissions[m].discrete else None,
                )
                for m in self.fault_modalities
            }
        )
        self.fit_fault_background()
        self._config = dict(
            obs_dims=dict(obs_dims),
            num_shared_states=num_shared_states,
            num_private_states=private,
            emission={m: self.emissions[m].kind for m in names},
            concentration=concentration,
            sensor_faults=list(self.fault_modalities),
        )

    # ------------------------------------------------------------------ structure
    @property
    def num_shared_states(self) -> int:
        return self.shared_chain.num_states

    @property
    def num_private_states(self) -> dict:
        return {m: self.private_chains[m].num_states for m in self.modalities}

    @property
    def chain_names(self) -> tuple:
        """Names of the chains in the order of the ops' chain axes: ``shared``, then the
        modalities (private chains), then ``"<modality>_fault"`` for each fault chain."""
        return (
            ("shared",)
            + self.modalities
            + tuple(fault_chain_name(m) for m in self.fault_modalities)
        )

    @property
    def chain_sizes(self) -> tuple:
        return (
            (self.num_shared_states,)
            + tuple(self.num_private_states[m] for m in self.modalities)
            + (2,) * len(self.fault_modalities)
        )

    @property
    def data_dims(self) -> dict:
        return {m: self.emissions[m].data_dim for m in self.modalities}

    def _chains(self):
        return (
            [self.shared_chain]
            + [self.private_chains[m] for m in self.modalities]
            + [self.fault_chains[m] for m in self.fault_modalities]
        )

    @torch.no_grad()
    def fit_fault_background(self, data: MultimodalData | None = None) -> "MultimodalHMM":
        """(Re)fit the background density of every faulty-frame model.

        With ``data``: to its pooled observed frames (median, inflated standard deviation; see
        :mod:`mmpgm.models.hmm.faults`). Without: to the equal-weight mixture of the current
        emissions. Called by the data-driven start; call it yourself with the same pooled data
        on every model whose likelihoods you compare. Returns the model.
        """
        if data is not None:
            data = self._checked(data)
        for m in self.fault_modalities:
            e = self.emissions[m]
            if data is None:
                if not e.discrete:
                    self.fault_backgrounds[m].fit_to_moments(e.mean(), e.covariance())
            else:
                self.fault_backgrounds[m].fit(data.filled(m), data.mask[m])
        return self

    def _check_labels(self, data) -> None:
        """``labels['shared']``, where given: per-frame, ``-1`` (unknown) or a shared state."""
        if "shared" in data.labels:
            lab = data.labels["shared"]
            if lab.dim() != 2:
                raise ValueError(
                    "data.labels['shared']: expected per-frame labels (N, T), got "
                    f"{tuple(lab.shape)}"
                )
            check_class_labels("data.labels['shared']", lab, self.num_shared_states - 1)

    def _check_observations(self, data) -> None:
        """Each modality's values suit its observation model (e.g. categorical indices)."""
        for m in self.modalities:
            self.emissions[m].check_values(f"data.obs[{m!r}]", data.obs[m], data.mask[m])

    # ------------------------------------------------------------------ likelihood pieces
    def modality_log_probs(self, data: MultimodalData, exclude=()) -> dict:
        """Per-modality ``log p(x^m_t | s_t, p^m_t)``: modality -> ``(N, T, K_s, K_m)``, 0 where
        missing (modalities in ``exclude`` are skipped)."""
        out = {}
        for m in self.modalities:
            if m in exclude:
                continue
            out[m] = self.emissions[m].masked_log_prob(data.obs[m], data.mask[m])
        return out

    def fault_log_probs(self, data: MultimodalData, exclude=()) -> dict:
        """Background ``log q_m(x^m_t)`` of every fault-modelled modality: ``(N, T)``, 0 where
        missing."""
        out = {}
        for m in self.fault_modalities:
            if m in exclude:
                continue
            x = data.filled(m)
            lp = self.fault_backgrounds[m].log_prob(x, *previous_frames(x, data.mask[m]))
            out[m] = torch.where(
                data.mask[m], lp, torch.zeros((), dtype=lp.dtype, device=lp.device)
            )
        return out

    def combine_log_factors(self, state_log_probs: dict, fault_log_probs: dict, batch_shape):
        """Product-space log factor ``batch_shape + chain_sizes`` from per-modality pieces.

        ``state_log_probs``: modality -> ``batch_shape + (K_s, K_m)``; ``fault_log_probs``:
        modality -> ``batch_shape`` background log-densities (used where that modality's fault
        chain is 1; the state factor where it is 0). Absent modalities contribute nothing.
        """
        M, F = len(self.modalities), len(self.fault_modalities)
        lead = len(batch_shape)
        present = [m for m in self.modalities if m in state_log_probs]
        if present and not any(m in self.fault_modalities for m in present):
            # one broadcast sum whose backward is one matrix product (ops.hmm.emissions)
            lp = ops.shared_private_log_factor([state_log_probs[m] for m in present])
            shape = list(batch_shape) + [self.num_shared_states]
            shape += [self.num_private_states[m] if m in present else 1 for m in self.modalities]
            return lp.reshape(shape + [1] * F).expand(tuple(batch_shape) + self.chain_sizes)
        total = None
        for i, m in enumerate(self.modalities):
            if m not in state_log_probs:
                continue
            lp = state_log_probs[m]
            shape = list(batch_shape) + [lp.shape[-2]] + [1] * (M + F)
            shape[lead + 1 + i] = lp.shape[-1]
            if m in self.fault_modalities:
                j = self.fault_modalities.index(m)
                bg = fault_log_probs[m][..., None, None].expand(lp.shape)
                lp = torch.stack([lp, bg], -1)
                shape[lead + 1 + M + j] = 2
            term = lp.reshape(shape)
            total = term if total is None else total + term
        full = tuple(batch_shape) + self.chain_sizes
        if total is None:
            p = self._param()
            return torch.zeros(full, dtype=p.dtype, device=p.device)
        return total.expand(full)

    def log_emissions(self, data: MultimodalData, exclude=()) -> torch.Tensor:
        """Product-space log factor ``(N, T) + chain_sizes`` for :mod:`mmpgm.ops.hmm`.

        Modalities in ``exclude`` are left out (treated as missing); ``labels["shared"]`` clamps.
        """
        N, T = data.num_sequences, data.num_timesteps
        total = self._linear_log_emissions(data, exclude)
        if total is None:
            total = self.combine_log_factors(
                self.modality_log_probs(data, exclude), self.fault_log_probs(data, exclude), (N, T)
            )
        clamp = self._clamp_log_factor(data)
        if clamp is not None:
            rest = (1,) * (len(self.chain_sizes) - 1)
            total = total + clamp.reshape((N, T, self.num_shared_states) + rest)
        return total

    def _linear_log_emissions(self, data, exclude):
        """:meth:`log_emissions` without labels, as matrix products alone
        (:func:`mmpgm.ops.hmm.shared_private_linear_log_factor`), where every used modality's
        log-density is linear in features (:meth:`ObservationModel.linear_log_prob`) and none
        has a fault chain; else None."""
        present = [m for m in self.modalities if m not in exclude]
        if not present or any(m in self.fault_modalities for m in present):
            return None
        dims = [self.emissions[m].linear_feature_dim for m in present]
        if any(r is None for r in dims):
            return None
        N, T = data.num_sequences, data.num_timesteps
        p = self._param()
        # every modality writes its features into its rows of one buffer (no stacking copy)
        stacked = torch.empty((sum(dims), N * T), dtype=p.dtype, device=p.device)
        rows = stacked.split(dims, 0)
        features, weights = [], []
        for m, out in zip(present, rows, strict=True):
            x = data.obs[m]
            if x.dtype != stacked.dtype or x.device != stacked.device:  # unchecked data
                out = None
            f, w = self.emissions[m].linear_log_prob(x, data.mask[m], out=out)
            features.append(f)
            weights.append(w)
        if all(f is out for f, out in zip(features, rows, strict=True)):
            features = stacked
        lp = ops.shared_private_linear_log_factor(features, weights)
        shape = [N, T, self.num_shared_states]
        shape += [self.num_private_states[m] if m in present else 1 for m in self.modalities]
        F = len(self.fault_modalities)
        return lp.reshape(shape + [1] * F).expand((N, T) + self.chain_sizes)

    def _clamp_log_factor(self, data):
        """``(N, T, K_s)``: 0 where consistent with ``labels['shared']`` (or unknown), -inf
        otherwise."""
        if "shared" not in data.labels:
            return None
        lab = data.labels["shared"].to(self._param().device)
        states = torch.arange(self.num_shared_states, device=lab.device)
        bad = (lab[..., None] >= 0) & (states != lab[..., None]) & data.time_mask[..., None]
        p = self._param()
        return torch.zeros(bad.shape, dtype=p.dtype, device=p.device).masked_fill(
            bad, -float("inf")
        )

    def _ops_args(self, data, exclude=()):
        chains = self._chains()
        return (
            [c.initial_probs for c in chains],
            [c.transition_probs for c in chains],
            self.log_emissions(data, exclude),
        )

    def log_likelihood(
        self, data: MultimodalData, *, chunk_size: int | None = None
    ) -> torch.Tensor:
        """Exact, differentiable :math:`\\log p(x^{(n)}_{\\text{observed}})` per sequence, ``(N,)``.

        With ``labels['shared']`` this is the joint log-probability of the observations and the
        given shared states.

        ``chunk_size``: filter ``chunk_size`` frames at a time, carrying the normalized forward
        message across chunks (:func:`mmpgm.ops.hmm.chunked.factorial_filter_chunk`): the same
        log-likelihood in memory :math:`O(N \\cdot \\text{chunk} \\cdot \\prod_c K_c)` instead of
        :math:`O(N T \\prod_c K_c)`, without gradient (for evaluating long sequences). Each
        chunk's emission factors are computed from its frames and the one before (the
        sensor-fault background looks at the previous frame).
        """
        data = self._checked(data)
        if check_chunk_size(chunk_size) is None:
            return ops.factorial_log_likelihood(*self._ops_args(data))
        chains = self._chains()
        init = [c.initial_probs.detach() for c in chains]
        trans = [c.transition_probs.detach() for c in chains]
        total, filtered = 0.0, None
        with torch.no_grad():
            for start in range(0, data.num_timesteps, chunk_size):
                stop = min(start + chunk_size, data.num_timesteps)
                logE = self._chunk_log_emissions(data, start, stop)
                filtered, ll = factorial_filter_chunk(init, trans, logE, filtered)
                total = total + ll
        return total

    def log_prior(self) -> torch.Tensor:
        lp = sum(c.log_prior() for c in self._chains())
        return lp + sum(self.emissions[m].log_prior() for m in self.modalities)

    def num_free_parameters(self) -> int:
        n = sum(c.num_free_parameters() for c in self._chains())
        return n + sum(self.emissions[m].num_free_parameters() for m in self.modalities)

    # ------------------------------------------------------------------ fitting hooks
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start (:func:`mmpgm.models.hmm.init.init_from_data`)."""
        init.init_from_data(self, data, seed)

    @torch.no_grad()
    def em_step(self, data: MultimodalData) -> torch.Tensor:
        """One Baum-Welch (MAP-EM) step on the factorial model; returns the log joint
        ``sum_n log p(x_n) + log p(theta)`` at the parameters *before* the update:
        ``em_update(em_statistics(data))``."""
        stats = self.em_statistics(data)
        log_joint = stats["log_likelihood"] + self.log_prior()
        self.em_update(stats)
        return log_joint

    @torch.no_grad()
    def em_statistics(self, data: MultimodalData, *, chunk_size: int | None = None) -> dict:
        """The E-step: name -> tensor of expected sufficient statistics of checked ``data`` at
        the current parameters, all sums over sequences (so those of disjoint shards add:
        data-parallel EM all-reduces them, :mod:`mmpgm.inference.distributed`).

        ``"log_likelihood"``: :math:`\\sum_n \\log p(x_n)` (scalar); per chain ``c`` of
        :meth:`_chains` (shared, private, fault chains) ``"chain<c>.initial" (K_c,)`` and
        ``"chain<c>.transition" (K_c, K_c)`` expected counts; per modality ``m``
        ``"emission.<m>.<name>"``: the emission's
        :meth:`~mmpgm.observations.base.ObservationModel.sufficient_statistics` of the observed
        frames weighted by the posterior of (shared, private) state (jointly with ``m``'s fault
        chain being ok).

        ``chunk_size``: forward-backward ``chunk_size`` frames at a time
        (:func:`mmpgm.ops.hmm.chunked.factorial_smooth_chunked`: boundary messages stored by a
        forward pass, the backward pass chunk by chunk with the carried backward message), the
        emission statistics added chunk by chunk: the same statistics in memory
        :math:`O(N \\cdot \\text{chunk} \\cdot \\prod_c K_c)`.
        """
        data = self._checked(data)
        if check_chunk_size(chunk_size) is not None:
            return self._em_statistics_chunked(data, chunk_size)
        init, trans, logE = self._ops_args(data)
        sm = ops.factorial_smooth(
            [a.detach() for a in init], [a.detach() for a in trans], logE.detach()
        )
        stats = {"log_likelihood": sm.log_likelihood.sum()}
        for c, (ic, tc) in enumerate(zip(sm.initial_counts, sm.transition_counts, strict=True)):
            stats[f"chain{c}.initial"] = ic
            stats[f"chain{c}.transition"] = tc
        for m in self.modalities:
            w = self._emission_weights(sm.marginals, m, ok_only=True)
            mask = data.mask[m]
            suff = self.emissions[m].sufficient_statistics(data.obs[m][mask], w[mask])
            for k, v in suff.items():
                stats[f"emission.{m}.{k}"] = v
        return stats

    def _chunk_log_emissions(self, data, start: int, stop: int) -> torch.Tensor:
        """``log_emissions`` of frames ``start .. stop-1``, computed from those frames and the one
        before (the sensor-fault background looks at the previous frame)."""
        lo = max(start - 1, 0)
        return self.log_emissions(time_slice(self, data, lo, stop))[:, start - lo :]

    def _em_statistics_chunked(self, data, chunk_size: int) -> dict:
        chains = self._chains()
        stats: dict = {}

        def add(key, value):
            stats[key] = value if key not in stats else stats[key] + value

        def on_chunk(start, stop, marginals):
            piece = time_slice(self, data, start, stop)
            for m in self.modalities:
                w = self._emission_weights(marginals, m, ok_only=True)
                mask = piece.mask[m]
                suff = self.emissions[m].sufficient_statistics(piece.obs[m][mask], w[mask])
                for k, v in suff.items():
                    add(f"emission.{m}.{k}", v)

        sm = factorial_smooth_chunked(
            [c.initial_probs.detach() for c in chains],
            [c.transition_probs.detach() for c in chains],
            lambda a, b: self._chunk_log_emissions(data, a, b).detach(),
            data.num_timesteps,
            chunk_size,
            on_chunk,
        )
        out = {"log_likelihood": sm.log_likelihood.sum()}
        for c, (ic, tc) in enumerate(zip(sm.initial_counts, sm.transition_counts, strict=True)):
            out[f"chain{c}.initial"] = ic
            out[f"chain{c}.transition"] = tc
        out.update(stats)
        return out

    @torch.no_grad()
    def em_update(self, stats: dict) -> None:
        """The M-step from :meth:`em_statistics` (summed over any number of shards): every
        chain's and emission's closed-form MAP update."""
        for c, chain in enumerate(self._chains()):
            chain.m_step(stats[f"chain{c}.initial"], stats[f"chain{c}.transition"])
        for m in self.modalities:
            head = f"emission.{m}."
            self.emissions[m].m_step_from_statistics(
                {k[len(head) :]: v for k, v in stats.items() if k.startswith(head)}
            )

    def _emission_weights(self, joint: torch.Tensor, modality: str, ok_only: bool = False):
        """``joint (..., T) + chain_sizes`` -> ``(..., T, K_s, K_m)``: the marginal of the shared
        chain and ``modality``'s private chain; with ``ok_only``, jointly with ``modality``'s
        fault chain being ok (the weights of its emission, not of the background)."""
        C = len(self.chain_sizes)
        lead = joint.dim() - C
        i = 1 + self.modalities.index(modality)
        if ok_only and modality in self.fault_modalities:
            f = 1 + len(self.modalities) + self.fault_modalities.index(modality)
            joint = joint.select(lead + f, 0)
            C -= 1
        keep = (0, i)
        dims = [lead + c for c in range(C) if c not in keep]
        return joint.sum(dims) if dims else joint

    # ------------------------------------------------------------------ Pyro programs
    def default_elbo(self, program: str | None = None) -> ELBO:
        """``Trace_ELBO()`` for ``"collapsed"``, ``TraceEnum_ELBO(max_plate_nesting=1)`` for
        ``"enumerated"``."""
        if self.check_program(program) == "enumerated":
            return TraceEnum_ELBO(max_plate_nesting=1)
        return Trace_ELBO()

    def model(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """The generative program.

        ``program="collapsed"`` (default, the fast path used for training): the discrete chains
        are collapsed exactly by :func:`mmpgm.ops.hmm.factorial_log_likelihood` and enter as one
        ``pyro.factor`` per sequence. ``program="enumerated"``: every state is a per-step sample
        site enumerated in parallel by :class:`pyro.infer.TraceEnum_ELBO` inside
        ``pyro.markov``, missing frames masked with ``poutine.mask``; both give the same loss.

        ``num_sequences`` is the full dataset size when ``data`` is a minibatch (scales the
        likelihood against the prior).
        """
        data = self._checked(data)
        N, T = data.num_sequences, data.num_timesteps
        total = N if num_sequences is None else num_sequences
        enumerated = self.check_program(program) == "enumerated"
        pyro.factor("log_prior", self.log_prior())
        plate = pyro.plate(
            "sequences", total, subsample=torch.arange(N, device=data.device), dim=-1
        )
        if not enumerated:
            with plate:
                pyro.factor("log_likelihood", self.log_likelihood(data))
            return
        chains = self._chains()
        clamp = self._clamp_log_factor(data)
        values = {
            m: getattr(self.emissions[m], "pyro_value", lambda x: x)(data.filled(m))
            for m in self.modalities
        }
        previous = {m: previous_frames(data.filled(m), data.mask[m]) for m in self.fault_modalities}
        with plate:
            states = [None] * len(chains)
            for t in pyro.markov(range(T)):
                for c, (name, chain) in enumerate(zip(self.chain_names, chains, strict=False)):
                    probs = (
                        chain.initial_probs if t == 0 else Vindex(chain.transition_probs)[states[c]]
                    )
                    states[c] = pyro.sample(
                        f"{name}_state_{t}",
                        dist.Categorical(probs),
                        infer={"enumerate": "parallel"},
                    )
                if clamp is not None:
                    pyro.factor(f"clamp_{t}", Vindex(clamp)[..., t, states[0]])
                for i, m in enumerate(self.modalities):
                    d = self.emissions[m].distribution(states[0], states[i + 1])
                    if m in self.fault_modalities:
                        f = states[1 + len(self.modalities) + self.fault_modalities.index(m)]
                        prev, prev_obs = previous[m]
                        bg = self.fault_backgrounds[m].distribution(prev[:, t], prev_obs[:, t])
                        d = dist.MaskedMixture(f.bool(), d, bg)
                    with poutine.mask(mask=data.mask[m][:, t]):
                        pyro.sample(f"obs_{m}_{t}", d, obs=values[m][:, t])

    # ------------------------------------------------------------------ posteriors
    def posterior(
        self,
        data: MultimodalData,
        *,
        causal: bool = False,
        num_samples: int = 0,
        seed: int | None = None,
        map_path: bool = True,
    ) -> Posterior:
        """Exact posterior over the chains (see :func:`mmpgm.infer`)."""
        data = self._checked(data)
        args = self._ops_args(data)
        C = len(self.chain_names)
        with torch.no_grad():
            args = [[a.detach() for a in args[0]], [a.detach() for a in args[1]], args[2].detach()]
            if causal:
                fw = ops.factorial_forward(*args)
                joint, ll = fw.filtered, fw.log_likelihood
            else:
                sm = ops.factorial_smooth(*args)
                joint, ll = sm.marginals, sm.log_likelihood
            marg = dict(zip(self.chain_names, ops.chain_marginals(joint, C), strict=True))
            map_ = samples = None
            if map_path:
                path = ops.factorial_viterbi(*args).path
                map_ = {n: path[..., c] for c, n in enumerate(self.chain_names)}
            if num_samples:
                gen = None
                if seed is not None:
                    gen = torch.Generator(device=args[2].device).manual_seed(seed)
                draws = ops.factorial_sample(*args, num_samples, generator=gen)
                samples = {n: draws[..., c] for c, n in enumerate(self.chain_names)}
        inside = data.time_mask
        fault_probs = {
            m: marg[fault_chain_name(m)][..., 1] * inside for m in self.fault_modalities
        } or None
        return Posterior(
            marginals=marg,
            map=map_,
            samples=samples,
            log_likelihood=ll,
            lengths=data.lengths,
            causal=causal,
            pointwise_log_likelihood=None,
            fault_probs=fault_probs,
        )

    def impute(self, data: MultimodalData, modality: str) -> Imputation:
        r"""Posterior predictive of ``modality`` from the other modalities.

        :math:`p(x^m_t \mid x^{-m}) = \sum_{i,j} p(s_t=i, p^m_t=j \mid x^{-m}) p(x^m_t \mid i, j)`:
        a mixture whose mean and covariance are returned (for a categorical modality, the mean is
        the vector of class probabilities). Every frame of ``modality`` is ignored, observed or
        not, so the result shows what the other streams say about it; with ``sensor_faults``
        it is what the stream would have shown had it been ok, and the other streams' faulty
        frames are discounted.
        """
        if modality not in self.modalities:
            raise ValueError(
                f"modality: unknown modality {modality!r}; the model has {list(self.modalities)}"
            )
        data = self._checked(data)
        with torch.no_grad():
            args = self._ops_args(data, exclude=(modality,))
            sm = ops.factorial_smooth(
                [a.detach() for a in args[0]], [a.detach() for a in args[1]], args[2].detach()
            )
            w = self._emission_weights(sm.marginals, modality)  # (N, T, K_s, K_m)
            e = self.emissions[modality]
            mu, cov = e.mean().detach(), e.covariance().detach()
            mean = torch.einsum("ntij,ijd->ntd", w, mu)
            second = cov + mu[..., :, None] * mu[..., None, :]
            covariance = (
                torch.einsum("ntij,ijde->ntde", w, second) - mean[..., :, None] * mean[..., None, :]
            )
        return Imputation(mean=mean, covariance=covariance, state_weights=w)

    # ------------------------------------------------------------------ sampling
    def sample(self, num_sequences: int, num_timesteps: int, seed: int | None = None):
        """Draw sequences from the model.

        Returns
        -------
        data : MultimodalData
            ``num_sequences`` sequences of ``num_timesteps`` frames.
        latents : dict
            ``"shared"``, every modality name and every fault chain (``"<modality>_fault"``,
            1 = faulty) -> ``(N, T)`` int64 state paths.
        """
        for name, v in [("num_sequences", num_sequences), ("num_timesteps", num_timesteps)]:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        check_int("seed", seed, minimum=0, allow_none=True)
        p = self._param()
        gen = torch.Generator(device=p.device)
        gen.manual_seed(int(torch.randint(2**31, (1,))) if seed is None else seed)
        N, T = num_sequences, num_timesteps
        latents = {}
        with torch.no_grad():
            for name, chain in zip(self.chain_names, self._chains(), strict=False):
                z = torch.empty(N, T, dtype=torch.long, device=p.device)
                z[:, 0] = torch.multinomial(chain.initial_probs.expand(N, -1), 1, generator=gen)[
                    :, 0
                ]
                A = chain.transition_probs
                for t in range(1, T):
                    z[:, t] = torch.multinomial(A[z[:, t - 1]], 1, generator=gen)[:, 0]
                latents[name] = z
            obs = {
                m: self.emissions[m].sample_at(latents["shared"], latents[m], generator=gen)
                for m in self.modalities
            }
            for m in self.fault_modalities:
                faulty = latents[fault_chain_name(m)].bool()
                bg = self.fault_backgrounds[m]
                junk = bg.sample((N, T), generator=gen).to(obs[m])
                held = torch.rand(N, T, generator=gen, device=p.device) < bg.stuck_weight
                held &= bg.num_categories is None
                x = obs[m]
                for t in range(T):  # a faulty frame holds the previous reading or is broad
                    value = junk[:, t]
                    if t:
                        value = torch.where(held[:, t, None], x[:, t - 1], value)
                    x[:, t] = torch.where(faulty[:, t, None], value, x[:, t])
        return MultimodalData(obs), latents

    # ------------------------------------------------------------------ parameters, I/O
    @property
    def params(self) -> HMMParams:
        """The constrained parameter values (detached copies; :class:`HMMParams`)."""
        return params_io.get_params(self)

    def set_params(self, params: HMMParams) -> "MultimodalHMM":
        """Overwrite the parameters with the (constrained) values of ``params``, validated first
        (:func:`mmpgm.models.hmm.params.set_params`)."""
        return params_io.set_params(self, params)

    @classmethod
    def from_params(
        cls, params: HMMParams, emission="diag", concentration: float = 1.5
    ) -> "MultimodalHMM":
        """Build a model from an :class:`HMMParams` (inverse of :attr:`params`); the modalities
        in ``params.fault_initial_probs`` get fault chains (``sensor_faults``)."""
        params_io.check_structure(params)
        obs_dims, private = {}, {}
        emission = (
            dict(emission)
            if isinstance(emission, Mapping)
            else {m: emission for m in params.emissions}
        )
        kinds = params.emission_kinds or {}
        for m, e in params.emissions.items():
            if kinds.get(m) is not None:
                emission[m] = kinds[m]
            if "probs" in e:
                emission[m] = "categorical"
                obs_dims[m] = e["probs"].shape[-1]
            else:
                obs_dims[m] = e["loc"].shape[-1]
                if "scale_tril" in e and kinds.get(m) is None:
                    emission[m] = "full"
            private[m] = params.private_initial_probs[m].shape[0]
        faults = params.fault_initial_probs or params.fault_backgrounds or {}
        if not isinstance(faults, Mapping):
            raise TypeError(
                f"params.fault_initial_probs: expected a dict modality -> tensor or None, got "
                f"{faults!r}"
            )
        model = cls(
            obs_dims,
            params.shared_initial_probs.shape[0],
            private,
            emission,
            concentration,
            sensor_faults=[m for m in obs_dims if m in faults],
        )
        model = model.to(
            dtype=params.shared_initial_probs.dtype, device=params.shared_initial_probs.device
        )
        model = params_io.set_params(model, params, complete=True)
        if params.fault_backgrounds is None:
            model.fit_fault_background()
        return model
