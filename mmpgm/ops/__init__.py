"""Pure batched tensor math (torch only: no Pyro, no other layer of mmpgm): exact inference.

Rooms: ``hmm/`` (factorial forward-backward, Viterbi, FFBS, streaming step), ``kalman/``
(Kalman filter, RTS smoother, FFBS; sequential and parallel-scan), ``mixture.py`` (gated-mixture
likelihood and the Markov gate's forward algorithm), ``gaussian.py`` (diagonal-Gaussian algebra),
``scan.py`` (associative scan), ``kmeans.py``, ``linalg.py``, ``contrastive.py`` (siamese loss and
label-driven pair sampling).

The contract every routine here keeps:

* **Inputs are tensors, already checked by the caller.** The models assemble the arguments
  (log-factors, parameter matrices) from validated data; the ops check only shapes, and raise
  ``ValueError`` naming the argument when they do not fit.
* **Missing data.** In the HMM ops a missing observation or a padding frame is the neutral
  element of its factor: a zero log-factor (``log_emissions[..., t, ...] = 0``), so masks and
  ragged lengths need no special case. The mixture ops take one evidence mask ``(N, T)``
  (frames without evidence get a unit component factor). The Kalman ops take explicit
  per-modality masks and ``lengths``, because a missing modality removes rows of the
  measurement update.
* **Batching.** Leading axes are batch axes: the HMM ops take any ``batch_shape`` in front of
  ``(T, K_1, ..., K_C)``; the Kalman ops take ``(N, ...)`` with parameters either shared
  (no batch axis) or per sequence (leading ``N``), documented per argument; the mixture ops
  take ``(N, T, M)``.
* **Conventions.** Transition matrices are indexed ``(old, new)`` and multiply row vectors from
  the right; time is the axis after the batch axes.
* **Implementation choices are keywords** (``transition=`` for the HMM, ``method=``, ``share=``,
  ``steady_state=`` for the Kalman filter), validated in one place per family; ``"auto"`` reads
  documented constants measured by ``benchmarks/``. No module-level switches.
* **Device and dtype** follow the inputs.
"""

from .contrastive import contrastive_loss, pair_distance, sample_negatives, sample_pairs

__all__ = ["contrastive_loss", "pair_distance", "sample_negatives", "sample_pairs"]
