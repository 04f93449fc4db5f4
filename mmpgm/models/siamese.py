r"""Siamese embeddings (paper section 6.2-6.4): :class:`SiameseEncoder` and :class:`KNNMemory`.

A tower :math:`G_W` (any ``nn.Module`` ``(..., D) -> (..., E)``; the package's are in
:mod:`mmpgm.nn.siamese`) maps an item to an embedding; two items are compared by
:math:`D_W(x_1, x_2) = \lVert G_W(x_1) - G_W(x_2) \rVert` (eq. 51) and the tower is trained on
pairs drawn from class labels with the contrastive loss of eq. 52-53
(:func:`mmpgm.ops.contrastive_loss`: :math:`D^2` for a same-class pair,
:math:`\max(0, m - D)^2` for a different-class pair).

Items are frames: ``data.obs[modality][n, t]`` of shape ``(D,)``; labels are
``data.labels[label]``, per frame ``(N, T)`` or per sequence ``(N,)`` (broadcast to the
sequence's frames), ``-1`` = unlabelled. Context windows are the user's business (stack them
into the frame vector).

Why a few lines of torch and not pytorch-metric-learning (not a dependency of mmpgm): the loss
of eq. 52 is two lines (:mod:`mmpgm.ops.contrastive`), while that library's ``ContrastiveLoss``
is by default another loss (unsquared hinges ``relu(d - pos_margin)``, ``relu(neg_margin - d)``
averaged over the non-zero pairs only, so its value and gradient scale change with the number
of active pairs); its miners pair the items of one batch, whereas ours must read mmpgm's
per-frame or per-sequence labels with masks and padding; and the training loop must be
:func:`mmpgm.fit`'s (progress, early stopping, checkpoint/resume, seeding). It would add a
dependency and a conversion for nothing the torch lines lack.

Incremental use (section 6.2): a trained encoder embeds new items by a forward pass
(:meth:`SiameseEncoder.embed`), and :class:`KNNMemory` classifies them by their nearest stored
embeddings (or class centres), growing as labelled items arrive (:meth:`KNNMemory.add`).
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import torch
from torch import nn

from .._validation import as_real_tensor, check_bool, check_float, check_int
from ..data import MultimodalData
from ..nn.siamese import build_tower, tower_classes
from ..nn.standardize import Standardizer
from ..observations.embedding import register_encoder
from ..ops.contrastive import contrastive_loss, pair_distance, sample_negatives, sample_pairs
from ._base import MultimodalModel
from ._savable import register

__all__ = ["KNNMemory", "SiameseEmbedding", "SiameseEncoder"]

#: candidates per negative pair from which hard-negative mining keeps the closest
NUM_HARD_CANDIDATES = 8


class SiameseEmbedding(NamedTuple):
    r"""What :func:`mmpgm.infer` returns for a :class:`SiameseEncoder`.

    Attributes
    ----------
    embeddings : Tensor ``(N, T, E)``
        :math:`G_W(x_{nt})` of every frame (zeros where the modality is not observed).
    mask : Tensor ``(N, T)`` bool
        Observed frames of the encoder's modality.
    lengths : Tensor ``(N,)``
    """

    embeddings: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def _tower_config(tower: nn.Module) -> dict:
    cfg = getattr(tower, "config", None)
    if callable(cfg) and type(tower).__name__ in tower_classes():
        return cfg()
    return {"class": "user", "type": f"{type(tower).__module__}.{type(tower).__qualname__}"}


@register
class SiameseEncoder(MultimodalModel):
    r"""Siamese encoder trained with the contrastive loss (eq. 51-53) on pairs built from labels.

    Parameters
    ----------
    tower : nn.Module
        :math:`G_W`: ``(..., D) -> (..., E)`` (e.g. :class:`mmpgm.nn.siamese.MLPTower`). Inputs
        are standardized per feature first (buffers set from the training frames by
        :meth:`init_from_data`, which :func:`mmpgm.fit` runs on the first fit).
    modality : str
        The modality whose frames are the items.
    label : str
        Name of the class label in ``data.labels`` (per frame ``(N, T)`` or per sequence
        ``(N,)``; ``-1`` = unlabelled).
    margin : float
        :math:`m` of :math:`L_n = \max(0, m - D)^2`.
    num_pairs : int
        Pairs drawn from the labelled frames of each (mini)batch per step.
    positive_fraction : float
        Share of same-class pairs (:func:`mmpgm.ops.sample_pairs`).
    hard_negatives : bool
        Hard-negative mining: every negative pair keeps, of ``NUM_HARD_CANDIDATES`` (8)
        candidate frames of other classes, the one closest to its anchor under the current
        embedding (chosen without gradient).
    balance : {"class", "frame"}
        How pairs are drawn (:func:`mmpgm.ops.sample_pairs`): ``"class"`` draws classes
        uniformly (rare classes as often as common ones).
    input_dim, embed_dim : int, optional
        :math:`D` and :math:`E`; default the tower's ``input_dim`` / ``embed_dim`` attributes
        (``embed_dim`` is otherwise found by one forward pass).

    Notes
    -----
    The Pyro program ``"contrastive"`` adds ``pyro.factor("contrastive", -sum_pairs L)``
    with no latent sites and a guide that samples nothing, so ``Trace_ELBO`` is exactly the
    summed contrastive loss of the step's pairs and ``mmpgm.fit(encoder, data, ...)`` minimizes
    it (the loss reported per step is that sum divided by the observed frames of the batch
    set). Pairs are redrawn every step from torch's global generator, which :func:`mmpgm.fit`
    seeds, so fits are reproducible and resume exactly from checkpoints.

    Saving: the package's towers are rebuilt from the config; for any other tower,
    ``mmpgm.load_model(path, tower=MyTower(...))`` passes the (untrained) tower again and the
    saved weights are loaded into it.

    Examples
    --------
    >>> from mmpgm.nn.siamese import MLPTower
    >>> encoder = SiameseEncoder(MLPTower(8, (32,), 4), modality="x", label="class")
    >>> encoder.embed(torch.zeros(5, 8)).shape
    torch.Size([5, 4])
    """

    PROGRAMS = ("contrastive",)
    STOCHASTIC_OBJECTIVE = True

    def __init__(
        self,
        tower: nn.Module | dict,
        *,
        modality: str = "x",
        label: str = "class",
        margin: float = 1.0,
        num_pairs: int = 256,
        positive_fraction: float = 0.5,
        hard_negatives: bool = False,
        balance: str = "class",
        input_dim: int | None = None,
        embed_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(tower, dict):
            if tower.get("class") == "user":
                raise ValueError(
                    f"tower: this encoder was saved with a user tower ({tower.get('type')}); pass "
                    "the tower again: mmpgm.load_model(path, tower=YourTower(...))"
                )
            tower = build_tower(tower)
        if not isinstance(tower, nn.Module):
            raise TypeError(f"tower: expected a torch.nn.Module, got {type(tower).__name__}")
        for name, v in (("modality", modality), ("label", label)):
            if not isinstance(v, str) or not v:
                raise TypeError(f"{name}: expected a non-empty str, got {v!r}")
        margin = check_float("margin", margin, positive=True)
        check_int("num_pairs", num_pairs)
        positive_fraction = check_float("positive_fraction", positive_fraction, minimum=0.0)
        if positive_fraction > 1:
            raise ValueError(
                f"positive_fraction: expected a float in [0, 1], got {positive_fraction!r}"
            )
        check_bool("hard_negatives", hard_negatives)
        if balance not in ("class", "frame"):
            raise ValueError(f"balance: expected one of ['class', 'frame'], got {balance!r}")
        input_dim = getattr(tower, "input_dim", None) if input_dim is None else input_dim
        if input_dim is None:
            raise ValueError(
                "input_dim: expected the item size D (the tower has no input_dim attribute), "
                "got None"
            )
        check_int("input_dim", input_dim)
        self.tower = tower
        self.standardizer = Standardizer(input_dim)
        if embed_dim is None:
            embed_dim = getattr(tower, "embed_dim", None)
        if embed_dim is None:
            p = next(iter(tower.parameters()), None)
            kw = {} if p is None else dict(dtype=p.dtype, device=p.device)
            with torch.no_grad():
                embed_dim = int(tower(torch.zeros(1, input_dim, **kw)).shape[-1])
        check_int("embed_dim", embed_dim)
        self.modality = modality
        self.label = label
        self.margin = margin
        self.num_pairs = num_pairs
        self.positive_fraction = positive_fraction
        self.hard_negatives = bool(hard_negatives)
        self.balance = balance
        self._input_dim = int(input_dim)
        self._embed_dim = int(embed_dim)
        self._config = dict(
            tower=_tower_config(tower),
            modality=modality,
            label=label,
            margin=margin,
            num_pairs=num_pairs,
            positive_fraction=positive_fraction,
            hard_negatives=self.hard_negatives,
            balance=balance,
            input_dim=self._input_dim,
            embed_dim=self._embed_dim,
        )

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    @property
    def rebuildable(self) -> bool:
        """Whether :meth:`from_config` rebuilds the encoder (a package tower) or the tower must
        be passed again (a user's tower)."""
        return self._config["tower"].get("class") != "user"

    # ------------------------------------------------------------------ structure
    @property
    def input_dim(self) -> int:
        """:math:`D`, size of one item."""
        return self._input_dim

    @property
    def embed_dim(self) -> int:
        """:math:`E`, size of an embedding."""
        return self._embed_dim

    @property
    def data_dims(self) -> dict:
        return {self.modality: self.input_dim}

    def _param(self) -> torch.Tensor:
        p = next(iter(self.tower.parameters()), None)
        return p if p is not None else self.standardizer.loc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`G_W(x)` with gradient: ``(..., D) -> (..., E)`` (what
        :class:`~mmpgm.observations.EmbeddingObservation` calls)."""
        return self.tower(self.standardizer(x))

    def embed(self, x: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Embed items ``x (..., D)`` -> ``(..., E)`` in the encoder's dtype and device.

        ``grad=False`` (default): under ``torch.no_grad()`` (a forward pass for new points,
        section 6.2); ``grad=True`` keeps the graph (fine-tuning through the encoder).

        Items are embedded independently. An item holding a NaN is a missing one (as in
        :class:`~mmpgm.MultimodalData`): its embedding is all NaN, as in :meth:`embed_data`; the
        other items are unaffected. An infinite value is not a missing one and raises
        ``ValueError``.
        """
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.dim() < 1 or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x: expected items of size {self.input_dim} (..., input_dim), got {tuple(x.shape)}"
            )
        if x.is_floating_point() and bool(x.isinf().any()):
            raise ValueError(
                f"x: expected finite values (NaN marks a missing item), got "
                f"{int(x.isinf().sum())} infinite value(s)"
            )
        p = self._param()
        x = x.to(dtype=p.dtype, device=p.device)
        if grad:
            return self(x)
        with torch.no_grad():
            return self(x)

    def embed_data(self, data: MultimodalData, *, name: str | None = None) -> MultimodalData:
        """``data`` with the encoder's modality replaced by its embeddings ``(N, T, E)`` (NaN at
        frames that are not observed; the other modalities, masks, lengths and labels kept),
        under the name ``name`` (default the modality's own name).

        This is how a frozen encoder feeds a model that takes no embedding emission (e.g. a
        :class:`~mmpgm.MultimodalLDS` with ``obs_dims[name] = embed_dim``): its likelihood is
        then a feature likelihood of the embeddings, as with
        :class:`~mmpgm.observations.EmbeddingObservation`.
        """
        data = self._checked(data)
        m = self.modality
        name = m if name is None else name
        if not isinstance(name, str) or not name or (name != m and name in data.obs):
            raise ValueError(
                f"name: expected a new modality name (or None), got {name!r}; data have "
                f"{sorted(data.obs)}"
            )
        z = self.embed(data.filled(m))
        z = torch.where(data.mask[m][..., None], z, torch.full_like(z, float("nan")))
        obs = {k: (z if k == m else v) for k, v in data.obs.items()}
        obs = {(name if k == m else k): v for k, v in obs.items()}
        mask = {(name if k == m else k): v for k, v in data.mask.items()}
        return MultimodalData(
            obs, lengths=data.lengths, mask=mask, labels=dict(data.labels), meta=dict(data.meta)
        )

    # ------------------------------------------------------------------ data
    def check_data(self, data) -> MultimodalData:
        """As :meth:`MultimodalModel.check_data`, but only the encoder's modality is checked
        (other modalities may be present and are ignored), and ``labels[label]`` where given."""
        if not isinstance(data, MultimodalData):
            raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
        m = self.modality
        if m not in data.obs:
            raise ValueError(
                f"data: the encoder reads modality {m!r}, which the data lack (data have "
                f"{sorted(data.obs)})"
            )
        if data.obs[m].shape[-1] != self.input_dim:
            raise ValueError(
                f"data.obs[{m!r}]: the encoder expects obs_dim {self.input_dim}, got "
                f"{data.obs[m].shape[-1]}"
            )
        p = self._param()
        data = data.to(device=p.device, dtype=p.dtype)
        self._check_labels(data)
        return self._mark_checked(data)

    def _check_labels(self, data: MultimodalData) -> None:
        if self.label not in data.labels:
            return
        lab = data.labels[self.label]
        N, T = data.num_sequences, data.num_timesteps
        if tuple(lab.shape) not in ((N,), (N, T)):
            raise ValueError(
                f"data.labels[{self.label!r}]: expected class labels per sequence ({N},) or per "
                f"frame ({N}, {T}), got {tuple(lab.shape)}"
            )
        ok = (
            torch.isfinite(lab)
            if lab.is_floating_point()
            else torch.ones_like(lab, dtype=torch.bool)
        )
        bad = ok & (lab != lab.round()) if lab.is_floating_point() else torch.zeros_like(ok)
        if bool(bad.any()):
            raise ValueError(
                f"data.labels[{self.label!r}]: expected integer classes (-1 = unlabelled), got "
                f"values {lab[bad][:5].tolist()}"
            )

    def frame_labels(self, data: MultimodalData) -> torch.Tensor:
        """``(N, T)`` int64 class of every frame: ``-1`` where unlabelled, the modality is not
        observed, or the frame is padding."""
        data = self._checked(data)
        N, T = data.num_sequences, data.num_timesteps
        if self.label not in data.labels:
            return torch.full((N, T), -1, dtype=torch.long, device=data.device)
        lab = data.labels[self.label].to(data.device)
        if lab.is_floating_point():
            lab = torch.where(torch.isfinite(lab), lab, torch.full_like(lab, -1.0))
        lab = lab.long()
        if lab.dim() == 1:
            lab = lab[:, None].expand(N, T)
        lab = torch.where(lab >= 0, lab, torch.full_like(lab, -1))
        return torch.where(data.mask[self.modality], lab, torch.full_like(lab, -1))

    def check_training_data(self, data: MultimodalData) -> None:
        """``labels[label]`` must exist and give at least two labelled observed frames and two
        classes (else no negative pair exists and the loss is minimized by a constant map)."""
        if self.label not in data.labels:
            raise ValueError(
                f"data.labels: the encoder learns from the label {self.label!r}, which the data "
                f"do not have (labels: {sorted(data.labels)})"
            )
        lab = self.frame_labels(data)
        classes = torch.unique(lab[lab >= 0])
        if classes.numel() < 2:
            raise ValueError(
                f"data.labels[{self.label!r}]: expected at least two classes on observed frames, "
                f"got {classes.tolist()}"
            )

    def init_from_data(self, data: MultimodalData, seed: int = 0) -> None:
        """Set the input standardization to the mean and std of the observed frames."""
        data = self._checked(data)
        self.standardizer.fit_to(data.obs[self.modality][data.mask[self.modality]])

    # ------------------------------------------------------------------ loss
    def _pairs(self, lab: torch.Tensor, x: torch.Tensor, num_pairs: int, generator=None):
        """Draw pairs of labelled frames (``lab (F,)``, items ``x (F, D)``) and embed their
        members (with gradient): ``(z1 (P, E), z2 (P, E), same (P,))``."""
        i, j, same = sample_pairs(
            lab,
            num_pairs,
            positive_fraction=self.positive_fraction,
            balance=self.balance,
            generator=generator,
        )
        if self.hard_negatives and bool((~same).any()):
            neg = torch.nonzero(~same).flatten()
            cand = sample_negatives(lab, i[neg], NUM_HARD_CANDIDATES, generator=generator)
            with torch.no_grad():
                za = self(x[i[neg]])
                zc = self(x[cand])  # (P_n, C, E)
                closest = pair_distance(za[:, None, :], zc).argmin(-1)
            j = j.clone()
            j[neg] = cand[torch.arange(neg.numel(), device=cand.device), closest]
        idx = torch.cat([i, j])
        uniq, inv = torch.unique(idx, return_inverse=True)
        z = self(x[uniq])
        P = i.numel()
        return z[inv[:P]], z[inv[P:]], same

    def pair_loss(
        self, data: MultimodalData, *, num_pairs: int | None = None, seed: int | None = None
    ):
        """Contrastive loss of pairs drawn from the labelled frames of ``data``.

        Returns ``(loss (P,), same (P,))``: the per-pair loss (eq. 52, with gradient) and which
        pairs are positive. ``num_pairs`` defaults to the encoder's; ``seed`` seeds a private
        generator (default torch's global one).
        """
        data = self._checked(data)
        check_int("num_pairs", num_pairs, allow_none=True)
        lab = self.frame_labels(data).reshape(-1)
        x = data.obs[self.modality].reshape(-1, self.input_dim)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=lab.device).manual_seed(seed)
        z1, z2, same = self._pairs(lab, x, num_pairs or self.num_pairs, gen)
        return contrastive_loss(z1, z2, same, margin=self.margin), same

    def model(
        self, data: MultimodalData, *, program: str | None = None, num_sequences: int | None = None
    ):
        """Program ``"contrastive"``: ``pyro.factor`` of minus the summed contrastive loss of
        ``num_pairs`` pairs drawn from the labelled frames of ``data`` (a batch with fewer than
        two labelled frames contributes 0). ``num_sequences`` is unused: the objective is the
        loss of the step's pairs whatever the batch size."""
        self.check_program(program)
        loss, _ = self.pair_loss(data)
        if loss.numel() == 0:  # nothing to compare in this batch: a zero that keeps a graph
            total = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        else:
            total = loss.sum()
        pyro.factor("contrastive", -total)

    # ------------------------------------------------------------------ results
    def posterior(self, data, *, causal=False, num_samples=0, seed=None, map_path=True):
        """The embeddings of every observed frame (:class:`SiameseEmbedding`); the encoder has
        no latent variables, so ``causal``, ``num_samples``, ``map_path`` change nothing (an
        embedding of a frame uses that frame only: it is causal)."""
        data = self._checked(data)
        m = self.modality
        z = self.embed(data.filled(m))
        z = torch.where(data.mask[m][..., None], z, torch.zeros_like(z))
        return SiameseEmbedding(embeddings=z, mask=data.mask[m], lengths=data.lengths)

    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        """Not defined: the encoder is trained by a contrastive loss, not a density of the data.

        Raises ``NotImplementedError`` (use :meth:`pair_loss` for the training objective, or an
        :class:`~mmpgm.observations.EmbeddingObservation` in an HMM for a likelihood)."""
        raise NotImplementedError(
            "SiameseEncoder.log_likelihood: the encoder is trained by a contrastive loss and "
            "defines no density of the data; use encoder.pair_loss(data) for its objective, or "
            "an EmbeddingObservation(encoder, ...) in a MultimodalHMM for a (feature) likelihood"
        )


