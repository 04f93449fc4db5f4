"""``ShardedData``: a corpus of ``.npz`` shards read a few at a time (:mod:`mmpgm.data_shards`).

Checked against the in-memory concatenation of the shards: the same sequences (values where
observed, masks, lengths, labels), every sequence exactly once per epoch of minibatches, the
ranks' views disjoint and covering the corpus by the rule of ``shard_indices``, and clear
errors on shards that do not belong together.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.data_shards import ShardedData, concat_data
from mmpgm.inference.distributed import shard_indices

SIZES = [(3, 5), (4, 7), (1, 4), (2, 6)]  # (num_sequences, num_timesteps) per shard


def _shard(n, T, offset, seed, dims=(("a", 2), ("b", 1))):
    g = torch.Generator().manual_seed(seed)
    obs = {m: torch.randn(n, T, d, generator=g) for m, d in dims}
    obs["a"][0, 1] = float("nan")  # a missing frame
    return MultimodalData(
        obs,
        lengths=torch.randint(1, T + 1, (n,), generator=g),
        mask={"b": torch.rand(n, T, generator=g) > 0.3},
        labels={
            "shared": torch.randint(-1, 3, (n, T), generator=g),
            "id": torch.arange(offset, offset + n),
        },
    )


@pytest.fixture
def corpus(tmp_path):
    parts, offset = [], 0
    for s, (n, T) in enumerate(SIZES):
        d = _shard(n, T, offset, seed=s)
        d.save(tmp_path / f"shard-{s}.npz")
        parts.append(d)
        offset += n
    return tmp_path, parts


def _same(a: MultimodalData, b: MultimodalData):
    assert a.obs_dims == b.obs_dims and a.num_sequences == b.num_sequences
    assert torch.equal(a.lengths, b.lengths)
    T = min(a.num_timesteps, b.num_timesteps)
    for m in a.modalities:
        assert not a.mask[m][:, T:].any() and not b.mask[m][:, T:].any()
        assert torch.equal(a.mask[m][:, :T], b.mask[m][:, :T])
        mk = a.mask[m][:, :T]
        assert torch.equal(a.obs[m][:, :T][mk], b.obs[m][:, :T][mk])
    assert sorted(a.labels) == sorted(b.labels)
    for k in a.labels:
        inside = a.time_mask[:, :T]
        la, lb = a.labels[k], b.labels[k]
        if la.dim() >= 2:
            la, lb = la[:, :T][inside], lb[:, :T][inside]
        assert torch.equal(la, lb), k


def test_header_only_and_load_all_equals_the_concatenation(corpus, monkeypatch):
    path, parts = corpus
    loads = []
    real = MultimodalData.load
    monkeypatch.setattr(MultimodalData, "load", classmethod(lambda cls, p: loads.append(p) or
                                                            real(p)))
    sd = mmpgm.ShardedData(str(path / "shard-*.npz"), cache_shards=2)
    assert loads == []  # opening reads headers and lengths only
    assert sd.num_shards == 4 and sd.num_sequences == sum(n for n, _ in SIZES) == len(sd)
    assert sd.num_timesteps == 7 and sd.obs_dims == {"a": 2, "b": 1}
    assert sd.label_names == ("id", "shared")
    assert torch.equal(sd.lengths, torch.cat([p.lengths for p in parts]))
    full = sd.load_all()
    assert full.num_timesteps == 7
    _same(full, concat_data(parts))
    for s, p in enumerate(parts):
        _same(sd.load_shard(s), p)
    assert [d.num_sequences for d in sd.iter_shards()] == [n for n, _ in SIZES]
    # padding: NaN observations, False masks, -1 integer labels past each shard's own T
    short = sd.load_shard(2)
    assert torch.isnan(short.obs["a"][:, 4:]).all() and not short.mask["a"][:, 4:].any()
    assert (short.labels["shared"][:, 4:] == -1).all()


@pytest.mark.parametrize("cache_shards", [1, 2, 4])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 11])
def test_every_sequence_exactly_once_per_epoch(corpus, cache_shards, batch_size, monkeypatch):
    path, parts = corpus
    sd = ShardedData(sorted(path.glob("shard-*.npz")), cache_shards=cache_shards)
    N = sd.num_sequences
    reads = []
    real = sd.load_shard
    monkeypatch.setattr(sd, "load_shard", lambda s: reads.append(s) or real(s))
    gen = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(3):  # three epochs of one generator
        reads.clear()
        ids, sizes = [], []
        for b in sd.batches(batch_size, shuffle=True, generator=gen):
            ids += b.labels["id"].tolist()
            sizes.append(b.num_sequences)
            assert b.num_timesteps == sd.num_timesteps
        assert sorted(ids) == list(range(N))  # no repeat, no gap
        assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
        assert sorted(reads) == [0, 1, 2, 3]  # each shard read once per epoch
        orders.append(ids)
    assert orders[0] != orders[1]  # reshuffled every epoch
    again = [b.labels["id"].tolist() for b in sd.batches(batch_size, True,
                                                         torch.Generator().manual_seed(0))]
    assert sum(again, []) == orders[0]  # same generator state, same batches
    # without shuffle: the batches of the in-memory concatenation, in order
    ref = concat_data(parts)
    for b, r in zip(sd.batches(batch_size), ref.batches(batch_size), strict=True):
        _same(b, r)


def test_batches_of_one_group_follow_the_batch_values(corpus):
    """A shuffled minibatch holds the same values as those sequences of the concatenation."""
    path, parts = corpus
    sd = ShardedData(str(path / "*.npz"), cache_shards=2)
    ref = concat_data(parts)
    for b in sd.batches(3, shuffle=True, generator=torch.Generator().manual_seed(3)):
        _same(b, ref[b.labels["id"]])


@pytest.mark.parametrize("world_size", [1, 2, 3, 11, 12])
def test_shard_for_rank_is_the_rule_of_shard_indices(corpus, world_size):
    path, parts = corpus
    sd = ShardedData(str(path / "*.npz"))
    N = sd.num_sequences
    seen = []
    for r in range(world_size):
        view = sd.shard_for_rank(r, world_size)
        ids = (
            [] if view.num_sequences == 0 else view.load_all().labels["id"].tolist()
        )
        assert ids == shard_indices(N, r, world_size).tolist()
        assert view.num_sequences == len(ids)
        seen += ids
        if ids:
            assert torch.equal(view.lengths, sd.lengths[torch.tensor(ids)])
            got = sorted(i for b in view.batches(2, True, torch.Generator().manual_seed(r))
                         for i in b.labels["id"].tolist())
            assert got == sorted(ids)
    assert sorted(seen) == list(range(N))
    with pytest.raises(ValueError, match="rank"):
        sd.shard_for_rank(world_size, world_size)


def test_bad_shards_raise_naming_the_shard(tmp_path):
    _shard(2, 4, 0, 0).save(tmp_path / "good.npz")
    _shard(2, 4, 2, 1, dims=(("a", 3), ("b", 1))).save(tmp_path / "dims.npz")
    with pytest.raises(ValueError, match=r"dims\.npz.*differ"):
        ShardedData([tmp_path / "good.npz", tmp_path / "dims.npz"])
    d = _shard(2, 4, 2, 1)
    d.labels.pop("id")
    d.save(tmp_path / "labels.npz")
    with pytest.raises(ValueError, match=r"labels\.npz: labels"):
        ShardedData([tmp_path / "good.npz", tmp_path / "labels.npz"])
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.npz: not a MultimodalData"):
        ShardedData(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", **{"obs/a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match=r"pickled\.npz.*numeric"):  # never unpickled
        ShardedData(tmp_path / "pickled.npz")
    np.savez(tmp_path / "noobs.npz", lengths=np.array([1]))
    with pytest.raises(ValueError, match="no 'obs/"):
        ShardedData(tmp_path / "noobs.npz")
    with pytest.raises(ValueError, match="no file matches"):
        ShardedData(str(tmp_path / "missing-*.npz"))
    with pytest.raises(FileNotFoundError, match="missing"):
        ShardedData([tmp_path / "missing.npz"])
    with pytest.raises(TypeError, match="paths_or_glob"):
        ShardedData([])
    with pytest.raises(ValueError, match="cache_shards"):
        ShardedData(tmp_path / "good.npz", cache_shards=0)
    with pytest.raises(ValueError, match="batch_size"):
        next(ShardedData(tmp_path / "good.npz").batches(0))
