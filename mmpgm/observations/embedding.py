r"""Gaussian emissions on an embedding: :math:`G(x_t) \mid s_t=i, p_t=j \sim
N(\mu_{ij}, \Sigma_{ij})` (paper section 6 with DESIGN.md 4.5).

Any encoder :math:`G` (an ``nn.Module`` mapping items ``(..., D)`` to ``(..., E)``, e.g. a
trained :class:`~mmpgm.SiameseEncoder`) turns a raw, high-dimensional stream into a modality of
:class:`~mmpgm.MultimodalHMM`: the emission is a diagonal or full Gaussian per state pair on
:math:`z_t = G(x_t)`, and everything the HMM does with Gaussian emissions (exact collapsed
likelihood, enumerated program, masks, ragged lengths, closed-form EM on the embeddings, SVI)
carries over.

**What the likelihood is.** :meth:`~EmbeddingObservation.log_prob` is
:math:`\log N(G(x_t); \mu_{ij}, \Sigma_{ij})`: a density of the *feature* :math:`G(x_t)`, not
of :math:`x_t` (there is no Jacobian term; :math:`G` maps ``D`` to ``E < D`` dimensions and
has none). With the encoder frozen (``trainable=False``, default) it is a fixed feature map
and the HMM's log-likelihood is an exact likelihood of the embedded stream; comparisons
between models with the same frozen encoder are meaningful. With ``trainable=True`` SVI also
moves the encoder: the objective is still this feature likelihood, which the encoder can raise
by shrinking its embeddings (collapse), so train it jointly only with a small learning rate
from a pre-trained encoder, or alongside its own loss; EM never changes the encoder.

With a frozen encoder the model equals a plain Gaussian emission on the embedded stream
(``SiameseEncoder.embed_data(data)``, tested to 1e-12): precomputing the embeddings that way
saves the encoder's forward pass on every SVI step, and feeds models without an embedding
emission (the :class:`~mmpgm.MultimodalLDS` with ``obs_dims[m] = E``). Keep the emission for
``trainable=True``, for raw frames arriving online, and to save the encoder with the model.

Observation models may not import networks (:mod:`mmpgm.nn`): the encoder is taken
duck-typed. Loading a saved model rebuilds the encoder from its config when its class is
registered here (:func:`register_encoder`; :mod:`mmpgm.models.siamese` registers
``SiameseEncoder`` and the package's towers); any other encoder is passed again to
:func:`mmpgm.load_model` (``emission={modality: EmbeddingObservation(encoder, ...)}``), and
its saved weights are loaded into it.

Not supported on an embedding modality: ``sensor_faults`` (the background density lives in
the raw space, the emission in the embedding space), :meth:`sample_at` (no generative model of
:math:`x_t`), and standardized SVI units (``rescalable = False``: embeddings are fitted as the
encoder gives them). :meth:`~EmbeddingObservation.mean` and :meth:`covariance` are moments of
the embedding, so ``MultimodalHMM.impute`` of an embedding modality predicts :math:`G(x_t)`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._validation import check_bool, check_choice, check_int
from .base import ObservationModel
from .gaussian import DiagonalGaussianObservation, FullGaussianObservation

__all__ = [
    "DiagonalEmbeddingObservation",
    "EmbeddingObservation",
    "FullEmbeddingObservation",
    "build_embedding_observation",
    "register_encoder",
]

_COVARIANCES = ("diag", "full")
_ENCODERS: dict = {}


def register_encoder(name: str, build) -> None:
    """Make encoders of class ``name`` rebuildable from their ``config()``: ``build(config)``
    returns an (untrained) encoder. Used by :mod:`mmpgm.models.siamese`."""
    _ENCODERS[name] = build


def _encoder_spec(encoder: nn.Module) -> dict:
    name = type(encoder).__name__
    cfg = getattr(encoder, "config", None)
    if name in _ENCODERS and callable(cfg) and getattr(encoder, "rebuildable", True):
        return {"class": name, "config": cfg()}
    return {"class": "user", "type": f"{type(encoder).__module__}.{type(encoder).__qualname__}"}


class EmbeddingObservation(ObservationModel):
    r"""Per-state Gaussian on the embedding :math:`z_t = G(x_t)` of a raw stream.

    ``EmbeddingObservation(...)`` builds a :class:`DiagonalEmbeddingObservation`
    (``covariance="diag"``) or a :class:`FullEmbeddingObservation` (``"full"``).

    Parameters
    ----------
    encoder : nn.Module
        :math:`G`: items ``(..., D)`` -> ``(..., E)``. Becomes a submodule: the model's
        ``.to(dtype, device)``, ``state_dict`` and ``save`` carry it.
    num_shared_states, num_private_states : int
        :math:`K_s`, :math:`K_m`.
    covariance : {"diag", "full"}
        Covariance of each state's Gaussian on :math:`z`.
    trainable : bool
        Whether gradients reach the encoder (SVI fine-tunes it jointly); default False: the
        encoder is evaluated under ``no_grad`` in eval mode (a fixed feature map).
    input_dim, embed_dim : int, optional
        :math:`D`, :math:`E`; default the encoder's ``input_dim`` / ``embed_dim`` attributes
        (``embed_dim`` otherwise from one forward pass).

    Notes
    -----
    ``obs_dim`` is :math:`E` (the space the density lives in; pass it in the HMM's
    ``obs_dims``), ``data_dim`` is :math:`D` (the raw frames in ``data.obs``), as for
    categorical emissions (``obs_dim`` = number of categories, ``data_dim`` = 1). All methods
    that take ``x`` take raw frames ``(..., D)`` and embed them.
    """

    kind_name = "embedding"
    rescalable = False

    def __new__(cls, *args, **kwargs):
        if cls is EmbeddingObservation:
            covariance = kwargs.get("covariance", "diag")
            check_choice("covariance", covariance, _COVARIANCES)
            cls = _CLASSES[covariance]
        return super().__new__(cls)

    def __init__(
        self,
        encoder: nn.Module,
        num_shared_states: int,
        num_private_states: int,
        *,
        covariance: str = "diag",
        trainable: bool = False,
        input_dim: int | None = None,
        embed_dim: int | None = None,
    ):
        if not isinstance(encoder, nn.Module):
            raise TypeError(
                f"encoder: expected a torch.nn.Module mapping (..., D) -> (..., E), got "
                f"{type(encoder).__name__}"
            )
        check_choice("covariance", covariance, _COVARIANCES)
        check_bool("trainable", trainable)
        input_dim = getattr(encoder, "input_dim", None) if input_dim is None else input_dim
        if input_dim is None:
            raise ValueError(
                "input_dim: expected the raw frame size D (the encoder has no input_dim "
                "attribute), got None"
            )
        check_int("input_dim", input_dim)
        if embed_dim is None:
            embed_dim = getattr(encoder, "embed_dim", None)
        if embed_dim is None:
            p = next(iter(encoder.parameters()), None)
            kw = {} if p is None else dict(dtype=p.dtype, device=p.device)
            with torch.no_grad():
                embed_dim = int(encoder(torch.zeros(1, input_dim, **kw)).shape[-1])
        check_int("embed_dim", embed_dim)
        super().__init__(embed_dim, num_shared_states, num_private_states)
        self.encoder = encoder
        self.input_dim = int(input_dim)
        self.embed_dim = int(embed_dim)
        self.trainable = bool(trainable)
        self.covariance_type = covariance

    # ------------------------------------------------------------------ structure
    @property
    def data_dim(self) -> int:
        """:math:`D`: the size of the raw frames in ``data.obs``."""
        return self.input_dim

    @property
    def kind(self) -> dict:
        """JSON-friendly description that :func:`build_embedding_observation` rebuilds (the HMM
        stores it in its config): covariance, trainable, sizes and the encoder's class and
        config (``{"class": "user", ...}`` for an encoder that is not registered)."""
        return {
            "kind": self.kind_name,
            "covariance": self.covariance_type,
            "trainable": self.trainable,
            "input_dim": self.input_dim,
            "embed_dim": self.embed_dim,
            "encoder": _encoder_spec(self.encoder),
        }

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate=True):
        """The emission's own, state-indexed Gaussian parameters (``loc``, ``scale`` or
        ``scale_tril``): what ``MultimodalHMM.params`` holds and ``set_params`` sets, and what
        the restart alignment of :mod:`mmpgm.diagnostics` permutes. The encoder's parameters
        are ``emission.encoder.parameters()``; a model holding this emission lists both (its
        ``parameters()``, ``state_dict()`` and ``.to()`` walk the module tree, so SVI trains
        the encoder when :attr:`trainable`, and saving carries it)."""
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name[len(prefix) :].lstrip(".").startswith("encoder."):
                yield name, p

    # ------------------------------------------------------------------ the feature map
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`G(x)`: raw frames ``(..., D)`` -> ``(..., E)`` in the emission's dtype and
        device; without gradient and in eval mode unless :attr:`trainable`."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x: expected raw frames of size {self.input_dim} (input_dim), got {tuple(x.shape)}"
            )
        x = x.to(self.loc)
        if self.trainable:
            return self.encoder(x).to(self.loc)
        was = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                return self.encoder(x).to(self.loc)
        finally:
            self.encoder.train(was)

    def log_prob(self, x):
        r"""``x (..., D)`` -> ``(..., K_s, K_m)``:
        :math:`\log N(G(x); \mu_{ij}, \Sigma_{ij})` (a feature likelihood)."""
        return super().log_prob(self.embed(x))

    def pyro_value(self, x):
        """The value the enumerated program observes: the embedding ``(..., E)``."""
        return self.embed(x)

    def sufficient_statistics(self, x, weights):
        """The Gaussian's statistics of the embeddings of ``x (F, D)``."""
        return super().sufficient_statistics(self.embed(x), weights)

    @torch.no_grad()
    def init_from_data(self, x, generator=None, means=None):
        """The Gaussian's data-driven start on the embeddings of ``x (F, D)``; raw per-state
        ``means (K_s, K_m, D)``, where given, are embedded (a start: the HMM's M-step that
        follows sets the per-state moments of the embeddings)."""
        z = self.embed(x)
        zm = None if means is None else self.embed(means.to(self.loc))
        super().init_from_data(z, generator=generator, means=zm)

    def sample_at(self, shared, private, generator=None):
        raise NotImplementedError(
            "EmbeddingObservation.sample_at: the emission is a likelihood of the embedding "
            "G(x), not a generative model of the raw frames x; sample_embedding_at draws "
            "embeddings"
        )

    def sample_embedding_at(self, shared, private, generator=None) -> torch.Tensor:
        """Draw embeddings :math:`z` (not raw frames) for state index tensors: ``S + (E,)``."""
        return super().sample_at(shared, private, generator=generator)

    def rescale_(self, shift, scale):
        raise NotImplementedError(
            "EmbeddingObservation has no units to rescale (rescalable=False): its density is "
            "of the embedding, not of the raw frames"
        )

    def num_free_parameters(self):
        """The Gaussian's parameters, plus the encoder's when :attr:`trainable`."""
        n = super().num_free_parameters()
        if self.trainable:
            n += sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)
        return n


