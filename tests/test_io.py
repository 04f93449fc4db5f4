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
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="corrupted mmpgm model file"):  # the digest sees it
        mmpgm.load_model(tmp_path / "edited.pt")
    del state["state_digest"]  # as a file written before the digest existed
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="state_dict does not fit"):
        mmpgm.load_model(tmp_path / "mismatch.pt")
    with pytest.raises(FileNotFoundError):
        mmpgm.load_model(tmp_path / "absent.pt")


def test_a_flipped_bit_never_loads_silently(tmp_path):
    """torch's zip reader does not check CRCs: a bit flipped inside a tensor's bytes loaded as a
    silently different parameter. The file's SHA-256 digest catches it; a flip anywhere gives
    either a ValueError or (in padding no record reads) exactly the saved model."""
    model = _small_model()
    path = tmp_path / "m.pt"
    model.save(path)
    data = path.read_bytes()
    state = torch.load(path, weights_only=True)
    # a tensor's value edited inside a well-formed file: caught
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    edited = state["state_dict"][key].clone()
    edited.view(-1)[0] += 0.5
    state["state_dict"][key] = edited
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="corrupted mmpgm model file"):
        mmpgm.load_model(tmp_path / "edited.pt")
    reference = model.state_dict()
    outcomes = {"refused": 0, "identical": 0}
    for pos in range(0, len(data), max(1, len(data) // 97)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        (tmp_path / "flip.pt").write_bytes(bytes(flipped))
        try:
            loaded = mmpgm.load_model(tmp_path / "flip.pt")
        except ValueError:
            outcomes["refused"] += 1
            continue
        got = loaded.state_dict()
        assert set(got) == set(reference)
        for k, v in reference.items():
            assert torch.equal(got[k], v), (pos, k)
        outcomes["identical"] += 1
    assert outcomes["refused"] > 0
