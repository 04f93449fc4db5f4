"""The unit maps behind SVI's standardization (:mod:`mmpgm.inference.units`,
``ObservationModel.rescale_``, :mod:`mmpgm.models.hmm.units`, :mod:`mmpgm.models.lds.units`):
exact in float64 at tiny sizes (densities shift by the log-Jacobian, priors by a constant, the
inverse map restores the model), over T=1, batches, masks and ragged lengths; and the losses
:func:`mmpgm.fit` reports are the negative log joint per frame in the user's units."""

from __future__ import annotations

import math

import pytest
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.inference import units
from mmpgm.models.hmm import units as hmm_units
from mmpgm.models.lds import units as lds_units
from mmpgm.observations import (
    CategoricalObservation,
    DiagonalGaussianObservation,
    FullGaussianObservation,
)

pytestmark = pytest.mark.usefixtures("one_thread")

EXACT = dict(rtol=1e-10, atol=1e-10)
SHIFT = torch.tensor([3.0, -40.0, 0.5], dtype=torch.float64)
SCALE = torch.tensor([1e-3, 250.0, 2.0], dtype=torch.float64)


def _emission(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = {"diag": DiagonalGaussianObservation, "full": FullGaussianObservation}[kind](3, 2, 2)
    e = e.double()
    with torch.no_grad():
        e.loc = torch.randn(2, 2, 3, generator=g, dtype=torch.float64) * 5
        if kind == "diag":
            e.scale = torch.rand(2, 2, 3, generator=g, dtype=torch.float64) + 0.2
        else:
            A = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
            e.scale_tril = torch.linalg.cholesky(A @ A.mT + 0.5 * torch.eye(3))
        e.prior_loc = torch.randn(3, generator=g, dtype=torch.float64)
        e.prior_scale = torch.rand(3, generator=g, dtype=torch.float64) + 1.0
        e.prior_var = torch.rand(3, generator=g, dtype=torch.float64) + 0.1
    return e


def _prior_constant(kind, K, scale):
    """Closed form of ``log_prior' - log_prior``: Normal on the K locations (``log s`` each),
    InverseGamma on the K diagonal variances (``2 log s``), unnormalized inverse-Wishart on the
    K covariances (``(nu0 + D + 1) sum log s``, nu0 = D + 2)."""
    ls = float(scale.log().sum())
    D = scale.shape[0]
    return K * ls * (3 if kind == "diag" else 1 + (D + 2 + D + 1))


# ---------------------------------------------------------------------- observation models
@pytest.mark.parametrize("kind", ["diag", "full"])
def test_gaussian_rescale_is_the_pushforward(kind):
    e = _emission(kind)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    lp, prior = e.log_prob(x), e.log_prior()
    brute = torch.stack(
        [
            torch.distributions.MultivariateNormal(e.loc[i, j], e.covariance()[i, j]).log_prob(x)
            for i in range(2)
            for j in range(2)
        ],
        -1,
    ).reshape(7, 2, 2)
    torch.testing.assert_close(lp, brute, **EXACT)
    e.rescale_(SHIFT, SCALE)
    lp_new = e.log_prob((x - SHIFT) / SCALE)
    torch.testing.assert_close(lp_new, lp + SCALE.log().sum(), **EXACT)
    torch.testing.assert_close(
        e.log_prior() - prior,
        torch.tensor(_prior_constant(kind, 4, SCALE), dtype=torch.float64),
        **EXACT,
    )
    torch.testing.assert_close(e.mean(), (_emission(kind).mean() - SHIFT) / SCALE, **EXACT)


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_gaussian_rescale_inverse_restores_and_prior_shift_is_constant(kind):
    ref = {k: v.clone() for k, v in _emission(kind).state_dict().items()}
    for seed in (0, 1):  # two parameter settings: the same prior constant
        e = _emission(kind, seed)
        before = e.log_prior()
        e.rescale_(SHIFT, SCALE)
        assert float((e.log_prior() - before).detach()) == pytest.approx(
            _prior_constant(kind, 4, SCALE), rel=1e-12
        )
    e = _emission(kind)
    e.rescale_(SHIFT, SCALE)
    e.rescale_(-SHIFT / SCALE, 1 / SCALE)
    for k, v in e.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-12, atol=1e-12, msg=k)


def test_rescale_refuses_bad_units_and_unit_free_emissions():
    e = _emission("diag")
    with pytest.raises(ValueError, match="scale: expected positive"):
        e.rescale_(SHIFT, -SCALE)
    with pytest.raises(ValueError, match=r"shift: expected 3 finite values \(obs_dim\), got "):
        e.rescale_(SHIFT[:2], SCALE)
    with pytest.raises(ValueError, match="scale: expected 3 finite"):
        e.rescale_(SHIFT, torch.tensor([1.0, float("inf"), 1.0]))
    cat = CategoricalObservation(4, 2, 1)
    assert not cat.rescalable and e.rescalable
    with pytest.raises(NotImplementedError, match="rescalable=False"):
        cat.rescale_(torch.zeros(4), torch.ones(4))
    model = mmpgm.MultimodalHMM({"a": 3, "c": 4}, 2, emission={"a": "diag", "c": "categorical"})
    assert hmm_units.rescalable_modalities(model) == ("a",)
    with pytest.raises(ValueError, match="shift: the emission of modality 'c'"):
        hmm_units.rescale_observations(model, {"c": torch.zeros(1)}, {"c": torch.ones(1)})
    with pytest.raises(ValueError, match="shift: unknown modality 'z'"):
        hmm_units.rescale_observations(model, {"z": torch.zeros(1)}, {"z": torch.ones(1)})


