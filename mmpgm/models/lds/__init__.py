r"""Multimodal linear dynamical system (paper section 5.2.5, eq. 28-39, with continuous states).

The state :math:`z_t = [z^s_t, z^1_t, \dots, z^M_t]` has one shared block and one private block per
modality, each with its own linear-Gaussian dynamics, and modality :math:`m` sees the shared block
and its own private block only:

.. math::
    z^b_1 &\sim \mathcal N(\mu^b_0, P^b_0), \qquad
    z^b_t = A_b z^b_{t-1} + w^b_t, \quad w^b_t \sim \mathcal N(0, Q_b), \quad b \in \{s, 1..M\}, \\
    x^m_t &= C^m_s z^s_t + C^m_m z^m_t + d^m + v^m_t, \qquad v^m_t \sim \mathcal N(0, R_m).

So :math:`A = \mathrm{blockdiag}(A_s, A_1, \dots, A_M)`, :math:`Q` likewise, and the emission matrix
of modality :math:`m` is zero on the other modalities' private blocks. Inference is exact
(:mod:`mmpgm.ops.kalman`): Kalman filter, RTS smoother, FFBS, per-modality masks.

Parameterization. :math:`Q_b`, :math:`P^b_0` and a full :math:`R_m` are stored as Cholesky
factors (``lower_cholesky`` constraint), a diagonal :math:`R_m` as positive standard deviations.
With ``stable=True``, :math:`A_b = \rho\, W_b / \max(1, \lVert W_b \rVert_2)` with
:math:`\rho` = ``max_spectral_norm`` < 1, so :math:`\lVert A_b \rVert_2 \le \rho` and the
dynamics are stable. Because the latent basis is free (:math:`z \to T z` changes :math:`A` to
:math:`T A T^{-1}`), this loses nothing: every matrix of spectral radius below :math:`\rho` is
similar to one of spectral norm below :math:`\rho`.

Priors (weak, conjugate, for MAP; hyperparameters in brackets):

* :math:`Q_b \sim \mathcal{IW}(\psi_Q I, k_b + 1)` [``prior_noise``],
  :math:`P^b_0 \sim \mathcal{IW}((2k_b + 2) I, k_b + 1)` (mode :math:`I`); :math:`A_b`,
  :math:`\mu^b_0` flat.
* per modality, with :math:`W^m = [C^m_s, C^m_m, d^m]` (``D_m x (k_s + k_m + 1)``) and
  :math:`\Lambda_0 = \mathrm{diag}(\lambda_C, .., \lambda_C, \lambda_d)`:
  :math:`W^m \mid R_m \sim \mathcal{MN}(0, R_m, \Lambda_0^{-1})` and
  :math:`R_m \sim \mathcal{IW}(\Psi_m, D_m + 1)` (full) or
  :math:`R_{m,ii} \sim \mathrm{InvGamma}(1, \Psi_{m,ii})` (diag), where
  :math:`\Psi_m = \psi_R \mathrm{diag}(\mathrm{Var}[x^m])` uses the data variances recorded by
  :meth:`MultimodalLDS.init_from_data` (1 before).

These make the EM M-step exact (:meth:`MultimodalLDS.em_step`).

Sensor faults (``sensor_faults=True``, or a list / dict naming modalities). Per observed frame
and faulty modality an indicator :math:`f^m_t \sim \mathrm{Bernoulli}(\rho_m)` (iid over
frames); when :math:`f^m_t = 1`, :math:`x^m_t` is drawn from a broad background
:math:`g_m(x^m_t)` that does not depend on :math:`z_t` (a Cauchy per dimension around the
median of the training data, ``fault_scale`` times its robust spread; fitted once by
:meth:`MultimodalLDS.init_from_data`, :func:`~mmpgm.models.lds.faults.fit_background`), else
from the emission above. The exact posterior is a mixture of one Gaussian per fault pattern;
inference is mean-field variational, :math:`q(z)\,q(f)` (Agamennoni et al. 2011, Piche et
al. 2012): the q(z) step is the exact masked Kalman smoother with each frame's covariance
:math:`R_m / (1 - q(f^m_t = 1))`, the q(f) step a closed-form logistic update
(:mod:`mmpgm.ops.kalman.robust`). EM is variational EM on the bound (q(f)-weighted emission
statistics, :math:`\rho_m` the clipped mean responsibility); SVI maximizes the same bound
(:meth:`MultimodalLDS.log_likelihood` returns it; q(f) at its fixed point, detached).
:math:`\rho_m` has a flat prior on ``[fault_rate_floor, 1/2]``, so a fit on clean data keeps
the fault model alive. ``mmpgm.infer(model, data).fault_probs[m]`` gives :math:`q(f^m_t = 1)`
``(N, T)`` (``causal=True``: filtered, a few fixed-point iterations per frame, as the online
:class:`mmpgm.online.lds.LDSFilter` does). Measured against the enumerated exact posterior at
tiny sizes (state 1-2, T 3-4, two 1-d sensors, one gross outlier; ``tests/models/
test_lds_faults.py``, ``tests/ops/test_kalman_robust.py``): the largest error of a fault
probability 0.0002-0.07 per sequence, of a posterior state mean 0.0002-0.05, the bound
0.0005-0.16 nats below :math:`\log p(x)`; the outlier frame itself at 1.00000 in both.
Details: :mod:`mmpgm.models.lds.faults`.

The package is cut by idea: ``model.py`` (structure, programs, posteriors, parameters),
``blocks.py`` (dynamics and emission parameter blocks), ``priors.py``, ``init.py`` (data-driven
start), ``em.py`` (the closed-form MAP-EM step), ``faults.py`` (sensor faults), ``units.py``
(re-expressing a model in other data units).
"""

from .blocks import BlockDynamics, LinearEmission
from .model import MultimodalLDS
from .params import LDSParams

__all__ = ["MultimodalLDS", "LDSParams", "BlockDynamics", "LinearEmission"]
