"""Contrastive loss (eq. 51-53) against hand computations, and the label-driven pair sampler."""

import math

import pytest
import torch

from mmpgm.ops import contrastive_loss, pair_distance, sample_negatives, sample_pairs

pytestmark = pytest.mark.usefixtures("float64")


def test_loss_equals_a_hand_computation():
    z1 = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.5, 0.0], [0.0, 0.0], [2.0, 1.0]])
    same = torch.tensor([True, False, False, False, True])
    m = 2.0
    # D = sqrt2, 5, 0.5, 0, 0: positive D^2; negative max(0, m - D)^2
    want = torch.tensor([2.0, 0.0, (m - 0.5) ** 2, m**2, 0.0])
    got = contrastive_loss(z1, z2, same, margin=m)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        pair_distance(z1, z2), torch.tensor([math.sqrt(2), 5.0, 0.5, 0.0, 0.0]), rtol=0, atol=1e-12
    )


def _hand_gradient(z1, z2, same, m):
    """d L / d z1 by hand: 2 (z1 - z2) for a positive pair; -2 (m - D) (z1 - z2) / D for a
    negative pair inside the margin (0 at D = 0, the subgradient; 0 outside the margin)."""
    diff = z1 - z2
    D = diff.norm(dim=-1, keepdim=True)
    neg = torch.where(
        (D > 0) & (D < m), -2 * (m - D) * diff / D.clamp_min(1e-300), torch.zeros_like(diff)
    )
    return torch.where(same[:, None], 2 * diff, neg)


def test_gradients_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    P, E, m = 12, 3, 1.5
    z1 = torch.randn(P, E, generator=g)
    z2 = torch.randn(P, E, generator=g)
    z2[0] = z1[0]  # a negative pair at D = 0
    z2[1] = z1[1] + 5.0  # a negative pair outside the margin
    same = torch.rand(P, generator=g) < 0.5
    same[:2] = False
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    contrastive_loss(a, b, same, margin=m).sum().backward()
    want = _hand_gradient(z1, z2, same, m)
    torch.testing.assert_close(a.grad, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, -want, rtol=1e-12, atol=1e-12)
    # and autograd's Jacobian against finite differences, away from the kinks (D = 0, D = m)
    keep = torch.arange(2, P)
    torch.autograd.gradcheck(
        lambda u, v: contrastive_loss(u, v, same[keep], margin=m),
        (z1[keep].clone().requires_grad_(), z2[keep].clone().requires_grad_()),
    )


def test_loss_rejects_bad_input_by_name():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="margin"):
        contrastive_loss(z, z, torch.ones(3, dtype=torch.bool), margin=0.0)
    with pytest.raises(ValueError, match="same"):
        contrastive_loss(z, z, torch.ones(2, dtype=torch.bool), margin=1.0)
    with pytest.raises(ValueError, match="same"):
        contrastive_loss(z, z, torch.ones(3), margin=1.0)
    with pytest.raises(ValueError, match="z2"):
        contrastive_loss(z, torch.zeros(3, 4), torch.ones(3, dtype=torch.bool), margin=1.0)


