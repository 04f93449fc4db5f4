r"""Cross-fitted (stacked) training of a gated mixture: experts on some groups, the gate on the
experts' *out-of-fold* behaviour on the others.

A gate fit on the data its experts were trained on learns how well the experts *memorized*
that data (on a speaker-wise corpus: it trusts the audio expert, which memorizes the training
speakers' noise, and fails on a new speaker). A gate fit on one held-out group only sees one
group (one speaker) and does not transfer either. Cross-fitting, as in stacked generalization
(Wolpert 1992) and double machine learning, uses every group once as the gate's data:

1. for every group :math:`g` (e.g. a speaker): a copy of the experts is trained on all other
   groups and scores group :math:`g`: per-frame component log-likelihoods
   :math:`\ell_{tm} = \log p(y_t \mid f^{(-g)}_m(x^m_{\le t}))`;
2. one gate is fit on all groups at once, on the exact mixture log-likelihood of these
   out-of-fold scores, :math:`\sum_t \log \sum_m g_{tm}(x_{\le t}) e^{\ell_{tm}}` (or the forward
   algorithm over the expert chain for the Markov gate), optionally shrunk toward equal weights
   by :math:`\kappa \sum_t \mathrm{KL}(u_t \,\|\, g_t)` (:math:`u_t` uniform over the experts
   observed at frame ``t``; a MAP estimate under a symmetric Dirichlet prior on :math:`g_t`), or
   toward a learned constant gate, with :math:`\kappa` chosen by leave-one-group-out validation;
3. the experts are trained once more on all groups (the final experts), the gate is kept.

The experts are frozen while the gate is fit, so step 2 never re-runs them: their scores are
computed once per fold. Written here because neither Pyro nor torch has stacking of this kind.
"""

from __future__ import annotations

import copy
import time
from typing import NamedTuple

import numpy as np
import torch

from .._progress import progress_bar
from ..data import MultimodalData
from ..data_shards import concat_data
from .mixture import (
    _check_gate_options,
    _check_scores,
    _check_steps,
    _train_experts,
    _train_gate,
    fit_gate_to_scores,
)

__all__ = [
    "CrossFitResult",
    "fit_cross_fitted",
    "fit_gate_to_scores",
    "grouped_gate_cv",
    "out_of_fold_scores",
    "resolve_groups",
    "simulate_expert_failures",
]


class CrossFitResult(NamedTuple):
    r"""What :func:`fit_cross_fitted` measured.

    Attributes
    ----------
    groups : tuple
        The group values, in the order of the folds.
    gate_shrinkage : float
        The :math:`\kappa` used for the final gate.
    shrinkage_cv : dict or None
        :math:`\kappa` -> leave-one-group-out held-out log-likelihood per frame
        (:func:`grouped_gate_cv`), when a grid was given.
    gate_losses : list of float
        Gate stage: negative out-of-fold mixture log-likelihood per labelled frame (plus the
        shrinkage term), one value per epoch.
    fold_log_likelihood : dict
        Group -> out-of-fold mixture log-likelihood per labelled frame under the final gate.
    fold_expert_log_likelihood : dict
        Group -> tuple of ``M`` out-of-fold log-likelihood per labelled frame of each expert alone.
    expert_losses : list of float
        Final expert training on all groups (per-frame losses of
        :func:`~mmpgm.inference.mixture.pretrain_experts`).
    seconds : float
        Wall time of the whole fit.
    """

    groups: tuple
    gate_shrinkage: float
    shrinkage_cv: dict | None
    gate_losses: list
    fold_log_likelihood: dict
    fold_expert_log_likelihood: dict
    expert_losses: list
    seconds: float


