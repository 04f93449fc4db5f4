"""SVI checkpoints (``mmpgm.fit(checkpoint=...)``): an interrupted and resumed fit equals the
uninterrupted one bitwise for every model family, also after SIGKILLs at random moments; a
checkpoint of another fit or a file that is not a checkpoint is refused with a ``ValueError``
naming the path; writes are atomic and leave no temp files."""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.inference import checkpoint as ckpt
from mmpgm.inference.stopping import LR_DROP_FACTOR, LR_DROPS
from mmpgm.models import MVRNN, GatedMixture, MultimodalHMM, MultimodalLDS

pytestmark = pytest.mark.usefixtures("one_thread")

DIMS = {"a": 2, "b": 1}


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hmm(num_shared_states=2):
    torch.manual_seed(0)
    model = MultimodalHMM(DIMS, num_shared_states=num_shared_states).double()
    data, _ = model.sample(4, 6, seed=0)
    return model, data


def _lds():
    torch.manual_seed(0)
    model = MultimodalLDS(DIMS, shared_dim=1, private_dim={"a": 1, "b": 0}).double()
    data, _ = model.sample(4, 6, seed=0)
    return model, data


def test_lds_init_from_data_is_bitwise_reproducible():
    """It was not (the last bits varied from call to call on identical input: MKL's default
    least-squares driver ``gelsy`` depends on memory alignment), which kept the LDS out of the
    kill test; the junk allocations move the inputs' alignment between calls."""
    model, data = _lds()
    states, junk = [], []
    for i in range(8):
        junk.append(torch.empty(3 * i + 1, dtype=torch.float64))
        model.init_from_data(data)
        states.append(_params(model))
    for state in states[1:]:
        for k, v in states[0].items():
            assert torch.equal(state[k], v), k


def _mvrnn():
    torch.manual_seed(0)
    # no KL annealing: its stages are fractions of num_steps, which this test changes on resume
    model = MVRNN(DIMS, hidden_dim=4, shared_dim=2, private_dim=1, kl_annealing=None).double()
    data, _ = model.sample(4, 6, seed=0)
    return model, data


def _mixture():
    torch.manual_seed(0)
    model = GatedMixture(DIMS, gate="conditional", head="bernoulli").double()
    g = torch.Generator().manual_seed(0)
    N, T = 4, 6
    obs = {m: torch.randn(N, T, d, dtype=torch.float64, generator=g) for m, d in DIMS.items()}
    y = torch.randint(0, 2, (N, T), generator=g)
    return model, MultimodalData(obs, labels={"speech": y})


BUILDERS = {"hmm": _hmm, "lds": _lds, "mvrnn": _mvrnn, "mixture": _mixture}


def _assert_same(result, model, ref_result, ref_params):
    assert result.losses.tolist() == ref_result.losses.tolist()
    params = _params(model)
    assert params.keys() == ref_params.keys()
    for k, v in ref_params.items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=0, msg=k)


def _fit(model, data, num_steps, path=None, **kw):
    return mmpgm.fit(
        model, data, num_steps=num_steps, checkpoint=path, progress=False, patience=0, **kw
    )


# ---------------------------------------------------------------------- bitwise resume
@pytest.mark.parametrize("batch_size", [None, 3])
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_interrupted_and_resumed_fit_equals_uninterrupted(tmp_path, family, batch_size):
    """A first call with ``num_steps=4`` (checkpoint every 3 steps, and at the end), then a call
    with ``num_steps=9`` on a fresh model: its init_from_data runs and is overwritten by the
    checkpoint, which restores parameters, Adam and every random state."""
    kw = {"batch_size": batch_size}
    model, data = BUILDERS[family]()
    ref = _fit(model, data, 9, **kw)
    ref_params = _params(model)

    path = tmp_path / "fit.ckpt"
    model, data = BUILDERS[family]()
    first = _fit(model, data, 4, path, checkpoint_every=3, **kw)
    assert first.losses.tolist() == ref.losses[:4].tolist()
    model, data = BUILDERS[family]()
    resumed = _fit(model, data, 9, path, checkpoint_every=3, **kw)
    assert resumed.start_step == 4
    _assert_same(resumed, model, ref, ref_params)
    assert os.listdir(tmp_path) == ["fit.ckpt"]


def test_resume_in_the_same_model_object(tmp_path):
    """The interrupted model object itself resumes (fitted already: no init_from_data)."""
    model, data = _mvrnn()
    ref = _fit(model, data, 6)
    ref_params = _params(model)
    model, data = _mvrnn()
    _fit(model, data, 2, tmp_path / "c", checkpoint_every=1)
    _assert_same(_fit(model, data, 6, tmp_path / "c"), model, ref, ref_params)


