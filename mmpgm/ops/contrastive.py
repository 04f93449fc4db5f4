r"""Contrastive (siamese) loss and label-driven pair sampling (paper section 6.3, eq. 51-53).

Torch only. The distance of a pair of embeddings is eq. 51,
:math:`D = \lVert z_1 - z_2 \rVert_2`, and the per-pair loss is Hadsell et al.'s (2006)
contrastive loss as the paper writes it in eq. 52 (no factor 1/2):

.. math::
    L(z_1, z_2, \mathrm{same}) = \mathrm{same}\; D^2 + (1 - \mathrm{same})\,
    \max(0, m - D)^2,

(:math:`L_p = D^2` for a similar pair, :math:`L_n = \max(0, m - D)^2` for a dissimilar one,
margin :math:`m > 0`); eq. 53 sums it over the pairs. The paper's eq. 52 attaches
:math:`(1 - y)` to :math:`L_p` while its text calls :math:`y = 1` "similar"; we take the
meaning of the text and of Hadsell et al.: similar pairs are pulled together. ``same`` is
passed explicitly, so no 0/1 convention is needed.

Pairs come from class labels (:func:`sample_pairs`): a positive pair is two distinct frames of
one class, a negative pair two frames of different classes, in a fixed proportion.
"""

from __future__ import annotations

import torch

__all__ = ["contrastive_loss", "pair_distance", "sample_negatives", "sample_pairs"]

_BALANCES = ("class", "frame")


def pair_distance(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    r"""Euclidean distance of paired embeddings, eq. 51: :math:`\lVert z_1 - z_2 \rVert_2`.

    Parameters
    ----------
    z1, z2 : Tensor ``(..., E)``
        Broadcastable embeddings.

    Returns
    -------
    Tensor ``(...)``
        The distances. The gradient at :math:`z_1 = z_2` is taken as 0 (a subgradient of the
        norm) instead of the NaN that ``torch.linalg.norm`` gives there.
    """
    sq = (z1 - z2).square().sum(-1)
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(sq))


def contrastive_loss(
    z1: torch.Tensor, z2: torch.Tensor, same: torch.Tensor, *, margin: float
) -> torch.Tensor:
    r"""Per-pair contrastive loss (eq. 52): :math:`D^2` for a similar pair,
    :math:`\max(0, m - D)^2` for a dissimilar one, :math:`D = \lVert z_1 - z_2 \rVert`.

    Parameters
    ----------
    z1, z2 : Tensor ``(P, E)``
        Embeddings of the two members of each pair (any common leading shape ``S`` works:
        ``S + (E,)``).
    same : Tensor ``(P,)`` bool
        True for a similar (same-class) pair.
    margin : float
        :math:`m > 0`: dissimilar pairs farther apart than ``margin`` cost nothing.

    Returns
    -------
    Tensor ``(P,)``
        The loss of every pair; eq. 53 is its sum.
    """
    if z1.shape[-1:] != z2.shape[-1:] or z1.dim() < 1:
        raise ValueError(
            f"z2: expected embeddings of the size of z1's {tuple(z1.shape[-1:])}, got "
            f"{tuple(z2.shape)}"
        )
    if not (isinstance(margin, (int, float)) and margin > 0):
        raise ValueError(f"margin: expected a positive float, got {margin!r}")
    lead = torch.broadcast_shapes(z1.shape[:-1], z2.shape[:-1])
    if tuple(same.shape) != tuple(lead):
        raise ValueError(
            f"same: expected shape {tuple(lead)} (one per pair), got {tuple(same.shape)}"
        )
    if same.dtype != torch.bool:
        raise ValueError(f"same: expected a bool tensor, got dtype {same.dtype}")
    sq = (z1 - z2).square().sum(-1)  # D^2 without the root: smooth at D = 0
    hinge = (margin - pair_distance(z1, z2)).clamp_min(0.0).square()
    return torch.where(same, sq, hinge)