def resolve_groups(data: MultimodalData, groups) -> torch.Tensor:
    """``groups`` as an ``(N,)`` tensor: a per-sequence label name of ``data``, or an array."""
    N = data.num_sequences
    if isinstance(groups, str):
        if groups not in data.labels:
            raise ValueError(
                f"groups: expected a per-sequence label of data, got {groups!r} "
                f"(labels: {sorted(data.labels)})"
            )
        g = data.labels[groups]
    else:
        try:
            g = torch.as_tensor(np.asarray(groups))
        except (TypeError, ValueError) as e:
            raise TypeError(f"groups: expected a label name or an (N,) array, got {e}") from None
    if g.dim() != 1 or g.shape[0] != N:
        raise ValueError(
            f"groups: expected one value per sequence, shape ({N},), got {tuple(g.shape)}"
        )
    if g.is_floating_point() and bool(torch.isnan(g).any()):
        raise ValueError("groups: expected no NaN group value")
    if g.unique().numel() < 2:
        raise ValueError(f"groups: expected at least 2 distinct groups, got {g.unique().tolist()}")
    return g


def out_of_fold_scores(
    model,
    data: MultimodalData,
    groups,
    *,
    expert_steps: int = 200,
    lr: float = 0.01,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool | None = False,
    return_outputs: bool = False,
):
    r"""Step 1 of the module docstring: per-frame out-of-fold component log-likelihoods.

    Returns ``(scores (N, T, M), evidence (N, T) bool, groups (N,))``: ``scores[n, t, m]`` is
    :math:`\log p(y_t \mid f^{(-g_n)}_m)` from a copy of expert ``m`` trained (from ``model``'s
    current weights, by :func:`~mmpgm.inference.mixture.pretrain_experts`) on every group but
    sequence ``n``'s; ``evidence`` marks the labelled frames with an observed stream.
    ``model`` is not modified except for its input standardization (set from ``data``).
    ``progress``: a bar over the folds (None: only on a terminal). ``return_outputs``: also
    return the out-of-fold experts' raw outputs ``(N, T, M, P)`` as a fourth element (what a
    gate with the ``"disagreement"`` input reads while it is fit to these scores)."""
    _check_steps(expert_steps=expert_steps)
    data = model.check_data(data)
    model.check_training_data(data)
    g = resolve_groups(data, groups).to(data.device)
    model.init_from_data(data)
    res = _out_of_fold_scores(model, data, g, expert_steps, lr, batch_size, seed, progress)
    return res if return_outputs else res[:3]


def _out_of_fold_scores(model, data, g, expert_steps, lr, batch_size, seed, progress):
    """:func:`out_of_fold_scores` on checked data, groups ``g (N,)`` and a model whose
    standardization is set: the folds are copies of it, trained and scored without validating
    the data again."""
    N, T, M = data.num_sequences, data.num_timesteps, model.num_experts
    p = next(model.parameters())
    scores = torch.zeros(N, T, M, dtype=p.dtype, device=p.device)
    evidence = torch.zeros(N, T, dtype=torch.bool, device=p.device)
    outputs = None
    values = g.unique()
    bar = progress_bar(len(values), "out-of-fold experts", progress)
    for k, v in enumerate(values):
        held = torch.nonzero(g == v).flatten()
        fold = copy.deepcopy(model)
        _train_experts(
            fold,
            data[torch.nonzero(g != v).flatten()],
            num_steps=expert_steps,
            lr=lr,
            seed=seed + k,
            batch_size=batch_size,
        )
        scores[held], evidence[held] = fold.expert_scores(data[held])
        with torch.no_grad():
            out = fold.forward_outputs(data[held]).expert_outputs
        if outputs is None:
            outputs = torch.zeros(N, T, M, out.shape[-1], dtype=p.dtype, device=p.device)
        outputs[held] = out
        del fold
        bar.update()
    bar.close()
    return scores, evidence, g, outputs


