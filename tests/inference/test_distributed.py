"""Data-parallel ``mmpgm.fit(distributed=True)`` (:mod:`mmpgm.inference.distributed`).

The sharding covers every sequence exactly once for every N and world size; a 2-process gloo
run (the environment torchrun sets: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) of every case of ``distributed_cases.py`` (HMM EM, with sensor faults, with one
sequence so rank 1 has none; LDS EM, with sensor faults; HMM SVI in minibatches; LDS, gated
mixture and MVRNN SVI; EM and SVI fits interrupted and resumed from a checkpoint) gives every
rank the same parameters, bitwise, and those of the single-process fit.

Tolerance (float64): the two fits differ only in the order of floating-point summation (each
rank sums its own sequences, then the all-reduce adds the two partial sums), a relative
difference of ~1e-16 per sum that the few EM or Adam steps carry on: measured at most 3.3e-14
relative and 2.5e-14 absolute over every parameter of every case (5 EM / 4 Adam steps). The
test allows ``rtol=1e-10, atol=1e-12``: 300x the measured difference, and far below what any
real difference (a sequence counted twice or dropped, a missing all-reduce, a wrongly scaled
loss) makes, which is of the size of one EM update (>= 1e-4 here). The MVRNN draws its noise
per rank, so only the equality of its ranks is tested.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmpgm
from mmpgm.inference.distributed import ShardSampler, check_distributed, shard_indices

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("distributed_cases", HERE / "distributed_cases.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

TOL = dict(rtol=1e-10, atol=1e-12)
EXACT_CASES = [name for name in cases.CASES if not name.startswith("mvrnn")]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_sequences", list(range(0, 13)))
def test_shards_cover_every_sequence_exactly_once(num_sequences, world_size):
    shards = [shard_indices(num_sequences, r, world_size) for r in range(world_size)]
    union = torch.cat(shards)
    assert torch.equal(union.sort().values, torch.arange(num_sequences))  # no repeat, no gap
    sizes = [s.numel() for s in shards]
    assert max(sizes) - min(sizes) <= 1
    for r, s in enumerate(shards):
        sampler = ShardSampler(num_sequences, r, world_size)
        assert list(sampler) == s.tolist() and len(sampler) == s.numel()


def test_shard_errors_name_the_argument():
    with pytest.raises(ValueError, match="rank"):
        shard_indices(4, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard_indices(4, 0, 0)
    with pytest.raises(ValueError, match="num_sequences"):
        shard_indices(-1, 0, 1)


def test_distributed_option_without_process_group():
    model, data = cases._hmm(N=3, T=5)
    with pytest.raises(ValueError, match="torchrun"):
        mmpgm.fit(model, data, method="em", num_steps=1, distributed=True, progress=False)
    with pytest.raises(ValueError, match="distributed"):
        check_distributed("yes")
    assert check_distributed("auto") is None and check_distributed(False) is None
    # "auto" without a process group: the one-process fit
    a = cases.run_case("hmm_em", distributed="auto")
    b = cases.run_case("hmm_em")
    for k, v in b["state"].items():
        assert torch.equal(a["state"][k], v), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results of every case (one 2-process gloo run for the module)."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["WORLD_SIZE"] = "2"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    script = str(HERE / "distributed_cases.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(out)],
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
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ranks, out / "ckpt"


@pytest.mark.parametrize("name", list(cases.CASES))
def test_two_processes_hold_the_same_parameters(two_ranks, name):
    (r0, r1), _ = two_ranks
    assert r0[name]["losses"] == r1[name]["losses"]
    for k, v in r0[name]["state"].items():
        assert torch.equal(r1[name]["state"][k], v), k
    assert all(torch.isfinite(torch.tensor(r0[name]["losses"])))


@pytest.mark.parametrize("name", EXACT_CASES)
def test_two_processes_equal_one_process(two_ranks, name, tmp_path):
    (r0, _), _ = two_ranks
    single = cases.run_case(name, checkpoint_dir=str(tmp_path))
    assert len(r0[name]["losses"]) == len(single["losses"])
    torch.testing.assert_close(
        torch.tensor(r0[name]["losses"]), torch.tensor(single["losses"]), **TOL
    )
    assert set(r0[name]["state"]) == set(single["state"])
    for k, v in single["state"].items():
        torch.testing.assert_close(r0[name]["state"][k], v, **TOL, msg=k)


def test_checkpoint_of_two_processes_resumes_in_one(two_ranks):
    """Rank 0 alone wrote the checkpoints; what it wrote is a plain single-process
    checkpoint: resumed in one process for more steps it gives the uninterrupted one-process
    fit."""
    (r0, r1), ckpt_dir = two_ranks
    assert sorted(os.listdir(ckpt_dir)) == ["hmm_em_resume.pt", "hmm_svi_resume.pt"]
    assert len(r0["_saves"]) >= 4 and r1["_saves"] == []  # rank 0 alone writes
    build, opts = cases.CASES["hmm_em_resume"]
    model, data = build()
    more = {**opts, "num_steps": opts["num_steps"] + 2}
    res = mmpgm.fit(model, data, checkpoint=str(ckpt_dir / "hmm_em_resume.pt"), **more)
    ref_model, ref_data = build()
    ref = mmpgm.fit(ref_model, ref_data, **more)
    assert res.start_step == opts["num_steps"]
    torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(ref.losses), **TOL)
    for k, v in ref_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, **TOL, msg=k)


@pytest.fixture
def world_of_one(tmp_path):
    """A gloo process group of this process alone (rank 0 of 1)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_world_of_one_equals_one_process_and_mixture_em_refuses(world_of_one):
    assert check_distributed("auto") is not None and check_distributed(True).world_size == 1
    a = cases.run_case("lds_em", distributed=True)
    b = cases.run_case("lds_em")
    for k, v in b["state"].items():
        torch.testing.assert_close(a["state"][k], v, **TOL, msg=k)
    model, data = cases._mixture()
    with pytest.raises(ValueError, match="distributed"):
        mmpgm.fit(model, data, method="em", num_steps=1, distributed=True, progress=False)
