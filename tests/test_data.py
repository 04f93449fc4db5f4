"""MultimodalData: construction, masks, batching, I/O and one test per class of bad input."""

import math

import numpy as np
import pytest
import torch

from mmpgm import MultimodalData


def make(N=3, T=5):
    g = torch.Generator().manual_seed(0)
    return {"audio": torch.randn(N, T, 4, generator=g), "video": torch.randn(N, T, 2, generator=g)}


def test_masks_from_nan_and_lengths():
    obs = make()
    obs["video"][0, 2] = math.nan
    d = MultimodalData(obs, lengths=[5, 3, 4])
    assert d.mask["video"][0].tolist() == [True, True, False, True, True]
    assert d.mask["audio"][1].tolist() == [True, True, True, False, False]
    assert d.mask["audio"][0].all()
    assert d.filled("video")[0, 2].eq(0).all()


def test_ragged_lists_are_padded():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(t, 3)) for t in (4, 2, 6)]
    v = [rng.normal(size=(t, 1)) for t in (4, 2, 6)]
    d = MultimodalData({"a": a, "v": v})
    assert d.obs["a"].shape == (3, 6, 3)
    assert d.lengths.tolist() == [4, 2, 6]
    assert d.mask["a"].sum(1).tolist() == [4, 2, 6]


def test_user_mask_combines_and_save_load_roundtrip(tmp_path):
    obs = make()
    mask = {"audio": torch.ones(3, 5, dtype=torch.bool)}
    mask["audio"][1, 1:3] = False
    d = MultimodalData(
        obs,
        mask=mask,
        labels={"shared": torch.full((3, 5), -1), "speaker": torch.arange(3)},
        meta={"note": "x"},
    )
    p = tmp_path / "d.npz"
    d.save(p)
    e = MultimodalData.load(p)
    for m in d.modalities:
        torch.testing.assert_close(e.obs[m], d.obs[m])
        assert torch.equal(e.mask[m], d.mask[m])
    assert torch.equal(e.labels["speaker"], d.labels["speaker"])
    assert e.meta["note"] == "x"


def test_batches_slicing_and_moves():
    d = MultimodalData(make(N=7), lengths=[5, 4, 3, 5, 5, 2, 1])
    sizes = [b.num_sequences for b in d.batches(3)]
    assert sizes == [3, 3, 1]
    assert d[2].lengths.tolist() == [3]
    assert d.to(dtype=torch.float64).obs["audio"].dtype == torch.float64
    first, second = d.split(0.5, seed=1)
    assert first.num_sequences + second.num_sequences == 7


@pytest.mark.parametrize(
    "build,match",
    [
        (
            lambda o: MultimodalData({"a": o["audio"][0]}),
            r"obs\['a'\].*\(num_sequences, num_timesteps, obs_dim\)",
        ),
        (lambda o: MultimodalData({"a": o["audio"][..., None]}), r"obs\['a'\].*got \(3, 5, 4, 1\)"),
        (
            lambda o: MultimodalData({"a": o["audio"], "b": o["video"][:2]}),
            r"obs\['b'\]: num_sequences 2",
        ),
        (
            lambda o: MultimodalData({"a": o["audio"], "b": o["video"][:, :4]}),
            r"obs\['b'\]: num_timesteps 4",
        ),
        (
            lambda o: MultimodalData(o, lengths=[5, 6, 5]),
            r"lengths: expected values in \[1, num_timesteps=5\]",
        ),
        (lambda o: MultimodalData(o, lengths=[5, 0, 5]), r"lengths: expected values in \[1"),
        (lambda o: MultimodalData(o, lengths=[5, 5]), r"lengths: expected shape \(3,\)"),
        (
            lambda o: MultimodalData(o, mask={"lidar": torch.ones(3, 5, dtype=torch.bool)}),
            r"mask: unknown modality 'lidar'",
        ),
        (
            lambda o: MultimodalData(o, mask={"audio": torch.ones(3, 4, dtype=torch.bool)}),
            r"mask\['audio'\]: expected shape \(3, 5\)",
        ),
        (
            lambda o: MultimodalData(o, labels={"y": torch.zeros(3, 2)}),
            r"labels\['y'\]: expected shape",
        ),
        (lambda o: MultimodalData({}), r"obs: expected at least one modality"),
    ],
)
def test_bad_input_raises_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build(make())