def grouped_gate_cv(
    model,
    data: MultimodalData,
    scores: torch.Tensor,
    evidence: torch.Tensor,
    groups,
    shrinkages,
    *,
    num_steps: int = 100,
    lr: float = 0.01,
    batch_size: int | None = None,
    seed: int = 0,
    shrink_toward: str = "uniform",
    expert_outputs: torch.Tensor | None = None,
) -> dict:
    r"""Leave-one-group-out validation of the gate stage: for every :math:`\kappa` in
    ``shrinkages`` and every group :math:`g`, a fresh gate (``model.gate``'s current weights)
    is fit by :func:`fit_gate_to_scores` on the other groups and scored on :math:`g`. Returns
    :math:`\kappa` -> held-out mixture log-likelihood per labelled frame (pooled over groups);
    ``model`` is not modified. Cheap: the experts are never run (their ``scores`` are fixed;
    ``expert_outputs``, the matching raw outputs, feed a ``"disagreement"`` gate input)."""
    _check_steps(num_steps=num_steps)
    for kappa in shrinkages:
        _check_gate_options(kappa, shrink_toward)
    data = model.check_data(data)
    model.check_training_data(data)
    _check_scores(model, data, scores, evidence)
    g = resolve_groups(data, groups).to(data.device)
    fit_kw = dict(
        num_steps=num_steps, lr=lr, batch_size=batch_size, seed=seed, shrink_toward=shrink_toward
    )
    return _grouped_gate_cv(
        model, data, scores, evidence, g, shrinkages, expert_outputs=expert_outputs, **fit_kw
    )


def _grouped_gate_cv(
    model, data, scores, evidence, g, shrinkages, expert_outputs=None, **fit_kw
) -> dict:
    """:func:`grouped_gate_cv` on checked data and arguments."""
    evidence = evidence.to(g.device)
    start = copy.deepcopy(model.gate.state_dict())
    p = next(model.parameters())
    out = {}
    for kappa in shrinkages:
        total, frames = 0.0, 0.0
        for v in g.unique():
            fit = torch.nonzero(g != v).flatten()
            held = torch.nonzero(g == v).flatten()
            model.gate.load_state_dict(start)
            eo = (None, None) if expert_outputs is None else (
                expert_outputs[fit], expert_outputs[held])  # fmt: skip
            _train_gate(
                model, data[fit], scores[fit], evidence[fit], gate_shrinkage=kappa,
                expert_outputs=eo[0], **fit_kw,
            )  # fmt: skip
            with torch.no_grad():
                _, log_w = model.gate_log_weights(data[held], eo[1])
                ll = model.mixture_log_likelihood(
                    log_w, scores[held].to(device=p.device, dtype=p.dtype), evidence[held]
                )
            total += float(ll.sum())
            frames += float(evidence[held].sum())
        out[float(kappa)] = total / max(frames, 1.0)
    model.gate.load_state_dict(start)
    return out


