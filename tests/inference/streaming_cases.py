"""The streamed fits of ``test_streaming_fit.py``: built and run alike by the test (one process)
and by each rank of its 2-process run (``python streaming_cases.py SHARD_DIR OUT_DIR`` with
torchrun's environment variables ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.models import MVRNN, MultimodalHMM, MultimodalLDS

DIMS = {"a": 2, "b": 1}
SPLITS = (0, 2, 5, 6, 9)  # 4 shards of 2, 3, 1, 3 sequences


def _ragged(data, seed):
    """Lengths T, T-3, T-1, ... (at least 1) and ~10% of each modality's frames missing."""
    g = torch.Generator().manual_seed(seed)
    N, T = data.num_sequences, data.num_timesteps
    lengths = torch.tensor([max(1, T - (3 * n) % 7) for n in range(N)])
    obs = {}
    for m, x in data.obs.items():
        drop = torch.rand(N, T, generator=g) < 0.1
        obs[m] = torch.where(drop[..., None], torch.full_like(x, float("nan")), x)
    return MultimodalData(obs, lengths=lengths)


def _hmm(**kw):
    torch.manual_seed(0)
    model = MultimodalHMM(DIMS, num_shared_states=2, **kw).double()
    data, _ = model.sample(9, 10, seed=0)
    return model, _ragged(data, 1)


def _lds(**kw):
    torch.manual_seed(0)
    model = MultimodalLDS(DIMS, shared_dim=1, private_dim={"a": 1, "b": 0}, **kw).double()
    data, _ = model.sample(9, 10, seed=0)
    return model, _ragged(data, 2)


def _mvrnn():
    torch.manual_seed(0)
    model = MVRNN(DIMS, hidden_dim=4, shared_dim=2, private_dim=1, tbptt=3).double()
    data, _ = model.sample(9, 10, seed=0)
    return model, _ragged(data, 3)


# init="none": the data-driven start of a streamed fit sees only the first group of shards
EM = dict(method="em", num_steps=5, patience=0, progress=False, init="none")
SVI = dict(num_steps=4, lr=0.05, patience=0, progress=False, init="none")

# name -> (builder, fit options, cache_shards)
CASES = {
    "hmm_em": (_hmm, EM, 1),
    "hmm_em_faults": (lambda: _hmm(sensor_faults=["a"]), EM, 2),
    "lds_em": (_lds, EM, 1),
    # E-steps in chunks of 3 frames (boundaries past some lengths)
    "hmm_em_chunked": (_hmm, {**EM, "chunk_size": 3}, 2),
    "lds_em_chunked": (_lds, {**EM, "chunk_size": 4}, 1),
    "hmm_svi_full": (_hmm, SVI, 1),
    "lds_svi_full": (_lds, SVI, 3),
    "hmm_svi_minibatch": (_hmm, {**SVI, "batch_size": 4}, 2),
    # one group of all 4 shards: the data-driven start sees the whole corpus, as in memory
    "hmm_em_init": (_hmm, {**EM, "init": "data"}, 4),
    "lds_svi_init": (_lds, {**SVI, "init": "data"}, 4),
    # a model fitted in its own units (no streamed moments), truncated backpropagation; one
    # group of all shards, so its noise draws are those of the in-memory fit
    "mvrnn_svi_full": (_mvrnn, {**SVI, "init": "data"}, 4),
}

#: the cases of the 2-process run
DISTRIBUTED = ("hmm_em", "lds_em_chunked", "hmm_svi_full", "hmm_svi_minibatch")


def write_shards(data: MultimodalData, folder) -> list[Path]:
    """``data`` cut at ``SPLITS`` into shards, each trimmed to its own longest sequence (so the
    shards differ in ``num_timesteps``, as those of ``mmpgm prep grid --shard`` do)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, (i, j) in enumerate(zip(SPLITS[:-1], SPLITS[1:], strict=True)):
        part = data[i:j]
        T = int(part.lengths.max())
        trimmed = MultimodalData(
            {m: v[:, :T] for m, v in part.obs.items()},
            lengths=part.lengths,
            mask={m: v[:, :T] for m, v in part.mask.items()},
        )
        paths.append(folder / f"shard-{s:02d}.npz")
        trimmed.save(paths[-1])
    return paths


def run_case(name, shard_dir, *, in_memory=False, distributed=False):
    """Fit case ``name`` on the shards of ``shard_dir`` (written by :func:`write_shards` from
    the case's data), streamed, or on their in-memory concatenation with ``in_memory``."""
    build, opts, cache = CASES[name]
    model, _ = build()
    sharded = mmpgm.ShardedData(str(Path(shard_dir) / name / "shard-*.npz"), cache_shards=cache)
    data = sharded.load_all() if in_memory else sharded
    res = mmpgm.fit(model, data, distributed=distributed, **opts)
    return {"losses": res.losses.tolist(), "state": model.state_dict()}


def prepare(shard_dir) -> None:
    for name, (build, _, _) in CASES.items():
        write_shards(build()[1], Path(shard_dir) / name)


def main(shard_dir, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        out = {name: run_case(name, shard_dir, distributed=True) for name in DISTRIBUTED}
        torch.save(out, os.path.join(out_dir, f"rank{dist.get_rank()}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