def test_mvrnn_resume_needs_the_torch_random_state(tmp_path, monkeypatch):
    """The MVRNN's ELBO draws from torch's generator: without restoring it, a resumed fit
    diverges at the first resumed step (so the bitwise test above measures something)."""
    model, data = _mvrnn()
    ref = _fit(model, data, 4)
    model, data = _mvrnn()
    _fit(model, data, 2, tmp_path / "c")
    restore = ckpt.set_rng_state

    def without_torch(state, gen, device):
        saved = torch.get_rng_state()
        restore(state, gen, device)
        torch.set_rng_state(saved)

    monkeypatch.setattr(ckpt, "set_rng_state", without_torch)
    model, data = _mvrnn()
    resumed = _fit(model, data, 4, tmp_path / "c")
    assert resumed.losses[:2].tolist() == ref.losses[:2].tolist()
    assert resumed.losses[2] != ref.losses[2]


def test_checkpoint_loads_weights_only_with_header(tmp_path):
    model, data = _hmm()
    _fit(model, data, 2, tmp_path / "c", lr=0.02, seed=3)
    state = torch.load(tmp_path / "c", weights_only=True)
    assert state["mmpgm_checkpoint"] == ckpt.FORMAT_VERSION
    assert state["class"] == "MultimodalHMM" and state["config"] == model.config()
    assert state["data_fingerprint"]["num_sequences"] == 4
    assert state["data_fingerprint"]["obs_dims"] == DIMS
    assert state["options"]["lr"] == 0.02 and state["options"]["seed"] == 3
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "minibatch"}


def test_early_stopped_checkpoint_stays_stopped(tmp_path):
    model, data = _hmm()
    first = mmpgm.fit(
        model, data, num_steps=50, checkpoint=tmp_path / "c", patience=1, tol=1e9, progress=False
    )
    # each plateau test: one step improves on inf, the next does not; the first LR_DROPS
    # plateaus lower the rate and start the test afresh, the last one stops
    plateaus = LR_DROPS + 1
    assert first.converged and first.num_steps == 2 * plateaus
    state = torch.load(tmp_path / "c", weights_only=True)
    lr = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert lr == pytest.approx([0.05 * LR_DROP_FACTOR**LR_DROPS] * len(lr), rel=1e-12)
    again = mmpgm.fit(
        model, data, num_steps=50, checkpoint=tmp_path / "c", patience=1, tol=1e9, progress=False
    )
    assert again.converged and again.num_steps == 2 * plateaus
    assert again.start_step == 2 * plateaus


# ---------------------------------------------------------------------- kills
_BUILDS = {
    "mvrnn": """
import torch
import mmpgm
from mmpgm.models import MVRNN

def build():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MVRNN({"a": 2, "b": 1}, hidden_dim=4, shared_dim=2, private_dim=1).double()
    data, _ = model.sample(4, 6, seed=0)
    return model, data

KW = dict(num_steps=40, batch_size=3, patience=0, progress=False, checkpoint_every=1)
""",
    "hmm": """
import torch
import mmpgm
from mmpgm.models import MultimodalHMM

def build():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MultimodalHMM({"a": 2, "b": 1}, num_shared_states=2).double()
    data, _ = model.sample(6, 8, seed=0)
    return model, data

KW = dict(num_steps=300, batch_size=4, patience=0, progress=False, checkpoint_every=1)
""",
    "lds": """
import torch
import mmpgm
from mmpgm.models import MultimodalLDS

def build():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MultimodalLDS({"a": 2, "b": 1}, shared_dim=1, private_dim={"a": 1, "b": 0}).double()
    data, _ = model.sample(6, 8, seed=0)
    return model, data

KW = dict(num_steps=25, patience=0, progress=False, checkpoint_every=1)
""",
    "hmm_em": """
import torch
import mmpgm
from mmpgm.models import MultimodalHMM

def build():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MultimodalHMM({"a": 2, "b": 1}, num_shared_states=2).double()
    data, _ = model.sample(6, 8, seed=0)
    return model, data

KW = dict(method="em", num_steps=60, patience=0, progress=False, checkpoint_every=1)
""",
    "mixture": """
import torch
import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.models import GatedMixture

def build():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GatedMixture({"a": 2, "b": 1}, gate="conditional", head="bernoulli").double()
    g = torch.Generator().manual_seed(0)
    dims = (("a", 2), ("b", 1))
    obs = {m: torch.randn(4, 6, d, dtype=torch.float64, generator=g) for m, d in dims}
    y = torch.randint(0, 2, (4, 6), generator=g)
    return model, MultimodalData(obs, labels={"speech": y})

KW = dict(num_steps=200, batch_size=3, patience=0, progress=False, checkpoint_every=1)
""",
}


