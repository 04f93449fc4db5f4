r"""Staged training of a :class:`~mmpgm.models.mixture.GatedMixture`: the experts alone, then the
gate alone with the experts frozen.

* :func:`pretrain_experts`: supervised training of each expert on its own observed, labelled
  frames (Adam on :math:`-\sum_m \sum_t \log p(y_t \mid f_m) + \mathcal L_{co}`);
* :func:`fit_gate_to_scores`: the gate fit on the exact mixture log-likelihood of *fixed*
  per-frame expert scores :math:`\ell_{tm}`, optionally shrunk toward equal weights (the gate
  stage of cross-fitting, :mod:`mmpgm.inference.cross_fit`, and of :func:`fit_gate`);
* :func:`fit_gate`: the gate fit on data the experts never saw (e.g. held-out speakers), so it
  learns how far each expert can be trusted on unseen data rather than on the data the experts
  memorized (Adam on the experts' scores, or the Appendix-A EM with ``gate_only=True``).

Each public function validates its data once (``model.check_data``); the loops then use the
model's training interface (``forward_outputs``, ``target_scores``, ``frame_penalty``,
``gate_log_weights``, ``expert_scores``, ``mixture_log_likelihood``) on checked data and
batches of it.
"""

from __future__ import annotations

import torch

from .._rng import seeded
from .._validation import check_choice, check_float, check_int
from ..data import MultimodalData
from .em_mixture import fit_em_mixture

__all__ = ["fit_gate", "fit_gate_to_scores", "pretrain_experts"]


def _check_steps(**kw) -> None:
    """``name=value`` pairs that must be ints >= 1 (``ValueError`` naming the first that is not)."""
    for name, v in kw.items():
        check_int(name, v)


def _batches(data: MultimodalData, batch_size, gen):
    N = data.num_sequences
    if batch_size is None or batch_size >= N:
        return [data]
    return data.batches(batch_size, True, gen)


def _model_tensor_kw(model) -> dict:
    p = next(model.parameters())
    return {"dtype": p.dtype, "device": p.device}


# ---------------------------------------------------------------------- experts
def pretrain_experts(
    model,
    data: MultimodalData,
    *,
    num_steps: int = 200,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
) -> list:
    r"""Supervised pre-training of each expert of ``model`` alone on its observed, labelled
    frames: Adam on :math:`-\sum_m \sum_t \log p(y_t \mid f_m) + \mathcal L_{co}` per labelled
    frame (the gate is not trained). Sets the input standardization first when not set yet
    (``model.init_from_data``). Returns the per-frame losses, one per epoch."""
    _check_steps(num_steps=num_steps)
    check_int("seed", seed, minimum=0)
    data = model.check_data(data)
    model.check_training_data(data)
    model.init_from_data(data)
    return _train_experts(model, data, num_steps=num_steps, lr=lr, seed=seed, batch_size=batch_size)


def _train_experts(model, data, *, num_steps: int, lr: float, seed: int, batch_size) -> list:
    """The loop of :func:`pretrain_experts` on checked ``data`` (the standardization already
    set): no validation, so it can run on subsets and copies of a model."""
    with seeded(seed, _model_tensor_kw(model)["device"]):
        return _expert_loop(
            model, data, num_steps=num_steps, lr=lr, seed=seed, batch_size=batch_size
        )


