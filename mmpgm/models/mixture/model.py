"""The :class:`GatedMixture` model: configuration, the networks' forward outputs, the
training interface, the Pyro programs and the posterior (the math is in the package docstring,
:mod:`mmpgm.models.mixture`)."""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from torch import nn

from ..._validation import check_bool, check_choice, check_float, check_int
from ...data import MultimodalData
from ...nn.experts import Expert
from ...nn.standardize import Standardizer
from ...ops.agreement import AgreementPosterior, dawid_skene
from ...results.mixture import MixturePosterior
from .._base import MultimodalModel
from .._checks import check_obs_dims
from .._savable import register
from .gating import make_gating
from .heads import HEADS, make_head
from .outputs import LogWeights, MixtureOutputs, TargetScores
from .penalty import co_learning_penalty, co_learning_weights, expert_fit_penalty
from .reliability import ReliabilityGate, ReliabilityInputs, check_gate_inputs

__all__ = ["GatedMixture"]


@register
class GatedMixture(MultimodalModel):
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
    mask_dim : int, optional
        ``F``, the number of frequency bins of the mask, for ``head="ratio_mask"`` (and only
        there). Each expert then outputs ``F + 1`` numbers per frame (mask logits, log-scale).
    gate_inputs : sequence of {"features", "novelty", "disagreement"}
        What the gate sees (:mod:`mmpgm.models.mixture.reliability`): the standardized streams
        (``"features"``, default, the only input before), per-stream novelty under a diagonal
        Gaussian of clean features (:meth:`fit_novelty`), expert disagreement (Bernoulli
        head). The reliability inputs enter the gate's logits linearly (zero at the start).
    novelty_decay : float in (0, 1]
        Decay of the causal running mean of the novelty (time constant
        ``1 / (1 - novelty_decay)`` frames).

    Attributes
    ----------
    gating : ConditionalGating, RecurrentGating or MarkovGating
        The gate structure chosen from ``gate`` (:mod:`mmpgm.models.mixture.gating`).
    target_head : BernoulliHead, CategoricalHead, NormalHead or RatioMaskHead
        The target model chosen from ``head`` (:mod:`mmpgm.models.mixture.heads`).
    gate_kind, head : str
        The ``gate`` and ``head`` strings.

    Examples
    --------
    >>> model = GatedMixture({"audio": 40, "video": 32}, gate="markov")
    >>> model.log_likelihood(data).shape  # doctest: +SKIP
    torch.Size([N])
    """

    PROGRAMS = ("enumerated", "collapsed")

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
        gate_inputs=("features",),
        novelty_decay: float = 0.9,
    ):
        super().__init__()
        names = check_obs_dims(obs_dims)
        self.gating = make_gating(gate)
        check_choice("head", head, tuple(HEADS))
        check_choice("expert", expert, ("mlp", "recurrent"))
        if not isinstance(target, str) or not target:
            raise TypeError(f"target: expected a label name (non-empty str), got {target!r}")
        self.target_head = make_head(head, target, num_classes, mask_dim)
        gate_inputs = check_gate_inputs(gate_inputs, head)
        novelty_decay = check_float("novelty_decay", novelty_decay, minimum=0.0)
        if not 0.0 < novelty_decay <= 1.0:
            raise ValueError(f"novelty_decay: expected a number in (0, 1], got {novelty_decay}")
        sizes = dict(hidden_dim=hidden_dim, num_layers=num_layers, gate_hidden_dim=gate_hidden_dim)
        for name, v in sizes.items():
            check_int(name, v)
        check_int("context", context, minimum=0)
        check_int("co_learning_units", co_learning_units, minimum=0)
        gate_context = context if gate_context is None else gate_context
        check_int("gate_context", gate_context, minimum=0)
        check_bool("gate_recurrent", gate_recurrent)
        check_float("stickiness", stickiness)
        if co_learning_units > hidden_dim:
            raise ValueError(
                f"co_learning_units: expected <= hidden_dim={hidden_dim}, got {co_learning_units}"
            )
        lam = co_learning_weights(co_learning_weight, names)
        self.expert_weight = check_float("expert_weight", expert_weight, minimum=0.0)
        self.modalities = names
        self.obs_dims = {m: obs_dims[m] for m in names}
        self.gate_kind = gate
        self.head = head
        self.target = target
        self.num_classes = num_classes
        self.mask_dim = mask_dim
        self.co_learning_units = co_learning_units
        out_dim = self.target_head.out_dim
        self.standardizers = nn.ModuleDict({m: Standardizer(obs_dims[m]) for m in names})
        self.experts = nn.ModuleDict({
            m: Expert(obs_dims[m], out_dim, hidden_dim, num_layers, expert, context) for m in names
        })  # fmt: skip
        dims = [obs_dims[m] for m in names]
        self.gate = self.gating.network(
            dims, gate_hidden_dim, gate_context, gate_recurrent, stickiness
        )
        self.gate_inputs = gate_inputs
        self.reliability = None
        if gate_inputs != ("features",):
            self.reliability = ReliabilityInputs(dims, gate_inputs, novelty_decay)
            self.gate = ReliabilityGate(
                self.gate, self.reliability.num_inputs, len(names), markov=gate == "markov"
            )
        self.register_buffer("co_learning_lambda", torch.tensor([lam[m] for m in names]))
        self._config = dict(
            obs_dims=dict(obs_dims), gate=gate, head=head, num_classes=num_classes, target=target,
            expert=expert, hidden_dim=hidden_dim, num_layers=num_layers, context=context,
            gate_hidden_dim=gate_hidden_dim, gate_context=gate_context,
            gate_recurrent=gate_recurrent, stickiness=stickiness,
            co_learning_units=co_learning_units, co_learning_weight=lam,
            expert_weight=float(expert_weight), mask_dim=mask_dim,
            gate_inputs=list(gate_inputs), novelty_decay=float(novelty_decay),
        )  # fmt: skip

    @property
    def num_experts(self) -> int:
        return len(self.modalities)

    # ------------------------------------------------------------------ data
    def _check_labels(self, data: MultimodalData) -> None:
        """The target label (when present) must suit the head (values, shape, dtype)."""
        if self.target in data.labels:
            self.target_head.check(data.labels[self.target], data.time_mask)

    def check_training_data(self, data: MultimodalData) -> None:
        """The target label must be present and given on at least one observed frame."""
        if self.target not in data.labels:
            raise ValueError(
                f"data.labels: the mixture predicts the label {self.target!r}, which the data do "
                f"not have (labels: {sorted(data.labels)}); without it there is nothing to fit"
            )
        _, labelled = self.targets(data)
        if not bool(labelled.any()):
            raise ValueError(
                f"data.labels[{self.target!r}]: no frame is labelled (all -1/NaN or padding); "
                "there is nothing to fit"
            )

    @torch.no_grad()
    def init_from_data(self, data: MultimodalData, seed: int = 0, force: bool = False) -> None:
        """Set the input standardization (per-feature mean and std of the observed frames) of every
        stream not standardized yet (all with ``force``). Network weights are left alone: seed
        ``torch`` before constructing the model for reproducible weights. Called by
        :func:`mmpgm.fit`."""
        data = self._checked(data)
        for m in self.modalities:
            s = self.standardizers[m]
            if force or not bool(s.initialized):
                obs = data.mask[m]
                if not bool(obs.any()):
                    raise ValueError(f"data.obs[{m!r}]: no observed frame to standardize from")
                s.fit_to(data.obs[m][obs])

    # ------------------------------------------------------------------ training interface
    # These take data as returned by check_data (they do not validate again) and are what
    # mmpgm.inference (pretraining, gate fits, EM, cross-fitting) uses.
    def _inputs(self, data):
        xs = [self.standardizers[m](data.filled(m)) for m in self.modalities]
        return xs, [data.mask[m] for m in self.modalities]

    def _gate_logits(self, xs, masks, expert_outputs=None):
        """The gate network's logits; with reliability inputs (``gate_inputs``) their linear
        term is added, the experts' ``expert_outputs (N, T, M, P)`` (detached) feeding the
        disagreement (run here, without gradient, when not given)."""
        if self.reliability is None:
            return self.gate(xs, masks)
        probs = None
        if self.reliability.disagreement:
            if expert_outputs is None:
                with torch.no_grad():
                    expert_outputs, _ = self._run_experts(xs, masks)
            probs = torch.sigmoid(expert_outputs.detach()[..., 0])
        r = self.reliability(xs, masks, probs)
        gx = xs if "features" in self.gate_inputs else [torch.zeros_like(x) for x in xs]
        return self.gate(gx, masks, r)

    @torch.no_grad()
    def fit_novelty(self, data: MultimodalData) -> None:
        """Fit the clean-feature density of the novelty inputs to ``data`` (e.g. clean training
        data): per stream the mean and variance of the standardized inputs over the observed
        frames. Sets the standardization first when not set yet. Requires ``"novelty"`` in
        ``gate_inputs``."""
        if self.reliability is None or not self.reliability.novelty:
            raise ValueError(
                f"gate_inputs: fit_novelty needs 'novelty' among them, got {self.gate_inputs}"
            )
        data = self._checked(data)
        self.init_from_data(data)
        xs, masks = self._inputs(data)
        self.reliability.fit(xs, masks)

    def _run_experts(self, xs, masks):
        pairs = [self.experts[m](x, k) for m, x, k in zip(self.modalities, xs, masks, strict=True)]
        return torch.stack([o for o, _ in pairs], 2), tuple(h for _, h in pairs)

    def forward_outputs(self, data: MultimodalData) -> MixtureOutputs:
        """Run the experts and the gate.

        Parameters
        ----------
        data : MultimodalData
            As returned by :meth:`check_data` (``N`` sequences, ``T`` frames; not validated).

        Returns
        -------
        MixtureOutputs
            ``expert_outputs (N, T, M, P)``, ``hidden`` (``M`` x ``(N, T, H)``), ``available
            (N, T, M)`` and the masked log gate weights.
        """
        xs, masks = self._inputs(data)
        out, hidden = self._run_experts(xs, masks)
        avail = torch.stack(masks, -1)
        return MixtureOutputs(
            out, hidden, avail, self.gating.log_weights(self._gate_logits(xs, masks, out), avail)
        )

    def gate_log_weights(
        self, data: MultimodalData, expert_outputs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LogWeights]:
        """Run only the gate (no expert, unless the disagreement input needs them and
        ``expert_outputs (N, T, M, P)`` is not given, e.g. out-of-fold outputs) on checked
        ``data``.

        Returns
        -------
        available : Tensor ``(N, T, M)`` bool
        log_weights : Tensor ``(N, T, M)`` or MarkovLogWeights
            As :attr:`MixtureOutputs.log_weights`.
        """
        xs, masks = self._inputs(data)
        avail = torch.stack(masks, -1)
        logits = self._gate_logits(xs, masks, expert_outputs)
        return avail, self.gating.log_weights(logits, avail)

    def targets(self, data: MultimodalData) -> tuple[torch.Tensor, torch.Tensor]:
        """The target of checked ``data``.

        Returns
        -------
        y : Tensor ``(N, T)`` or ``(N, T, F)``
            ``data.labels[target]`` in the model's dtype (long for ``head="categorical"``), a
            valid dummy value at unlabelled frames (ratio mask: NaN at missing bins); zeros
            when ``data`` has no such label.
        labelled : Tensor ``(N, T)`` bool
        """
        p = self._param()
        return self.target_head.target(data, p.dtype, p.device)

    def component_log_prob(self, expert_outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Log-likelihood of the target under every expert.

        Parameters
        ----------
        expert_outputs : Tensor ``(N, T, M, P)``
            :attr:`MixtureOutputs.expert_outputs`.
        y : Tensor ``(N, T)`` or ``(N, T, F)``
            From :meth:`targets`.

        Returns
        -------
        Tensor ``(N, T, M)``
            :math:`\log p(y_t \mid c_t = m)` (ratio mask: NaN bins summed out).
        """
        return self.target_head.log_prob(expert_outputs, y)

    @staticmethod
    def evidence_mask(labelled: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """Frames that carry evidence, ``(N, T)``: labelled, with at least one observed stream."""
        return labelled & available.any(-1)

    def target_scores(self, outputs: MixtureOutputs, data: MultimodalData) -> TargetScores:
        """:meth:`targets`, :meth:`component_log_prob` and :meth:`evidence_mask` of checked
        ``data`` at once: :class:`TargetScores` (``target``, ``labelled (N, T)``,
        ``log_component (N, T, M)``, ``evidence (N, T)``)."""
        y, lab = self.targets(data)
        lc = self.component_log_prob(outputs.expert_outputs, y)
        return TargetScores(y, lab, lc, self.evidence_mask(lab, outputs.available))

    def mixture_log_likelihood(self, log_weights, log_component, evidence) -> torch.Tensor:
        r"""Exact :math:`\log p(y \mid x)` with the indicators summed out (the gate's sum or
        the forward algorithm over its chain).

        Parameters
        ----------
        log_weights : Tensor ``(N, T, M)`` or MarkovLogWeights
            As :attr:`MixtureOutputs.log_weights` (or from :meth:`gate_log_weights`).
        log_component : Tensor ``(N, T, M)``
            :math:`\ell_{tm}`, e.g. :attr:`TargetScores.log_component` or out-of-fold scores.
        evidence : Tensor ``(N, T)`` bool
            Frames that carry evidence (the others contribute a factor 1).

        Returns
        -------
        Tensor ``(N,)``
        """
        return self.gating.log_likelihood(log_weights, log_component, evidence)

    def log_likelihood_from_outputs(self, outputs: MixtureOutputs, scores: TargetScores):
        """:meth:`log_likelihood` ``(N,)`` of already computed outputs and scores."""
        return self.mixture_log_likelihood(
            outputs.log_weights, scores.log_component, scores.evidence
        )

    def frame_penalty(
        self, outputs: MixtureOutputs, scores: TargetScores, *, expert_fit: bool = True
    ) -> torch.Tensor | None:
        r"""The penalties of every frame.

        Parameters
        ----------
        outputs : MixtureOutputs
        scores : TargetScores
            Of the same data.
        expert_fit : bool
            Include the expert-fit term :math:`-\beta \sum_m \log p(y_t \mid f_m)` over the
            labelled frames where stream ``m`` is observed; ``False`` leaves the co-learning
            term alone (expert pre-training, which fits the experts on their own).

        Returns
        -------
        Tensor ``(N, T)`` or None
            Co-learning :math:`\mathcal L_{co}` (eq. 20) plus the included expert-fit term;
            None when the included terms are off.
        """
        avail, total = outputs.available, None
        if self.co_learning_units > 0 and bool((self.co_learning_lambda > 0).any()):
            total = co_learning_penalty(
                outputs.hidden, avail, self.co_learning_lambda, self.co_learning_units
            )
        if expert_fit and self.expert_weight > 0:
            fit = expert_fit_penalty(
                scores.log_component, scores.labelled, avail, self.expert_weight
            )
            total = fit if total is None else total + fit
        return total

    @torch.no_grad()
    def expert_scores(self, data: MultimodalData) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(scores (N, T, M), evidence (N, T) bool)``: :math:`\log p(y_t \mid f_m)` of every
        expert on every frame of checked ``data`` (no gradient; only the experts run), and the
        labelled frames with an observed stream. The gate's fit against these scores is
        :func:`mmpgm.inference.mixture.fit_gate_to_scores`."""
        xs, masks = self._inputs(data)
        out, _ = self._run_experts(xs, masks)
        y, lab = self.targets(data)
        return self.component_log_prob(out, y), self.evidence_mask(lab, torch.stack(masks, -1))

    # ------------------------------------------------------------------ likelihood and penalty
    def log_likelihood(self, data: MultimodalData) -> torch.Tensor:
        r"""Exact, differentiable :math:`\log p(y \mid x)` per sequence ``(N,)`` (labelled frames
        with at least one observed stream; the expert indicator summed out). Excludes the
        penalties."""
        data = self._checked(data)
        outputs = self.forward_outputs(data)
        return self.log_likelihood_from_outputs(outputs, self.target_scores(outputs, data))

    def penalty(self, data: MultimodalData) -> torch.Tensor:
        r"""Total penalty per sequence ``(N,)``: co-learning :math:`\mathcal L_{co}` (eq. 20)
        plus the expert-fit term :math:`-\beta \sum \log p(y_t \mid f_m)`; zeros when both are
        off. The Pyro loss is ``-(log_likelihood(data) - penalty(data)).sum()``."""
        data = self._checked(data)
        outputs = self.forward_outputs(data)
        pen = self.frame_penalty(outputs, self.target_scores(outputs, data))
        if pen is None:
            return torch.zeros(data.num_sequences, dtype=self._param().dtype, device=data.device)
        return pen.sum(-1)

    # ------------------------------------------------------------------ Pyro programs
    def default_elbo(self, program: str | None = None) -> ELBO:
        """``TraceEnum_ELBO`` over the enumerated expert indicators (``"enumerated"``), or
        ``Trace_ELBO`` for ``"collapsed"`` (same loss)."""
        if self.check_program(program) == "collapsed":
            return Trace_ELBO()
        return TraceEnum_ELBO(max_plate_nesting=self.gating.max_plate_nesting)

    def model(
        self,
        data: MultimodalData,
        *,
        program: str | None = None,
        num_sequences: int | None = None,
    ):
        """The generative program of the target given the inputs (data validated unless
        :meth:`check_data` returned them; ``num_sequences``: full data size for minibatches).

        ``program="enumerated"`` (default): the expert indicators are sample sites enumerated in
        parallel by :meth:`default_elbo` (see :meth:`ConditionalGating.sample_program
        <mmpgm.models.mixture.gating.ConditionalGating.sample_program>` and
        ``MarkovGating.sample_program``), the targets observed under ``poutine.mask`` and the
        penalties entered as ``pyro.factor("penalty", -penalty)``. ``"collapsed"``: the
        indicators summed out in closed form, one ``pyro.factor`` per sequence (same value).
        """
        program = self.check_program(program)
        data = self._checked(data)
        N = data.num_sequences
        outputs = self.forward_outputs(data)
        scores = self.target_scores(outputs, data)
        pen = self.frame_penalty(outputs, scores)
        collapsed = program == "collapsed"
        seq = pyro.plate(
            "sequences",
            N if num_sequences is None else num_sequences,
            subsample=torch.arange(N, device=data.device),
            dim=-1 if collapsed else self.gating.sequence_dim,
        )
        if collapsed:
            with seq:
                ll = self.log_likelihood_from_outputs(outputs, scores)
                pyro.factor("log_likelihood", ll if pen is None else ll - pen.sum(-1))
            return
        y, bins = self.target_head.observed(scores.target)
        self.gating.sample_program(
            seq, outputs.log_weights, self.target_head, outputs.expert_outputs, y, bins,
            scores.evidence, pen,
        )  # fmt: skip

    # ------------------------------------------------------------------ posteriors
    def agreement(
        self,
        data: MultimodalData,
        *,
        weights: str = "uniform",
        prior_strength: float = 5.0,
        prior_accuracy: float = 0.7,
        num_iters: int = 100,
    ) -> AgreementPosterior:
        r"""Label-free per-utterance combination of the experts by their agreement
        (:func:`mmpgm.ops.agreement.dawid_skene`, Bernoulli head only).

        Every sequence gets its own sensitivity and specificity per expert, estimated by EM
        with the true label :math:`y_t` latent, from the experts' :math:`p(y_t = 1)` on that
        sequence alone (no label is read): a stream that fails on a new corpus, disagreeing
        with the others, loses its weight there. Per utterance, not causal.

        Parameters
        ----------
        data : MultimodalData
            ``N`` sequences of ``T`` frames.
        weights : {"uniform", "gate"}
            How many times each expert's vote counts per frame: once (``"uniform"``), or ``M``
            times the gate's prior weight :math:`g_{tm}` (``"gate"``: the gate's per-frame
            reliability tempers the votes, e.g. under a video patch).
        prior_strength, prior_accuracy, num_iters :
            As in :func:`~mmpgm.ops.agreement.dawid_skene`.

        Returns
        -------
        AgreementPosterior
            ``posterior (N, T)`` is the combined :math:`p(y_t = 1)`; ``log_odds (N, T, M)``
            each expert's share of its logit.
        """
        check_choice("weights", weights, ("uniform", "gate"))
        if self.head != "bernoulli":
            raise ValueError(f"head: agreement needs head='bernoulli', got {self.head!r}")
        data = self._checked(data)
        with torch.no_grad():
            outputs = self.forward_outputs(data)
            probs = torch.sigmoid(outputs.expert_outputs[..., 0])
            w = None
            if weights == "gate":
                w = self.num_experts * self.gating.prior_weights(outputs.log_weights)
            return dawid_skene(
                probs, outputs.available, data.time_mask.to(probs.device), weights=w,
                num_iters=num_iters, prior_strength=prior_strength, prior_accuracy=prior_accuracy,
            )  # fmt: skip

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
        check_int("num_samples", num_samples, minimum=0)
        data = self._checked(data)
        gating = self.gating
        with torch.no_grad():
            outputs = self.forward_outputs(data)
            log_w, out = outputs.log_weights, outputs.expert_outputs
            _, _, lc, ev = self.target_scores(outputs, data)
            gen = None if seed is None else torch.Generator(device=out.device).manual_seed(seed)
            weights = gating.prior_weights(log_w)
            experts, pred = self.target_head.predict(out, weights)
            post = MixturePosterior(
                predictive=pred,
                gate_weights=weights,
                responsibilities=gating.responsibilities(log_w, lc, ev, causal),
                expert_predictions=experts,
                map=gating.map_path(log_w, lc, ev) if map_path else None,
                samples=gating.sample(log_w, lc, ev, num_samples, gen) if num_samples else None,
                log_likelihood=gating.log_likelihood(log_w, lc, ev),
                lengths=data.lengths,
                causal=causal,
                modalities=self.modalities,
                head=self.head,
            )
        return post