def test_all_nan_sequence_raises():
    obs = make()
    obs["audio"][1] = math.nan
    obs["video"][1] = math.nan
    with pytest.raises(ValueError, match=r"sequences \[1\] have no observed frame"):
        MultimodalData(obs)


@pytest.mark.parametrize(
    "obs,match",
    [
        ([1, 2, 3], "obs: expected a dict"),
        ({"a": "text"}, r"obs\['a'\]: expected a torch.Tensor, a numpy array or a list, got str"),
        ({1: torch.zeros(1, 2, 3)}, "modality names must be str"),
        ({"a": torch.zeros(1, 2, 3, dtype=torch.bool)}, "expected a real numeric array"),
    ],
)
def test_bad_types_raise_type_error(obs, match):
    with pytest.raises(TypeError, match=match):
        MultimodalData(obs)


def test_per_frame_vector_labels_roundtrip(tmp_path):
    """``(N, T, F)`` labels (e.g. a ratio mask) survive indexing, batches, split, to(), .npz I/O."""
    g = torch.Generator().manual_seed(1)
    irm = torch.rand(7, 5, 3, dtype=torch.float64, generator=g)
    irm[2, 1, 0] = math.nan
    d = MultimodalData(
        make(N=7),
        lengths=[5, 4, 3, 5, 5, 2, 1],
        labels={"irm": irm, "speech": torch.zeros(7, 5), "speaker": torch.arange(7)},
    )
    assert d.labels["irm"].shape == (7, 5, 3)
    idx = torch.tensor([5, 2, 0])
    torch.testing.assert_close(d[idx].labels["irm"], irm[idx], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(d[2].labels["irm"], irm[2:3], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(d[-1].labels["irm"], irm[-1:], rtol=0, atol=0)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    batches = d.batches(3, shuffle=True, generator=torch.Generator().manual_seed(3))
    gathered = torch.cat([b.labels["irm"] for b in batches])
    torch.testing.assert_close(gathered, irm[order], rtol=0, atol=0, equal_nan=True)
    first, second = d.split(0.5, seed=1)
    assert first.labels["irm"].shape[1:] == (5, 3) and second.labels["irm"].shape[1:] == (5, 3)
    assert first.labels["irm"].shape[0] + second.labels["irm"].shape[0] == 7
    assert d.to(dtype=torch.float32).labels["irm"].shape == (7, 5, 3)
    p = tmp_path / "d.npz"
    d.save(p)
    e = MultimodalData.load(p)
    torch.testing.assert_close(e.labels["irm"], irm, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(e.labels["speaker"], d.labels["speaker"])
    match = r"labels\['irm'\]: expected shape \(7,\), \(7, 5\) or \(7, 5, \.\.\.\)"
    with pytest.raises(ValueError, match=match):
        MultimodalData(make(N=7), labels={"irm": irm[:, :4]})


def test_inf_is_refused_by_name():
    x = np.zeros((2, 4, 3))
    x[1, 2, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"obs\['a'\]: expected finite values or NaN .* \[\[1, 2\]\]"
    ):
        MultimodalData({"a": x})


def test_integer_and_half_arrays_become_floats():
    ints = np.array([[[0], [2], [-1]]])
    d = MultimodalData({"c": ints, "h": torch.ones(1, 3, 2, dtype=torch.float16)})
    assert d.obs["c"].dtype == torch.get_default_dtype()
    assert d.obs["h"].dtype == torch.get_default_dtype()
    assert d.mask["c"].tolist() == [[True, True, False]]


def test_meta_round_trips_with_its_types(tmp_path):
    meta = {
        "name": "x",
        "speakers": ["s1", "s2"],
        "rate": 25,
        "cfg": {"snr": [0.0, 5.5]},
        "flag": True,
        "empty": [],
    }
    d = MultimodalData({"a": np.zeros((2, 3, 1))}, meta=meta)
    d.save(tmp_path / "d.npz")
    assert MultimodalData.load(tmp_path / "d.npz").meta == meta


def test_load_refuses_a_file_that_is_not_npz(tmp_path):
    (tmp_path / "x.csv").write_text("sequence,time,a\n0,0,1.0\n")
    with pytest.raises(ValueError, match="not a MultimodalData .npz file"):
        MultimodalData.load(tmp_path / "x.csv")
    np.save(tmp_path / "y.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a MultimodalData .npz file"):
        MultimodalData.load(tmp_path / "y.npy")
