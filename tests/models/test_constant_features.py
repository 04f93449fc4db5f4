"""A feature constant over every frame (a stuck channel, a padded dimension) fits and scores
finitely in every Gaussian family, EM and SVI, float32 and float64.

Before: HMM EM with full covariances raised ``torch.linalg.LinAlgError`` (the M-step's scatter of
the constant feature is 0 up to rounding of either sign, and its Cholesky failed); LDS EM
raised "innovation covariance ... not positive definite" (its noise variance went to the
smallest float); HMM SVI turned a parameter NaN in float32 (see
``tests/statistical/test_scale_invariance_svi.py``). The floors are a few ulps of the feature's
mean square, so they do not depend on the data's units."""

import math

import pytest
import torch

import mmpgm

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(dtype, value=3.0):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 20, 3, generator=g, dtype=torch.float64)
    a[..., 1] = value
    b = torch.randn(6, 20, 2, generator=g, dtype=torch.float64)
    return mmpgm.MultimodalData({"a": a.to(dtype), "b": b.to(dtype)})


def _finite(model, data):
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())
    with torch.no_grad():
        ll = model.log_likelihood(data)
    assert bool(torch.isfinite(ll).all()), ll
    return ll


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["em", "svi"])
@pytest.mark.parametrize("emission", ["diag", "full"])
def test_hmm_with_a_constant_feature(dtype, method, emission):
    data = _data(dtype)
    model = mmpgm.MultimodalHMM(data.obs_dims, 2, 1, emission=emission).to(dtype)
    mmpgm.fit(model, data, method=method, num_steps=15, seed=0, patience=0, progress=False)
    _finite(model, data)
    cov = model.emissions["a"].covariance().detach()
    assert float(cov[..., 1, 1].min()) > 0  # the constant feature keeps a positive variance
    assert float(cov[..., 1, 1].max()) < float(cov[..., 0, 0].min())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["em", "svi"])
@pytest.mark.parametrize("noise", ["diag", "full"])
def test_lds_with_a_constant_feature(dtype, method, noise):
    data = _data(dtype)
    model = mmpgm.MultimodalLDS(data.obs_dims, 2, noise=noise).to(dtype)
    mmpgm.fit(model, data, method=method, num_steps=10, seed=0, patience=0, progress=False)
    ll = _finite(model, data)
    assert math.isfinite(float(ll.sum()))
