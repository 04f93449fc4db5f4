"""The fits of ``test_distributed.py``: built and run alike by the test (one process) and by
each rank of the 2-process run (``python distributed_cases.py OUT_DIR`` with torchrun's
environment variables ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)."""

from __future__ import annotations

import os
import sys

import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.models import MVRNN, GatedMixture, MultimodalHMM, MultimodalLDS

DIMS = {"a": 2, "b": 1}


def _ragged(data, seed):
    """Lengths T, T-1, T-3, ... and ~10% of the frames of each modality missing."""
    g = torch.Generator().manual_seed(seed)
    N, T = data.num_sequences, data.num_timesteps
    lengths = torch.tensor([max(1, T - (3 * n) % 5) for n in range(N)])
    obs = {}
    for m, x in data.obs.items():
        drop = torch.rand(N, T, generator=g) < 0.1
        obs[m] = torch.where(drop[..., None], torch.full_like(x, float("nan")), x)
    return MultimodalData(obs, lengths=lengths)


def _hmm(N=7, T=8, **kw):
    torch.manual_seed(0)
    model = MultimodalHMM(DIMS, num_shared_states=2, **kw).double()
    data, _ = model.sample(N, T, seed=0)
    return model, _ragged(data, 1)


def _lds(N=5, T=8, **kw):
    torch.manual_seed(0)
    model = MultimodalLDS(DIMS, shared_dim=1, private_dim={"a": 1, "b": 0}, **kw).double()
    data, _ = model.sample(N, T, seed=0)
    return model, _ragged(data, 2)


def _mixture(N=5, T=6):
    torch.manual_seed(0)
    model = GatedMixture(DIMS, gate="conditional", head="bernoulli").double()
    g = torch.Generator().manual_seed(0)
    obs = {m: torch.randn(N, T, d, dtype=torch.float64, generator=g) for m, d in DIMS.items()}
    y = torch.randint(0, 2, (N, T), generator=g)
    return model, MultimodalData(obs, labels={"speech": y})


def _mvrnn(N=5, T=6):
    torch.manual_seed(0)
    model = MVRNN(DIMS, hidden_dim=4, shared_dim=2, private_dim=1).double()
    data, _ = model.sample(N, T, seed=0)
    return model, data


EM = dict(method="em", num_steps=5, patience=0, progress=False)
SVI = dict(num_steps=4, lr=0.05, patience=0, progress=False)

# name -> (builder, fit options); "<name>" with "resume" is fitted twice with a checkpoint
CASES = {
    "hmm_em": (_hmm, EM),
    "hmm_em_faults": (lambda: _hmm(sensor_faults=["a"]), EM),
    "hmm_em_one_sequence": (lambda: _hmm(N=1), EM),  # rank 1 has no sequence
    "lds_em": (_lds, EM),
    "lds_em_faults": (lambda: _lds(sensor_faults=["a"]), EM),
    "hmm_svi_minibatch": (_hmm, {**SVI, "batch_size": 3}),  # global batches of 3, 3, 1
    "lds_svi": (_lds, SVI),
    "mixture_svi": (_mixture, SVI),
    "mvrnn_svi": (_mvrnn, {**SVI, "num_steps": 2}),
    "hmm_em_resume": (_hmm, {**EM, "num_steps": 6}),
    "hmm_svi_resume": (_hmm, {**SVI, "batch_size": 3, "num_steps": 4}),
}


def run_case(name, *, checkpoint_dir=None, distributed=False):
    """Fit case ``name``; ``{"state": state_dict, "losses": list}``. A ``*_resume`` case is fitted
    for half its steps with a checkpoint in ``checkpoint_dir``, then resumed on a fresh model."""
    build, opts = CASES[name]
    model, data = build()
    if name.endswith("_resume"):
        path = os.path.join(checkpoint_dir, f"{name}.pt")
        first = {**opts, "num_steps": opts["num_steps"] // 2}
        mmpgm.fit(model, data, checkpoint=path, distributed=distributed, **first)
        model, data = build()  # a new process would start from scratch
        result = mmpgm.fit(model, data, checkpoint=path, distributed=distributed, **opts)
    else:
        result = mmpgm.fit(model, data, distributed=distributed, **opts)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "losses": [float(v) for v in result.losses]}


def main(out_dir):
    import torch.distributed as dist

    from mmpgm.inference import checkpoint as ckpt

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    saves = []  # checkpoint writes of this rank (rank 0 alone writes)
    save = ckpt.save_checkpoint
    ckpt.save_checkpoint = lambda path, state: (saves.append(str(path)), save(path, state))[1]
    ckpt_dir = os.path.join(out_dir, "ckpt")  # written by rank 0 only
    os.makedirs(ckpt_dir, exist_ok=True)
    out = {name: run_case(name, checkpoint_dir=ckpt_dir, distributed=True) for name in CASES}
    out["_files"] = sorted(os.listdir(ckpt_dir))
    out["_saves"] = saves
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