def _expert_loop(model, data, *, num_steps, lr, seed, batch_size) -> list:
    gen = torch.Generator().manual_seed(seed)
    params = [p for m in model.modalities for p in model.experts[m].parameters()]
    optim = torch.optim.Adam(params, lr=lr)
    losses = []
    N = data.num_sequences
    for _ in range(num_steps):
        total = 0.0
        for b in _batches(data, batch_size, gen):
            optim.zero_grad()
            outputs = model.forward_outputs(b)
            scores = model.target_scores(outputs, b)
            w = (outputs.available & scores.labelled[..., None]).to(scores.log_component.dtype)
            loss = -(scores.log_component * w).sum()
            pen = model.frame_penalty(outputs, scores, expert_fit=False)
            if pen is not None:
                loss = loss + pen.sum()
            loss = loss / w.sum().clamp_min(1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optim.step()
            total += loss.item() * b.num_sequences / N
        losses.append(total)
    return losses


# ---------------------------------------------------------------------- gate
def _shrinkage(log_w, avail, frames, center_logits=None):
    """``sum_t KL(pi_t || g_t)`` over ``frames`` (bool ``(N, T)``): ``pi_t`` is
    ``softmax(center_logits)`` (uniform when None) renormalized over the experts observed at
    frame ``t`` (``avail (N, T, M)``). For the Markov gate (``log_w`` a pair ``(initial,
    transition)``) every transition row is shrunk (and the initial distribution)."""

    def kl(lw, av):
        if center_logits is None:
            logits = torch.zeros_like(lw)
        else:
            logits = center_logits.to(lw.dtype).expand_as(lw)
        neg = torch.full((), -float("inf"), dtype=lw.dtype, device=lw.device)
        log_pi = torch.log_softmax(torch.where(av, logits, neg), -1)
        pi = log_pi.exp()
        diff = torch.where(av, log_pi - lw, torch.zeros_like(lw))
        return (pi * diff).sum(-1)

    if isinstance(log_w, tuple):
        init, trans = log_w
        rows = kl(trans, avail[:, :, None, :].expand_as(trans)).mean(-1)  # (N, T)
        first = kl(init, avail[:, 0])
        rows = torch.cat([first[:, None], rows[:, 1:]], 1)
        return (rows * frames.to(rows.dtype)).sum()
    return (kl(log_w, avail) * frames.to(log_w.dtype)).sum()


def _check_gate_options(gate_shrinkage, shrink_toward) -> None:
    check_float("gate_shrinkage", gate_shrinkage, minimum=0.0)
    check_choice("shrink_toward", shrink_toward, ("constant", "uniform"))


def _check_scores(model, data, scores, evidence) -> None:
    N, T, M = data.num_sequences, data.num_timesteps, model.num_experts
    if tuple(scores.shape) != (N, T, M) or tuple(evidence.shape) != (N, T):
        raise ValueError(
            f"scores, evidence: expected shapes ({N}, {T}, {M}) and ({N}, {T}), "
            f"got {tuple(scores.shape)} and {tuple(evidence.shape)}"
        )


def fit_gate_to_scores(
    model,
    data: MultimodalData,
    scores: torch.Tensor,
    evidence: torch.Tensor,
    *,
    num_steps: int = 100,
    lr: float = 0.01,
    batch_size: int | None = None,
    seed: int = 0,
    gate_shrinkage: float = 0.0,
    shrink_toward: str = "uniform",
    expert_outputs: torch.Tensor | None = None,
) -> list:
    r"""Fit ``model.gate`` alone (Adam, ``num_steps`` epochs) to maximize
    :math:`\log p(y \mid x)` with the experts' per-frame scores fixed to ``scores``
    ``(N, T, M)`` (e.g. from :func:`mmpgm.inference.cross_fit.out_of_fold_scores`; ``evidence
    (N, T)`` bool marks the frames that carry evidence), minus
    :math:`\kappa \sum_t \mathrm{KL}(\pi \| g_t)` (``gate_shrinkage``), :math:`\pi`
    renormalized over the experts observed at each frame: equal weights with
    ``shrink_toward="uniform"`` (default; a symmetric Dirichlet prior on :math:`g_t`), or with
    ``"constant"`` a constant weight vector fit jointly, so that only the gate's frame-to-frame
    variation is shrunk (a large :math:`\kappa` then gives the best constant gate). Why the
    default is ``"uniform"``: on the audio-visual benchmark ``"constant"`` had the better
    held-out log-likelihood but the lower accuracy and a gate that hardly reacts to corrupted
    video (``benchmarks/results/av_speech_activity.md``). ``expert_outputs (N, T, M, P)``: the
    experts' raw outputs that produced ``scores`` (e.g. out-of-fold), read by a gate whose
    ``gate_inputs`` include ``"disagreement"`` (else the model's own experts are run).
    Returns the per-frame losses, one per epoch."""
    _check_steps(num_steps=num_steps)
    check_int("seed", seed, minimum=0)
    _check_gate_options(gate_shrinkage, shrink_toward)
    data = model.check_data(data)
    model.check_training_data(data)
    _check_scores(model, data, scores, evidence)
    if expert_outputs is not None and tuple(expert_outputs.shape[:3]) != tuple(scores.shape):
        raise ValueError(
            f"expert_outputs: expected shape {tuple(scores.shape)} + (P,), "
            f"got {tuple(expert_outputs.shape)}"
        )
    return _train_gate(
        model, data, scores, evidence, num_steps=num_steps, lr=lr, batch_size=batch_size,
        seed=seed, gate_shrinkage=gate_shrinkage, shrink_toward=shrink_toward,
        expert_outputs=expert_outputs,
    )  # fmt: skip


def _train_gate(
    model, data, scores, evidence, *, num_steps, lr, batch_size, seed, gate_shrinkage,
    shrink_toward, expert_outputs=None,
) -> list:  # fmt: skip
    """The loop of :func:`fit_gate_to_scores` on checked ``data`` and checked arguments."""
    kw = _model_tensor_kw(model)
    scores = scores.to(**kw)
    evidence = evidence.to(kw["device"])
    if expert_outputs is not None:
        expert_outputs = expert_outputs.to(**kw)
    with seeded(seed, kw["device"]):
        return _gate_loop(
            model,
            data,
            scores,
            evidence,
            kw,
            num_steps=num_steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            gate_shrinkage=gate_shrinkage,
            shrink_toward=shrink_toward,
            expert_outputs=expert_outputs,
        )


def _gate_loop(
    model,
    data,
    scores,
    evidence,
    kw,
    *,
    num_steps,
    lr,
    batch_size,
    seed,
    gate_shrinkage,
    shrink_toward,
    expert_outputs=None,
) -> list:
    N, M = data.num_sequences, model.num_experts
    gen = torch.Generator().manual_seed(seed)
    params = list(model.gate.parameters())
    center = None
    if shrink_toward == "constant" and gate_shrinkage > 0:
        center = torch.zeros(M, **kw, requires_grad=True)
        params = params + [center]
    optim = torch.optim.Adam(params, lr=lr)
    size = batch_size or N
    losses = []
    for _ in range(num_steps):
        order = torch.randperm(N, generator=gen) if size < N else torch.arange(N)
        total, frames = 0.0, 0.0
        for s in range(0, N, size):
            idx = order[s : s + size].to(data.device)
            b = data[idx]
            optim.zero_grad()
            avail, log_w = model.gate_log_weights(
                b, None if expert_outputs is None else expert_outputs[idx]
            )
            ev = evidence[idx]
            n = float(ev.sum())
            obj = model.mixture_log_likelihood(log_w, scores[idx], ev).sum()
            if gate_shrinkage > 0:
                shrunk = b.time_mask & avail.any(-1)
                obj = obj - gate_shrinkage * _shrinkage(log_w, avail, shrunk, center)
            loss = -obj / max(n, 1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optim.step()
            total, frames = total + loss.item() * n, frames + n
        losses.append(total / max(frames, 1.0))
    return losses


def fit_gate(
    model,
    data: MultimodalData,
    *,
    num_steps: int = 100,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
    method: str = "svi",
    m_steps: int = 5,
) -> list:
    r"""Staged training, second stage: fit only the gate of ``model``, experts frozen, on the
    exact mixture log-likelihood :math:`\log p(y \mid x) = \sum_t \log \sum_m g_{tm} p(y_t \mid
    f_m)` (:math:`c_t` summed out; the penalties do not depend on the gate). Meant for data the
    experts were *not* trained on (e.g. held-out speakers), so the gate learns how far each
    expert can be trusted on unseen data rather than on the data it memorized.

    ``method="svi"``: ``num_steps`` Adam epochs against the frozen experts' scores
    (:func:`fit_gate_to_scores`; the experts run once); ``"em"``: ``num_steps`` Appendix-A EM
    iterations of ``m_steps`` gradient steps each
    (:func:`mmpgm.inference.em_mixture.fit_em_mixture`, conditional and Markov gates).
    Returns the per-frame losses."""
    _check_steps(num_steps=num_steps)
    check_int("seed", seed, minimum=0)
    check_choice("method", method, ("svi", "em"))
    if method == "em":
        return fit_em_mixture(
            model, data, num_iters=num_steps, m_steps=m_steps, lr=lr, batch_size=batch_size,
            seed=seed, gate_only=True,
        )[0]  # fmt: skip
    data = model.check_data(data)
    model.check_training_data(data)
    model.init_from_data(data)
    scores, evidence = model.expert_scores(data)
    return _train_gate(
        model, data, scores, evidence, num_steps=num_steps, lr=lr, batch_size=batch_size,
        seed=seed, gate_shrinkage=0.0, shrink_toward="uniform",
    )  # fmt: skip