@pytest.mark.parametrize("family", ["mvrnn", "hmm", "lds", "mixture", "hmm_em"])
def test_sigkill_at_random_moments_then_resume_is_bitwise(tmp_path, family):
    """Every family's SVI (HMM and LDS in standardized units), and the closed-form EM."""
    ns: dict = {}
    exec(_BUILDS[family], ns)  # the child's model, data and options, shared with this process
    model, data = ns["build"]()
    ref = mmpgm.fit(model, data, **ns["KW"])
    ref_params = _params(model)

    path = tmp_path / "kill.ckpt"
    child = _BUILDS[family] + (
        "\nmodel, data = build()\nprint('ready', flush=True)\n"
        f"mmpgm.fit(model, data, checkpoint={str(path)!r}, **KW)\n"
    )
    rng = random.Random(0)
    steps_seen = []
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert proc.stdout.readline().strip() == b"ready"
        t0 = time.perf_counter()
        while not path.exists() and time.perf_counter() - t0 < 30:
            time.sleep(0.002)  # kill once it writes checkpoints (after init, at random steps)
        # a random step a little ahead of where the child is, so the kill lands mid-fit on a
        # fast machine too (a random delay in seconds let a quick fit finish first); steps write
        # a checkpoint each, atomically, so reading one while the child runs is safe
        start = ckpt.load_checkpoint(path)["step"] if path.exists() else 0
        target = min(start + rng.randint(1, 3), ns["KW"]["num_steps"] - 1)
        while time.perf_counter() - t0 < 30 and proc.poll() is None:
            if ckpt.load_checkpoint(path)["step"] >= target:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        state = ckpt.load_checkpoint(path)  # always readable
        assert state["losses"] == ref.losses[: state["step"]].tolist()
        steps_seen.append(state["step"])
    assert steps_seen == sorted(steps_seen)
    assert steps_seen[0] < ns["KW"]["num_steps"]  # the first kill landed mid-fit

    model, data = ns["build"]()
    resumed = mmpgm.fit(model, data, checkpoint=path, **ns["KW"])
    assert resumed.start_step == steps_seen[-1]
    _assert_same(resumed, model, ref, ref_params)
    assert os.listdir(tmp_path) == ["kill.ckpt"]


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "c"
    stale = [f"c.tmp.{dead.pid}.abcd1234", "c.tmp"]
    live = f"c.tmp.{os.getppid()}.abcd1234"  # a running process's write in progress
    other = "d.tmp.1.abcd"  # another checkpoint's
    for name in [*stale, live, other]:
        (tmp_path / name).write_bytes(b"partial")
    model, data = _hmm()
    _fit(model, data, 1, path)
    assert sorted(os.listdir(tmp_path)) == sorted(["c", live, other])


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    model, data = _hmm()
    path = tmp_path / "c"
    _fit(model, data, 1, path)
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _fit(model, data, 3, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c"]


# ---------------------------------------------------------------------- refusals
def _plus_one_sequence(data):
    return MultimodalData(
        {m: torch.cat([v, v[:1]]) for m, v in data.obs.items()}, labels=data.labels
    )


def _changed_value(data):
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["a"][2, 3, 1] += 1e-9
    return MultimodalData(obs, labels=data.labels)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, d: (m, _plus_one_sequence(d), {}), "data num_sequences: expected 4, got 5"),
        (lambda m, d: (m, _changed_value(d), {}), "data content (hash"),
        (lambda m, d: (_hmm(3)[0], d, {}), "config['num_shared_states']: expected 2, got 3"),
        (lambda m, d: (m, d, {"lr": 0.1}), "lr: expected 0.05, got 0.1"),
        (lambda m, d: (m, d, {"seed": 1}), "seed: expected 0, got 1"),
        (lambda m, d: (m, d, {"batch_size": 2}), "batch_size: expected None, got 2"),
        (lambda m, d: (m, d, {"program": "enumerated"}), "program: expected 'collapsed'"),
        (lambda m, d: (m.float(), d, {}), "dtype: expected 'float64', got 'float32'"),
    ],
    ids=["sequences", "values", "config", "lr", "seed", "batch_size", "program", "dtype"],
)
def test_checkpoint_of_another_fit_is_refused(tmp_path, change, message):
    model, data = _hmm()
    path = tmp_path / "c"
    _fit(model, data, 2, path)
    model, data, kw = change(*_hmm())
    with pytest.raises(ValueError, match=re.escape(f"checkpoint: {path} was written for")) as e:
        _fit(model, data, 4, path, **kw)
    assert message in str(e.value) and "delete it or pass another path" in str(e.value)


def test_other_num_steps_and_patience_resume(tmp_path):
    model, data = _hmm()
    _fit(model, data, 2, tmp_path / "c")
    result = mmpgm.fit(
        model, data, num_steps=3, checkpoint=tmp_path / "c", patience=7, progress=False
    )
    assert result.start_step == 2 and result.num_steps == 3