def _imbalanced_labels():
    # class 0: 90 frames, class 3: 8 frames, class 5: 2 frames, class 7: 1 frame; 9 unlabelled
    lab = torch.cat(
        [torch.zeros(90), torch.full((8,), 3.0), torch.full((2,), 5.0), torch.full((1,), 7.0)]
    ).long()
    lab = torch.cat([lab, torch.full((9,), -1)])
    return lab[torch.randperm(lab.numel(), generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize("balance", ["class", "frame"])
def test_pairs_are_what_they_claim(balance):
    lab = _imbalanced_labels()
    g = torch.Generator().manual_seed(0)
    i, j, same = sample_pairs(lab, 1001, positive_fraction=0.3, balance=balance, generator=g)
    assert i.shape == j.shape == same.shape == (1001,)
    assert int(same.sum()) == round(0.3 * 1001)  # the count is exact, not a draw
    assert bool(same[: int(same.sum())].all())
    assert bool((i != j).all())
    assert bool((lab[i] >= 0).all()) and bool((lab[j] >= 0).all())  # never an unlabelled frame
    assert bool((lab[i][same] == lab[j][same]).all())
    assert bool((lab[i][~same] != lab[j][~same]).all())
    g2 = torch.Generator().manual_seed(0)
    again = sample_pairs(lab, 1001, positive_fraction=0.3, balance=balance, generator=g2)
    assert all(torch.equal(a, b) for a, b in zip((i, j, same), again, strict=True))


def _within(count, n, p):
    """``count`` of ``n`` draws is within 4.5 binomial standard deviations of ``n p`` (a false
    alarm at about 7e-6 per check)."""
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


def test_class_balance_draws_rare_classes_as_often_as_common_ones():
    lab = _imbalanced_labels()
    g = torch.Generator().manual_seed(2)
    n = 6000
    i, j, same = sample_pairs(lab, 2 * n, positive_fraction=0.5, balance="class", generator=g)
    pos = lab[i[same]]
    # positives: uniform over the classes with >= 2 frames (0, 3, 5); class 7 cannot pair
    for c in (0, 3, 5):
        assert _within(int((pos == c).sum()), n, 1 / 3), (c, int((pos == c).sum()))
    assert int((pos == 7).sum()) == 0
    # negatives: the first class uniform over all four classes
    first = lab[i[~same]]
    for c in (0, 3, 5, 7):
        assert _within(int((first == c).sum()), n, 1 / 4), (c, int((first == c).sum()))
    # frames within a class are uniform: class 3's eight frames as first members of positives
    frames3 = torch.nonzero(lab == 3).flatten()
    members = i[same][pos == 3]
    k3 = members.numel()
    for f in frames3:
        assert _within(int((members == f).sum()), k3, 1 / 8)


def test_frame_balance_follows_the_frame_counts():
    lab = _imbalanced_labels()
    g = torch.Generator().manual_seed(3)
    n = 6000
    i, j, same = sample_pairs(lab, 2 * n, positive_fraction=0.5, balance="frame", generator=g)
    pos = lab[i[same]]
    for c, k in ((0, 90), (3, 8), (5, 2)):  # eligible frames: 100
        assert _within(int((pos == c).sum()), n, k / 100), c
    first = lab[i[~same]]
    for c, k in ((0, 90), (3, 8), (5, 2), (7, 1)):
        assert _within(int((first == c).sum()), n, k / 101), c


def test_degenerate_labels():
    g = torch.Generator().manual_seed(0)
    one_class = torch.tensor([4, 4, 4, -1])
    i, j, same = sample_pairs(one_class, 10, generator=g)
    assert bool(same.all()) and i.numel() == 10 and bool((i != j).all())
    singletons = torch.tensor([0, 1, 2, -1])
    i, j, same = sample_pairs(singletons, 10, generator=g)
    assert not bool(same.any()) and i.numel() == 10 and bool((singletons[i] != singletons[j]).all())
    i, j, same = sample_pairs(torch.tensor([3, -1, -1]), 10, generator=g)
    assert i.numel() == j.numel() == same.numel() == 0
    # float labels with NaN = unlabelled
    i, j, same = sample_pairs(torch.tensor([0.0, float("nan"), 0.0, 1.0]), 20, generator=g)
    assert bool((i != 1).all()) and bool((j != 1).all())


def test_negative_candidates_come_from_other_classes_uniformly():
    lab = _imbalanced_labels()
    g = torch.Generator().manual_seed(4)
    anchors = torch.nonzero(lab == 3).flatten()[:2]
    cand = sample_negatives(lab, anchors, 5000, generator=g)
    assert cand.shape == (2, 5000)
    assert bool((lab[cand] >= 0).all()) and bool((lab[cand] != 3).all())
    n = cand.numel()
    for c, k in ((0, 90), (5, 2), (7, 1)):  # frame-uniform over the 93 other labelled frames
        assert _within(int((lab[cand] == c).sum()), n, k / 93), c
    with pytest.raises(ValueError, match="two classes"):
        sample_negatives(torch.tensor([1, 1, 1]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="anchors"):
        sample_negatives(lab, torch.nonzero(lab < 0).flatten()[:1], 2)


def test_sampler_rejects_bad_input_by_name():
    lab = torch.tensor([0, 1, 0, 1])
    for kwargs, name in (
        (dict(num_pairs=0), "num_pairs"),
        (dict(num_pairs=4, positive_fraction=1.5), "positive_fraction"),
        (dict(num_pairs=4, balance="uniform"), "balance"),
    ):
        with pytest.raises(ValueError, match=name):
            sample_pairs(lab, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        sample_pairs(lab[None], 4)
    with pytest.raises(ValueError, match="labels"):
        sample_pairs(torch.tensor([0.5, 1.0]), 4)