class DiagonalEmbeddingObservation(EmbeddingObservation, DiagonalGaussianObservation):
    r""":math:`G(x_t) \mid s_t=i, p_t=j \sim N(\mu_{ij}, \mathrm{diag}(\sigma^2_{ij}))`
    (:class:`EmbeddingObservation` with ``covariance="diag"``)."""


class FullEmbeddingObservation(EmbeddingObservation, FullGaussianObservation):
    r""":math:`G(x_t) \mid s_t=i, p_t=j \sim N(\mu_{ij}, \Sigma_{ij})`
    (:class:`EmbeddingObservation` with ``covariance="full"``)."""


_CLASSES = {"diag": DiagonalEmbeddingObservation, "full": FullEmbeddingObservation}


def build_embedding_observation(spec: dict, obs_dim: int, num_shared_states, num_private_states):
    """Rebuild an :class:`EmbeddingObservation` (untrained encoder) from its :attr:`kind`.

    Raises ``ValueError`` when the encoder is not registered (a user's encoder): pass the
    observation model itself instead, e.g. ``mmpgm.load_model(path, emission={m:
    EmbeddingObservation(encoder, K_s, K_m)})``.
    """
    enc = spec.get("encoder") or {}
    name = enc.get("class")
    if name not in _ENCODERS:
        raise ValueError(
            f"emission: an embedding emission with encoder {enc.get('type', name)!r} cannot be "
            f"rebuilt from its config (rebuildable encoders: {sorted(_ENCODERS)}); pass it "
            "again, e.g. mmpgm.load_model(path, emission={modality: EmbeddingObservation("
            "encoder, num_shared_states, num_private_states)})"
        )
    encoder = _ENCODERS[name](copy.deepcopy(enc.get("config", {})))
    e = EmbeddingObservation(
        encoder,
        num_shared_states,
        num_private_states,
        covariance=spec.get("covariance", "diag"),
        trainable=bool(spec.get("trainable", False)),
        input_dim=spec.get("input_dim"),
        embed_dim=spec.get("embed_dim"),
    )
    if e.obs_dim != obs_dim:
        raise ValueError(
            f"emission: the embedding emission has obs_dim {e.obs_dim} (embed_dim), expected "
            f"{obs_dim}"
        )
    return e
