r"""Target models ("heads") of the gated mixture: how expert ``m``'s outputs explain :math:`y_t`.

One head object is chosen from the constructor's ``head=`` string (:func:`make_head`); the model
then never looks at the string again. Every head has the same five operations:

* ``check(y, inside)``: raise ``ValueError`` on a label tensor it cannot explain;
* ``target(data, dtype, device) -> (y, labelled)``: the label with a valid dummy value at
  unlabelled frames, and the labelled frames ``(N, T)`` bool;
* ``log_prob(outputs, y) -> (N, T, M)``: :math:`\log p(y_t \mid c_t = m)` of every expert;
* ``observed(y) -> (y, bins)`` and ``distribution(outputs, c, bins)``: the observed value and
  the distribution of :math:`y` given the expert index ``c`` in the Pyro program;
* ``predict(outputs, weights) -> (experts, predictive)``: per-expert predictions and their
  gate-weighted mixture.

Shapes: ``outputs (..., M, P)`` holds the ``P = out_dim`` raw outputs of each of the ``M``
experts per frame; ``weights (N, T, M)`` are gate weights (rows sum to 1).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.ops.indexing import Vindex

from ..._validation import check_choice
from ...data import MultimodalData
from .._checks import check_class_labels

__all__ = [
    "HEADS",
    "BernoulliHead",
    "CategoricalHead",
    "NormalHead",
    "RatioMaskHead",
    "make_head",
]


def _softplus_scale(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw) + 1e-3


class _Head:
    """What every head shares: the label name and the empty target of unlabelled data."""

    name: str
    out_dim: int

    def __init__(self, label: str):
        self.label = label

    @property
    def _where(self) -> str:
        return f"data.labels[{self.label!r}]"

    def _target_shape(self, N: int, T: int) -> tuple:
        return (N, T)

    def _target_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def target(
        self, data: MultimodalData, dtype: torch.dtype, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, labelled (N, T) bool)``: ``y`` with a valid dummy value at unlabelled frames
        (zeros and no labelled frame when ``data`` has no label ``self.label``)."""
        N, T = data.num_sequences, data.num_timesteps
        if self.label not in data.labels:
            return (
                torch.zeros(
                    self._target_shape(N, T), dtype=self._target_dtype(dtype), device=device
                ),
                torch.zeros(N, T, dtype=torch.bool, device=device),
            )
        return self._target(data.labels[self.label].to(device), data.time_mask.to(device), dtype)

    def observed(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The value the Pyro program observes and its observed bins (None: scalar target)."""
        return y, None

    def _check_per_frame(self, y: torch.Tensor) -> None:
        if y.dim() != 2:
            raise ValueError(
                f"{self._where}: expected per-frame labels (N, T), got {tuple(y.shape)}"
            )


class _ClassHead(_Head):
    """Integer labels ``0..top`` with ``-1`` = unlabelled."""

    top: int

    def check(self, y: torch.Tensor, inside: torch.Tensor) -> None:
        """``y (N, T)``: -1 or an integer in ``[0, top]`` at every frame ``inside`` the sequence."""
        self._check_per_frame(y)
        check_class_labels(self._where, y, self.top, inside)

    def _target(self, y, inside, dtype):
        lab = (y >= 0) & inside
        return self._cast(torch.where(lab, y, torch.zeros_like(y)), dtype), lab


class BernoulliHead(_ClassHead):
    r"""Detection: :math:`y_t \in \{0, 1\}`, one logit per expert,
    :math:`p(y_t = 1 \mid c_t = m) = \sigma(o_{m,t})`."""

    name, out_dim, top = "bernoulli", 1, 1

    def _cast(self, y, dtype):
        return y.to(dtype)

    def log_prob(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logit = outputs[..., 0]
        return -F.binary_cross_entropy_with_logits(
            logit, y[..., None].expand_as(logit), reduction="none"
        )

    def distribution(self, outputs, c, bins=None):
        return dist.Bernoulli(logits=Vindex(outputs[..., 0])[..., c])

    def predict(self, outputs, weights):
        experts = torch.sigmoid(outputs[..., 0])
        return experts, (weights * experts).sum(-1)


class CategoricalHead(_ClassHead):
    r"""Classes: :math:`y_t \in \{0..K-1\}`, ``K`` logits per expert."""

    name = "categorical"

    def __init__(self, label: str, num_classes: int):
        super().__init__(label)
        self.num_classes = self.out_dim = num_classes
        self.top = num_classes - 1

    def _target_dtype(self, dtype):
        return torch.long

    def _cast(self, y, dtype):
        return y.long()

    def log_prob(self, outputs, y):
        lp = torch.log_softmax(outputs, -1)
        return lp.gather(-1, y[..., None, None].expand(*lp.shape[:-1], 1))[..., 0]

    def distribution(self, outputs, c, bins=None):
        return dist.Categorical(logits=Vindex(outputs)[..., c, :])

    def predict(self, outputs, weights):
        experts = torch.softmax(outputs, -1)
        return experts, (weights[..., None] * experts).sum(-2)


class NormalHead(_Head):
    r"""A real value: :math:`y_t \mid c_t = m \sim \mathcal N(o_{m,t,0},
    \mathrm{softplus}(o_{m,t,1}) + 10^{-3})`; NaN = unlabelled."""

    name, out_dim = "normal", 2

    def check(self, y, inside):
        """``y (N, T)``: finite or NaN."""
        self._check_per_frame(y)
        if not y.is_floating_point():
            y = y.to(torch.float64)
        if bool(torch.isinf(y).any()):
            raise ValueError(f"{self._where}: expected finite values or NaN (unlabelled)")

    def _target(self, y, inside, dtype):
        y = y.to(dtype)
        lab = ~torch.isnan(y)
        return torch.where(lab, y, torch.zeros_like(y)), lab & inside

    @staticmethod
    def params(outputs):
        """``(loc, scale)``, each ``(..., M)``."""
        return outputs[..., 0], _softplus_scale(outputs[..., 1])

    def log_prob(self, outputs, y):
        loc, scale = self.params(outputs)
        return dist.Normal(loc, scale).log_prob(y[..., None])

    def distribution(self, outputs, c, bins=None):
        loc, scale = self.params(outputs)
        return dist.Normal(Vindex(loc)[..., c], Vindex(scale)[..., c])

    def predict(self, outputs, weights):
        experts = self.params(outputs)[0]
        return experts, (weights * experts).sum(-1)


class RatioMaskHead(_Head):
    r"""A mask vector :math:`y_t \in [0, 1]^F` (paper section 4.6): expert ``m`` outputs ``F``
    mask logits and one log-scale, :math:`\log p(y_t \mid c_t = m) = \sum_f \log \mathcal
    N(y_{t,f}; \sigma(o_{m,t,f}), s_{m,t}^2)` over the observed (non-NaN) bins."""

    name = "ratio_mask"

    def __init__(self, label: str, mask_dim: int):
        super().__init__(label)
        self.mask_dim = mask_dim
        self.out_dim = mask_dim + 1

    def check(self, y, inside):
        """``y (N, T, F)``: values in ``[0, 1]`` or NaN (missing bin) inside the sequences."""
        dim = self.mask_dim
        if y.dim() != 3:
            raise ValueError(
                f"{self._where}: expected per-frame masks (N, T, mask_dim={dim}) for "
                f"head='ratio_mask', got {tuple(y.shape)}"
            )
        if y.shape[-1] != dim:
            raise ValueError(
                f"{self._where}: expected mask_dim={dim} bins in the last axis, got "
                f"{y.shape[-1]} (shape {tuple(y.shape)})"
            )
        if not y.is_floating_point():
            y = y.to(torch.float64)
        bad = ~torch.isnan(y) & ~((y >= 0) & (y <= 1)) & inside.to(y.device)[..., None]
        if bool(bad.any()):
            raise ValueError(
                f"{self._where}: expected mask values in [0, 1] or NaN (missing bin), got "
                f"{sorted(set(y[bad].tolist()))[:5]}"
            )

    def _target_shape(self, N, T):
        return (N, T, self.mask_dim)

    def _target(self, y, inside, dtype):
        """NaN kept at missing bins (and on every bin of padding frames); a frame is labelled
        when it has at least one observed bin."""
        nan = torch.full((), float("nan"), dtype=dtype, device=y.device)
        y = torch.where(inside[..., None], y.to(dtype), nan)
        return y, ~torch.isnan(y).all(-1)

    @staticmethod
    def params(outputs):
        """``outputs (..., M, F + 1)`` -> mask means ``sigmoid (..., M, F)`` and scales
        ``(..., M)``."""
        return torch.sigmoid(outputs[..., :-1]), _softplus_scale(outputs[..., -1])

    def observed(self, y):
        """``(y with NaN bins replaced by 0.5, observed bins (bool))``: the dummy keeps the
        log-density and its gradient finite where the bin is then masked out."""
        bins = ~torch.isnan(y)
        return torch.where(bins, y, torch.full((), 0.5, dtype=y.dtype, device=y.device)), bins

    def log_prob(self, outputs, y):
        y, bins = self.observed(y)
        mask, scale = self.params(outputs)  # (N, T, M, F), (N, T, M)
        lp = dist.Normal(mask, scale[..., None]).log_prob(y[..., None, :])
        return torch.where(bins[..., None, :], lp, torch.zeros_like(lp)).sum(-1)

    def distribution(self, outputs, c, bins=None):
        """The ``F`` bins are one event (``to_event(1)``), the unobserved ones masked out."""
        mask, scale = self.params(outputs)
        d = dist.Normal(Vindex(mask)[..., c, :], Vindex(scale)[..., c][..., None])
        return (d if bins is None else d.mask(bins)).to_event(1)

    def predict(self, outputs, weights):
        experts = self.params(outputs)[0]
        return experts, (weights[..., None] * experts).sum(-2)


HEADS = {
    "bernoulli": BernoulliHead,
    "categorical": CategoricalHead,
    "normal": NormalHead,
    "ratio_mask": RatioMaskHead,
}


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def make_head(head: str, label: str, num_classes=None, mask_dim=None) -> _Head:
    """The head object for the constructor's ``head=`` string (checks ``num_classes`` and
    ``mask_dim``, each allowed with its own head only)."""
    check_choice("head", head, tuple(HEADS))
    if head == "categorical":
        if not _is_int(num_classes, 2):
            raise ValueError(
                f"num_classes: expected an int >= 2 for head='categorical', got {num_classes!r}"
            )
    elif num_classes is not None:
        raise ValueError(f"num_classes: only used with head='categorical', got {num_classes!r}")
    if head == "ratio_mask":
        if not _is_int(mask_dim, 1):
            raise ValueError(
                f"mask_dim: expected an int >= 1 (number of frequency bins) for "
                f"head='ratio_mask', got {mask_dim!r}"
            )
    elif mask_dim is not None:
        raise ValueError(f"mask_dim: only used with head='ratio_mask', got {mask_dim!r}")
    if head == "categorical":
        return CategoricalHead(label, num_classes)
    if head == "ratio_mask":
        return RatioMaskHead(label, mask_dim)
    return HEADS[head](label)