def fit_cross_fitted(
    model,
    data: MultimodalData,
    groups,
    *,
    expert_steps: int = 200,
    gate_steps: int = 100,
    lr: float = 0.01,
    batch_size: int | None = None,
    seed: int = 0,
    gate_shrinkage=(0.0, 0.1, 0.3, 1.0, 3.0),
    shrink_toward: str = "uniform",
    refit_experts: bool = True,
    out_of_fold=None,
    progress: bool | None = None,
) -> CrossFitResult:
    r"""Cross-fitted training of a :class:`~mmpgm.models.mixture.GatedMixture` (see the module
    docstring); modifies ``model`` in place.

    Parameters
    ----------
    model : GatedMixture
        Its experts' current weights are the starting point of every fold and of the final
        experts; its gate's current weights the starting point of the gate stage.
    data : MultimodalData
        Labelled training data (``data.labels[model.target]``).
    groups : str or array ``(N,)``
        Group of every sequence (e.g. ``"speaker"``, a per-sequence label); at least 2 groups.
        Each group is held out once.
    expert_steps : int
        Epochs of :func:`~mmpgm.inference.mixture.pretrain_experts` per fold (and for the final
        experts).
    gate_steps : int
        Adam epochs of the gate stage (over all groups).
    gate_shrinkage : float or sequence of float
        :math:`\kappa \ge 0`, the weight of :math:`\sum_t \mathrm{KL}(\pi \| g_t)`; a sequence is
        a grid from which :func:`grouped_gate_cv` picks the value of best held-out
        log-likelihood (default). Without shrinkage a gate can learn *which frames* each expert
        gets wrong on the out-of-fold scores and then do worse than equal weights on a new
        speaker (measured in ``benchmarks/results/av_speech_activity.md``).
    shrink_toward : {"uniform", "constant"}
        The centre :math:`\pi` of the shrinkage (see :func:`fit_gate_to_scores`).
    refit_experts : bool
        Train the final experts on all groups (default); otherwise they keep their starting weights.
    out_of_fold : tuple, optional
        ``(scores, evidence)`` or ``(scores, evidence, expert_outputs)`` from an earlier
        :func:`out_of_fold_scores` call with the same experts, data and groups (step 1 is then
        skipped: several gates can share one set of experts). The outputs feed a gate with
        the ``"disagreement"`` input; without them it reads the model's own experts.
    progress : bool or None
        A progress bar over the out-of-fold expert fits (None: only when stderr is a terminal).

    Returns
    -------
    CrossFitResult
    """
    _check_steps(expert_steps=expert_steps, gate_steps=gate_steps)
    grid = (
        [gate_shrinkage]
        if isinstance(gate_shrinkage, (int, float)) and not isinstance(gate_shrinkage, bool)
        else list(gate_shrinkage)
        if isinstance(gate_shrinkage, (list, tuple))
        else None
    )
    if not grid or any(
        not isinstance(k, (int, float)) or isinstance(k, bool) or not k >= 0 for k in grid
    ):
        raise ValueError(
            "gate_shrinkage: expected a non-negative float or a non-empty list of them, "
            f"got {gate_shrinkage!r}"
        )
    _check_gate_options(0.0, shrink_toward)
    t0 = time.perf_counter()
    data = model.check_data(data)  # the one validation of the data; every stage below trusts it
    model.check_training_data(data)
    g = resolve_groups(data, groups).to(data.device)
    start = copy.deepcopy(model.experts.state_dict())
    model.init_from_data(data)
    if out_of_fold is None:
        scores, evidence, g, outputs = _out_of_fold_scores(
            model, data, g, expert_steps, lr, batch_size, seed, progress
        )
    else:
        if not isinstance(out_of_fold, (tuple, list)) or len(out_of_fold) not in (2, 3):
            raise ValueError(
                "out_of_fold: expected (scores, evidence) or (scores, evidence, expert_outputs)"
            )
        scores, evidence = out_of_fold[:2]
        outputs = out_of_fold[2] if len(out_of_fold) == 3 else None
        _check_scores(model, data, scores, evidence)
    fit_kw = dict(
        num_steps=gate_steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        shrink_toward=shrink_toward,
    )
    cv = None
    kappa = float(grid[0])
    if len(grid) > 1:
        cv = _grouped_gate_cv(
            model, data, scores, evidence, g, grid, expert_outputs=outputs, **fit_kw
        )
        kappa = max(cv, key=cv.get)
    gate_losses = _train_gate(
        model, data, scores, evidence, gate_shrinkage=kappa, expert_outputs=outputs, **fit_kw
    )
    fold_ll, fold_expert = {}, {}
    with torch.no_grad():
        _, log_w = model.gate_log_weights(data, outputs)
        ll = model.mixture_log_likelihood(log_w, scores, evidence)
        for v in g.unique():
            rows = g == v
            ev = evidence[rows]
            frames = ev.sum().clamp_min(1)
            fold_ll[_key(v)] = float(ll[rows].sum() / frames)
            sc = torch.where(ev[..., None], scores[rows], torch.zeros_like(scores[rows]))
            fold_expert[_key(v)] = tuple((sc.sum((0, 1)) / frames).cpu().tolist())
    expert_losses = []
    if refit_experts:
        model.experts.load_state_dict(start)
        expert_losses = _train_experts(
            model, data, num_steps=expert_steps, lr=lr, seed=seed, batch_size=batch_size
        )
    return CrossFitResult(
        groups=tuple(_key(v) for v in g.unique()),
        gate_shrinkage=kappa,
        shrinkage_cv=cv,
        gate_losses=gate_losses,
        fold_log_likelihood=fold_ll,
        fold_expert_log_likelihood=fold_expert,
        expert_losses=expert_losses,
        seconds=time.perf_counter() - t0,
    )


