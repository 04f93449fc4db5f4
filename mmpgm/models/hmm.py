r"""Multimodal hidden Markov model (paper section 5.3, eq. 40-41, Fig. 7).

One shared chain :math:`s_t \in \{1..K_s\}` and one private chain :math:`p^m_t \in \{1..K_m\}` per
modality :math:`m = 1..M`, each with its own initial distribution and transition matrix
(indexed ``(old, new)``):

.. math::
    p(x, s, p) = \prod_{t=1}^T \Big[ p(s_t \mid s_{t-1}) \prod_m p(p^m_t \mid p^m_{t-1})
                 \prod_m p(x^m_t \mid s_t, p^m_t) \Big].

The shared chain carries what all streams have in common (content), the private chains what is
particular to one stream (style). ``K_m = 1`` gives a plain HMM whose state all modalities
share; ``K_s = 1`` gives independent HMMs per modality.

Priors for MAP fitting: :math:`\pi, A_{i\cdot} \sim \mathrm{Dirichlet}(\alpha \mathbf 1)` for every
chain, and the weak emission priors of :mod:`mmpgm.observations`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule, PyroParam
from pyro.ops.indexing import Vindex
from torch import nn
from torch.distributions import constraints

from .._pyro import TypedPyroModule
from ..data import MultimodalData
from ..observations import ObservationModel, make_observation
from ..ops import hmm as ops
from ..ops.kmeans import kmeans
from ..results.hmm import Imputation, Posterior
from ._base import MultimodalModel
from ._checks import check_finite, check_obs_dims, per_modality
from ._savable import register

__all__ = ["MarkovChain", "MultimodalHMM", "HMMParams"]


class MarkovChain(TypedPyroModule):
    r"""A discrete Markov chain: :math:`z_1 \sim \pi`, :math:`z_t \mid z_{t-1} \sim A_{z_{t-1},
    \cdot}`.

    Parameters
    ----------
    num_states : int
        ``K``.
    concentration : float
        Dirichlet prior concentration ``alpha`` of :math:`\pi` and every row of :math:`A`.
    stickiness : float
        Initial self-transition probability (before fitting).
    """

    def __init__(self, num_states: int, concentration: float = 1.5, stickiness: float = 0.8):
        super().__init__()
        if not isinstance(num_states, int) or isinstance(num_states, bool) or num_states < 1:
            raise ValueError(f"num_states: expected a positive int, got {num_states!r}")
        if not concentration >= 1.0:
            raise ValueError(
                f"concentration: expected a float >= 1 (MAP needs it), got {concentration!r}"
            )
        K = num_states
        self.num_states = K
        self.concentration = float(concentration)
        init = torch.full((K,), 1.0 / K)
        if K > 1:
            trans = torch.full((K, K), (1.0 - stickiness) / (K - 1))
            trans.fill_diagonal_(stickiness)
        else:
            trans = torch.ones(1, 1)
        self.initial_probs = PyroParam(init, constraint=constraints.simplex)
        self.transition_probs = PyroParam(trans, constraint=constraints.simplex)

    def log_prior(self) -> torch.Tensor:
        if self.num_states == 1:
            return self.initial_probs.new_zeros(())
        conc = torch.full_like(self.initial_probs, self.concentration)
        d = dist.Dirichlet(conc)
        return d.log_prob(self.initial_probs) + d.log_prob(self.transition_probs).sum()

    def num_free_parameters(self) -> int:
        K = self.num_states
        return (K - 1) * (K + 1)

    @torch.no_grad()
    def m_step(self, initial_counts, transition_counts) -> None:
        a = self.concentration - 1.0
        init = initial_counts + a
        trans = transition_counts + a
        self.initial_probs = init / init.sum()
        self.transition_probs = trans / trans.sum(-1, keepdim=True)


class HMMParams(NamedTuple):
    """Parameters of a :class:`MultimodalHMM` (constrained values, detached).

    shared_initial : ``(K_s,)`` :math:`\\pi^s`.
    shared_transition : ``(K_s, K_s)`` :math:`A^s` indexed (old, new).
    private_initial : dict modality -> ``(K_m,)`` :math:`\\pi^m`.
    private_transition : dict modality -> ``(K_m, K_m)`` :math:`A^m`.
    emissions : dict modality -> dict of emission tensors indexed ``(K_s, K_m, ...)``.
    """

    shared_initial: torch.Tensor
    shared_transition: torch.Tensor
    private_initial: dict
    private_transition: dict
    emissions: dict


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
    ):
        super().__init__()
        names = check_obs_dims(obs_dims)
        private = per_modality(num_private_states, names, "num_private_states")
        emissions = per_modality(emission, names, "emission")
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
        self._config = dict(
            obs_dims=dict(obs_dims),
            num_shared_states=num_shared_states,
            num_private_states=private,
            emission={m: self.emissions[m].kind for m in names},
            concentration=concentration,
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
        """Names of the chains in the order of the ops' chain axes: ``shared``, then modalities."""
        return ("shared",) + self.modalities

    @property
    def chain_sizes(self) -> tuple:
        return (self.num_shared_states,) + tuple(
            self.num_private_states[m] for m in self.modalities
        )

    @property
    def data_dims(self) -> dict:
        return {m: self.emissions[m].data_dim for m in self.modalities}

    def _chains(self):
        return [self.shared_chain] + [self.private_chains[m] for m in self.modalities]

    def _check_labels(self, data) -> None:
        """``labels['shared']``, where given: per-frame, ``-1`` (unknown) or a shared state."""
        if "shared" in data.labels:
            lab = data.labels["shared"]
            if lab.dim() != 2:
                raise ValueError(
                    "data.labels['shared']: expected per-frame labels (N, T), got "
                    f"{tuple(lab.shape)}"
                )
            bad = (lab < -1) | (lab >= self.num_shared_states)
            if bool(bad.any()):
                raise ValueError(
                    "data.labels['shared']: expected -1 (unknown) or a state in "
                    f"[0, {self.num_shared_states - 1}], got values "
                    f"{sorted(set(lab[bad].tolist()))[:5]}"
                )

    # ------------------------------------------------------------------ likelihood pieces
    def modality_log_probs(self, data: MultimodalData, exclude=()) -> dict:
        """Per-modality ``log p(x^m_t | s_t, p^m_t)``: modality -> ``(N, T, K_s, K_m)``, 0 where
        missing (modalities in ``exclude`` are skipped)."""
        out = {}
        for m in self.modalities:
            if m in exclude:
                continue
            lp = self.emissions[m].log_prob(data.filled(m))
            out[m] = torch.where(
                data.mask[m][..., None, None], lp, torch.zeros((), dtype=lp.dtype, device=lp.device)
            )
        return out

    def log_emissions(self, data: MultimodalData, exclude=()) -> torch.Tensor:
        """Product-space log factor ``(N, T, K_s, K_1, ..., K_M)`` for :mod:`mmpgm.ops.hmm`.

        Modalities in ``exclude`` are left out (treated as missing); ``labels["shared"]`` clamps.
        """
        M = len(self.modalities)
        lps = self.modality_log_probs(data, exclude)
        N, T = data.num_sequences, data.num_timesteps
        total = None
        for i, m in enumerate(self.modalities):
            if m in exclude:
                continue
            lp = lps[m]
            shape = [N, T, lp.shape[2]] + [1] * M
            shape[3 + i] = lp.shape[3]
            term = lp.reshape(shape)
            total = term if total is None else total + term
        full = (N, T) + self.chain_sizes
        p = self._param()
        if total is None:
            total = torch.zeros(full, dtype=p.dtype, device=p.device)
        total = total.expand(full)
        clamp = self._clamp_log_factor(data)
        if clamp is not None:
            total = total + clamp.reshape((N, T, self.num_shared_states) + (1,) * M)
        return total

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

    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        """Exact, differentiable :math:`\\log p(x^{(n)}_{\\text{observed}})` per sequence, ``(N,)``.

        With ``labels['shared']`` this is the joint log-probability of the observations and the
        given shared states.
        """
        data = self._checked(data)
        return ops.factorial_log_likelihood(*self._ops_args(data))

    def log_prior(self) -> torch.Tensor:
        lp = sum(c.log_prior() for c in self._chains())
        return lp + sum(self.emissions[m].log_prior() for m in self.modalities)

    def num_free_parameters(self) -> int:
        n = sum(c.num_free_parameters() for c in self._chains())
        return n + sum(self.emissions[m].num_free_parameters() for m in self.modalities)

    # ------------------------------------------------------------------ fitting hooks
    @torch.no_grad()
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Data-driven start that respects the shared/private structure.

        1. k-means with ``K_s`` clusters on the standardized frames of all modalities together
           (missing modalities at their mean) gives a shared label per frame and per-modality
           shared centres :math:`c^m_s`;
        2. k-means with ``K_m`` clusters on each modality's residuals :math:`x^m_t - c^m_{s_t}`
           gives private offsets :math:`d^m_p`;
        3. emission means start at :math:`c^m_s + d^m_p` (additive, as in the generative story),
           variances and the weak priors at the data scale.

        Called by :func:`mmpgm.fit` before the first fit; ``seed`` makes it reproducible.
        """
        data = self._checked(data)
        gen = torch.Generator().manual_seed(seed)
        inside = data.time_mask
        cols = []
        for m in self.modalities:
            x = data.filled(m)
            obs = data.mask[m]
            if not bool(obs.any()):
                raise ValueError(f"data.obs[{m!r}]: no observed frame to initialize from")
            e = self.emissions[m]
            if e.discrete:
                x = torch.nn.functional.one_hot(e.pyro_value(x), e.num_categories).to(x)
            mu = x[obs].mean(0)
            sd = x[obs].std(0).clamp_min(1e-8) if int(obs.sum()) > 1 else torch.ones_like(mu)
            z = torch.where(obs[..., None], (x - mu) / sd, torch.zeros_like(x))
            cols.append(z / z.shape[-1] ** 0.5)  # each modality weighs the same
        frames = torch.cat(cols, -1)[inside]  # (F, sum D)
        shared = kmeans(frames, self.num_shared_states, generator=gen).assignments
        for m in self.modalities:
            e = self.emissions[m]
            obs = data.mask[m][inside]
            x = data.filled(m)[inside][obs]
            s = shared[obs]
            if e.discrete:
                e.init_from_data(x, generator=gen)
                continue
            K_s, K_m = e.state_shape
            counts = torch.bincount(s, minlength=K_s).to(x.dtype)
            sums = torch.zeros(K_s, x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, s, x)
            global_mean = x.mean(0)
            centres = torch.where(
                counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], global_mean
            )
            resid = x - centres[s]
            offsets = kmeans(resid, K_m, generator=gen).centers
            e.init_from_data(x, generator=gen, means=centres[:, None, :] + offsets[None, :, :])

    @torch.no_grad()
    def em_step(self, data: MultimodalData) -> torch.Tensor:
        """One Baum-Welch (MAP-EM) step on the factorial model; returns the log joint
        ``sum_n log p(x_n) + log p(theta)`` at the parameters *before* the update."""
        data = self._checked(data)
        init, trans, logE = self._ops_args(data)
        sm = ops.factorial_smooth(
            [a.detach() for a in init], [a.detach() for a in trans], logE.detach()
        )
        log_joint = sm.log_likelihood.sum() + self.log_prior()
        counts = zip(self._chains(), sm.initial_counts, sm.transition_counts, strict=True)
        for chain, ic, tc in counts:
            chain.m_step(ic, tc)
        C = len(self.chain_names)
        for i, m in enumerate(self.modalities):
            dims = [2 + c for c in range(1, C) if c != i + 1]
            w = sm.marginals.sum(dims) if dims else sm.marginals
            mask = data.mask[m]
            self.emissions[m].m_step(data.obs[m][mask], w[mask])
        return log_joint

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
                    with poutine.mask(mask=data.mask[m][:, t]):
                        pyro.sample(
                            f"obs_{m}_{t}",
                            self.emissions[m].distribution(states[0], states[i + 1]),
                            obs=values[m][:, t],
                        )

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
            marg = dict(zip(self.chain_names, ops.chain_marginals(joint, C), strict=False))
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
        return Posterior(
            marginals=marg,
            map=map_,
            samples=samples,
            log_likelihood=ll,
            lengths=data.lengths,
            causal=causal,
            pointwise_log_likelihood=None,
        )

    def impute(self, data: MultimodalData, modality: str) -> Imputation:
        r"""Posterior predictive of ``modality`` from the other modalities.

        :math:`p(x^m_t \mid x^{-m}) = \sum_{i,j} p(s_t=i, p^m_t=j \mid x^{-m}) p(x^m_t \mid i, j)`:
        a mixture whose mean and covariance are returned (for a categorical modality, the mean is
        the vector of class probabilities). Every frame of ``modality`` is ignored, observed or
        not, so the result shows what the other streams say about it.
        """
        if modality not in self.modalities:
            raise ValueError(
                f"modality: unknown modality {modality!r}; the model has {list(self.modalities)}"
            )
        data = self._checked(data)
        i = self.modalities.index(modality)
        with torch.no_grad():
            args = self._ops_args(data, exclude=(modality,))
            sm = ops.factorial_smooth(
                [a.detach() for a in args[0]], [a.detach() for a in args[1]], args[2].detach()
            )
            C = len(self.chain_names)
            joint = sm.marginals  # (N, T, K_s, K_1..K_M)
            dims = [2 + c for c in range(1, C) if c != i + 1]
            w = joint.sum(dims) if dims else joint  # (N, T, K_s, K_m)
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
            ``"shared"`` and every modality name -> ``(N, T)`` int64 state paths.
        """
        for name, v in [("num_sequences", num_sequences), ("num_timesteps", num_timesteps)]:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
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
        return MultimodalData(obs), latents

    # ------------------------------------------------------------------ parameters, I/O
    @property
    def params(self) -> HMMParams:
        def clean(name):
            return name.replace("_unconstrained", "")

        return HMMParams(
            shared_initial=self.shared_chain.initial_probs.detach().clone(),
            shared_transition=self.shared_chain.transition_probs.detach().clone(),
            private_initial={
                m: self.private_chains[m].initial_probs.detach().clone() for m in self.modalities
            },
            private_transition={
                m: self.private_chains[m].transition_probs.detach().clone() for m in self.modalities
            },
            emissions={
                m: {
                    clean(k): getattr(self.emissions[m], clean(k)).detach().clone()
                    for k, _ in self.emissions[m].named_parameters()
                }
                for m in self.modalities
            },
        )

    def set_params(self, params: HMMParams) -> "MultimodalHMM":
        """Overwrite the parameters with the (constrained) values of ``params``."""
        if not isinstance(params, HMMParams):
            raise TypeError(f"params: expected HMMParams, got {type(params).__name__}")
        for name, value in [
            ("shared_initial", params.shared_initial),
            ("shared_transition", params.shared_transition),
        ]:
            check_finite(f"params.{name}", value)
        for m in self.modalities:
            check_finite(f"params.private_initial[{m!r}]", params.private_initial[m])
            check_finite(f"params.private_transition[{m!r}]", params.private_transition[m])
            for k, v in params.emissions[m].items():
                check_finite(f"params.emissions[{m!r}][{k!r}]", v)
        p = self._param()
        conv = dict(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            self.shared_chain.initial_probs = params.shared_initial.to(**conv)
            self.shared_chain.transition_probs = params.shared_transition.to(**conv)
            for m in self.modalities:
                self.private_chains[m].initial_probs = params.private_initial[m].to(**conv)
                self.private_chains[m].transition_probs = params.private_transition[m].to(**conv)
                for k, v in params.emissions[m].items():
                    if not hasattr(self.emissions[m], k):
                        raise ValueError(f"params.emissions[{m!r}]: unknown parameter {k!r}")
                    setattr(self.emissions[m], k, v.to(**conv))
        return self

    @classmethod
    def from_params(
        cls, params: HMMParams, emission="diag", concentration: float = 1.5
    ) -> "MultimodalHMM":
        """Build a model from an :class:`HMMParams` (inverse of :attr:`params`)."""
        obs_dims, private = {}, {}
        emission = (
            dict(emission)
            if isinstance(emission, Mapping)
            else {m: emission for m in params.emissions}
        )
        for m, e in params.emissions.items():
            if "probs" in e:
                emission[m] = "categorical"
                obs_dims[m] = e["probs"].shape[-1]
            else:
                obs_dims[m] = e["loc"].shape[-1]
                if "scale_tril" in e:
                    emission[m] = "full"
            private[m] = params.private_initial[m].shape[0]
        model = cls(obs_dims, params.shared_initial.shape[0], private, emission, concentration)
        model = model.to(dtype=params.shared_initial.dtype, device=params.shared_initial.device)
        return model.set_params(params)
