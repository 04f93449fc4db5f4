r"""Multimodal variational RNN (paper section 5.4, eq. 42-47, Fig. 9-10).

:math:`M + 1` recurrent streams: :math:`h^s` reads all modalities, :math:`h^m` reads modality
:math:`m`; a shared latent :math:`z^s_t` explains what the modalities have in common and a private
latent :math:`z^m_t` what is particular to modality :math:`m`:

.. math::
    p(x, z) = \prod_{t=1}^T p(z^s_t \mid h^s_{t-1}) \prod_{m=1}^M p(z^m_t \mid h^m_{t-1})\,
              p(x^m_t \mid z^m_t, z^s_t, h^m_{t-1}),

with diagonal Gaussian priors, a pluggable likelihood (diagonal Gaussian by default) and GRU
states :math:`h^s_t = \mathrm{GRU}_s([x_t \odot o_t, o_t, z^s_t], h^s_{t-1})`,
:math:`h^m_t = \mathrm{GRU}_m([x^m_t o^m_t, o^m_t, z^m_t], h^m_{t-1})` (:math:`o^m_t` = "observed"
bit; missing frames are zero-filled). The guide (eq. 43) is
:math:`q(z_t \mid x_t, h_{t-1})`: the shared posterior is the precision-weighted product of the
prior expert and one Gaussian expert per *observed* modality, the private posterior of an
observed modality is an encoder of :math:`(x^m_t, h^m_{t-1}, z^s_t)`, and the private posterior
of a missing modality is its prior. A missing frame therefore contributes neither an expert nor
a reconstruction term, and inference works with any subset of modalities.

The ELBO (eq. 44-47) is
:math:`\sum_t \sum_m E_q \log p(x^m_t \mid \cdot) - \mathrm{KL}(q(z^m_t) \| p(z^m_t)) -
\mathrm{KL}(q(z^s_t) \| p(z^s_t))`, with analytic KL terms scaled by :attr:`MVRNN.kl_scale`
(KL annealing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .. import _validation
from .._rng import seeded
from .._validation import check_bool
from ..data import MultimodalData
from ..nn.vrnn import MVRNNNet, make_likelihood
from ..results.mvrnn import MVRNNImputation, MVRNNPosterior
from ._base import MultimodalModel
from ._checks import check_int, check_obs_dims, per_modality
from ._savable import register

__all__ = ["MVRNN"]


@register
class MVRNN(MultimodalModel):
    r"""Multimodal variational RNN with shared and private stochastic latents.

    Parameters
    ----------
    obs_dims : Mapping[str, int]
        Modality name -> ``obs_dim``.
    hidden_dim : int
        GRU state size of each of the ``M + 1`` streams.
    shared_dim : int
        Size of :math:`z^s_t`.
    private_dim : int or Mapping[str, int]
        Size of :math:`z^m_t` (0 = no private latent for that modality).
    head_dim : int, optional
        Hidden width of the prior, encoder and decoder MLPs (default ``hidden_dim``; 0 = linear).
    likelihood : str, module or Mapping
        ``"gaussian"`` (diagonal, default) or ``"bernoulli"``, or a module with the interface of
        :class:`mmpgm.nn.vrnn.GaussianLikelihood`; per modality or for all.
    kl_scale : float
        Weight of the KL terms in the training objective when ``kl_annealing`` is off (1 = the
        ELBO). Results always report the true ELBO.
    kl_annealing : sequence of float or None
        KL weights of the equal-length stages of every SVI fit (default ``(0.0, 0.3, 1.0)``:
        the decoders first learn to reconstruct, then the KL terms come in, which keeps the
        shared latent from collapsing; the recipe that gave tutorial 05's cross-modal
        imputation). :func:`mmpgm.fit` sets ``kl_scale`` stage by stage, restarts its plateau
        test at each stage and stops early only in the last; ``None`` or ``()`` turns it off
        (``kl_scale`` is then used throughout). With it :func:`mmpgm.fit` also defaults to
        ``lr=1e-2``.
    vectorized : bool
        The default training program. True (default): ``program="vectorized"``, guide and model
        run together in one pass (:meth:`mmpgm.nn.vrnn.MVRNNNet.scan`, analytic KL,
        reparameterized draws) and the per-sequence ELBO enters as ``pyro.factor`` inside the
        ``sequences`` plate (the guide samples nothing). False: ``program="sites"``, one
        ``pyro.sample`` site per latent and frame inside ``pyro.markov``, with ``poutine.mask`` /
        ``poutine.scale``, for any Pyro ELBO (``TraceMeanField_ELBO`` gives the same analytic-KL
        objective). Either program can also be chosen per call with
        ``model.model(data, program=...)`` or ``mmpgm.fit(..., program=...)``.
    tbptt : int, optional
        Truncated backpropagation through time in the ``"vectorized"`` training program: the
        sequences are run ``tbptt`` frames at a time, the GRU states carried from one chunk to
        the next but detached, so a gradient reaches back at most ``tbptt`` frames (a chunk's
        terms are differentiated with respect to its own frames and the parameters only). The
        ELBO's value is unchanged (the same noise, the same recursion); ``tbptt >= T`` is plain
        training. The autograd graph of one step still spans the whole sequence (one loss per
        step), so this bounds the gradient's reach, not the step's memory. Default None (off);
        results (``posterior``, ``log_likelihood``) never truncate. The ``"sites"`` program
        refuses it (``ValueError``).

    Examples
    --------
    >>> model = MVRNN({"audio": 8, "video": 6}, hidden_dim=16, shared_dim=4, private_dim=2)
    >>> data = model.sample(3, 10, seed=0)[0]
    >>> model.log_likelihood(data).shape
    torch.Size([3])
    """

    PROGRAMS = ("vectorized", "sites")
    """Pyro programs (:meth:`model`): ``"vectorized"`` (one pass, the ELBO as a factor) and
    ``"sites"`` (per-frame sample sites); the default follows the constructor's ``vectorized``."""

    def __init__(
        self,
        obs_dims: Mapping[str, int],
        hidden_dim: int = 64,
        shared_dim: int = 16,
        private_dim=8,
        head_dim: int | None = None,
        likelihood="gaussian",
        kl_scale: float = 1.0,
        kl_annealing=(0.0, 0.3, 1.0),
        vectorized: bool = True,
        tbptt: int | None = None,
    ):
        super().__init__()
        names = check_obs_dims(obs_dims)
        check_int("hidden_dim", hidden_dim)
        check_int("shared_dim", shared_dim)
        head_dim = hidden_dim if head_dim is None else head_dim
        check_int("head_dim", head_dim, allow_zero=True)
        private = per_modality(private_dim, names, "private_dim")
        for m, z in private.items():
            check_int(f"private_dim[{m!r}]", z, allow_zero=True)
        liks = (
            per_modality(likelihood, names, "likelihood")
            if isinstance(likelihood, Mapping)
            else {m: likelihood for m in names}
        )
        check_bool("vectorized", vectorized)
        lik_modules = {
            m: make_likelihood(liks[m], obs_dims[m], f"likelihood[{m!r}]") for m in names
        }
        self.modalities = names
        self.net = MVRNNNet(obs_dims, hidden_dim, shared_dim, private, head_dim, lik_modules)
        self.kl_scale = kl_scale
        if kl_annealing is None:
            kl_annealing = ()
        if isinstance(kl_annealing, (str, bytes)) or not hasattr(kl_annealing, "__iter__"):
            raise TypeError(
                f"kl_annealing: expected a sequence of KL weights or None, got {kl_annealing!r}"
            )
        kl_annealing = tuple(kl_annealing)
        for w in kl_annealing:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
                raise ValueError(
                    f"kl_annealing: expected finite weights >= 0, got {list(kl_annealing)}"
                )
        self.kl_annealing = tuple(float(w) for w in kl_annealing)
        self.vectorized = bool(vectorized)
        self.tbptt = tbptt
        self._site_cache = None
        self._config = dict(
            obs_dims=dict(obs_dims),
            hidden_dim=hidden_dim,
            shared_dim=shared_dim,
            private_dim=private,
            head_dim=head_dim,
            likelihood={m: lik_modules[m].kind for m in names},
            kl_scale=float(kl_scale),
            kl_annealing=list(self.kl_annealing),
            vectorized=self.vectorized,
            tbptt=self.tbptt,
        )

    STOCHASTIC_OBJECTIVE = True  # reparameterized draws of the latents

    # ------------------------------------------------------------------ SVI defaults
    def default_svi_options(self) -> dict:
        """``lr=1e-2`` with KL annealing (measured on tutorial 05's data), else none."""
        return {"lr": 1e-2} if self.kl_annealing else {}

    def svi_stage(self, step: int, num_steps: int) -> tuple[int, int]:
        """KL annealing: stage ``step * S // num_steps`` of the ``S`` weights sets ``kl_scale``."""
        S = len(self.kl_annealing)
        if not S:
            return (0, 1)
        stage = min(step * S // max(num_steps, 1), S - 1)
        self.kl_scale = self.kl_annealing[stage]
        return (stage, S)

    # ------------------------------------------------------------------ properties
    @property
    def kl_scale(self) -> float:
        return self._kl_scale

    @kl_scale.setter
    def kl_scale(self, value) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (0 <= value < math.inf)
        ):
            raise ValueError(f"kl_scale: expected a finite float >= 0, got {value!r}")
        self._kl_scale = float(value)

    @property
    def tbptt(self) -> int | None:
        """Frames per chunk of truncated backpropagation in training (None = off)."""
        return self._tbptt

    @tbptt.setter
    def tbptt(self, value) -> None:
        if value is not None:
            check_int("tbptt", value)
        self._tbptt = value

    @property
    def obs_dims(self) -> dict:
        return dict(self.net.obs_dims)

    @property
    def blocks(self) -> tuple:
        """Latent blocks: ``"shared"`` then the modalities."""
        return ("shared",) + self.modalities

    @property
    def default_program(self) -> str:
        """``"vectorized"``, or ``"sites"`` for a model built with ``vectorized=False``."""
        return "vectorized" if self.vectorized else "sites"

    def default_elbo(self, program: str | None = None) -> ELBO:
        """``Trace_ELBO()`` on the vectorized program (its guide samples nothing, and the factor is
        the analytic-KL ELBO); ``TraceMeanField_ELBO()`` on the ``"sites"`` program."""
        if self.check_program(program) == "vectorized":
            return Trace_ELBO()
        return TraceMeanField_ELBO()

    # ------------------------------------------------------------------ data
    def _check_observations(self, data) -> None:
        """Floating-point observations whose observed frames suit each modality's likelihood."""
        for m in self.modalities:
            if not data.obs[m].is_floating_point():
                raise TypeError(
                    f"data.obs[{m!r}]: expected floating-point observations, got "
                    f"{data.obs[m].dtype}"
                )
            check = getattr(self.net.likelihoods[m], "check_values", None)
            if check is not None:
                check(f"data.obs[{m!r}]", data.obs[m], data.mask[m])

    def _inputs(self, data: MultimodalData, exclude=(), repeat: int = 1):
        """Time-major zero-filled inputs, masks and time mask, each sequence repeated ``repeat``
        times (sequence-major: row ``k * N + n`` is copy ``k`` of sequence ``n``)."""
        xs, masks = {}, {}
        for m in self.modalities:
            x = data.filled(m, 0.0)
            mk = data.mask[m]
            if m in exclude:
                x, mk = torch.zeros_like(x), torch.zeros_like(mk)
            xs[m] = x.transpose(0, 1).repeat(1, repeat, 1)
            masks[m] = mk.transpose(0, 1).repeat(1, repeat)
        tm = data.time_mask.transpose(0, 1).repeat(1, repeat)
        return xs, masks, tm

    @torch.no_grad()
    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Start each decoder's output bias at its modality's observed mean and scale (called by
        :func:`mmpgm.fit` before the first fit)."""
        data = self._checked(data)
        for m in self.modalities:
            obs = data.mask[m]
            if not bool(obs.any()):
                continue
            dec = self.net.decoders[m]
            last = dec.l2 if dec.l2 is not None else dec.l1
            init_bias = getattr(self.net.likelihoods[m], "init_bias", None)
            if init_bias is not None:
                init_bias(last.bias, data.obs[m][obs])

    # ------------------------------------------------------------------ the ELBO in one pass
    def elbo_terms(
        self,
        data: MultimodalData,
        *,
        noise=None,
        latents=None,
        repeat: int = 1,
        exclude=(),
        log_ratio: bool = False,
    ):
        """Run :meth:`mmpgm.nn.vrnn.MVRNNNet.scan` on ``data`` (``noise`` None: fresh draws from the
        global torch RNG, ``"zero"``: the noise-free mean path). Returns the time-major
        :class:`mmpgm.nn.vrnn.ScanResult` and the time mask."""
        xs, masks, tm = self._inputs(data, exclude=exclude, repeat=repeat)
        T, N = tm.shape
        if noise is None and latents is None:
            noise = self.net.draw_noise(T, N)
        elif isinstance(noise, str):
            if noise != "zero":
                raise ValueError(f"noise: expected None, 'zero' or a dict, got {noise!r}")
            noise = None
        return self.net.scan(xs, masks, tm, noise=noise, latents=latents, log_ratio=log_ratio), tm

    def sequence_elbo(
        self, data: MultimodalData, kl_scale: float | None = None, **kwargs
    ) -> torch.Tensor:
        """``(N,)`` single-draw reparameterized ELBO per sequence (KL weighted by ``kl_scale``,
        default :attr:`kl_scale`); differentiable."""
        data = self._checked(data)
        res, _ = self.elbo_terms(data, **kwargs)
        w = self.kl_scale if kl_scale is None else kl_scale
        total = sum(res.reconstruction.values()) - w * sum(res.kl.values())
        return total.sum(0)

    def truncated_sequence_elbo(
        self, data: MultimodalData, chunk_size: int, kl_scale: float | None = None, noise=None
    ) -> torch.Tensor:
        """``(N,)`` the ELBO of :meth:`sequence_elbo` computed ``chunk_size`` frames at a time
        with the GRU states detached between chunks (truncated backpropagation, ``tbptt``).

        The value equals :meth:`sequence_elbo`'s for the same draws (``noise`` as in
        :meth:`elbo_terms`: None draws the whole sequence's noise at once, exactly as the
        unchunked pass does; ``"zero"`` is the mean path); the gradient of a chunk's terms
        stops at the chunk's first frame.
        """
        check_int("chunk_size", chunk_size)
        data = self._checked(data)
        xs, masks, tm = self._inputs(data)
        T, N = tm.shape
        if noise is None:
            noise = self.net.draw_noise(T, N)
        elif noise == "zero":
            noise = None
        else:
            raise ValueError(f"noise: expected None or 'zero', got {noise!r}")
        w = self.kl_scale if kl_scale is None else kl_scale
        x0 = xs[self.modalities[0]]
        state = self.net.initial_state(N, dtype=x0.dtype, device=x0.device)
        total = 0.0
        for start in range(0, T, chunk_size):
            sl = slice(start, start + chunk_size)
            cx = {m: v[sl] for m, v in xs.items()}
            cm = {m: v[sl] for m, v in masks.items()}
            cn = None if noise is None else {b: v[sl] for b, v in noise.items()}
            st, h_prev, (h_s, h_m) = self._scan_from(cx, cm, tm[sl], cn, state)
            res = self.net._finish(st, h_prev, cx, cm, tm[sl], False)
            total = total + (sum(res.reconstruction.values()) - w * sum(res.kl.values())).sum(0)
            state = (h_s.detach(), {m: h.detach() for m, h in h_m.items()})
        return total

    def _scan_from(self, xs, masks, time_mask, noise, state):
        """The recurrence of :meth:`mmpgm.nn.vrnn.MVRNNNet._loop` from the GRU states ``state``
        ``(h_s, {m: h_m})``; returns its stored terms, the private states before each frame and
        the states after the last frame."""
        return self.net._loop(xs, masks, time_mask, noise, None, state=state, return_state=True)

    # ------------------------------------------------------------------ Pyro programs
    def model(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """The generative program ``program`` (``"vectorized"`` or ``"sites"``; default
        :attr:`default_program`; see the class docstring for the two forms).

        ``num_sequences``: full data set size when ``data`` is a minibatch (the plate rescales).
        """
        data = self._checked(data)
        vectorized = self.check_program(program) == "vectorized"
        N = data.num_sequences
        total = N if num_sequences is None else num_sequences
        plate = pyro.plate(
            "sequences", total, subsample=torch.arange(N, device=data.device), dim=-1
        )
        if vectorized:
            with plate:
                elbo = (
                    self.sequence_elbo(data)
                    if self.tbptt is None
                    else self.truncated_sequence_elbo(data, self.tbptt)
                )
                pyro.factor("elbo", elbo)
            return
        if self.tbptt is not None:
            raise ValueError(
                f"tbptt: truncated backpropagation applies to the 'vectorized' program only, got "
                f"tbptt={self.tbptt} with program='sites'; set model.tbptt = None"
            )
        self._site_program(data, plate, guide=False)

    def guide(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """The guide :math:`q(z_t \\mid x_t, h_{t-1})` (eq. 43): nothing to sample in the vectorized
        program (it lives inside the model's factor); per-frame sites in ``"sites"``."""
        if self.check_program(program) == "vectorized":
            return
        data = self._checked(data)
        N = data.num_sequences
        total = N if num_sequences is None else num_sequences
        plate = pyro.plate(
            "sequences", total, subsample=torch.arange(N, device=data.device), dim=-1
        )
        self._site_program(data, plate, guide=True)

    def _site_program(self, data, plate, guide: bool):
        """Per-frame sites. The guide records its inputs, states and draws in ``self._site_cache``;
        the model, replayed against that guide trace on the same data, receives the very same
        latent tensors and reuses the guide's priors and deterministic states instead of
        recomputing them (checked by tensor identity of the data and of every draw, so a model run
        on its own or with other latents recomputes everything)."""
        net, mods = self.net, self.modalities
        key = [data.obs[m] for m in mods] + [data.mask[m] for m in mods]
        cache = self._site_cache
        use = (
            not guide
            and cache is not None
            and len(cache["key"]) == len(key)
            and all(a is b for a, b in zip(cache["key"], key, strict=False))
        )
        if use:
            xs, masks, tm, pre = cache["inputs"]
        else:
            xs, masks, tm = self._inputs(data)
            pre = net.prepare(xs, masks)
        T, N = tm.shape
        h_s, h_m = net.initial_state(N)
        steps = []
        scale = self.kl_scale
        # the latents' log-densities (the KL terms) weighted by kl_scale; Pyro refuses a scale
        # of 0, so kl_scale = 0 masks them instead (the draws still feed the decoders)
        kl_weight = scale if scale > 0 else 1.0
        with plate:
            for t in pyro.markov(range(T)):
                masks_t = {m: masks[m][t] for m in mods}
                if use:
                    c = cache["steps"][t]
                    h_s, h_m = c["h_in"]
                    p_loc, p_scale, gh_s = c["shared"]
                    priv = c["private"]
                else:
                    p_loc, p_scale, q_loc, q_scale, gh_s = net.shared_step(pre, t, h_s, masks_t)
                loc, sc = (q_loc, q_scale) if guide else (p_loc, p_scale)
                with poutine.mask(mask=tm[t] & (scale > 0)), poutine.scale(scale=kl_weight):
                    z_s = pyro.sample(f"z_shared_{t}", dist.Normal(loc, sc).to_event(1))
                gi_z = None
                post = {}
                if not use:
                    gi_z, enc_z = net.shared_z_projection(pre, z_s)
                    priv = {}
                    for m in mods:
                        pl, ps, ql, qs, gh_m = net.private_step(
                            pre, t, m, h_m[m], enc_z[m], masks_t[m]
                        )
                        priv[m], post[m] = (pl, ps, gh_m), (ql, qs)
                zs = {}
                for m in mods:
                    loc, sc = post[m] if guide else priv[m][:2]
                    with poutine.mask(mask=tm[t] & (scale > 0)), poutine.scale(scale=kl_weight):
                        zs[m] = pyro.sample(f"z_{m}_{t}", dist.Normal(loc, sc).to_event(1))
                if not guide:
                    for m in mods:
                        raw = net.decode(m, zs[m], z_s, h_m[m])
                        with poutine.mask(mask=masks_t[m]):
                            pyro.sample(
                                f"obs_{m}_{t}", net.likelihoods[m].distribution(raw), obs=xs[m][t]
                            )
                if use and c["z_shared"] is z_s and all(c["z"][m] is zs[m] for m in mods):
                    h_s_next, new_h = c["h_next"]
                else:
                    if gi_z is None:
                        gi_z, _ = net.shared_z_projection(pre, z_s)
                    use = False
                    h_s_next = net.shared_update(pre, t, gi_z, gh_s, h_s)
                    new_h = {
                        m: net.private_update(pre, t, m, zs[m], priv[m][2], h_m[m]) for m in mods
                    }
                if guide:
                    steps.append(
                        {
                            "h_in": (h_s, h_m),
                            "shared": (p_loc, p_scale, gh_s),
                            "private": priv,
                            "z_shared": z_s,
                            "z": zs,
                            "h_next": (h_s_next, new_h),
                        }
                    )
                h_s, h_m = h_s_next, new_h
        self._site_cache = (
            {"key": key, "inputs": (xs, masks, tm, pre), "steps": steps} if guide else None
        )

    # ------------------------------------------------------------------ results
    def _seeded(self, seed):
        """The guide's draws seeded for the block only (:func:`mmpgm._rng.seeded`)."""
        _validation.check_int("seed", seed, minimum=0, allow_none=True)
        return seeded(seed, self._param().device)

    def posterior(
        self,
        data: MultimodalData,
        *,
        causal: bool = False,
        num_samples: int = 0,
        seed: int | None = None,
        map_path: bool = True,
    ) -> MVRNNPosterior:
        """Guide posterior, per-frame ELBO and its terms (see :class:`MVRNNPosterior`).

        The guide :math:`q(z_t \\mid z_{<t}, x_{\\le t})` is causal by construction (eq. 43), so
        ``causal`` only records the request; ``map_path`` is accepted for :func:`mmpgm.infer`
        (the noise-free mean path is always returned). The ELBO terms are averaged over
        ``max(num_samples, 1)`` draws (``seed`` seeds them, without touching the caller's random
        state).
        """
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise ValueError(f"num_samples: expected a non-negative int, got {num_samples!r}")
        data = self._checked(data)
        N, T = data.num_sequences, data.num_timesteps
        S = max(num_samples, 1)
        with torch.no_grad(), self._seeded(seed):
            res, tm = self.elbo_terms(data, repeat=S)
            mean_res, _ = self.elbo_terms(data, noise="zero")

            def per_seq(x):  # (T, S*N, ...) -> (S, N, T, ...)
                return x.transpose(0, 1).reshape((S, N, T) + x.shape[2:])

            recon = {m: per_seq(r).mean(0) for m, r in res.reconstruction.items()}
            kl = {b: per_seq(k).mean(0) for b, k in res.kl.items()}
            elbo = sum(recon.values()) - sum(kl.values())
            samples = {b: per_seq(z) for b, z in res.latents.items()} if num_samples else None
            mean = {b: v.transpose(0, 1) for b, v in mean_res.q_loc.items()}
            covariance = {
                b: torch.diag_embed(v.transpose(0, 1) ** 2) for b, v in mean_res.q_scale.items()
            }
        return MVRNNPosterior(
            mean=mean,
            covariance=covariance,
            samples=samples,
            elbo=elbo,
            reconstruction=recon,
            kl=kl,
            log_likelihood=elbo.sum(-1),
            lengths=data.lengths,
            mask=dict(data.mask),
            causal=bool(causal),
        )

    def log_likelihood(
        self, data: MultimodalData, num_particles: int = 1, seed: int | None = None
    ) -> torch.Tensor:
        r"""``(N,)`` lower bound on :math:`\log p(x^{(n)})` per sequence (differentiable).

        ``num_particles = 1``: the single-draw ELBO with analytic KL. ``K > 1``: the
        importance-weighted bound :math:`\log \frac1K \sum_k p(x, z_k) / q(z_k)` with
        :math:`z_k \sim q` (tighter in expectation as ``K`` grows, Burda et al. 2016).
        """
        if (
            not isinstance(num_particles, int)
            or isinstance(num_particles, bool)
            or num_particles < 1
        ):
            raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
        data = self._checked(data)
        with self._seeded(seed):
            if num_particles == 1:
                return self.sequence_elbo(data, kl_scale=1.0)
            K, N = num_particles, data.num_sequences
            res, _ = self.elbo_terms(data, repeat=K, log_ratio=True)
            logw = (sum(res.reconstruction.values()) + res.log_ratio).sum(0).reshape(K, N)
            return torch.logsumexp(logw, 0) - math.log(K)

    def impute(
        self, data: MultimodalData, modality: str, num_samples: int = 16, seed: int | None = None
    ) -> MVRNNImputation:
        r"""Generate ``modality`` from the other modalities.

        Every frame of ``modality`` is masked out (observed or not); the guide runs on the others
        (the shared posterior uses only their experts, the private latent of ``modality`` follows
        its prior) and the decoder's mean is averaged over ``num_samples`` draws.
        """
        if modality not in self.modalities:
            raise ValueError(
                f"modality: unknown modality {modality!r}; the model has {list(self.modalities)}"
            )
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
        data = self._checked(data)
        N, T, S = data.num_sequences, data.num_timesteps, num_samples
        lik = self.net.likelihoods[modality]
        with torch.no_grad(), self._seeded(seed):
            res, _ = self.elbo_terms(data, repeat=S, exclude=(modality,))
            raw = res.decoded[modality].transpose(0, 1).reshape(S, N, T, -1)
            means, var = lik.mean(raw), lik.variance(raw)
            mean = means.mean(0)
            variance = var.mean(0) + means.var(0, unbiased=False)
        return MVRNNImputation(mean=mean, covariance=torch.diag_embed(variance), samples=means)

    @torch.no_grad()
    def sample(self, num_sequences: int, num_timesteps: int, seed: int | None = None):
        """Draw sequences from the generative model.

        Returns ``(data, latents)``: a :class:`MultimodalData` and block -> ``(N, T, Z)``.
        """
        check_int("num_sequences", num_sequences)
        check_int("num_timesteps", num_timesteps)
        _validation.check_int("seed", seed, minimum=0, allow_none=True)
        net, mods = self.net, self.modalities
        p = self._param()
        gen = torch.Generator(device=p.device).manual_seed(
            int(torch.randint(2**31, (1,))) if seed is None else seed
        )
        N, T = num_sequences, num_timesteps
        h_s, h_m = net.initial_state(N)
        xs = {m: [] for m in mods}
        zs = {b: [] for b in self.blocks}

        def draw(loc, scale):
            return loc + scale * torch.randn(
                loc.shape, dtype=loc.dtype, device=loc.device, generator=gen
            )

        from ..nn.vrnn import split_loc_scale

        ones = torch.ones(N, dtype=p.dtype, device=p.device)[:, None]
        for _ in range(T):
            z_s = draw(*split_loc_scale(net.prior_shared(h_s)))
            zs["shared"].append(z_s)
            x_t, new_h = {}, {}
            for m in mods:
                Zm = net.private_dims[m]
                loc, scale = split_loc_scale(net.prior_private[m](h_m[m]))
                z_m = draw(loc[..., :Zm], scale[..., :Zm])
                zs[m].append(z_m)
                x_t[m] = net.likelihoods[m].sample(net.decode(m, z_m, z_s, h_m[m]), generator=gen)
                xs[m].append(x_t[m])
                new_h[m] = net.gru_private[m](torch.cat([x_t[m], ones, z_m], -1), h_m[m])
            inp = torch.cat([v for m in mods for v in (x_t[m], ones)] + [z_s], -1)
            h_s = net.gru_shared(inp, h_s)
            h_m = new_h
        data = MultimodalData({m: torch.stack(v, 1) for m, v in xs.items()})
        return data, {b: torch.stack(v, 1) for b, v in zs.items()}

    # ------------------------------------------------------------------ I/O
    def config(self) -> dict:
        """Constructor arguments (with the current ``kl_scale`` when ``kl_annealing`` is off;
        with it, ``kl_scale`` is a function of the fit's step, not configuration);
        ``MVRNN.from_config(model.config())``."""
        cfg = super().config()
        if not self.kl_annealing:
            cfg["kl_scale"] = self.kl_scale
        return cfg