def _key(v):
    v = v.item()
    return int(v) if float(v).is_integer() else v


def simulate_expert_failures(
    model,
    data: MultimodalData,
    scores: torch.Tensor,
    evidence: torch.Tensor,
    expert_outputs: torch.Tensor,
    *,
    fraction: float = 0.5,
    seed: int = 0,
):
    r"""Out-of-fold data for the gate stage with simulated expert failures (stacking-level
    augmentation).

    On the training corpus an expert fails where the gate can see why (noise in its stream, a
    patch); on a new corpus it can also fail on inputs that look normal (a mouth expert trained
    on one face, shown another). Such a failure shows only in the expert's *disagreement* with
    the others. This adds ``K = round(fraction N)`` copies of training sequences ``n`` (drawn
    with replacement) in which one expert ``m`` (drawn uniformly) gives the out-of-fold outputs
    it gave on another sequence :math:`n' \ne n`: confident, of the right kind for that
    stream, and unrelated to sequence ``n``'s labels. The copy keeps sequence ``n``'s inputs and
    labels; the failed expert's scores are recomputed against them,
    :math:`\ell_{tm} = \log p(y^{(n)}_t \mid o^{(n')}_{tm})`. A gate fit on the result
    (with the ``"disagreement"`` input) learns to lower an expert's weight where it disagrees
    with the others, whatever its inputs look like.

    Parameters
    ----------
    model : GatedMixture
        Only its head is used (:meth:`~mmpgm.models.mixture.GatedMixture.component_log_prob`).
    data : MultimodalData
        ``N`` training sequences (as given to :func:`out_of_fold_scores`).
    scores, evidence, expert_outputs : Tensor ``(N, T, M)``, ``(N, T)`` bool, ``(N, T, M, P)``
        From :func:`out_of_fold_scores` (``return_outputs=True``).
    fraction : float
        ``K / N`` (``> 0``).
    seed : int
        Seeds the draws.

    Returns
    -------
    tuple
        ``(data, scores, evidence, expert_outputs)`` of ``N + K`` sequences, the originals
        first (the data keep no metadata, see :func:`mmpgm.data_shards.concat_data`), and the
        failed expert of each copy, an ``(K,)`` int64 tensor.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not fraction > 0:
        raise ValueError(f"fraction: expected a positive number, got {fraction!r}")
    data = model.check_data(data)
    model.check_training_data(data)
    _check_scores(model, data, scores, evidence)
    N, T, M = scores.shape
    if not isinstance(expert_outputs, torch.Tensor) or expert_outputs.shape[:3] != (N, T, M):
        raise ValueError(
            f"expert_outputs: expected the out-of-fold outputs (N, T, M, P) = ({N}, {T}, {M}, P)"
        )
    if N < 2:
        raise ValueError("data: expected at least 2 sequences to swap outputs between")
    K = max(1, int(round(float(fraction) * N)))
    gen = torch.Generator().manual_seed(int(seed))
    src = torch.randint(0, N, (K,), generator=gen)
    other = (src + torch.randint(1, N, (K,), generator=gen)) % N  # never the same sequence
    failed = torch.randint(0, M, (K,), generator=gen)
    dev = scores.device
    src_d, other_d, failed_d = src.to(dev), other.to(dev), failed.to(dev)
    out = expert_outputs[src_d].clone()
    rows = torch.arange(K, device=dev)
    out[rows, :, failed_d] = expert_outputs[other_d, :, failed_d]
    y, _ = model.targets(data[src_d.to(data.device)])
    new_scores = scores[src_d].clone()
    lc = model.component_log_prob(out.to(y.device), y).to(new_scores)
    new_scores[rows, :, failed_d] = lc[rows, :, failed_d]
    aug = concat_data([data, data[src_d.to(data.device)]])
    return (
        aug,
        torch.cat([scores, new_scores]),
        torch.cat([evidence, evidence[src_d]]),
        torch.cat([expert_outputs, out]),
        failed,
    )