class KNNMemory:
    r"""A growing memory of labelled embeddings for nearest-neighbour classification
    (paper section 6.2: new points are embedded by a forward pass and classified by a kNN
    search in the low-dimensional embedding space; section 6.4: around a weighted centre).

    Parameters
    ----------
    encoder : callable, optional
        Maps items ``(..., D)`` to embeddings ``(..., E)`` (a :class:`SiameseEncoder`: its
        :meth:`~SiameseEncoder.embed`; any ``nn.Module``: called under ``no_grad``). ``None``:
        items are used as they are.
    k : int
        Neighbours that vote (majority; a tie goes to the class of the nearest tied neighbour).
    centres : bool
        Classify by the nearest class centre (mean stored embedding of each class) instead of
        by the ``k`` nearest stored points.

    Examples
    --------
    >>> memory = KNNMemory(k=1)
    >>> memory.add(torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1]))
    >>> memory.predict(torch.tensor([[1.0], [8.0]])).tolist()
    [0, 1]
    """

    def __init__(self, encoder=None, *, k: int = 1, centres: bool = False):
        check_int("k", k)
        check_bool("centres", centres)
        if encoder is not None and not callable(encoder):
            raise TypeError(
                f"encoder: expected a callable (..., D) -> (..., E) or None, got {encoder!r}"
            )
        self.encoder = encoder
        self.k = k
        self.use_centres = bool(centres)
        self._z: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self._y is None else int(self._y.numel())

    @property
    def embeddings(self) -> torch.Tensor | None:
        """``(M, E)`` the stored embeddings (None while empty)."""
        return self._z

    @property
    def labels(self) -> torch.Tensor | None:
        """``(M,)`` int64 their labels (None while empty)."""
        return self._y

    def _embed(self, x) -> torch.Tensor:
        x = as_real_tensor("x", x)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"x: expected finite values, got {int((~torch.isfinite(x)).sum())} NaN/inf "
                "entries (drop the missing items first)"
            )
        enc = self.encoder
        if enc is None:
            return x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        if isinstance(enc, SiameseEncoder):
            return enc.embed(x)
        with torch.no_grad():
            return enc(x)

    def add(self, x, y) -> "KNNMemory":
        """Store items ``x (F, D)`` (embedded by the encoder when there is one) with labels
        ``y (F,)`` (integer classes; negative = unlabelled, skipped). Returns the memory."""
        z = self._embed(x)
        y = torch.as_tensor(y).to(z.device)
        if z.dim() != 2 or y.shape != z.shape[:1]:
            raise ValueError(
                f"y: expected one label per item, shape ({z.shape[0]},), got {tuple(y.shape)} "
                f"for embeddings {tuple(z.shape)} (x must be (F, D))"
            )
        if y.is_floating_point():
            if bool((torch.isfinite(y) & (y != y.round())).any()):
                raise ValueError("y: expected integer class labels (negative = unlabelled)")
            y = torch.where(torch.isfinite(y), y, torch.full_like(y, -1))
        y = y.long()
        keep = y >= 0
        z, y = z[keep].detach(), y[keep]
        if self._z is not None and z.shape[-1] != self._z.shape[-1]:
            raise ValueError(
                f"x: embeddings of size {z.shape[-1]} do not match the memory's {self._z.shape[-1]}"
            )
        self._z = z if self._z is None else torch.cat([self._z, z.to(self._z)])
        self._y = y if self._y is None else torch.cat([self._y, y.to(self._y.device)])
        return self

    def centres(self):
        """``(classes (C,) int64, centres (C, E))``: the mean stored embedding of each class."""
        self._need()
        classes, inv = torch.unique(self._y, return_inverse=True)
        sums = torch.zeros(
            classes.numel(), self._z.shape[-1], dtype=self._z.dtype, device=self._z.device
        )
        sums.index_add_(0, inv, self._z)
        counts = torch.bincount(inv, minlength=classes.numel()).to(self._z)
        return classes, sums / counts[:, None]

    def _need(self):
        if self._y is None or self._y.numel() == 0:
            raise ValueError("memory: empty; add(x, y) labelled items before predicting")

    def query_points(self, x, weights=None) -> torch.Tensor:
        r"""The points searched around: the embeddings of ``x (F, D)``, or with
        ``weights (F, S)`` the weighted centre :math:`\sum_s w_s G(x_s) / \sum_s w_s` of the
        embeddings of ``x (F, S, D)`` (section 6.4: the embeddings of several candidate
        versions of an item, e.g. the outputs of several denoisers weighted by a gate)."""
        z = self._embed(x)
        if weights is None:
            if z.dim() != 2:
                raise ValueError(
                    f"x: expected items (F, D) without weights, got embeddings {tuple(z.shape)}"
                )
            return z
        w = torch.as_tensor(weights).to(z)
        if z.dim() != 3 or tuple(w.shape) != tuple(z.shape[:2]):
            raise ValueError(
                f"weights: expected (F, S) for items x of shape (F, S, D), got weights "
                f"{tuple(w.shape)} and embeddings {tuple(z.shape)}"
            )
        if bool((w < 0).any()) or bool((w.sum(-1) <= 0).any()):
            raise ValueError("weights: expected non-negative weights with a positive sum per item")
        return (w[..., None] * z).sum(1) / w.sum(-1, keepdim=True)

    def predict(self, x, weights=None) -> torch.Tensor:
        """Class of each item: ``x (F, D)`` -> ``(F,)`` int64 (with ``weights (F, S)``: items
        ``x (F, S, D)`` searched around their weighted centre, :meth:`query_points`)."""
        self._need()
        q = self.query_points(x, weights).to(self._z)
        if q.shape[-1] != self._z.shape[-1]:
            raise ValueError(
                f"x: embeddings of size {q.shape[-1]} do not match the memory's "
                f"{self._z.shape[-1]} (items (F, D) of the size that add() received)"
            )
        if self.use_centres:
            classes, c = self.centres()
            return classes[torch.cdist(q, c).argmin(-1)]
        k = min(self.k, self._y.numel())
        d = torch.cdist(q, self._z)
        nearest = d.topk(k, dim=-1, largest=False).indices  # (F, k), nearest first
        lab = self._y[nearest]
        classes, inv = torch.unique(lab, return_inverse=True)
        C = classes.numel()
        votes = torch.nn.functional.one_hot(inv, C).sum(1)  # (F, C)
        rank = torch.arange(k, device=lab.device).expand_as(inv)
        first = torch.full((lab.shape[0], C), k, dtype=torch.long, device=lab.device)
        first = first.scatter_reduce(1, inv, rank, reduce="amin")
        score = votes * (k + 1) - first  # most votes, then the nearest
        return classes[score.argmax(-1)]


register_encoder("SiameseEncoder", SiameseEncoder.from_config)
for _name in tower_classes():
    register_encoder(_name, build_tower)