# ---------------------------------------------------------------------- data units
def _ragged(T=5):
    g = torch.Generator().manual_seed(0)
    obs = {
        # means a few sds from 0 (a mean of 3000 sds would cost the raw-unit density itself
        # digits: its quadratic form cancels, eps * (x / sigma)^2, whatever the units map does)
        "a": torch.randn(3, T, 3, generator=g, dtype=torch.float64) * SCALE + SHIFT * SCALE,
        "b": torch.randn(3, T, 2, generator=g, dtype=torch.float64) * 7.0 - 2.0,
    }
    if T > 1:
        obs["a"][1, 2] = float("nan")  # a missing frame in one modality only
    lengths = torch.tensor([T, max(1, T - 2), 1])
    return MultimodalData(obs, lengths=lengths)


def test_data_units_brute_force_and_equivariance():
    model = mmpgm.MultimodalHMM({"a": 3, "b": 2}, 2).double()
    data = model.check_data(_ragged())
    u = units.data_units(data, ("a", "b"))
    logj = 0.0
    for m in ("a", "b"):
        obs = data.mask[m] & data.time_mask
        xo = data.obs[m][obs]
        torch.testing.assert_close(u.shift[m], xo.mean(0), **EXACT)
        torch.testing.assert_close(u.scale[m], xo.std(0, unbiased=False), **EXACT)
        logj += int(obs.sum()) * float(xo.std(0, unbiased=False).log().sum())
    assert u.log_jacobian == pytest.approx(logj, rel=1e-12)
    for c in (1e-8, 1e8):
        uc = units.data_units(
            model.check_data(
                MultimodalData({m: v * c for m, v in data.obs.items()}, lengths=data.lengths)
            ),
            ("a", "b"),
        )
        for m in ("a", "b"):
            torch.testing.assert_close(uc.scale[m], u.scale[m] * c, rtol=1e-12, atol=0)
            torch.testing.assert_close(uc.shift[m], u.shift[m] * c, rtol=1e-12, atol=0)
    u0 = units.data_units(data, ("a",), centred=False)
    assert bool((u0.shift["a"] == 0).all())


def test_data_units_of_constant_zero_and_single_frames():
    x = torch.zeros(1, 4, 3, dtype=torch.float64)
    x[..., 0] = 5e-9  # constant: its rms
    x[..., 2] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # varies
    model = mmpgm.MultimodalHMM({"a": 3}, 2).double()
    u = units.data_units(model.check_data(MultimodalData({"a": x})), ("a",))
    torch.testing.assert_close(
        u.scale["a"], torch.tensor([5e-9, 1.0, math.sqrt(1.25)], dtype=torch.float64), **EXACT
    )
    one = units.data_units(model.check_data(MultimodalData({"a": x[:, :1] - 3.0})), ("a",))
    assert bool((one.scale["a"] > 0).all())  # a single frame: rms (or 1)
    torch.testing.assert_close(
        one.scale["a"], torch.tensor([3.0 - 5e-9, 3.0, 2.0], dtype=torch.float64), **EXACT
    )


