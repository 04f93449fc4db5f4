"""``mmpgm.fit`` on a streamed ``ShardedData`` corpus (:mod:`mmpgm.inference.streaming`).

The cases of ``streaming_cases.py`` (HMM and LDS EM, HMM EM with sensor faults, full-batch SVI
of both, data-driven starts, minibatch SVI) fit 9 ragged sequences with ~10% missing frames cut
into 4 shards of different ``num_timesteps``.

Tolerance (float64, ``rtol=1e-10, atol=1e-12``): EM and full-batch SVI from a streamed corpus
differ from the fit of the in-memory concatenation only in the order of floating-point sums
(statistics and gradients are summed group by group; the corpus moments of the standardized
units come from streamed sums): measured at most 6e-15 on every parameter and loss over 5 EM /
4 Adam steps. A real difference (a shard skipped or read twice, a wrong weight of a group's
loss, the units of one shard only) is of the size of one update, >= 1e-3 here.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmpgm

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("streaming_cases", HERE / "streaming_cases.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

TOL = dict(rtol=1e-10, atol=1e-12)
EXACT = [name for name in cases.CASES if "minibatch" not in name]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    cases.prepare(folder)
    return folder


def _assert_same_fit(a, b):
    assert len(a["losses"]) == len(b["losses"])
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), **TOL)
    assert set(a["state"]) == set(b["state"])
    for k, v in b["state"].items():
        torch.testing.assert_close(a["state"][k], v, **TOL, msg=k)


@pytest.mark.parametrize("name", EXACT)
def test_streamed_fit_equals_the_in_memory_fit(shard_dir, name):
    _assert_same_fit(
        cases.run_case(name, shard_dir), cases.run_case(name, shard_dir, in_memory=True)
    )


@pytest.mark.parametrize("name", ["hmm_em_chunked", "lds_em_chunked"])
def test_em_in_chunks_of_frames_equals_em(shard_dir, name):
    """``fit(method="em", chunk_size=K)`` (E-steps in chunks of frames) is the same fit."""
    sharded = mmpgm.ShardedData(str(shard_dir / name / "*.npz"))
    build, opts, _ = cases.CASES[name]
    a, _ = build()
    b = copy.deepcopy(a)
    ra = mmpgm.fit(a, sharded.load_all(), **opts)
    rb = mmpgm.fit(b, sharded.load_all(), **{**opts, "chunk_size": None})
    _assert_same_fit({"losses": ra.losses.tolist(), "state": a.state_dict()},
                     {"losses": rb.losses.tolist(), "state": b.state_dict()})


def test_full_batch_svi_equals_batch_size_of_the_corpus(shard_dir):
    """``batch_size >= N`` streams the same full-batch steps as ``batch_size=None``."""
    build, opts, _ = cases.CASES["hmm_svi_full"]
    sharded = mmpgm.ShardedData(str(shard_dir / "hmm_svi_full" / "*.npz"), cache_shards=1)
    a, _ = build()
    b = copy.deepcopy(a)
    ra = mmpgm.fit(a, sharded, **opts)
    rb = mmpgm.fit(b, sharded, **{**opts, "batch_size": sharded.num_sequences + 5})
    torch.testing.assert_close(torch.tensor(ra.losses), torch.tensor(rb.losses), **TOL)


def test_every_sequence_reaches_the_em_statistics_once(shard_dir, monkeypatch):
    """The streamed E-step of one EM iteration sees every sequence of the corpus once."""
    build, opts, _ = cases.CASES["hmm_em"]
    model, _ = build()
    sharded = mmpgm.ShardedData(str(shard_dir / "hmm_em" / "*.npz"), cache_shards=2)
    seen = []
    real = type(model).em_statistics

    def spy(self, data):
        seen.append(data.lengths.clone())
        return real(self, data)

    monkeypatch.setattr(type(model), "em_statistics", spy)
    mmpgm.fit(model, sharded, **{**opts, "num_steps": 1})
    assert [s.numel() for s in seen] == [5, 4]  # groups of shards (2 + 3) and (1 + 3)
    assert torch.equal(torch.cat(seen), sharded.lengths)


@pytest.mark.slow
def test_minibatch_svi_reaches_the_in_memory_minibatch_fit(shard_dir):
    """Minibatches drawn across shards (another order than the in-memory permutation of the
    corpus) reach the same loss. Measured over seeds 0-3 (60 epochs, batches of 3): the mean
    of the last 10 epochs' loss per frame differs from the in-memory minibatch fit's by at most
    0.002 nats/frame, both 0.006-0.007 above the full-batch optimum; the test allows 0.01. A
    likelihood scaled to the minibatch instead of the corpus (9/3 = 3x too small against the
    prior) or a batch seen twice moves the loss by more than that."""
    build, _, _ = cases.CASES["hmm_svi_minibatch"]
    sharded = mmpgm.ShardedData(str(shard_dir / "hmm_svi_minibatch" / "*.npz"), cache_shards=2)
    a, _ = build()
    b = copy.deepcopy(a)
    opts = dict(num_steps=60, lr=0.05, patience=0, progress=False, init="none", batch_size=3)
    ra = mmpgm.fit(a, sharded, **opts)
    rb = mmpgm.fit(b, sharded.load_all(), **opts)
    assert abs(ra.losses[-10:].mean() - rb.losses[-10:].mean()) < 0.01
    # the same seed gives the same streamed fit
    c, _ = build()
    rc = mmpgm.fit(c, sharded, **{**opts, "num_steps": 3})
    assert torch.equal(torch.tensor(rc.losses), torch.tensor(ra.losses[:3]))


def test_streamed_fit_errors(shard_dir, tmp_path):
    model, _ = cases._hmm()
    sharded = mmpgm.ShardedData(str(shard_dir / "hmm_em" / "*.npz"))
    with pytest.raises(ValueError, match="checkpoint"):
        mmpgm.fit(model, sharded, checkpoint=str(tmp_path / "c.pt"), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        mmpgm.fit(model, sharded, method="em", batch_size=2, progress=False)
    other = mmpgm.MultimodalHMM({"a": 3}, num_shared_states=2)
    with pytest.raises(ValueError, match="a"):
        mmpgm.fit(other, sharded, num_steps=1, progress=False)
    with pytest.raises(ValueError, match="chunk_size.*svi"):
        mmpgm.fit(model, sharded, chunk_size=3, progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        mmpgm.fit(model, sharded, method="em", chunk_size=0, progress=False)
    with pytest.raises(TypeError, match="ShardedData"):
        mmpgm.fit(model, [1, 2], progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stream_their_own_sequences(shard_dir, tmp_path):
    """A 2-process gloo run of the cases ``DISTRIBUTED`` (EM of both families, one with its
    E-steps in chunks of frames, full-batch and minibatch SVI): both ranks hold the same
    parameters, bitwise, and those of the one-process streamed fit (minibatch SVI included:
    every rank draws the same global minibatches and back-propagates its strided part)."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.update(WORLD_SIZE="2", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    script = str(HERE / "streaming_cases.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(shard_dir), str(tmp_path)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for name in cases.DISTRIBUTED:
        assert r0[name]["losses"] == r1[name]["losses"], name
        for k, v in r0[name]["state"].items():
            assert torch.equal(r1[name]["state"][k], v), (name, k)
        _assert_same_fit(r0[name], cases.run_case(name, shard_dir))
