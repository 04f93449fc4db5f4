"""Property-based checks (hypothesis) of every user boundary: ``MultimodalData``, the model
constructors, ``from_params`` / ``set_params``, and the arguments of ``mmpgm.fit`` /
``mmpgm.infer``.

Every input either works (and agrees with a reference where one exists) or raises
``ValueError`` / ``TypeError`` whose message starts with the argument's name; never another
exception. Derandomized (no example database), so CI sees the same examples every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmpgm
from mmpgm import MVRNN, GatedMixture, MultimodalData, MultimodalHMM, MultimodalLDS

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _named(err: BaseException, names) -> bool:
    msg = str(err)
    return any(msg.startswith(n) for n in names)


def _assert_named(err: BaseException, names) -> None:
    assert isinstance(err, (ValueError, TypeError)), f"{type(err).__name__}: {err}"
    assert _named(err, names), f"message does not start with one of {names}: {err}"


# ---------------------------------------------------------------------------- MultimodalData

ASPECTS = ["obs_dtype", "obs_values", "obs_shape", "lengths", "mask", "labels", "meta"]


@st.composite
def data_inputs(draw):
    """Valid inputs with (usually) one aspect corrupted: ``bad`` names it (None = all valid)."""
    bad = draw(st.sampled_from([None] * len(ASPECTS) + ASPECTS))

    def pick(aspect, valid, invalid):
        return draw(st.sampled_from(invalid if aspect == bad else valid))

    M = draw(st.integers(1, 3))
    N = draw(st.integers(1, 4))
    T = draw(st.integers(1, 6))
    names = [f"m{i}" for i in range(M)]
    ragged = draw(st.booleans())
    ragged_lengths = [draw(st.integers(1, T)) for _ in range(N)]
    ragged_lengths[draw(st.integers(0, N - 1))] = T  # the padded length is T
    obs = {}
    any_inf = False
    for m in names:
        D = draw(st.integers(1, 3))
        dtype = pick(
            "obs_dtype",
            ["float16", "float32", "float64", "int32", "int64"],
            ["bool", "object", "str", "complex64"],
        )
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        x = rng.normal(size=(N, T, D))
        pattern = pick("obs_values", ["none", "nan", "nan_frame"], ["inf", "-inf", "all_nan"])
        if pattern == "nan":
            x[rng.random(x.shape) < 0.3] = np.nan
        elif pattern == "nan_frame":
            x[rng.integers(N), rng.integers(T)] = np.nan
        elif pattern in ("inf", "-inf"):
            n_inf, t_inf = rng.integers(N), rng.integers(T)
            x[n_inf, t_inf, rng.integers(D)] = float(pattern)
        elif pattern == "all_nan":
            x[:] = np.nan
        if dtype.startswith("int"):
            arr = rng.integers(-1, 3, size=x.shape).astype(dtype)
        elif dtype == "bool":
            arr = x > 0
        elif dtype == "object":
            arr = x.astype(object)
        elif dtype == "str":
            arr = x.astype(str)
        else:
            arr = x.astype(dtype)
        if draw(st.booleans()) and arr.dtype.kind in "biufc":
            arr = torch.as_tensor(arr)  # torch tensors take the same path as numpy arrays
        if ragged and draw(st.booleans()):
            obs[m] = [arr[n, : ragged_lengths[n]] for n in range(N)]
            kept = t_inf < ragged_lengths[n_inf] if pattern in ("inf", "-inf") else False
        else:
            obs[m] = arr
            kept = True
        # an inf the ragged cut left out is not in the data (it used to be counted: a false
        # "accepted an invalid input")
        any_inf = any_inf or (pattern in ("inf", "-inf") and kept and dtype.startswith("float"))
    shape = pick("obs_shape", ["ok"], ["2d", "n+1", "str", "int", "empty", "none", "dims"])
    target = draw(st.sampled_from(names))
    if shape == "2d":
        obs[target] = np.zeros((N, T))
    elif shape == "n+1":
        obs[target] = np.zeros((N + 1, T, 1))
    elif shape == "str":
        obs[target] = "x"
    elif shape == "int":
        obs[target] = 3
    elif shape == "empty":
        obs[target] = []
    elif shape == "none":
        obs[target] = None
    elif shape == "dims":
        obs[target] = [np.zeros((T, 1)), np.zeros((T, 2))]
    kwargs = {}
    lengths_kind = pick(
        "lengths",
        ["none", "valid", "float_int", "torch"],
        ["zero", "long", "shape", "float", "str", "dict", "complex", "bool"],
    )
    if lengths_kind == "valid":
        kwargs["lengths"] = np.array([draw(st.integers(1, T)) for _ in range(N)])
    elif lengths_kind == "float_int":
        kwargs["lengths"] = np.full(N, float(T))
    elif lengths_kind == "torch":
        kwargs["lengths"] = torch.full((N,), T, dtype=torch.int32)
    elif lengths_kind == "complex":
        kwargs["lengths"] = torch.full((N,), T, dtype=torch.complex64)
    elif lengths_kind == "bool":
        kwargs["lengths"] = np.ones(N, dtype=bool)
    elif lengths_kind == "zero":
        kwargs["lengths"] = np.zeros(N, dtype=int)
    elif lengths_kind == "long":
        kwargs["lengths"] = np.full(N, T + 1)
    elif lengths_kind == "shape":
        kwargs["lengths"] = np.ones((N, 2), dtype=int)
    elif lengths_kind == "float":
        kwargs["lengths"] = np.full(N, draw(st.sampled_from([1.5, math.nan, math.inf])))
    elif lengths_kind == "str":
        kwargs["lengths"] = "3"
    elif lengths_kind == "dict":
        kwargs["lengths"] = {"a": 1}
    mask_kind = pick(
        "mask", ["none", "valid", "float", "torch"], ["shape", "unknown", "notdict", "str", "half"]
    )
    if mask_kind == "valid":
        kwargs["mask"] = {names[0]: np.random.default_rng(0).random((N, T)) < 0.8}
    elif mask_kind == "float":
        kwargs["mask"] = {names[0]: np.full((N, T), 1.0)}
    elif mask_kind == "torch":
        kwargs["mask"] = {
            names[-1]: torch.rand(N, T, generator=torch.Generator().manual_seed(0)) < 0.7
        }
    elif mask_kind == "half":
        kwargs["mask"] = {names[0]: np.full((N, T), 0.5)}
    elif mask_kind == "shape":
        kwargs["mask"] = {names[0]: np.ones((N, T + 1), dtype=bool)}
    elif mask_kind == "unknown":
        kwargs["mask"] = {"zz": np.ones((N, T), dtype=bool)}
    elif mask_kind == "notdict":
        kwargs["mask"] = draw(st.sampled_from([np.ones((N, T), dtype=bool), "x", 3]))
    elif mask_kind == "str":
        kwargs["mask"] = {names[0]: np.full((N, T), "yes")}
    labels_kind = pick(
        "labels",
        ["none", "seq", "frame", "vector", "nan", "bool"],
        ["shape", "str", "notdict", "frame_shape", "scalar", "complex"],
    )
    if labels_kind == "seq":
        kwargs["labels"] = {"y": np.arange(N)}
    elif labels_kind == "frame":
        kwargs["labels"] = {"y": np.zeros((N, T), dtype=int)}
    elif labels_kind == "vector":
        kwargs["labels"] = {"y": np.zeros((N, T, 2))}
    elif labels_kind == "nan":
        kwargs["labels"] = {"y": np.full((N, T), np.nan)}
    elif labels_kind == "bool":
        kwargs["labels"] = {"y": np.ones((N, T), dtype=bool)}
    elif labels_kind == "shape":
        kwargs["labels"] = {"y": np.zeros((N + 1,))}
    elif labels_kind == "frame_shape":
        kwargs["labels"] = {"y": np.zeros((N, T + 1))}
    elif labels_kind == "complex":
        kwargs["labels"] = {"y": torch.zeros(N, dtype=torch.complex64)}
    elif labels_kind == "scalar":
        kwargs["labels"] = {"y": np.float64(1.0)}
    elif labels_kind == "str":
        kwargs["labels"] = {"y": np.array(["a"] * N)}
    elif labels_kind == "notdict":
        kwargs["labels"] = draw(st.sampled_from([np.zeros(N), "y", 3]))
    meta_kind = pick("meta", ["none", "valid"], ["notdict", "unserializable"])
    if meta_kind == "valid":
        kwargs["meta"] = {"name": "x", "ids": ["a"] * N, "rate": 16000, "nested": {"k": [1, 2]}}
    elif meta_kind == "notdict":
        kwargs["meta"] = draw(st.sampled_from([[1, 2], "x", 3]))
    elif meta_kind == "unserializable":
        kwargs["meta"] = {"obj": object()}
    must_fail = (
        bad in ("obs_dtype", "obs_shape", "lengths", "mask", "labels")
        or (bad == "obs_values" and any_inf)
        or (bad == "meta" and meta_kind == "notdict")
    )
    return obs, kwargs, must_fail


@settings(max_examples=500, **SETTINGS)
@given(data_inputs())
def test_multimodal_data_constructs_or_names_the_argument(tmp_path_factory, inputs):
    obs, kwargs, must_fail = inputs
    try:
        data = MultimodalData(obs, **kwargs)
    except Exception as err:  # noqa: BLE001 - the property is about the exception's kind
        _assert_named(err, ("obs", "lengths", "mask", "labels", "meta"))
        return
    assert not must_fail, f"accepted an invalid input: {kwargs}"
    N, T = data.num_sequences, data.num_timesteps
    assert data.lengths.dtype == torch.int64 and data.lengths.shape == (N,)
    assert bool((data.lengths >= 1).all()) and bool((data.lengths <= T).all())
    inside = data.time_mask
    for m, x in data.obs.items():
        assert x.is_floating_point() and x.dtype != torch.float16
        assert not bool(torch.isinf(x).any())
        mk = data.mask[m]
        assert mk.dtype == torch.bool and mk.shape == (N, T)
        assert not bool((mk & ~inside).any()), "mask True on padding"
        assert not bool((mk & torch.isnan(x).any(-1)).any()), "mask True on a NaN frame"
    # reference: rebuilding from the stored arrays (padded, with lengths and masks) agrees
    again = MultimodalData(data.obs, lengths=data.lengths, mask=data.mask, labels=data.labels)
    assert torch.equal(again.lengths, data.lengths)
    for m in data.modalities:
        assert torch.equal(again.mask[m], data.mask[m])
    # save / load round trip
    path = tmp_path_factory.mktemp("rt") / "d.npz"
    try:
        data.save(path)
    except Exception as err:  # noqa: BLE001
        _assert_named(err, ("meta",))
        return
    back = MultimodalData.load(path)
    assert back.modalities == data.modalities
    assert torch.equal(back.lengths, data.lengths)
    for m in data.modalities:
        assert torch.equal(back.mask[m], data.mask[m])
        a, b = data.obs[m], back.obs[m]
        assert a.dtype == b.dtype
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    assert sorted(back.labels) == sorted(data.labels)
    for k, v in data.labels.items():
        assert torch.equal(torch.nan_to_num(back.labels[k]), torch.nan_to_num(v))
    assert back.meta == data.meta
    # batching covers every sequence once
    for bs in (1, 2, 3):
        seen = []
        for b in data.batches(bs, shuffle=True, generator=torch.Generator().manual_seed(0)):
            assert 1 <= b.num_sequences <= bs
            for n in range(b.num_sequences):
                seen.append(tuple(b.lengths[n : n + 1].tolist()))
        assert len(seen) == N
        assert sorted(seen) == sorted((int(v),) for v in data.lengths)


# ---------------------------------------------------------------------------- constructors

BAD_VALUES = st.sampled_from(
    [
        -2,
        -1,
        0,
        1,
        2,
        3,
        0.5,
        1.0,
        2.5,
        -1.0,
        math.nan,
        math.inf,
        True,
        False,
        None,
        "x",
        "diag",
        "full",
        "",
        {"zz": 1},
        {"a": 2},
        {"a": 2, "b": 1},
        {"a": "x", "b": 0},
        [1, 2],
        (),
    ]
)

OBS_DIMS = {"a": 2, "b": 3}

CONSTRUCTORS = {
    MultimodalHMM: dict(
        obs_dims=OBS_DIMS,
        num_shared_states=2,
        num_private_states=1,
        emission="diag",
        concentration=1.5,
    ),
    MultimodalLDS: dict(
        obs_dims=OBS_DIMS,
        shared_dim=2,
        private_dim=1,
        stable=True,
        noise="diag",
        max_spectral_norm=0.999,
        prior_precision=1e-2,
        prior_noise=1e-3,
    ),
    MVRNN: dict(
        obs_dims=OBS_DIMS,
        hidden_dim=4,
        shared_dim=2,
        private_dim=1,
        head_dim=None,
        likelihood="gaussian",
        kl_scale=1.0,
        vectorized=True,
    ),
    GatedMixture: dict(
        obs_dims=OBS_DIMS,
        gate="conditional",
        head="bernoulli",
        num_classes=None,
        target="speech",
        expert="mlp",
        hidden_dim=4,
        num_layers=1,
        context=0,
        gate_hidden_dim=4,
        gate_context=None,
        gate_recurrent=False,
        stickiness=2.0,
        co_learning_units=0,
        co_learning_weight=1.0,
        expert_weight=1.0,
        mask_dim=None,
    ),
}


@st.composite
def constructor_calls(draw):
    cls = draw(st.sampled_from(list(CONSTRUCTORS)))
    base = dict(CONSTRUCTORS[cls])
    keys = draw(st.lists(st.sampled_from(sorted(base)), min_size=1, max_size=2, unique=True))
    for key in keys:
        base[key] = draw(BAD_VALUES)
    return cls, tuple(keys), base


@settings(max_examples=500, **SETTINGS)
@given(constructor_calls())
def test_constructors_build_or_name_the_argument(call):
    cls, keys, kwargs = call
    try:
        model = cls(**kwargs)
    except Exception as err:  # noqa: BLE001
        _assert_named(err, keys)
        return
    assert isinstance(model, cls)


@pytest.mark.parametrize("cls", list(CONSTRUCTORS))
def test_constructor_defaults_build(cls):
    assert isinstance(cls(**CONSTRUCTORS[cls]), cls)


# ---------------------------------------------------------------------------- parameters


def _hmm():
    torch.manual_seed(0)
    m = MultimodalHMM(
        {"a": 2, "b": 2, "c": 3},
        num_shared_states=2,
        num_private_states={"a": 2, "b": 1, "c": 1},
        emission={"a": "diag", "b": "full", "c": "categorical"},
    ).double()
    # move off the symmetric defaults so a round trip can tell parameters apart
    p = m.params
    g = torch.Generator().manual_seed(1)
    emissions = {k: dict(v) for k, v in p.emissions.items()}
    emissions["a"]["loc"] = torch.randn(emissions["a"]["loc"].shape, generator=g).double()
    emissions["b"]["scale_tril"] = emissions["b"]["scale_tril"] * 1.5
    m.set_params(p._replace(emissions=emissions))
    return m


def _lds():
    torch.manual_seed(0)
    return MultimodalLDS({"a": 2, "b": 2}, shared_dim=2, private_dim={"a": 1, "b": 0}).double()


def _leaves(params):
    """``(path, tensor)`` for every tensor of a params named tuple; path = (field, *keys)."""
    out = []
    for field, v in params._asdict().items():
        if isinstance(v, torch.Tensor):
            out.append(((field,), v))
        elif isinstance(v, dict):
            for k, w in v.items():
                if isinstance(w, torch.Tensor):
                    out.append(((field, k), w))
                elif isinstance(w, dict):
                    for k2, w2 in w.items():
                        out.append(((field, k, k2), w2))
    return out


def _replace_leaf(params, path, value):
    field, *keys = path
    if not keys:
        return params._replace(**{field: value})
    top = {k: (dict(v) if isinstance(v, dict) else v) for k, v in getattr(params, field).items()}
    if len(keys) == 1:
        if value is _DROP:
            del top[keys[0]]
        else:
            top[keys[0]] = value
    else:
        if value is _DROP:
            del top[keys[0]][keys[1]]
        else:
            top[keys[0]][keys[1]] = value
    return params._replace(**{field: top})


_DROP = object()

PERTURBATIONS = [
    "negative",
    "above_one",
    "nan",
    "inf",
    "scale_rows",
    "zero",
    "wrong_shape",
    "drop_axis",
    "drop",
    "not_tensor",
    "non_triangular",
    "non_symmetric",
    "non_spd",
    "int_dtype",
]


def _perturb(v: torch.Tensor, kind: str, rng: np.random.Generator):
    v = v.clone()
    flat = v.reshape(-1)
    if flat.numel() == 0 and kind in ("negative", "above_one", "nan", "inf"):
        return v
    i = int(rng.integers(flat.numel())) if flat.numel() else 0
    if kind == "negative":
        flat[i] = -abs(float(flat[i])) - 0.5
    elif kind == "above_one":
        flat[i] = 1.5
    elif kind == "nan":
        flat[i] = math.nan
    elif kind == "inf":
        flat[i] = math.inf
    elif kind == "scale_rows":
        v = v * 1.25
    elif kind == "zero":
        v = torch.zeros_like(v)
    elif kind == "wrong_shape":
        v = torch.cat([v, v[..., :1]], dim=-1) if v.dim() else v.reshape(1, 1)
    elif kind == "drop_axis":
        v = v[0] if v.dim() else v
    elif kind == "drop":
        return _DROP
    elif kind == "not_tensor":
        return "x"
    elif kind == "non_triangular" and v.dim() >= 2 and v.shape[-1] > 1:
        v[..., 0, -1] = 0.3
    elif kind == "non_symmetric" and v.dim() >= 2 and v.shape[-1] > 1:
        v[..., 0, -1] += 0.3
    elif kind == "non_spd" and v.dim() >= 2 and v.shape[-1] == v.shape[-2]:
        v = -torch.eye(v.shape[-1], dtype=v.dtype).expand(v.shape).clone()
    elif kind == "int_dtype":
        v = v.round().long()
    return v


def _params_equal(p, q, rtol=1e-12) -> bool:
    lp, lq = _leaves(p), _leaves(q)
    if [a for a, _ in lp] != [a for a, _ in lq]:
        return False
    return all(
        x.shape == y.shape and torch.allclose(x, y, rtol=rtol, atol=1e-300)
        for (_, x), (_, y) in zip(lp, lq, strict=True)
    )


def _path_name(path) -> str:
    field, *keys = path
    return "params." + field


@st.composite
def perturbed(draw, make):
    model = make()
    leaves = _leaves(model.params)
    path, v = draw(st.sampled_from(leaves))
    kind = draw(st.sampled_from(PERTURBATIONS))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    return model, path, kind, _replace_leaf(model.params, path, _perturb(v, kind, rng))


def _check_set_params(model, path, new, *, from_params=None):
    before = model.params
    try:
        model.set_params(new)
    except Exception as err:  # noqa: BLE001
        _assert_named(err, ("params",))
        assert _params_equal(model.params, before, rtol=0), "a failed set_params changed the model"
        if from_params is not None:
            with pytest.raises((ValueError, TypeError)) as info:
                from_params(new)
            _assert_named(info.value, ("params",))
        return False
    # accepted: it must be read back as given (up to the model's own normalization)
    after = dict(_leaves(model.params))
    for p_, x in _leaves(new):
        y = after[p_]
        assert x.shape == y.shape, f"{p_}: accepted shape {tuple(x.shape)} read back {y.shape}"
        assert torch.allclose(x.to(y.dtype), y, rtol=1e-8, atol=1e-10), f"{p_} not read back"
    return True


@settings(max_examples=200, **SETTINGS)
@given(perturbed(_hmm))
def test_hmm_set_params_validates_by_name(case):
    model, path, kind, new = case
    accepted = _check_set_params(model, path, new, from_params=MultimodalHMM.from_params)
    if accepted and kind == "drop":  # set_params may update a subset; from_params may not
        with pytest.raises(ValueError) as info:
            MultimodalHMM.from_params(new)
        _assert_named(info.value, ("params",))
    elif accepted:
        back = MultimodalHMM.from_params(new)
        assert _params_equal(back.params, model.params, rtol=1e-12)


BOOL_ARGS = [
    (MultimodalLDS, "stable"),
    (MVRNN, "vectorized"),
    (GatedMixture, "gate_recurrent"),
]


@pytest.mark.parametrize(("cls", "key"), BOOL_ARGS)
@pytest.mark.parametrize("value", [0, 1, "x", None, 0.5, "False"])
def test_flags_refuse_non_bools(cls, key, value):
    with pytest.raises(ValueError) as info:
        cls(**{**CONSTRUCTORS[cls], key: value})
    _assert_named(info.value, (key,))


@pytest.mark.parametrize("value", [math.nan, math.inf, "x", None, True])
def test_stickiness_refuses_non_finite(value):
    with pytest.raises(ValueError) as info:
        GatedMixture(**{**CONSTRUCTORS[GatedMixture], "stickiness": value})
    _assert_named(info.value, ("stickiness",))


@settings(max_examples=200, **SETTINGS)
@given(perturbed(_lds))
def test_lds_set_params_validates_by_name(case):
    model, path, kind, new = case
    _check_set_params(model, path, new)


def test_hmm_from_params_round_trips():
    m = _hmm()
    back = MultimodalHMM.from_params(m.params)
    assert _params_equal(back.params, m.params, rtol=1e-12)
    assert back.params.emission_kinds == m.params.emission_kinds
    lds = _lds()
    lds2 = _lds()
    lds2.set_params(lds.params)
    assert _params_equal(lds2.params, lds.params, rtol=1e-12)


# ---------------------------------------------------------------------------- fit / infer


@pytest.fixture(scope="module")
def small_data():
    data, _ = MultimodalHMM({"a": 2}, num_shared_states=2).sample(3, 5, seed=0)
    return data


@pytest.fixture
def small(small_data):
    return MultimodalHMM({"a": 2}, num_shared_states=2), small_data


FIT_BAD = [
    ("lr", v)
    for v in (math.inf, math.nan, 0, 0.0, -1.0, "x", True, -math.inf)
] + [
    ("num_steps", v)
    for v in (0, -1, 1.5, True, "10")
] + [
    ("batch_size", v)
    for v in (0, -1, 1.5, True)
] + [
    ("clip_norm", v)
    for v in (0, -1.0, math.inf, math.nan, "x")
] + [
    ("tol", v)
    for v in (-1e-3, math.nan, math.inf, "x")
] + [
    ("patience", v)
    for v in (-1, 1.5, True, "x")
] + [
    ("num_restarts", v)
    for v in (0, -1, 1.5, True)
] + [
    ("seed", v)
    for v in (1.5, "x", None, True)
] + [
    ("checkpoint_every", v)
    for v in (0, -1, 1.5, True)
] + [
    ("method", "x"),
    ("program", "x"),
    ("init", "x"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), FIT_BAD)
def test_fit_arguments_named_before_any_work(small, name, value):
    model, data = small
    before = model.params
    kwargs = {"num_steps": 1, "progress": False, name: value}
    with pytest.raises(ValueError) as info:
        mmpgm.fit(model, data, **kwargs)
    _assert_named(info.value, (name,))
    assert _params_equal(model.params, before, rtol=0)
    assert not model._mmpgm_fitted


INFER_BAD = [
    ("num_samples", v) for v in (-1, 1.5, True, "x")
] + [
    ("num_param_samples", v) for v in (-1, 1.5, True)
] + [
    ("seed", v) for v in (1.5, "x")
] + [
    ("causal", v) for v in ("x", 1, None)
] + [
    ("map_path", v) for v in ("x", 0, None)
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), INFER_BAD)
def test_infer_arguments_named(small, name, value):
    model, data = small
    with pytest.raises(ValueError) as info:
        mmpgm.infer(model, data, **{name: value})
    _assert_named(info.value, (name,))


@settings(max_examples=40, **SETTINGS)
@given(
    lr=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-3, 3),
        st.sampled_from(["x", True, None]),
    )
)
def test_fit_lr_property(small_data, lr):
    model, data = MultimodalHMM({"a": 2}, num_shared_states=2), small_data
    ok = lr is None or (
        isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    )
    if ok:
        return  # valid learning rates are exercised by the model tests
    with pytest.raises(ValueError) as info:
        mmpgm.fit(model, data, num_steps=1, lr=lr, progress=False)
    _assert_named(info.value, ("lr",))


@pytest.mark.parametrize("emission", ["diag", "full"])
def test_hmm_svi_on_large_scale_data_stays_finite(emission):
    """Data x 1e8 (float32): the variance prior's gradient used to overflow (NaN scales after
    one Adam step, then a raw InverseGamma support error)."""
    truth = MultimodalHMM({"a": 2}, num_shared_states=2)
    data, _ = truth.sample(4, 20, seed=0)
    big = MultimodalData({"a": data.obs["a"] * 1e8})
    model = MultimodalHMM({"a": 2}, num_shared_states=2, emission=emission)
    result = mmpgm.fit(model, big, num_steps=30, progress=False)
    assert math.isfinite(result.final_loss)
    for v in model.params.emissions["a"].values():
        assert bool(torch.isfinite(v).all())


def test_variance_prior_matches_torch_inverse_gamma():
    from mmpgm.observations import DiagonalGaussianObservation

    e = DiagonalGaussianObservation(3, 2, 2).double()
    g = torch.Generator().manual_seed(0)
    e.scale = torch.rand(2, 2, 3, generator=g, dtype=torch.float64) + 0.5
    e.prior_var = torch.rand(3, generator=g, dtype=torch.float64) + 0.1
    beta0 = e.prior_var * (e.alpha0 + 1.0)
    ref = torch.distributions.InverseGamma(torch.full_like(beta0, e.alpha0), beta0)
    expected = e._loc_log_prior() + ref.log_prob(e.scale**2).sum()
    torch.testing.assert_close(e.log_prior(), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, **SETTINGS)
@given(
    k=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["spd", "non_symmetric", "indefinite", "singular", "nan", "int"]),
)
def test_check_positive_definite(k, seed, kind):
    from mmpgm._validation import check_positive_definite

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g, dtype=torch.float64)
    m = a @ a.T + 0.1 * torch.eye(k, dtype=torch.float64)
    if kind == "non_symmetric" and k > 1:
        m[0, -1] += 1.0
    elif kind == "indefinite":
        m = m - (torch.linalg.eigvalsh(m).max() + 1) * torch.eye(k, dtype=torch.float64)
    elif kind == "singular":
        m = torch.zeros(k, k, dtype=torch.float64)
    elif kind == "nan":
        m[0, 0] = math.nan
    elif kind == "int":
        m = m.round().long()
    if kind == "spd" or (kind == "non_symmetric" and k == 1):
        L = check_positive_definite("cov", m)
        torch.testing.assert_close(L @ L.T, m, rtol=1e-10, atol=1e-10)
    else:
        with pytest.raises((ValueError, TypeError)) as info:
            check_positive_definite("cov", m)
        _assert_named(info.value, ("cov",))


@pytest.mark.parametrize("dims", [(5, 2, 1), (2, 3, 1), (2, 2, 2)])
def test_hmm_refuses_an_observation_model_of_other_sizes(dims):
    from mmpgm.observations import DiagonalGaussianObservation

    with pytest.raises(ValueError) as info:
        MultimodalHMM({"a": 2}, 2, 1, emission={"a": DiagonalGaussianObservation(*dims)})
    _assert_named(info.value, ("emission",))


@settings(max_examples=60, **SETTINGS)
@given(
    method=st.sampled_from(["split", "batches", "filled", "to"]),
    value=st.sampled_from(
        [0, 1, 2, -1, 0.5, 1.5, math.nan, True, None, "x", "a", torch.int64, torch.float64]
    ),
)
def test_data_methods_name_their_argument(method, value):
    data = MultimodalData({"a": np.random.default_rng(0).normal(size=(4, 3, 2))})
    name = {"split": "fraction", "batches": "batch_size", "filled": "modality", "to": "dtype"}
    try:
        if method == "split":
            first, second = data.split(value)
            assert first.num_sequences + second.num_sequences == 4
        elif method == "batches":
            assert sum(b.num_sequences for b in data.batches(value)) == 4
        elif method == "filled":
            assert data.filled(value).shape == (4, 3, 2)
        else:
            assert data.to(dtype=value).obs["a"].dtype == (value or torch.float64)
    except Exception as err:  # noqa: BLE001
        _assert_named(err, (name[method],))
