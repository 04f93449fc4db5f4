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
* **Reliability inputs** (``gate_inputs``, :mod:`.reliability`): besides (or instead of) the
  standardized streams the gate can read per-stream novelty under a diagonal Gaussian of clean
  features (:meth:`GatedMixture.fit_novelty`) and expert disagreement, added linearly to its
  logits: evidence of a failing stream whose meaning does not change with the corpus.
* **Agreement** (:meth:`GatedMixture.agreement`, Bernoulli head): a label-free combination of
  the experts by per-utterance Dawid-Skene EM (:mod:`mmpgm.ops.agreement`): each expert's
  sensitivity and specificity estimated on the test clip itself from its agreement with the
  others, optionally tempered by the gate's weights. Per utterance, not causal; it cannot see
  a failure that two experts share (correlated errors count as agreement).
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
  expert-fit term below) as ``pyro.factor("penalty", -penalty)``: a *penalty* (Tikhonov
  regularizer), not part of the likelihood; :meth:`GatedMixture.log_likelihood` excludes it,
  :meth:`GatedMixture.penalty` returns it.
* **Expert fit** (``expert_weight`` :math:`\beta`, default 1): a second penalty
  :math:`-\beta \sum_t \sum_m \log p(y_t \mid f_m)` over the labelled frames where stream ``m``
  is observed, i.e. every expert is also trained as a predictor on its own. Needed for the gate
  to be readable: for a Bernoulli head :math:`p(y_t \mid x) = \sum_m g_{tm} f_m` only constrains
  the inner product, so without it the experts can co-adapt into non-predictors whose weighted
  sum is right and a flat gate (seen on the seeded synthetic test of
  ``tests/statistical/test_mixture_gate.py``). Set ``expert_weight=0`` for the pure mixture
  likelihood.
* **Training**: jointly with :func:`mmpgm.fit` (program ``"enumerated"``, ``TraceEnum_ELBO``, or
  ``"collapsed"``, the same loss by the closed-form ops), with the Appendix-A EM
  (``mmpgm.fit(method="em")``, :func:`mmpgm.inference.em_mixture.fit_em_mixture`), or *staged*
  (:mod:`mmpgm.inference.mixture`): ``pretrain_experts(model, ...)`` on some data, then
  ``fit_gate(model, ...)`` (experts frozen, the same exact likelihood with :math:`c_t` summed
  out) on data the experts never saw (e.g. held-out speakers), so the gate learns how far each
  expert can be trusted on unseen data rather than on the data the experts memorized; or
  cross-fitted (:func:`mmpgm.inference.cross_fit.fit_cross_fitted`).

The target model ("head", :mod:`.heads`) and the gate structure (:mod:`.gating`) are objects
chosen once from the ``head=`` and ``gate=`` strings. Training code uses the model through the
small public interface of :class:`GatedMixture` (``forward_outputs``, ``target_scores``,
``frame_penalty``, ...) on data that :meth:`GatedMixture.check_data` returned.
"""

from .gating import MarkovLogWeights
from .model import GatedMixture
from .outputs import MixtureOutputs, TargetScores

__all__ = ["GatedMixture", "MarkovLogWeights", "MixtureOutputs", "TargetScores"]
