"""Checking fits: label alignment across restarts, restarts as ArviZ chains, information
criteria, state accuracy, held-out model comparison, restart agreement of MAP paths, posterior
entropy, PSIS-LOO with its Pareto-k diagnostic surfaced.

An analysis layer above the models and training (it reads ``model.params`` and draws Laplace
samples); the conversions of results to ArviZ live in :mod:`mmpgm.results.arviz`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .inference.laplace import laplace_log_likelihood_draws, parameter_draws
from .models.hmm import HMMParams
from .results.arviz import ParetoKWarning, loo, parameter_chains_to_arviz

__all__ = [
    "StateAccuracy",
    "align_params",
    "permute_params",
    "restarts_to_inference_data",
    "information_criteria",
    "state_accuracy",
    "gate_report",
    "ModelComparison",
    "held_out_comparison",
    "PathAgreement",
    "map_path_agreement",
    "posterior_entropy",
    "loo",
    "ParetoKWarning",
]


def _shared_signature(params: HMMParams) -> np.ndarray:
    """Per shared state: emission means averaged over private states and modalities,
    ``(K_s, F)``."""
    feats = []
    for e in params.emissions.values():
        mean = e["loc"] if "loc" in e else e["probs"]
        feats.append(mean.mean(1).reshape(mean.shape[0], -1))
    return torch.cat(feats, -1).detach().cpu().double().numpy()


def align_params(reference: HMMParams, params: HMMParams):
    """Hungarian matching of ``params``' state labels to ``reference``'s.

    Returns ``(shared_perm, private_perms)`` such that state ``shared_perm[i]`` of ``params`` is
    state ``i`` of ``reference`` (and likewise per modality, after the shared alignment).
    """
    a, b = _shared_signature(reference), _shared_signature(params)
    scale = np.concatenate([a, b]).std(0) + 1e-12
    cost = (((a[:, None, :] - b[None, :, :]) / scale) ** 2).sum(-1)
    _, shared_perm = linear_sum_assignment(cost)
    private_perms = {}
    for m, e_ref in reference.emissions.items():
        key = "loc" if "loc" in e_ref else "probs"
        ra = e_ref[key].detach().cpu().double().numpy()  # (K_s, K_m, D)
        rb = params.emissions[m][key].detach().cpu().double().numpy()[shared_perm]
        sc = np.concatenate([ra, rb]).reshape(-1, ra.shape[-1]).std(0) + 1e-12
        cost = (((ra[:, :, None, :] - rb[:, None, :, :]) / sc) ** 2).sum((0, -1))
        private_perms[m] = linear_sum_assignment(cost)[1]
    return shared_perm, private_perms


def permute_params(params: HMMParams, shared_perm, private_perms) -> HMMParams:
    """Relabel states: new state ``i`` is old state ``perm[i]``."""
    sp = torch.as_tensor(np.asarray(shared_perm), dtype=torch.long)
    emissions = {}
    for m, e in params.emissions.items():
        pp = torch.as_tensor(np.asarray(private_perms[m]), dtype=torch.long)
        emissions[m] = {k: v[sp][:, pp] for k, v in e.items()}
    return HMMParams(
        shared_initial_probs=params.shared_initial_probs[sp],
        shared_transition_probs=params.shared_transition_probs[sp][:, sp],
        private_initial_probs={
            m: v[torch.as_tensor(np.asarray(private_perms[m]))]
            for m, v in params.private_initial_probs.items()
        },
        private_transition_probs={
            m: v[torch.as_tensor(np.asarray(private_perms[m]))][
                :, torch.as_tensor(np.asarray(private_perms[m]))
            ]
            for m, v in params.private_transition_probs.items()
        },
        emissions=emissions,
        emission_kinds=params.emission_kinds,
    )


def _flatten_params(params: HMMParams) -> dict:
    out = {
        "shared_initial_probs": params.shared_initial_probs,
        "shared_transition_probs": params.shared_transition_probs,
    }
    for m in params.private_initial_probs:
        out[f"{m}_initial"] = params.private_initial_probs[m]
        out[f"{m}_transition"] = params.private_transition_probs[m]
        for k, v in params.emissions[m].items():
            out[f"{m}_{k}"] = v
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def restarts_to_inference_data(models, data=None, num_param_samples: int = 0, seed: int = 0):
    """Align several fitted restarts and stack their parameters as ArviZ chains.

    Each model is one chain. With ``num_param_samples > 0`` and ``data``, each chain holds
    Laplace draws around that restart's MAP (see :mod:`mmpgm.inference.laplace`), so
    :func:`arviz.rhat` and :func:`arviz.ess` tell whether the restarts found the same optimum;
    with ``num_param_samples = 0`` each chain holds its single point estimate.
    """
    if len(models) < 1:
        raise ValueError("models: expected at least one fitted model")
    ref = models[0].params
    chains = []
    for model in models:
        perm = align_params(ref, model.params)
        if num_param_samples:
            draws = []
            for _ in parameter_draws(model, data, num_param_samples, seed):
                draws.append(_flatten_params(permute_params(model.params, *perm)))
        else:
            draws = [_flatten_params(permute_params(model.params, *perm))]
        chains.append({k: np.stack([d[k] for d in draws]) for k in draws[0]})
    return parameter_chains_to_arviz(chains)


def information_criteria(model, data) -> dict:
    """``{"log_likelihood", "num_parameters", "num_frames", "aic", "bic"}`` of a fitted model.

    BIC uses the number of observed frames as the sample size (a frame-level count, the usual
    convention for HMMs).
    """
    with torch.no_grad():
        ll = float(model.log_likelihood(data).sum())
    k = model.num_free_parameters()
    n = int(sum(m.sum() for m in data.mask.values()))
    return {
        "log_likelihood": ll,
        "num_parameters": k,
        "num_frames": n,
        "aic": -2 * ll + 2 * k,
        "bic": -2 * ll + k * math.log(max(n, 1)),
    }


class StateAccuracy(NamedTuple):
    """accuracy : fraction of scored frames whose relabelled estimate equals the truth;
    permutation : ``(K,)`` int, ``permutation[estimated] = true`` label (the best relabelling).
    """

    accuracy: float
    permutation: np.ndarray


def _is_ragged(states) -> bool:
    """A list (or tuple) of per-sequence paths, as :class:`mmpgm.MultimodalData` takes them."""
    return isinstance(states, (list, tuple)) and len(states) > 0 and not np.isscalar(states[0])


def _labels(name: str, states, path_dim: int) -> torch.Tensor:
    """Integer labels as int64, NaN -> -1 (missing, as in :class:`mmpgm.MultimodalData`); a
    trailing axis of size 1 after ``path_dim`` axes (``(N, T, 1)``, ``(T_i, 1)``) dropped."""
    x = states if isinstance(states, torch.Tensor) else torch.as_tensor(np.asarray(states))
    if x.is_floating_point():
        x = torch.where(torch.isnan(x), torch.full_like(x, -1), x)
        if bool((x != x.round()).any()):
            raise ValueError(f"{name}: expected integer state labels, got non-integer values")
    elif x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected integer state labels, got {x.dtype}")
    x = x.long()
    if x.dim() == path_dim + 1 and x.shape[-1] == 1:  # one stream's labels, stored as (.., 1)
        x = x[..., 0]
    return x


def _flat_states(name: str, states, lengths) -> torch.Tensor:
    """``(N, T)`` (padding -1, or cut by ``lengths``), a ``(T,)`` path, or a list of 1-d paths
    (ragged) -> one flat int64 tensor, -1 where not scored. With ``lengths`` only the frames
    ``t < lengths[n]`` are kept, sequence by sequence (so padded and ragged inputs line up)."""
    if _is_ragged(states):
        parts = []
        for i, s in enumerate(states):
            p = _labels(f"{name}[{i}]", s, 1)
            if p.dim() != 1:
                raise ValueError(f"{name}[{i}]: expected a (T_i,) path, got shape {tuple(p.shape)}")
            parts.append(p)
        if lengths is not None:
            if len(lengths) != len(parts):
                raise ValueError(
                    f"{name}: expected {len(lengths)} paths (one per length), got {len(parts)}"
                )
            parts = [p[: int(n)] for p, n in zip(parts, lengths, strict=True)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    x = _labels(name, states, 2)
    if lengths is None:
        return x.reshape(-1)
    ln = torch.as_tensor(np.asarray(lengths)).reshape(-1).long()
    if x.dim() != 2 or x.shape[0] != ln.numel():
        raise ValueError(
            f"{name}: with lengths (given, or those of the other input's ragged paths) expected "
            f"({ln.numel()}, T) labels, got {tuple(x.shape)}"
        )
    if ln.numel() and int(ln.max()) > x.shape[1]:
        raise ValueError(
            f"{name}: expected at least {int(ln.max())} frames per sequence (the longest "
            f"length), got {x.shape[1]}"
        )
    inside = torch.arange(x.shape[1])[None, :] < ln[:, None]
    return x[inside.to(x.device)]


def state_accuracy(true_states, estimated_states, num_states: int | None = None, lengths=None):
    """Fraction of frames whose estimated label equals the truth after the best relabelling
    (Hungarian assignment on the confusion matrix).

    Parameters
    ----------
    true_states, estimated_states : array-like
        What :class:`mmpgm.MultimodalData` takes for a stream of labels: a tensor or numpy
        array ``(N, T)`` (or ``(N, T, 1)``; for example ``latents["shared"]`` and
        ``post.map["shared"]``), a ``(T,)`` path, or a list of 1-d paths (arrays or lists, or
        ``(T_i, 1)`` arrays) of different lengths (ragged). Frames whose true label is
        negative (``-1``: unknown or padding) or NaN (missing) are not scored. A ragged list
        and a padded array may be mixed: the padded one is cut to the ragged lengths.
    num_states : int, optional
        ``K``; default one more than the largest label in either input.
    lengths : array-like, optional
        ``(N,)``: frames ``t >= lengths[n]`` are padding and not scored.

    Returns
    -------
    StateAccuracy
        ``(accuracy, permutation)``; unpacks as a pair (``acc, perm = state_accuracy(...)``).
    """
    if lengths is None and _is_ragged(true_states) != _is_ragged(estimated_states):
        ragged = true_states if _is_ragged(true_states) else estimated_states
        lengths = [len(p) for p in ragged]
    t = _flat_states("true_states", true_states, lengths)
    e = _flat_states("estimated_states", estimated_states, lengths)
    if t.shape != e.shape:
        raise ValueError(
            f"estimated_states: expected as many frames as true_states ({t.numel()}), got "
            f"{e.numel()}"
        )
    scored = t >= 0
    if bool((e[scored] < 0).any()):
        raise ValueError("estimated_states: expected a state >= 0 on every scored frame")
    t, e = t[scored], e[scored]
    top = int(max(t.max(), e.max())) + 1 if t.numel() else 1
    if num_states is None:
        num_states = top
    elif not isinstance(num_states, int) or isinstance(num_states, bool) or num_states < top:
        raise ValueError(
            f"num_states: expected an int >= {top} (the largest label + 1), got {num_states!r}"
        )
    conf = torch.zeros(num_states, num_states, dtype=torch.float64)  # exact counts
    conf.index_put_((e.cpu(), t.cpu()), torch.ones(len(t), dtype=torch.float64), accumulate=True)
    rows, cols = linear_sum_assignment(-conf.numpy())
    perm = np.empty(num_states, dtype=int)
    perm[rows] = cols
    return StateAccuracy(float(conf.numpy()[rows, cols].sum() / max(1, len(t))), perm)


def gate_report(posterior, data, unreliable: torch.Tensor) -> dict:
    """How a fitted mixture treats the unreliable stream of
    :func:`mmpgm.datasets.unreliable_stream_data`.

    ``posterior``: a :class:`~mmpgm.results.MixturePosterior` of ``data``. Returns the
    mean gate weight on ``sharp`` inside and outside its noise segments (``"inside"``,
    ``"outside"``), the per-frame accuracy of the mixture (``"accuracy"``) and of each expert
    alone (``"expert_accuracy"``, in the model's modality order)."""
    y = data.labels["speech"]
    sharp = list(posterior.modalities).index("sharp")
    w = posterior.gate_weights[..., sharp]

    def accuracy(p):
        return float(((p > 0.5).long() == y).double().mean())

    return {
        "inside": float(w[unreliable].mean()),
        "outside": float(w[~unreliable].mean()),
        "accuracy": accuracy(posterior.predictive),
        "expert_accuracy": [
            accuracy(posterior.expert_predictions[..., m])
            for m in range(posterior.expert_predictions.shape[-1])
        ],
    }


# ---------------------------------------------------------------------- model comparison
class ModelComparison(NamedTuple):
    r"""Models ranked by their log predictive density of held-out sequences.

    names : tuple of str, best first.
    elpd : dict name -> float, :math:`\sum_n \log p(x_n \mid \text{training data})` over
        the held-out sequences (nats).
    elpd_per_frame : dict name -> float, ``elpd`` over the number of observed frames.
    difference : dict name -> float, ``elpd[best] - elpd[name]`` (0 for the best).
    difference_se : dict name -> float, standard error of ``difference`` from the paired
        per-sequence differences, :math:`\sqrt{N}\,\mathrm{sd}_n(d_n)` (0 for the best).
    per_sequence : dict name -> ``(N,)`` tensor of per-sequence log predictive densities.
    num_parameters : dict name -> int (free parameters, where the model says).
    """

    names: tuple
    elpd: dict
    elpd_per_frame: dict
    difference: dict
    difference_se: dict
    per_sequence: dict
    num_parameters: dict

    def table(self) -> str:
        """A plain-text table, best model first."""
        rows = [f"{'model':<16}{'elpd':>14}{'elpd/frame':>12}{'diff':>12}{'diff se':>10}"]
        for n in self.names:
            rows.append(
                f"{n:<16}{self.elpd[n]:>14.2f}{self.elpd_per_frame[n]:>12.4f}"
                f"{self.difference[n]:>12.2f}{self.difference_se[n]:>10.2f}"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def held_out_comparison(models, data, *, num_param_samples: int = 0, seed: int = 0):
    r"""Rank fitted models by the log predictive density of held-out sequences ``data``.

    Sequences the models were not fitted on need no leave-one-out approximation: their
    predictive density is computed directly, so there is no Pareto-k problem (PSIS-LOO over
    training sequences of many frames is often unreliable, see :func:`loo`). Per sequence,

    .. math:: \mathrm{lpd}_n = \log \frac{1}{S} \sum_{s=1}^S p(x_n \mid \theta_s)

    with :math:`\theta_s` Laplace draws around each model's MAP (``num_param_samples = S``), or
    the plug-in :math:`\log p(x_n \mid \hat\theta)` when ``num_param_samples = 0``.
    Differences between models are paired over sequences, so their standard error
    :math:`\sqrt{N}\,\mathrm{sd}_n(\mathrm{lpd}^{best}_n - \mathrm{lpd}^{m}_n)` says whether
    a gap is more than noise (as in :func:`arviz.compare`'s ``dse``).

    Parameters
    ----------
    models : dict
        name -> fitted model (anything with ``log_likelihood(data) -> (N,)`` on ``data``).
    data : MultimodalData
        Held-out sequences (not used to fit any of the models), ``N >= 1``.
    num_param_samples : int
        Laplace parameter draws per model (0 = plug-in MAP).
    seed : int
        Seed of the parameter draws.

    Returns
    -------
    ModelComparison
    """
    if not isinstance(models, dict) or not models:
        raise TypeError(
            f"models: expected a non-empty dict name -> fitted model, got {type(models).__name__}"
        )
    if not isinstance(num_param_samples, int) or num_param_samples < 0:
        raise ValueError(f"num_param_samples: expected an int >= 0, got {num_param_samples!r}")
    per_sequence, num_parameters = {}, {}
    num_frames = None
    for name, model in models.items():
        checked = model.check_data(data)
        if num_frames is None:
            num_frames = int(sum(int(m.sum()) for m in checked.mask.values()))
        if num_param_samples:
            draws = laplace_log_likelihood_draws(model, checked, num_param_samples, seed=seed)
            lpd = torch.logsumexp(draws, 0) - math.log(num_param_samples)
        else:
            with torch.no_grad():
                lpd = model.log_likelihood(checked).detach()
        per_sequence[name] = lpd.double().cpu()
        count = getattr(model, "num_free_parameters", None)
        num_parameters[name] = int(count()) if callable(count) else None
    elpd = {n: float(v.sum()) for n, v in per_sequence.items()}
    names = tuple(sorted(elpd, key=lambda n: -elpd[n]))
    best = per_sequence[names[0]]
    difference, difference_se = {}, {}
    for n in names:
        d = best - per_sequence[n]
        difference[n] = float(d.sum())
        difference_se[n] = float(d.std(unbiased=True) * math.sqrt(len(d))) if len(d) > 1 else 0.0
    return ModelComparison(
        names=names,
        elpd=elpd,
        elpd_per_frame={n: v / max(num_frames, 1) for n, v in elpd.items()},
        difference=difference,
        difference_se=difference_se,
        per_sequence=per_sequence,
        num_parameters=num_parameters,
    )


# ---------------------------------------------------------------------- discrete-state diagnostics
class PathAgreement(NamedTuple):
    """Agreement of the MAP paths of several fits (restarts) of one model.

    pairwise : ``(R, R)`` array, fraction of frames on which fits ``i`` and ``j`` give the same
        state after the best relabelling (1 on the diagonal).
    mean : float, the mean over pairs ``i < j``.
    minimum : float, the worst pair (1.0 with one fit).
    """

    pairwise: np.ndarray
    mean: float
    minimum: float


def map_path_agreement(models, data, *, chain: str = "shared") -> PathAgreement:
    """Whether restarts found the same segmentation: the agreement of their MAP paths.

    For discrete states, R-hat over restart parameters says little when every restart sits in
    the same poor basin, and nothing about label switching; the paths themselves are what a
    user reads. Each pair of fits is compared frame by frame after the best relabelling
    (Hungarian assignment, :func:`state_accuracy`). Agreement well below 1 means the restarts
    disagree about *which frames belong together*, not only about parameter values.

    Parameters
    ----------
    models : sequence of fitted models with the same chains (e.g. one per restart seed)
    data : MultimodalData
    chain : str
        Which chain's MAP path to compare (``"shared"``, a modality's private chain, or a
        ``"<m>_fault"`` chain).
    """
    models = list(models)
    if not models:
        raise ValueError("models: expected at least one fitted model, got none")
    paths, lengths = [], None
    for model in models:
        post = model.posterior(model.check_data(data), map_path=True)
        if post.map is None or chain not in post.map:
            available = sorted(post.map) if post.map else []
            raise ValueError(f"chain: expected one of {available}, got {chain!r}")
        paths.append(post.map[chain].cpu())
        lengths = post.lengths.cpu()
    R = len(paths)
    pairwise = np.ones((R, R))
    for i in range(R):
        for j in range(i + 1, R):
            agree = state_accuracy(paths[i], paths[j], lengths=lengths).accuracy
            pairwise[i, j] = pairwise[j, i] = agree
    upper = pairwise[np.triu_indices(R, 1)]
    return PathAgreement(
        pairwise,
        float(upper.mean()) if upper.size else 1.0,
        float(upper.min()) if upper.size else 1.0,
    )


def posterior_entropy(posterior) -> dict:
    r"""Mean posterior entropy per frame of each discrete chain, per sequence, in nats.

    ``posterior``: a result with ``marginals`` (chain -> ``(N, T, K)``) and ``lengths``
    (:class:`~mmpgm.results.Posterior`). Returns chain -> ``(N,)`` tensor of
    :math:`\frac{1}{T_n}\sum_t H[p(z_t \mid x)]`; 0 means every frame's state is certain,
    :math:`\log K` means the model cannot tell the states apart.
    """
    marginals = getattr(posterior, "marginals", None)
    if not isinstance(marginals, dict):
        raise TypeError(
            "posterior: expected a result with discrete marginals (an HMM Posterior), got "
            f"{type(posterior).__name__}"
        )
    out = {}
    for name, p in marginals.items():
        T = p.shape[1]
        inside = torch.arange(T, device=p.device)[None] < posterior.lengths.to(p.device)[:, None]
        h = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)
        # a certain frame's marginal can round to 1 + eps, whose entropy would be -1e-17
        h = torch.where(inside, h.clamp_min(0.0), torch.zeros_like(h))
        out[name] = h.sum(-1) / posterior.lengths.to(p.device).clamp_min(1)
    return out