# ---------------------------------------------------------------------- EM, units
@pytest.mark.parametrize("family", ["hmm", "lds"])
def test_em_interrupted_and_resumed_equals_uninterrupted(tmp_path, family):
    model, data = BUILDERS[family]()
    ref = _fit(model, data, 9, method="em")
    ref_params = _params(model)
    path = tmp_path / "em.ckpt"
    model, data = BUILDERS[family]()
    first = _fit(model, data, 4, path, method="em", checkpoint_every=3)
    assert first.losses.tolist() == ref.losses[:4].tolist()
    model, data = BUILDERS[family]()
    resumed = _fit(model, data, 9, path, method="em", checkpoint_every=3)
    assert resumed.start_step == 4 and resumed.method == "em"
    _assert_same(resumed, model, ref, ref_params)
    assert os.listdir(tmp_path) == ["em.ckpt"]


def test_checkpoint_of_the_other_method_is_refused(tmp_path):
    model, data = _hmm()
    _fit(model, data, 2, tmp_path / "svi")
    model, data = _hmm()
    _fit(model, data, 2, tmp_path / "em", method="em")
    with pytest.raises(ValueError, match="method: expected '<absent>', got 'em'"):
        _fit(*_hmm(), 4, tmp_path / "svi", method="em")
    with pytest.raises(ValueError, match="lr: expected '<absent>', got 0.05"):
        _fit(*_hmm(), 4, tmp_path / "em")


def test_checkpoint_in_the_data_units_is_refused(tmp_path):
    """HMM and LDS SVI checkpoints hold the model in standardized units (``options["units"]``);
    one written before SVI standardized holds it in the data's units and is refused by name."""
    model, data = _hmm()
    path = tmp_path / "c"
    _fit(model, data, 2, path)
    state = torch.load(path, weights_only=True)
    assert state["options"]["units"] == "standardized"
    del state["options"]["units"]
    del state["content_digest"]  # as one written before the digest existed
    torch.save(state, path)
    with pytest.raises(ValueError, match="units: expected '<absent>', got 'standardized'"):
        _fit(*_hmm(), 4, path)


def test_a_corrupted_checkpoint_is_refused_by_its_digest(tmp_path):
    """A checkpoint whose tensors changed after it was written (a flipped bit that torch's zip
    reader, which checks no CRC, would load silently) is refused naming the file."""
    model, data = _hmm()
    path = tmp_path / "c"
    _fit(model, data, 2, path)
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    edited = state["model"][key].clone()
    edited.view(-1)[0] += 0.5
    state["model"][key] = edited
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"checkpoint: .* is corrupted"):
        _fit(*_hmm(), 4, path)


def test_the_mixture_em_refuses_a_checkpoint(tmp_path):
    model, data = _mixture()
    with pytest.raises(ValueError, match="checkpoint: applies to method='svi' and the closed"):
        _fit(model, data, 2, tmp_path / "c", method="em")
    assert os.listdir(tmp_path) == []


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _bad_files(tmp_path):
    model, data = _hmm()
    good = tmp_path / "good"
    _fit(model, data, 1, good)
    blob = good.read_bytes()
    marker = tmp_path / "marker"
    model_file = tmp_path / "model.pt"
    model.save(model_file)
    newer = torch.load(good, weights_only=True)
    newer["mmpgm_checkpoint"] = ckpt.FORMAT_VERSION + 1
    files = {
        "truncated": blob[: len(blob) // 2],
        "random": random.Random(0).randbytes(4096),
        "empty": b"",
        "model file": model_file.read_bytes(),
        "pickle payload": pickle.dumps(_Payload(str(marker))),
        "foreign dict": None,
        "newer": None,
    }
    return files, marker, newer


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "is not an mmpgm checkpoint"),
        ("random", "is not an mmpgm checkpoint"),
        ("empty", "is not an mmpgm checkpoint"),
        ("model file", "is an mmpgm model file"),
        ("pickle payload", "is not an mmpgm checkpoint"),
        ("foreign dict", "no mmpgm header"),
        ("newer", f"format version {ckpt.FORMAT_VERSION + 1}, newer"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, kind, message):
    files, marker, newer = _bad_files(tmp_path)
    path = tmp_path / "bad"
    if kind == "foreign dict":
        torch.save({"step": 3, "model": {}}, path)
    elif kind == "newer":
        torch.save(newer, path)
    else:
        path.write_bytes(files[kind])
    model, data = _hmm()
    with pytest.raises(ValueError, match=re.escape(f"checkpoint: {path} ")) as e:
        _fit(model, data, 2, path)
    assert message in str(e.value)
    assert not marker.exists()
