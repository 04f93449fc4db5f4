r"""Gated mixture of modality experts: which sensor to trust, frame by frame (paper section 4,
eq. 13-20, Fig. 3-4).

Each modality ``m`` has an expert :math:`f_m` that reads only its own stream and predicts the
per-frame target :math:`y_t`; a gate reads all streams and gives mixing weights. The chosen
expert :math:`c_t` is a latent variable:

.. math::
    c_t \mid c_{t-1}, x_{\le t} \sim \mathrm{Categorical}(g_t), \qquad
    y_t \mid c_t = m, x \sim p(y_t \mid f_m(x^m_{\le t})),

with :math:`g_t = \mathrm{softmax}(\mathrm{MLP}(x_t))` for ``gate="conditional"`` (eq. 17, the
:math:`c_t` independent), :math:`g_t = \mathrm{softmax}(W h'_t)` with a causal GRU state
:math:`h'_t` over :math:`x_{\le t}` for ``gate="recurrent"`` (eq. 15), and
:math:`g_t = \mathrm{softmax}(B_{c_{t-1},\cdot} + u_t(x_{\le t})_{c_{t-1},\cdot})` for
``gate="markov"`` (eq. 16, a Markov chain over experts whose transition rows the gate network
modulates). The target model ("head") is Bernoulli (detection), Categorical (classes), Normal
(a real value) or a ratio mask (speech separation / enhancement, paper section 4.6): with
``head="ratio_mask"`` the target is a vector of ``F = mask_dim`` mask values
:math:`y_{t,f} \in [0, 1]` per frame (e.g. the ideal ratio mask of
:func:`mmpgm.features.audio.ideal_ratio_mask`), and expert ``m`` outputs ``F`` mask logits
:math:`o_{m,t,f}` and one log-scale :math:`\rho_{m,t}`:

.. math::
    \log p(y_t \mid c_t = m) = \sum_f \log \mathcal N\big(y_{t,f};\,
    \sigma(o_{m,t,f}),\, s_{m,t}^2\big), \qquad s_{m,t} = \mathrm{softplus}(\rho_{m,t}) + 10^{-3},

so the whole mask of a frame comes from one expert (one indicator :math:`c_t` per frame, as for
the other heads). The predicted mask :math:`\sum_m g_{tm} \sigma(o_{m,t})` times the noisy
magnitude spectrogram (:func:`mmpgm.features.audio.apply_ratio_mask`) is the enhanced one.

* **Missing streams**: where ``data.mask[m]`` is False the gate gives expert ``m`` weight
  exactly 0 (renormalized over the observed experts); frames with no observed stream, padding
  frames and unlabelled frames (target -1, NaN for a Normal head, NaN in every bin for a ratio
  mask) carry no evidence. A ratio-mask frame with only *some* NaN bins is labelled: its missing
  bins are summed out (the product over ``f`` runs over the observed bins only).
* **Causality**: experts, gates and the gate chain only read :math:`x_{\le t}`;
  :attr:`MixturePosterior.predictive` is the online :math:`p(y_t \mid x_{\le t})`.
* **Exact marginalization**: :meth:`log_likelihood` sums over :math:`c` in closed form
  (:mod:`mmpgm.ops.mixture`: per-frame ``logsumexp`` or the forward algorithm over the chain);
  the Pyro program :meth:`model` enumerates :math:`c_t` with ``TraceEnum_ELBO`` and gives the
  same value.
* **Co-learning** (eq. 18-20, optional): a penalty
  :math:`\mathcal L_{co} = \sum_t \sum_m \lambda_m \lVert z^*_{m,t} - \hat\zeta_t \rVert^2` on the
  first ``co_learning_units`` hidden units :math:`z^*_m` of each expert, :math:`\hat\zeta_t` their
  mean over the experts observed at frame ``t``. It enters the Pyro program (with the
  expert-fit term below) as ``pyro.factor("penalty", -penalty)``: a *penalty* (Tikhonov regularizer), not part of the
  likelihood; :meth:`log_likelihood` excludes it, :meth:`penalty` returns it.
* **Expert fit** (``expert_weight`` :math:`\beta`, default 1): a second penalty
  :math:`-\beta \sum_t \sum_m \log p(y_t \mid f_m)` over the labelled frames where stream ``m``
  is observed, i.e. every expert is also trained as a predictor on its own. Needed for the gate
  to be readable: for a Bernoulli head :math:`p(y_t \mid x) = \sum_m g_{tm} f_m` only constrains
  the inner product, so without it the experts can co-adapt into non-predictors whose weighted
  sum is right (measured on the seeded synthetic test: mixture accuracy 0.96 with experts at
  0.67 and 0.50 and a flat gate). Set ``expert_weight=0`` for the pure mixture likelihood.
* **Training**: jointly with :func:`mmpgm.fit` (``TraceEnum_ELBO``, or :meth:`fast_elbo`), or
  with the Appendix-A EM (:func:`mmpgm.inference.em_mixture.fit_em_mixture`), or *staged*:
  :meth:`pretrain_experts` on some data, then :meth:`fit_gate` (experts frozen, the same exact
  likelihood with :math:`c_t` summed out) on data the experts never saw (e.g. held-out speakers),
  so the gate learns how far each expert can be trusted on unseen data rather than on the data
  the experts memorized.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule
from pyro.ops.indexing import Vindex
from torch import nn

from ...data import MultimodalData
from .._savable import SavableModel, register
from .._checks import check_obs_dims
from ...results.mixture import MixturePosterior
from ...nn.experts import Expert, check_choice
from ...nn.gates import ConditionalGate, MarkovGate
from ...ops import mixture as ops

__all__ = ["GatedMixture", "CollapsedELBO", "Standardizer"]

GATES = ("conditional", "markov", "recurrent")
HEADS = ("bernoulli", "categorical", "normal", "ratio_mask")


class Standardizer(nn.Module):
    """Per-feature ``(x - loc) / scale`` with buffers set once from data (:meth:`fit_to`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit_to(self, x: torch.Tensor) -> None:
        """``x (F, D)``: observed frames."""
        self.loc.copy_(x.mean(0))
        self.scale.copy_(
            x.std(0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(self.scale)
        )
        self.initialized.fill_(True)

    def forward(self, x):
        return (x - self.loc) / self.scale


class CollapsedELBO:
    """Loss of the collapsed program ``model(data, collapsed=True)`` (``Trace_ELBO``): the same
    value as the enumerated ``TraceEnum_ELBO`` loss, computed by the closed-form ops, faster to
    train with. Pass as ``mmpgm.fit(model, data, elbo=CollapsedELBO())``."""

    def __init__(self):
        self._elbo = Trace_ELBO()

    def loss(self, model, guide, *args, **kwargs):
        return self._elbo.loss(model, guide, *args, collapsed=True, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._elbo.differentiable_loss(model, guide, *args, collapsed=True, **kwargs)


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


@register
class GatedMixture(SavableModel, PyroModule):
    r"""Gated mixture of per-modality experts with an enumerated expert indicator.

    Parameters
    ----------
    obs_dims : Mapping[str, int]
        Modality -> ``obs_dim``; one expert per modality, in this order (the ``M`` axis).
    gate : {"conditional", "markov", "recurrent"}
        Eq. 17, eq. 16, eq. 15 (see the module docstring).
    head : {"bernoulli", "categorical", "normal", "ratio_mask"}
        Target model: ``y_t in {0, 1}``, ``y_t in {0..K-1}``, real ``y_t``, or a mask vector
        ``y_t in [0, 1]^F`` (Normal around the sigmoid of the chosen expert's mask logits, see
        the module docstring).
    num_classes : int, optional
        ``K`` for ``head="categorical"`` (and only there).
    mask_dim : int, optional
        ``F``, the number of frequency bins of the mask, for ``head="ratio_mask"`` (and only
        there). Each expert then outputs ``F + 1`` numbers per frame (mask logits, log-scale).
    target : str
        Name of the per-frame label ``data.labels[target]``: ``(N, T)`` with ``-1`` (NaN for
        ``"normal"``) = unlabelled frame, or ``(N, T, F)`` for ``"ratio_mask"`` with values in
        ``[0, 1]`` and NaN = missing bin (a frame with every bin NaN is unlabelled).
    expert : {"mlp", "recurrent"}
        Feed-forward experts on ``x^m_{t-context..t}`` or a causal GRU over ``x^m_{<=t}``.
    hidden_dim, num_layers, context : expert width, depth and past frames stacked to the input.
    gate_hidden_dim, gate_context : the gate's width and past-frame context (default: ``context``).
    gate_recurrent : bool
        For ``gate="markov"``: the transition network reads a GRU state ``h'_{t}`` (eq. 16's
        :math:`h'_{t-1}` with the current frame) instead of an MLP of ``x_{t-k..t}``.
    stickiness : float
        Markov gate: initial extra logit for staying with the same expert.
    co_learning_units : int
        ``n`` of eq. 18-20 (0 = no co-learning); must be <= ``hidden_dim``.
    co_learning_weight : float or Mapping[str, float]
        :math:`\lambda_m`, per modality or for all.
    expert_weight : float
        :math:`\beta >= 0` of the expert-fit penalty (see the module docstring).

    Examples
    --------
    >>> model = GatedMixture({"audio": 40, "video": 32}, gate="markov")
    >>> model.log_likelihood(data).shape  # doctest: +SKIP
    torch.Size([N])
    """

    def __init__(
        self,
        obs_dims: Mapping[str, int],
        gate: str = "conditional",
        head: str = "bernoulli",
        num_classes: int | None = None,
        target: str = "speech",
        expert: str = "mlp",
        hidden_dim: int = 32,
        num_layers: int = 1,
        context: int = 0,
        gate_hidden_dim: int = 32,
        gate_context: int | None = None,
        gate_recurrent: bool = False,
        stickiness: float = 2.0,
        co_learning_units: int = 0,
        co_learning_weight=1.0,
        expert_weight: float = 1.0,
        mask_dim: int | None = None,
    ):
        super().__init__()
        check_obs_dims(obs_dims)
        check_choice("gate", gate, GATES)
        check_choice("head", head, HEADS)
        check_choice("expert", expert, ("mlp", "recurrent"))
        if not isinstance(target, str):
            raise TypeError(f"target: expected a label name (str), got {target!r}")
        if head == "categorical":
            if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
                raise ValueError(
                    f"num_classes: expected an int >= 2 for head='categorical', got {num_classes!r}"
                )
        elif num_classes is not None:
            raise ValueError(f"num_classes: only used with head='categorical', got {num_classes!r}")
        if head == "ratio_mask":
            if not isinstance(mask_dim, int) or isinstance(mask_dim, bool) or mask_dim < 1:
                raise ValueError(
                    f"mask_dim: expected an int >= 1 (number of frequency bins) for "
                    f"head='ratio_mask', got {mask_dim!r}"
                )
        elif mask_dim is not None:
            raise ValueError(f"mask_dim: only used with head='ratio_mask', got {mask_dim!r}")
        for name, v, lo in [
            ("hidden_dim", hidden_dim, 1),
            ("num_layers", num_layers, 1),
            ("context", context, 0),
            ("gate_hidden_dim", gate_hidden_dim, 1),
            ("co_learning_units", co_learning_units, 0),
        ]:
            _check_int(name, v, lo)
        gate_context = context if gate_context is None else gate_context
        _check_int("gate_context", gate_context, 0)
        if co_learning_units > hidden_dim:
            raise ValueError(
                f"co_learning_units: expected <= hidden_dim={hidden_dim}, got {co_learning_units}"
            )
        names = tuple(obs_dims)
        if isinstance(co_learning_weight, Mapping):
            if set(co_learning_weight) != set(names):
                raise ValueError(
                    f"co_learning_weight: expected a weight for each of {list(names)}, "
                    f"got keys {sorted(co_learning_weight)}"
                )
            lam = {m: float(co_learning_weight[m]) for m in names}
        else:
            lam = {m: float(co_learning_weight) for m in names}
        if any(not v >= 0 for v in lam.values()):
            raise ValueError(f"co_learning_weight: expected non-negative weights, got {lam}")
        if (
            not isinstance(expert_weight, (int, float))
            or isinstance(expert_weight, bool)
            or not expert_weight >= 0
        ):
            raise ValueError(f"expert_weight: expected a non-negative float, got {expert_weight!r}")
        self.expert_weight = float(expert_weight)
        self.modalities = names
        self.gate_kind = gate
        self.head = head
        self.target = target
        self.num_classes = num_classes
        self.mask_dim = mask_dim
        self.co_learning_units = co_learning_units
        out_dim = {
            "bernoulli": 1,
            "categorical": num_classes,
            "normal": 2,
            "ratio_mask": None if mask_dim is None else mask_dim + 1,
        }[head]
        self.standardizers = nn.ModuleDict({m: Standardizer(obs_dims[m]) for m in names})
        self.experts = nn.ModuleDict(
            {
                m: Expert(obs_dims[m], out_dim, hidden_dim, num_layers, expert, context)
                for m in names
            }
        )
        dims = [obs_dims[m] for m in names]
        if gate == "markov":
            self.gate = MarkovGate(dims, gate_hidden_dim, gate_context, gate_recurrent, stickiness)
        else:
            self.gate = ConditionalGate(
                dims, gate_hidden_dim, gate_context, recurrent=gate == "recurrent"
            )
        self.register_buffer("co_learning_lambda", torch.tensor([lam[m] for m in names]))
        self._config = dict(
            obs_dims=dict(obs_dims),
            gate=gate,
            head=head,
            num_classes=num_classes,
            target=target,
            expert=expert,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            context=context,
            gate_hidden_dim=gate_hidden_dim,
            gate_context=gate_context,
            gate_recurrent=gate_recurrent,
            stickiness=stickiness,
            co_learning_units=co_learning_units,
            co_learning_weight=lam,
            expert_weight=float(expert_weight),
            mask_dim=mask_dim,
        )

    # ------------------------------------------------------------------ data
    @property
    def num_experts(self) -> int:
        return len(self.modalities)

    def _param(self):
        return next(iter(self.parameters()))

    def check_data(self, data) -> MultimodalData:
        """Validate ``data`` (modalities, dims, target values) and move it to the model's device/dtype."""
        if not isinstance(data, MultimodalData):
            raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
        data.check_modalities({m: self.standardizers[m].loc.shape[0] for m in self.modalities})
        if self.target in data.labels and self.head == "ratio_mask":
            self._check_mask_target(data)
        elif self.target in data.labels:
            y = data.labels[self.target]
            if y.dim() != 2:
                raise ValueError(
                    f"data.labels[{self.target!r}]: expected per-frame labels (N, T), got {tuple(y.shape)}"
                )
            if self.head == "normal":
                if not y.is_floating_point():
                    y = y.to(torch.float64)
                if bool(torch.isinf(y).any()):
                    raise ValueError(
                        f"data.labels[{self.target!r}]: expected finite values or NaN (unlabelled)"
                    )
            else:
                if y.is_floating_point():
                    if not bool((y == y.round()).all()):
                        raise ValueError(
                            f"data.labels[{self.target!r}]: expected integer class labels, got non-integers"
                        )
                top = 1 if self.head == "bernoulli" else self.num_classes - 1
                inside = data.time_mask
                bad = ((y < -1) | (y > top)) & inside
                if bool(bad.any()):
                    raise ValueError(
                        f"data.labels[{self.target!r}]: expected -1 (unlabelled) or a value in [0, {top}], "
                        f"got {sorted(set(y[bad].tolist()))[:5]}"
                    )
        p = self._param()
        return data.to(device=p.device, dtype=p.dtype)

    def _check_mask_target(self, data) -> None:
        name, dim = f"data.labels[{self.target!r}]", self.mask_dim
        y = data.labels[self.target]
        if y.dim() != 3:
            raise ValueError(
                f"{name}: expected per-frame masks (N, T, mask_dim={dim}) for head='ratio_mask', "
                f"got {tuple(y.shape)}"
            )
        if y.shape[-1] != dim:
            raise ValueError(
                f"{name}: expected mask_dim={dim} bins in the last axis, got {y.shape[-1]} "
                f"(shape {tuple(y.shape)})"
            )
        if not y.is_floating_point():
            y = y.to(torch.float64)
        inside = data.time_mask.to(y.device)[..., None]
        bad = ~torch.isnan(y) & ~((y >= 0) & (y <= 1)) & inside
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected mask values in [0, 1] or NaN (missing bin), got "
                f"{sorted(set(y[bad].tolist()))[:5]}"
            )

    def _inputs(self, data):
        xs = [self.standardizers[m](data.filled(m)) for m in self.modalities]
        masks = [data.mask[m] for m in self.modalities]
        return xs, masks

    def _target(self, data):
        """``(y_filled (N, T), labelled (N, T) bool)``: unlabelled frames hold a valid dummy value.

        ``head="ratio_mask"``: ``y (N, T, F)`` keeps NaN at the missing bins (NaN on every bin of
        padding frames); :meth:`_component` sums them out. A frame is labelled when inside its
        sequence with at least one observed bin."""
        p = self._param()
        N, T = data.num_sequences, data.num_timesteps
        if self.target not in data.labels:
            dtype = p.dtype if self.head != "categorical" else torch.long
            shape = (N, T, self.mask_dim) if self.head == "ratio_mask" else (N, T)
            return torch.zeros(shape, dtype=dtype, device=p.device), torch.zeros(
                N, T, dtype=torch.bool, device=p.device
            )
        y = data.labels[self.target].to(p.device)
        if self.head == "ratio_mask":
            inside = data.time_mask.to(p.device)[..., None]
            nan = torch.full((), float("nan"), dtype=p.dtype, device=p.device)
            y = torch.where(inside, y.to(p.dtype), nan)
            return y, ~torch.isnan(y).all(-1)
        if self.head == "normal":
            y = y.to(p.dtype)
            lab = ~torch.isnan(y)
            return torch.where(lab, y, torch.zeros_like(y)), lab & data.time_mask
        lab = (y >= 0) & data.time_mask
        y = torch.where(lab, y, torch.zeros_like(y))
        return (y.to(p.dtype) if self.head == "bernoulli" else y.long()), lab

    def _forward(self, data):
        """Network outputs: expert outputs ``(N, T, M, out)``, hidden list, availability ``(N, T, M)``,
        gate log-weights (conditional: ``(N, T, M)``; markov: ``(log_init (N, M), log_trans (N, T, M, M))``)."""
        xs, masks = self._inputs(data)
        outs, hiddens = [], []
        for m, x, mask in zip(self.modalities, xs, masks):
            o, h = self.experts[m](x, mask)
            outs.append(o)
            hiddens.append(h)
        out = torch.stack(outs, 2)
        avail = torch.stack(masks, -1)
        if self.gate_kind == "markov":
            init_logits, trans_logits = self.gate(xs, masks)
            log_init = ops.masked_log_weights(init_logits, avail[:, 0])
            log_trans = ops.masked_log_weights(trans_logits, avail[:, :, None, :])
            log_w = (log_init, log_trans)
        else:
            log_w = ops.masked_log_weights(self.gate(xs, masks), avail)
        return out, hiddens, avail, log_w

    def _component(self, out, y):
        """``log p(y_t | c_t = m)`` ``(N, T, M)``."""
        if self.head == "bernoulli":
            logit = out[..., 0]
            return -F.binary_cross_entropy_with_logits(
                logit, y[..., None].expand_as(logit), reduction="none"
            )
        if self.head == "categorical":
            lp = torch.log_softmax(out, -1)
            return lp.gather(-1, y[..., None, None].expand(*lp.shape[:-1], 1))[..., 0]
        if self.head == "ratio_mask":
            y, bins = self._fill_bins(y)
            mask, scale = self._mask_params(out)  # (N, T, M, F), (N, T, M)
            lp = dist.Normal(mask, scale[..., None]).log_prob(y[..., None, :])
            return torch.where(bins[..., None, :], lp, torch.zeros_like(lp)).sum(-1)
        loc, scale = self._normal_params(out)
        return dist.Normal(loc, scale).log_prob(y[..., None])

    @staticmethod
    def _normal_params(out):
        return out[..., 0], F.softplus(out[..., 1]) + 1e-3

    @staticmethod
    def _mask_params(out):
        """Ratio-mask head: ``out (..., M, F + 1)`` -> mask means ``sigmoid (..., M, F)`` and
        scales ``(..., M)``."""
        return torch.sigmoid(out[..., :-1]), F.softplus(out[..., -1]) + 1e-3

    @staticmethod
    def _fill_bins(y):
        """``(y with NaN bins replaced by 0.5, observed bins (bool))``: the dummy keeps the
        log-density and its gradient finite where the bin is then masked out."""
        bins = ~torch.isnan(y)
        return torch.where(bins, y, torch.full((), 0.5, dtype=y.dtype, device=y.device)), bins

    def _evidence_mask(self, data, lab, avail):
        return lab & avail.any(-1)

    # ------------------------------------------------------------------ likelihood and penalty
    def _log_likelihood(self, data, fw):
        out, _, avail, log_w = fw
        y, lab = self._target(data)
        lc = self._component(out, y)
        ev = self._evidence_mask(data, lab, avail)
        if self.gate_kind == "markov":
            return ops.markov_log_likelihood(log_w[0], log_w[1], lc, ev)
        return ops.mixture_log_likelihood(log_w, lc, ev)

    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        r"""Exact, differentiable :math:`\log p(y \mid x)` per sequence ``(N,)`` (labelled frames with
        at least one observed stream; the expert indicator summed out). Excludes the co-learning penalty."""
        data = self.check_data(data)
        return self._log_likelihood(data, self._forward(data))

    def _penalty_frames(self, data, fw):
        """Per-frame penalty ``(N, T)`` (co-learning plus expert fit), or None when both are off."""
        out, hiddens, avail, _ = fw
        total = None
        n = self.co_learning_units
        if n > 0 and bool((self.co_learning_lambda > 0).any()):
            z = torch.stack([h[..., :n] for h in hiddens], 2)  # (N, T, M, n)
            a = avail.to(z.dtype)[..., None]
            zeta = (z * a).sum(2, keepdim=True) / a.sum(2, keepdim=True).clamp_min(1.0)
            dist2 = ((z - zeta) ** 2).sum(-1)  # (N, T, M)
            total = (self.co_learning_lambda.to(z.dtype) * dist2 * avail.to(z.dtype)).sum(-1)
        if self.expert_weight > 0:
            y, lab = self._target(data)
            lc = self._component(out, y)
            w = (avail & lab[..., None]).to(lc.dtype)
            fit = -self.expert_weight * torch.where(w > 0, lc, torch.zeros_like(lc)).sum(-1)
            total = fit if total is None else total + fit
        return total

    def penalty(self, data: MultimodalData) -> torch.Tensor:
        r"""Total penalty per sequence ``(N,)``: co-learning :math:`\mathcal L_{co}` (eq. 20) plus the
        expert-fit term :math:`-\beta \sum \log p(y_t \mid f_m)`; zeros when both are off. The Pyro loss
        is ``-(log_likelihood(data) - penalty(data)).sum()``."""
        data = self.check_data(data)
        fw = self._forward(data)
        pen = self._penalty_frames(data, fw)
        return (
            fw[2].new_zeros(fw[2].shape[0], dtype=self._param().dtype)
            if pen is None
            else pen.sum(-1)
        )

    # ------------------------------------------------------------------ fitting hooks
    @torch.no_grad()
    def init_from_data(self, data: MultimodalData, seed: int = 0, force: bool = False) -> None:
        """Set the input standardization (per-feature mean and std of the observed frames) of every
        stream not standardized yet (all with ``force``). Network weights are left alone: seed
        ``torch`` before constructing the model for reproducible weights. Called by :func:`mmpgm.fit`."""
        data = self.check_data(data)
        for m in self.modalities:
            s = self.standardizers[m]
            if force or not bool(s.initialized):
                obs = data.mask[m]
                if not bool(obs.any()):
                    raise ValueError(f"data.obs[{m!r}]: no observed frame to standardize from")
                s.fit_to(data.obs[m][obs])

    def default_elbo(self):
        """``TraceEnum_ELBO`` over the enumerated expert indicators."""
        return TraceEnum_ELBO(max_plate_nesting=1 if self.gate_kind == "markov" else 2)

    def fast_elbo(self) -> CollapsedELBO:
        """Loss of the collapsed program (same value as :meth:`default_elbo`'s, faster)."""
        return CollapsedELBO()

    def pretrain_experts(
        self,
        data: MultimodalData,
        *,
        num_steps: int = 200,
        lr: float = 0.01,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list:
        r"""Supervised pre-training of each expert alone on its observed, labelled frames:
        Adam on :math:`-\sum_m \sum_t \log p(y_t \mid f_m) + \mathcal L_{co}` per frame. Returns the losses."""
        _check_int("num_steps", num_steps, 1)
        data = self.check_data(data)
        self.init_from_data(data)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        params = [p for m in self.modalities for p in self.experts[m].parameters()]
        optim = torch.optim.Adam(params, lr=lr)
        losses = []
        N = data.num_sequences
        for _ in range(num_steps):
            total = 0.0
            batches = (
                [data]
                if batch_size is None or batch_size >= N
                else data.batches(batch_size, True, gen)
            )
            for b in batches:
                optim.zero_grad()
                fw = self._forward(b)
                out, hiddens, avail, _ = fw
                y, lab = self._target(b)
                w = (avail & lab[..., None]).to(out.dtype)
                loss = -(self._component(out, y) * w).sum()
                if self.co_learning_units:
                    saved, self.expert_weight = self.expert_weight, 0.0
                    try:
                        pen = self._penalty_frames(b, fw)
                    finally:
                        self.expert_weight = saved
                    if pen is not None:
                        loss = loss + pen.sum()
                loss = loss / w.sum().clamp_min(1.0)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optim.step()
                total += loss.item() * b.num_sequences / N
            losses.append(total)
        return losses

    def fit_gate(
        self,
        data: MultimodalData,
        *,
        num_steps: int = 100,
        lr: float = 0.01,
        seed: int = 0,
        batch_size: int | None = None,
        method: str = "svi",
        m_steps: int = 5,
    ) -> list:
        r"""Staged training, second stage: fit only the gate, experts frozen, on the exact mixture
        log-likelihood :math:`\log p(y \mid x) = \sum_t \log \sum_m g_{tm} p(y_t \mid f_m)`
        (:math:`c_t` summed out; the penalties do not depend on the gate). Meant for data the
        experts were *not* trained on (e.g. held-out speakers), so the gate learns how far each
        expert can be trusted on unseen data rather than on the data it memorized.

        ``method="svi"``: ``num_steps`` Adam epochs on the collapsed loss; ``"em"``: ``num_steps``
        Appendix-A EM iterations of ``m_steps`` gradient steps each
        (:func:`mmpgm.inference.em_mixture.fit_em_mixture`, conditional and Markov gates).
        Returns the per-frame losses."""
        _check_int("num_steps", num_steps, 1)
        check_choice("method", method, ("svi", "em"))
        if method == "em":
            from ...inference.em_mixture import fit_em_mixture

            return fit_em_mixture(
                self,
                data,
                num_iters=num_steps,
                m_steps=m_steps,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                gate_only=True,
            )[0]
        from ...inference.cross_fit import fit_gate_to_scores

        data = self.check_data(data)
        self.init_from_data(data)
        scores, evidence = self.expert_scores(data)
        return fit_gate_to_scores(
            self,
            data,
            scores,
            evidence,
            num_steps=num_steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
        )

    @torch.no_grad()
    def expert_scores(self, data: MultimodalData):
        r"""``(scores (N, T, M), evidence (N, T) bool)``: :math:`\log p(y_t \mid f_m)` of every
        expert on every frame (no gradient), and the labelled frames with an observed stream.
        The experts are the only networks run; the gate's fit against these scores is
        :func:`mmpgm.inference.cross_fit.fit_gate_to_scores`."""
        data = self.check_data(data)
        xs, masks = self._inputs(data)
        out = torch.stack(
            [self.experts[m](x, k)[0] for m, x, k in zip(self.modalities, xs, masks)], 2
        )
        y, lab = self._target(data)
        return self._component(out, y), self._evidence_mask(data, lab, torch.stack(masks, -1))

    # ------------------------------------------------------------------ Pyro programs
    def model(
        self, data: MultimodalData, *, num_sequences: int | None = None, collapsed: bool = False
    ):
        """The generative program of the target given the inputs.

        The expert indicators are sample sites ``expert`` (conditional / recurrent gate: one
        vectorized site in the ``sequences`` (dim -2) and ``time`` (dim -1) plates) or
        ``expert_{t}`` (Markov gate: per-step sites inside ``pyro.markov`` in the ``sequences``
        plate, dim -1), enumerated in parallel by :meth:`default_elbo`; targets ``y`` / ``y_{t}``
        are observed under ``poutine.mask`` (unlabelled, padded or unobserved frames). For
        ``head="ratio_mask"`` the ``F`` bins of ``y`` are one event (``Normal(..).to_event(1)``),
        its missing (NaN) bins filled with a dummy value and masked out. The
        penalties (co-learning, expert fit) enter as ``pyro.factor("penalty", -penalty)``. With
        ``collapsed=True`` the indicators are summed out by :meth:`log_likelihood` instead (one
        ``pyro.factor`` per sequence; same value). ``num_sequences``: full data size for minibatches.
        """
        data = self.check_data(data)
        N, T = data.num_sequences, data.num_timesteps
        total = N if num_sequences is None else num_sequences
        fw = self._forward(data)
        out, hiddens, avail, log_w = fw
        pen = self._penalty_frames(data, fw)
        markov = self.gate_kind == "markov"
        seq = pyro.plate(
            "sequences",
            total,
            subsample=torch.arange(N, device=data.device),
            dim=-1 if (markov or collapsed) else -2,
        )
        if collapsed:
            with seq:
                ll = self._log_likelihood(data, fw)
                pyro.factor("log_likelihood", ll if pen is None else ll - pen.sum(-1))
            return
        y, lab = self._target(data)
        ev = self._evidence_mask(data, lab, avail)
        bins = None
        if self.head == "ratio_mask":
            y, bins = self._fill_bins(y)
        enum = {"enumerate": "parallel"}
        if not markov:
            with seq, pyro.plate("time", T, dim=-1):
                c = pyro.sample("expert", dist.Categorical(logits=log_w), infer=enum)
                with poutine.mask(mask=ev):
                    pyro.sample("y", self._y_dist(out, c, bins), obs=y)
                if pen is not None:
                    pyro.factor("penalty", -pen)
            return
        log_init, log_trans = log_w
        with seq:
            if pen is not None:
                pyro.factor("penalty", -pen.sum(-1))
            c = None
            for t in pyro.markov(range(T)):
                logits = log_init if t == 0 else Vindex(log_trans[:, t])[..., c, :]
                c = pyro.sample(f"expert_{t}", dist.Categorical(logits=logits), infer=enum)
                with poutine.mask(mask=ev[:, t]):
                    pyro.sample(
                        f"y_{t}",
                        self._y_dist(out[:, t], c, None if bins is None else bins[:, t]),
                        obs=y[:, t],
                    )

    def _y_dist(self, out, c, bins=None):
        """Distribution of ``y`` given the expert index ``c``; ``out (..., M, out_dim)``.
        Ratio mask: ``bins (..., F)`` observed bins; the ``F`` axis is an event dimension."""
        if self.head == "bernoulli":
            return dist.Bernoulli(logits=Vindex(out[..., 0])[..., c])
        if self.head == "categorical":
            return dist.Categorical(logits=Vindex(out)[..., c, :])
        if self.head == "ratio_mask":
            mask, scale = self._mask_params(out)
            d = dist.Normal(Vindex(mask)[..., c, :], Vindex(scale)[..., c][..., None])
            return (d if bins is None else d.mask(bins)).to_event(1)
        loc, scale = self._normal_params(out)
        return dist.Normal(Vindex(loc)[..., c], Vindex(scale)[..., c])

    def guide(self, data: MultimodalData, **kwargs):
        """Point-estimate guide: network weights are parameters; indicators are enumerated in the model."""

    # ------------------------------------------------------------------ posteriors
    def posterior(
        self,
        data: MultimodalData,
        *,
        causal: bool = False,
        num_samples: int = 0,
        seed: int | None = None,
        map_path: bool = True,
    ) -> MixturePosterior:
        """Gate weights, responsibilities, expert-wise and causal mixture predictions (see
        :class:`mmpgm.results.MixturePosterior`)."""
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise ValueError(f"num_samples: expected a non-negative int, got {num_samples!r}")
        data = self.check_data(data)
        with torch.no_grad():
            out, _, avail, log_w = self._forward(data)
            y, lab = self._target(data)
            lc = self._component(out, y)
            ev = self._evidence_mask(data, lab, avail)
            gen = None
            if seed is not None:
                gen = torch.Generator(device=out.device).manual_seed(seed)
            samples = map_ = None
            if self.gate_kind == "markov":
                log_init, log_trans = log_w
                weights = ops.markov_prior_marginals(log_init, log_trans)
                fwd = ops.markov_forward(log_init, log_trans, lc, ev)
                ll = fwd.log_likelihood
                resp = fwd.filtered if causal else ops.markov_smooth(log_init, log_trans, lc, ev)
                if map_path:
                    map_ = ops.markov_viterbi(log_init, log_trans, lc, ev)
                if num_samples:
                    samples = ops.markov_sample(
                        log_init, log_trans, lc, ev, num_samples, generator=gen
                    )
            else:
                weights = log_w.exp()
                ll = ops.mixture_log_likelihood(log_w, lc, ev)
                resp = ops.mixture_responsibilities(log_w, lc, ev)
                if map_path:
                    map_ = resp.argmax(-1)
                if num_samples:
                    N, T, M = resp.shape
                    draws = torch.multinomial(
                        resp.reshape(-1, M), num_samples, replacement=True, generator=gen
                    )
                    samples = draws.T.reshape(num_samples, N, T)
            if self.head == "bernoulli":
                experts = torch.sigmoid(out[..., 0])
                pred = (weights * experts).sum(-1)
            elif self.head == "categorical":
                experts = torch.softmax(out, -1)
                pred = (weights[..., None] * experts).sum(-2)
            elif self.head == "ratio_mask":
                experts = self._mask_params(out)[0]
                pred = (weights[..., None] * experts).sum(-2)
            else:
                experts = self._normal_params(out)[0]
                pred = (weights * experts).sum(-1)
        return MixturePosterior(
            predictive=pred,
            gate_weights=weights,
            responsibilities=resp,
            expert_predictions=experts,
            map=map_,
            samples=samples,
            log_likelihood=ll,
            lengths=data.lengths,
            causal=causal,
            modalities=self.modalities,
            head=self.head,
        )
