"""mmpgm.load_model: model files cannot run code, and foreign files get a named error."""

import os
import pickle

import pytest
import torch

import mmpgm


class _Payload:
    """Unpickling this object writes a marker file (what a crafted model file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _small_model():
    return mmpgm.MultimodalHMM({"a": 2}, num_shared_states=2)


def test_round_trip(tmp_path):
    model = _small_model().double()
    path = tmp_path / "m.pt"
    model.save(path)
    loaded = mmpgm.load_model(path)
    assert type(loaded) is type(model)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["plain_pickle", "torch_save_dict", "doctored_model_file"])
def test_crafted_file_never_runs_its_payload(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = _Payload(str(marker))
    if how == "plain_pickle":
        path.write_bytes(pickle.dumps(payload))
    elif how == "torch_save_dict":
        torch.save({"mmpgm_format": 1, "class": "MultimodalHMM", "x": payload}, path)
    else:
        model = _small_model()
        torch.save(
            {
                "class": "MultimodalHMM",
                "config": model.config(),
                "mmpgm_format": 1,
                "dtype": "float32",
                "state_dict": model.state_dict(),
                "extra": payload,
            },
            path,
        )
    with pytest.raises(ValueError, match="not an mmpgm model file"):
        mmpgm.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (os.urandom(256), "not an mmpgm model file"),
        (b"sequence,time,a\n0,0,1.0\n", "not an mmpgm model file"),
        ({"some": torch.zeros(2)}, "no mmpgm header"),
        ({"mmpgm_format": 99, "class": "MultimodalHMM"}, "format 99 is not supported"),
        (
            {
                "mmpgm_format": 1,
                "class": "Nope",
                "config": {},
                "state_dict": {},
                "dtype": "float32",
            },
            "unknown model class 'Nope'",
        ),
    ],
)
def test_foreign_files_get_a_named_error(tmp_path, content, match):
    path = tmp_path / "f.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        mmpgm.load_model(path)


def test_truncated_and_mismatched_files(tmp_path):
    model = _small_model()
    path = tmp_path / "m.pt"
    model.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not an mmpgm model file"):
        mmpgm.load_model(tmp_path / "cut.pt")
    state = torch.load(path, weights_only=True)
    state["config"]["num_shared_states"] = 3  # the state dict no longer fits this config
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="state_dict does not fit"):
        mmpgm.load_model(tmp_path / "mismatch.pt")
    with pytest.raises(FileNotFoundError):
        mmpgm.load_model(tmp_path / "absent.pt")
