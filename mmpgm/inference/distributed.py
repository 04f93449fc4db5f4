r"""Data-parallel training on :mod:`torch.distributed` (``mmpgm.fit(..., distributed=True)``).

Run the same script in ``W`` processes (``torchrun --nproc_per_node=W train.py``; gloo on the
CPU, NCCL on GPUs); every process passes the *same* full data set to :func:`mmpgm.fit`, which
works on the sequences of its rank only: rank ``r`` of ``W`` owns sequences ``r, r + W, r +
2W, ...`` (:func:`shard_indices`; no sequence is repeated, unlike
:class:`torch.utils.data.DistributedSampler`, which pads by repeating sequences and would count
them twice in the EM statistics and the ELBO's scale; a rank without a sequence contributes
zero statistics and a zero gradient).

EM (HMM, LDS)
    Each rank computes the E-step's expected sufficient statistics of its shard
    (``model.em_statistics``: sums over sequences), one ``all_reduce(SUM)`` adds them (the
    log-likelihood with them), and every rank runs the same closed-form M-step
    (``model.em_update``), so every rank holds the parameters of the single-process EM step on
    the whole data set.
SVI (every family)
    A step's global minibatch is the single-process one (the same shuffled order from the same
    seeded generator on every rank; the full data set without ``batch_size``); rank ``r`` takes
    its elements ``r, r + W, ...``. With :math:`n_r` of the :math:`n` sequences of the batch on
    rank ``r`` and :math:`\ell_r` the rank's ELBO loss (its likelihood scaled by
    :math:`N / n_r` against the prior, :math:`N` the data-set size), the rank back-propagates
    :math:`(n_r / n)\, \ell_r`; these add to the single-process loss of the whole batch,
    :math:`-\log p(\theta) - (N / n) \sum_{i \in \mathrm{batch}} \log p(x_i)`, so one
    ``all_reduce(SUM)`` of the gradients of the model's parameters (flattened into one buffer,
    with the loss value and which parameters have a gradient) before clipping and the Adam step
    gives every rank the single-process gradient. This is
    :class:`~torch.nn.parallel.DistributedDataParallel`'s gradient all-reduce written out:
    DDP wraps an ``nn.Module`` whose ``forward`` returns the loss, while the ELBO here is
    computed by Pyro's ``elbo.differentiable_loss(model.model, model.guide, ...)`` outside any
    ``forward``, and the model's Pyro parameters are created lazily; the explicit all-reduce
    keeps the loop the single-process one with one collective per step.
Both
    Rank 0's parameters (after the data-driven start, or a resumed checkpoint) are broadcast to
    every rank before the first step. Rank 0 alone reads and writes the checkpoint (what it
    read is broadcast, so the path need not be on a shared file system) and shows progress; the
    checkpoint is that of a single-process fit, so a fit resumes with any number of processes.
    The results equal those of one process up to the order of floating-point summation
    (measured in ``tests/inference/test_distributed.py``).

A sampled ELBO (``model.STOCHASTIC_OBJECTIVE``, the MVRNN): each step, every rank draws one
seed from the global torch generator (in the same state on every rank, and saved in the
checkpoint) and samples its latent noise from ``seed + rank`` in a forked generator, so the
ranks' noise is independent and a resumed fit repeats it; the fit equals the single-process one
in distribution only (the single process draws the noise of all sequences in one tensor).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from . import checkpoint as ckpt

__all__ = ["shard_indices", "ShardSampler", "Communicator", "check_distributed"]


def shard_indices(num_sequences: int, rank: int, world_size: int) -> torch.Tensor:
    """Sequences of rank ``rank`` of ``world_size``: ``rank, rank + W, rank + 2W, ... <
    num_sequences`` (``(ceil((N - r) / W),)`` int64, empty when ``rank >= N``).

    Over the ranks ``0 .. W-1`` these are every index of ``0 .. N-1`` exactly once; the shard
    sizes differ by at most one.
    """
    for name, value, low in (("num_sequences", num_sequences, 0), ("world_size", world_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
    if rank >= num_sequences:
        return torch.zeros(0, dtype=torch.long)
    return torch.arange(rank, num_sequences, world_size, dtype=torch.long)


class ShardSampler(torch.utils.data.Sampler):
    """Sequence indices of one rank (:func:`shard_indices`), for a
    :class:`torch.utils.data.DataLoader`: no padding, no repetition (a rank may get one
    sequence fewer than another, or none)."""

    def __init__(self, num_sequences: int, rank: int | None = None, world_size: int | None = None):
        init = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if init else 0
        if world_size is None:
            world_size = dist.get_world_size() if init else 1
        self.indices = shard_indices(num_sequences, rank, world_size)

    def __iter__(self):
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return int(self.indices.numel())


def check_distributed(distributed) -> "Communicator | None":
    """The ``distributed`` option of :func:`mmpgm.fit`: ``False`` -> None (one process);
    ``True`` -> a :class:`Communicator` of the initialized default process group
    (``ValueError`` when there is none: run under ``torchrun`` or call
    ``torch.distributed.init_process_group``); ``"auto"`` -> one when a process group is
    initialized, else None."""
    if distributed is False or distributed is None:
        return None
    if distributed is not True and distributed != "auto":
        raise ValueError(f"distributed: expected True, False or 'auto', got {distributed!r}")
    init = dist.is_available() and dist.is_initialized()
    if not init:
        if distributed == "auto":
            return None
        raise ValueError(
            "distributed=True: torch.distributed is not initialized; run the script under "
            "torchrun (torchrun --nproc_per_node=2 train.py) or call "
            "torch.distributed.init_process_group(backend='gloo' or 'nccl') first, or pass "
            "distributed='auto' to train in one process when there is no process group"
        )
    return Communicator()


class Communicator:
    """The default process group as :func:`mmpgm.fit` uses it: rank, world size, the
    sharding of a data set and the collectives of the training loops."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = dist.get_backend()
        self._shard = None  # (data, this rank's shard of it): full-batch SVI
        self._zeros = None  # EM statistics of no sequence (a rank without sequences)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def _check_device(self, device) -> None:
        if self.backend == "nccl" and torch.device(device).type != "cuda":
            raise ValueError(
                "distributed: the process group's backend is NCCL, which needs the model on a "
                f"CUDA device (model.to('cuda:<local rank>')), got a model on {device}; use "
                "backend='gloo' for CPU training"
            )

    # ------------------------------------------------------------------ data
    def shard(self, model, data):
        """This rank's sequences of checked ``data`` (checked by ``model`` too)."""
        idx = shard_indices(data.num_sequences, self.rank, self.world_size)
        return model.checked_subset(data, idx)

    def svi_batches(self, model, data, batch_size, generator):
        """``(local batch or None, global batch size)`` per step of an SVI epoch: the global
        batches of :meth:`MultimodalModel.checked_batches` (same permutation from
        ``generator``), this rank's strided part of each."""
        N = data.num_sequences
        if batch_size is None or batch_size >= N:
            if self._shard is None or self._shard[0] is not data:
                self._shard = (data, self.shard(model, data))
            local = self._shard[1]
            yield (local if local.num_sequences else None), N
            return
        order = torch.randperm(N, generator=generator)  # as MultimodalData.batches
        for start in range(0, N, batch_size):
            glob = order[start : start + batch_size]
            idx = glob[self.rank :: self.world_size]
            local = model.checked_subset(data, idx) if idx.numel() else None
            yield local, int(glob.numel())

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, flat: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return flat

    def broadcast_state(self, model) -> None:
        """Every parameter and buffer of ``model`` set to rank 0's, in place (one broadcast per
        dtype and device: the tensors flattened into one buffer)."""
        groups: dict = {}
        for t in model.state_dict().values():
            if isinstance(t, torch.Tensor) and t.numel():
                groups.setdefault((t.dtype, t.device), []).append(t)
        for (_, device), ts in groups.items():
            self._check_device(device)
            flat = torch.cat([t.reshape(-1) for t in ts])
            dist.broadcast(flat, src=0)
            i = 0
            for t in ts:
                t.copy_(flat[i : i + t.numel()].reshape(t.shape))
                i += t.numel()

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------ EM
    def sum_statistics(self, stats: dict) -> dict:
        """``stats`` (name -> tensor) summed over the ranks: one all-reduce of a flat buffer."""
        names = sorted(stats)
        flat = torch.cat([torch.as_tensor(stats[k]).reshape(-1) for k in names])
        self._check_device(flat.device)
        self.all_reduce_sum(flat)
        out, i = {}, 0
        for k in names:
            v = torch.as_tensor(stats[k])
            out[k] = flat[i : i + v.numel()].reshape(v.shape)
            i += v.numel()
        return out

    def em_step(self, model, data, shard, chunk_size=None) -> torch.Tensor:
        """One data-parallel EM step: statistics of ``shard`` (zeros of the right shapes on a
        rank without sequences, from one sequence of the full ``data``), summed over the ranks,
        the M-step on every rank; returns the log joint before the update. ``chunk_size``: the
        E-step in chunks of frames (``model.em_statistics(shard, chunk_size=)``)."""
        if shard.num_sequences:
            stats = (
                model.em_statistics(shard)
                if chunk_size is None
                else model.em_statistics(shard, chunk_size=chunk_size)
            )
        else:
            if self._zeros is None:
                one = model.em_statistics(model.checked_subset(data, slice(0, 1)))
                self._zeros = {k: torch.zeros_like(v) for k, v in one.items()}
            stats = {k: v.clone() for k, v in self._zeros.items()}
        stats = self.sum_statistics(stats)
        with torch.no_grad():
            log_joint = stats["log_likelihood"] + model.log_prior()
        model.em_update(stats)
        return log_joint

    # ------------------------------------------------------------------ SVI
    def svi_backward(self, model, elbo, local, count, num_sequences, program, params) -> float:
        """Back-propagate this rank's share of a global minibatch of ``count`` sequences
        (``local``, None if empty) and all-reduce the gradients of ``params``: afterwards every
        rank's ``.grad`` is the gradient of the single-process loss of the whole batch (None for
        a parameter no rank reached). Returns that loss; raises ``FloatingPointError`` on every
        rank when it is not finite."""
        stochastic = getattr(model, "STOCHASTIC_OBJECTIVE", False)
        # a sampled ELBO: every rank draws its own noise, from a seed that the shared global
        # generator (in the same state on every rank, and checkpointed) gives, plus the rank
        base = int(torch.randint(0, 2**62, ())) if stochastic else None
        if local is not None:
            device = params[0].device
            with torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else [], enabled=stochastic
            ):
                if stochastic:
                    torch.manual_seed(base + self.rank)
                loss = elbo.differentiable_loss(
                    model.model, model.guide, local, num_sequences=num_sequences, program=program
                ) * (local.num_sequences / count)
                loss.backward()
            value = loss.detach()
        else:
            value = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        pieces = [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
            for p in params
        ]
        has = torch.tensor(
            [p.grad is not None for p in params], dtype=value.dtype, device=value.device
        )
        flat = torch.cat(pieces + [has, value.reshape(1).to(pieces[0].dtype)])
        self._check_device(flat.device)
        self.all_reduce_sum(flat)
        i = 0
        for p, h in zip(params, flat[-1 - len(params) : -1].tolist(), strict=True):
            n = p.numel()
            p.grad = flat[i : i + n].reshape(p.shape).clone() if h > 0 else None
            i += n
        total = float(flat[-1])
        if not torch.isfinite(flat[-1]):
            raise FloatingPointError(
                f"fit: the loss became {total}; lower lr, check the data for extreme values, or "
                "fit in float64 (model.double())"
            )
        return total

    # ------------------------------------------------------------------ checkpoints
    def read_checkpoint(self, path, head):
        """Rank 0 removes stale temp files and reads (and checks) ``path`` when it exists; the
        state (or None), or the error raised, reaches every rank."""
        state = err = None
        if self.is_root:
            try:
                state = read_checkpoint(path, head)
            except (ValueError, OSError) as e:
                err = e
        state, err = self.broadcast_object((state, err))
        if err is not None:
            raise err
        return state


def read_checkpoint(path, head):
    """Remove stale temp files of ``path``; its checked state when it exists, else None."""
    ckpt.remove_stale_temps(path)
    if not os.path.exists(path):
        return None
    state = ckpt.load_checkpoint(path)
    ckpt.check_compatible(state, path, head)
    return state