def _classes(labels: torch.Tensor):
    """Labelled frames of ``labels (F,)`` grouped by class: ``(order, classes, counts,
    starts)``: ``order`` the frame indices sorted by class (stable), ``classes (C,)`` the sorted
    distinct labels, ``counts (C,)`` their frame counts, ``starts (C,)`` the offset of each class
    in ``order``."""
    if labels.dim() != 1:
        raise ValueError(f"labels: expected shape (F,), got {tuple(labels.shape)}")
    if labels.is_floating_point():
        valid = torch.isfinite(labels) & (labels >= 0)
        if bool((labels[valid] != labels[valid].round()).any()):
            raise ValueError("labels: expected integer class labels (-1 = unlabelled)")
    else:
        valid = labels >= 0
    idx = torch.nonzero(valid).flatten()
    lab = labels[idx].long()
    perm = torch.argsort(lab, stable=True)
    order, lab = idx[perm], lab[perm]
    classes, counts = torch.unique_consecutive(lab, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return order, classes, counts, starts


def _uniform_int(high: torch.Tensor, generator) -> torch.Tensor:
    """One uniform draw from ``{0, ..., high - 1}`` per entry of ``high (n,)`` (``high >= 1``)."""
    u = torch.rand(high.shape, generator=generator, device=high.device, dtype=torch.float64)
    return torch.minimum((u * high).long(), high - 1)


def _pick(weights: torch.Tensor, n: int, generator) -> torch.Tensor:
    """``n`` draws of an index with probabilities proportional to ``weights (C,)``."""
    return torch.multinomial(weights.double(), n, replacement=True, generator=generator)


def sample_pairs(
    labels: torch.Tensor,
    num_pairs: int,
    *,
    positive_fraction: float = 0.5,
    balance: str = "class",
    generator: torch.Generator | None = None,
):
    r"""Draw similar and dissimilar pairs of frames from class labels.

    ``round(positive_fraction * num_pairs)`` pairs are positive (two *distinct* frames of one
    class) and the rest negative (frames of two different classes). When the labels allow only
    one kind (one class; or every class a single frame), all ``num_pairs`` pairs are of that
    kind; when they allow neither (fewer than two labelled frames) the result is empty.

    Parameters
    ----------
    labels : Tensor ``(F,)``
        Integer class per frame; negative (and NaN, for float labels) = unlabelled, never drawn.
    num_pairs : int
        :math:`P`.
    positive_fraction : float
        Share of positive pairs, in ``[0, 1]``.
    balance : {"class", "frame"}
        ``"class"`` (default): a positive pair's class is uniform over the classes with at least
        two frames, a negative pair's two classes are a uniform ordered pair of distinct
        classes, and frames are uniform within their class; so rare classes are drawn as often
        as common ones. ``"frame"``: the first frame is uniform over the eligible labelled
        frames and the second uniform over the frames of its class (positive, excluding
        itself) or of the other classes (negative).
    generator : torch.Generator, optional
        Source of randomness (default torch's global generator).

    Returns
    -------
    i, j : Tensor ``(P,)`` int64
        Frame indices into ``labels`` (``i != j`` always).
    same : Tensor ``(P,)`` bool
        True for positive pairs: the first ``round(positive_fraction * P)`` entries (or all /
        none in the degenerate cases above).
    """
    if not isinstance(num_pairs, int) or isinstance(num_pairs, bool) or num_pairs < 1:
        raise ValueError(f"num_pairs: expected a positive int, got {num_pairs!r}")
    if not (isinstance(positive_fraction, (int, float)) and 0 <= positive_fraction <= 1):
        raise ValueError(
            f"positive_fraction: expected a float in [0, 1], got {positive_fraction!r}"
        )
    if balance not in _BALANCES:
        raise ValueError(f"balance: expected one of {list(_BALANCES)}, got {balance!r}")
    device = labels.device
    order, classes, counts, starts = _classes(labels)
    C = classes.numel()
    multi = torch.nonzero(counts >= 2).flatten()  # classes that can form a positive pair
    can_pos, can_neg = multi.numel() > 0, C >= 2
    num_pos = int(round(positive_fraction * num_pairs))
    if not can_neg:
        num_pos = num_pairs if can_pos else 0
    elif not can_pos:
        num_pos = 0
    num_neg = num_pairs - num_pos if can_neg else 0
    empty = torch.zeros(0, dtype=torch.long, device=device)
    i_parts, j_parts = [empty], [empty]
    if num_pos:
        if balance == "class":
            c = multi[torch.randint(multi.numel(), (num_pos,), generator=generator, device=device)]
        else:
            c = multi[_pick(counts[multi], num_pos, generator).to(device)]
        n = counts[c]
        r1 = _uniform_int(n, generator)
        r2 = _uniform_int(n - 1, generator)
        r2 = r2 + (r2 >= r1).long()  # a distinct frame of the same class
        i_parts.append(order[starts[c] + r1])
        j_parts.append(order[starts[c] + r2])
    if num_neg:
        if balance == "class":
            c1 = torch.randint(C, (num_neg,), generator=generator, device=device)
            r = torch.randint(C - 1, (num_neg,), generator=generator, device=device)
            c2 = r + (r >= c1).long()
            i_parts.append(order[starts[c1] + _uniform_int(counts[c1], generator)])
            j_parts.append(order[starts[c2] + _uniform_int(counts[c2], generator)])
        else:
            c1 = _pick(counts, num_neg, generator).to(device)
            a = order[starts[c1] + _uniform_int(counts[c1], generator)]
            i_parts.append(a)
            j_parts.append(sample_negatives(labels, a, 1, generator=generator)[:, 0])
    i, j = torch.cat(i_parts), torch.cat(j_parts)
    same = torch.arange(i.numel(), device=device) < num_pos
    return i, j, same


def sample_negatives(
    labels: torch.Tensor,
    anchors: torch.Tensor,
    num_candidates: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each anchor frame, ``num_candidates`` frames drawn uniformly (with replacement) from
    the labelled frames of the *other* classes (the candidates of hard-negative mining).

    Parameters
    ----------
    labels : Tensor ``(F,)``
        As in :func:`sample_pairs`; at least two classes.
    anchors : Tensor ``(A,)`` int64
        Labelled frame indices.
    num_candidates : int

    Returns
    -------
    Tensor ``(A, num_candidates)`` int64
        Frame indices whose labels differ from their anchor's.
    """
    if (
        not isinstance(num_candidates, int)
        or isinstance(num_candidates, bool)
        or num_candidates < 1
    ):
        raise ValueError(f"num_candidates: expected a positive int, got {num_candidates!r}")
    order, classes, counts, starts = _classes(labels)
    if classes.numel() < 2:
        raise ValueError(
            f"labels: negatives need at least two classes, got {classes.numel()} labelled class(es)"
        )
    anchor_labels = labels[anchors].long()
    c1 = torch.searchsorted(classes, anchor_labels)
    if bool((c1 >= classes.numel()).any()) or bool(
        (classes[c1.clamp_max(classes.numel() - 1)] != anchor_labels).any()
    ):
        raise ValueError("anchors: expected indices of labelled frames")
    A = anchors.numel()
    if A == 0:
        return torch.zeros(0, num_candidates, dtype=torch.long, device=labels.device)
    weights = counts.double().expand(A, -1).clone()
    weights[torch.arange(A, device=labels.device), c1] = 0.0  # frame-uniform over other classes
    c2 = torch.multinomial(weights, num_candidates, replacement=True, generator=generator)
    r = _uniform_int(counts[c2].flatten(), generator).reshape(c2.shape)
    return order[starts[c2] + r]