# ---------------------------------------------------------------------- models
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("emission", ["diag", "full"])
def test_hmm_log_likelihood_shifts_by_the_data_jacobian(T, emission):
    torch.manual_seed(0)
    model = mmpgm.MultimodalHMM({"a": 3, "b": 2}, 2, {"a": 2, "b": 1}, emission=emission)
    model = model.double()
    data = model.check_data(_ragged(T))
    model.init_from_data(data)
    ll, prior = model.log_likelihood(data), model.log_prior()
    u = units.data_units(data, ("a", "b"))
    sdata = units.standardize_data(model, data, u)
    hmm_units.rescale_observations(model, u.shift, u.scale)
    per_seq = sum(
        (data.mask[m] & data.time_mask).sum(-1).double() * u.scale[m].log().sum() for m in "ab"
    )
    torch.testing.assert_close(model.log_likelihood(sdata), ll + per_seq, **EXACT)
    assert float(per_seq.sum()) == pytest.approx(u.log_jacobian, rel=1e-12)
    K = {"a": 4, "b": 2}
    const = sum(_prior_constant(emission, K[m], u.scale[m]) for m in "ab")
    assert float((model.log_prior() - prior).detach()) == pytest.approx(const, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("noise", ["diag", "full"])
def test_lds_log_likelihood_and_params_map(T, noise):
    torch.manual_seed(0)
    model = mmpgm.MultimodalLDS({"a": 3, "b": 2}, 1, {"a": 1, "b": 0}, noise=noise).double()
    data = model.check_data(_ragged(T))
    ll, prior, params = model.log_likelihood(data), model.log_prior(), model.params
    for centred in (False, True):  # the likelihood is affine-equivariant either way
        u = units.data_units(data, ("a", "b"), centred=centred)
        m2 = mmpgm.MultimodalLDS({"a": 3, "b": 2}, 1, {"a": 1, "b": 0}, noise=noise).double()
        m2.load_state_dict(model.state_dict())
        lds_units.rescale_observations(m2, u.shift, u.scale)
        per_seq = sum(
            (data.mask[m] & data.time_mask).sum(-1).double() * u.scale[m].log().sum() for m in "ab"
        )
        sdata = units.standardize_data(m2, data, u)
        torch.testing.assert_close(m2.log_likelihood(sdata), ll + per_seq, **EXACT)
        pure = lds_units.rescale_params(params, u.shift, u.scale)
        for field in pure._fields:
            a, b = getattr(pure, field), getattr(m2.params, field)
            if a is None:
                assert b is None
                continue
            for k in a:
                torch.testing.assert_close(b[k], a[k], **EXACT, msg=f"{field}[{k}]")
        if not centred:  # the prior moves by a constant only without a shift (offset prior)
            m3 = mmpgm.MultimodalLDS({"a": 3, "b": 2}, 1, {"a": 1, "b": 0}, noise=noise)
            m3 = m3.double()
            with torch.no_grad():
                for p in m3.emissions.parameters():
                    p.add_(0.1)  # other parameters: the same constant
            p3 = m3.log_prior()
            lds_units.rescale_observations(m3, u.shift, u.scale)
            torch.testing.assert_close(
                m3.log_prior() - p3, m2.log_prior() - prior, rtol=1e-10, atol=1e-9
            )
        lds_units.rescale_observations(m2, *u.inverse())
        for k, v in model.state_dict().items():
            torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-12, atol=1e-12, msg=k)


def test_lds_units_refuse_bad_units():
    model = mmpgm.MultimodalLDS({"a": 3}, 1).double()
    with pytest.raises(ValueError, match=r"scale\['a'\]: expected positive"):
        lds_units.rescale_observations(model, {}, {"a": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"scale\['a'\]: expected 3 finite values"):
        lds_units.rescale_observations(model, {}, {"a": torch.ones(2)})
    with pytest.raises(ValueError, match="scale: unknown modality 'q'"):
        lds_units.rescale_observations(model, {}, {"q": torch.ones(2)})
    with pytest.raises(TypeError, match="params: expected LDSParams"):
        lds_units.rescale_params({}, {}, {})


# ---------------------------------------------------------------------- fit
def _hmm_setup(c):
    torch.manual_seed(0)
    model = mmpgm.MultimodalHMM({"a": 3, "b": 2}, 2, {"a": 2, "b": 1}).double()
    data = model.check_data(_ragged())
    data = MultimodalData({m: v * c for m, v in data.obs.items()}, lengths=data.lengths)
    return model, data


def _lds_setup(c):
    torch.manual_seed(0)
    model = mmpgm.MultimodalLDS({"a": 3, "b": 2}, 1, {"a": 1, "b": 0}).double()
    data = MultimodalData({m: v * c for m, v in _ragged().obs.items()}, lengths=_ragged().lengths)
    return model, data


@pytest.mark.parametrize("c", [1.0, 1e8])
@pytest.mark.parametrize("setup", [_hmm_setup, _lds_setup], ids=["hmm", "lds"])
def test_reported_loss_is_the_log_joint_in_user_units(setup, c):
    """``losses[0]`` (taken before the first step) is ``-(log p(x) + log p(theta)) / frames``
    at the start, in the data's units, though SVI ran on standardized data. (With minibatches
    each batch's term is taken at the parameters of its own step, so only the full batch has
    one start point to compare with; the offset is the same constant either way.)"""
    model, data = setup(c)
    data = model.check_data(data)
    model.init_from_data(data)
    frames = sum(int(data.mask[m].sum()) for m in data.modalities)
    with torch.no_grad():
        expected = -float(model.log_likelihood(data).sum() + model.log_prior()) / frames
    result = mmpgm.fit(model, data, num_steps=1, init="none", progress=False)
    assert result.losses[0] == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_the_model_is_mapped_back_when_the_fit_raises():
    model, data = _hmm_setup(1e8)
    mmpgm.fit(model, data, num_steps=2, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Failing(pyro_elbo()):
        def differentiable_loss(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        mmpgm.fit(model, data, num_steps=2, elbo=Failing(), progress=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=1e-12, atol=0, msg=k)


def pyro_elbo():
    from pyro.infer import Trace_ELBO

    return Trace_ELBO
