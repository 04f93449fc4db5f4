"""The masked diagonal Gaussian mixture of the data-driven start (mmpgm.ops.gmm)."""

import math

import pytest
import torch

from mmpgm.ops.gmm import _log_joint, diagonal_gmm

pytestmark = pytest.mark.usefixtures("float64")


def test_log_joint_equals_a_density_over_the_observed_entries():
    g = torch.Generator().manual_seed(0)
    F, D, K = 7, 3, 2
    x = torch.randn(F, D, generator=g)
    mask = torch.rand(F, D, generator=g) > 0.3
    mask[0] = False  # a frame with nothing observed: only log w_k
    weights = torch.tensor([0.3, 0.7])
    means = torch.randn(K, D, generator=g)
    variances = torch.rand(K, D, generator=g) + 0.2
    got = _log_joint(x, mask, weights, means, variances)
    for f in range(F):
        for k in range(K):
            lp = math.log(weights[k])
            for d in range(D):
                if mask[f, d]:
                    lp += float(
                        torch.distributions.Normal(means[k, d], variances[k, d].sqrt()).log_prob(
                            x[f, d]
                        )
                    )
            assert math.isclose(float(got[f, k]), lp, rel_tol=1e-12, abs_tol=1e-12)


def test_missing_values_are_ignored_whatever_they_hold():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 2, generator=g)
    mask = torch.rand(200, 2, generator=g) > 0.2
    junk = torch.where(mask, x, torch.full_like(x, 1e6))
    a = diagonal_gmm(x, mask, 2, generator=torch.Generator().manual_seed(0))
    b = diagonal_gmm(junk, mask, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.means, b.means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-12, atol=1e-12)


def test_finds_a_tight_cluster_inside_a_broad_one():
    """Seeded: sd 0.05 vs sd 3 (60x), 500 frames each; k-means on such data puts both centres in
    the broad cluster. Margin: the tight centre is known to ~0.05 / sqrt(500) per dimension, so
    0.05 is far above the estimation error and far below the broad spread."""
    g = torch.Generator().manual_seed(2)
    tight = torch.tensor([0.5, -0.5]) + 0.05 * torch.randn(500, 2, generator=g)
    broad = 3.0 * torch.randn(500, 2, generator=g)
    x = torch.cat([tight, broad])
    fit = diagonal_gmm(x, torch.ones_like(x, dtype=torch.bool), 2, generator=g)
    k = int(fit.variances.sum(-1).argmin())
    assert float((fit.means[k] - torch.tensor([0.5, -0.5])).abs().max()) < 0.05
    assert 0.3 < float(fit.weights[k]) < 0.7
    labels = fit.responsibilities.argmax(-1)
    assert float((labels[:500] == k).double().mean()) > 0.99


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="x, mask: expected equal shapes"):
        diagonal_gmm(torch.zeros(3, 2), torch.ones(3, 1, dtype=torch.bool), 2)
