"""The E-step of the LDS's EM in chunks of frames (``em_statistics(data, chunk_size=K)``).

The statistics of :func:`mmpgm.models.lds.em.em_statistics` are sums over frames (emissions),
over transitions ``t -> t+1`` (dynamics) and over first frames (initial state) of functions of
the smoothed moments; :func:`mmpgm.ops.kalman.chunked.rts_smoother_chunked` delivers those
moments a chunk at a time, so the sums are accumulated chunk by chunk: the transition that
crosses a chunk boundary is counted with the chunk it starts in (its second frame's moments come
with the chunk), the initial state with the first chunk. Not with ``sensor_faults`` (the
variational E-step is a fixed point over whole sequences).
"""

from __future__ import annotations

import torch

from ...ops.kalman.chunked import rts_smoother_chunked
from .._chunks import time_slice


@torch.no_grad()
def em_statistics_chunked(model, data, chunk_size: int) -> dict:
    """:func:`~mmpgm.models.lds.em.em_statistics` of checked ``data`` (no sensor faults) with
    the smoother run ``chunk_size`` frames at a time; the same keys and values."""
    lg = model.linear_gaussian_params()
    lg = lg._replace(
        **{
            k: ({m: t.detach() for m, t in v.items()} if isinstance(v, dict) else v.detach())
            for k, v in lg._asdict().items()
            if v is not None
        }
    )
    T = data.num_timesteps
    inside = data.time_mask
    p = model._param()
    dtype, device = p.dtype, p.device
    stats: dict = {}

    def add(key, value):
        stats[key] = value if key not in stats else stats[key] + value

    def inputs(start, stop):
        return model._ops_inputs(time_slice(model, data, start, stop))

    def on_chunk(start, stop, mean, cov, cross, next_mean, next_cov):
        piece = time_slice(model, data, start, stop)
        second = cov + mean[..., :, None] * mean[..., None, :]
        for m in model.modalities:
            idx = model._state_index(m)
            obs = piece.mask[m]
            x = piece.obs[m][obs]
            mz = mean[obs][:, idx]
            k = idx.numel() + 1
            Szz = torch.zeros(k, k, dtype=dtype, device=device)
            Ez = mz.sum(0)
            Szz[:-1, :-1] = second[obs][:, idx][:, :, idx].sum(0)
            Szz[:-1, -1] = Ez
            Szz[-1, :-1] = Ez
            Szz[-1, -1] = float(x.shape[0])
            add(f"{m}.Szz", Szz)
            add(f"{m}.Sxz", torch.cat([x.mT @ mz, x.sum(0)[:, None]], -1))
            add(f"{m}.Sxx", x.mT @ x)
            add(f"{m}.frames", torch.tensor(float(x.shape[0]), dtype=dtype, device=device))
        # transitions t -> t+1 starting in this chunk (the last one into the next chunk)
        if next_mean is not None:
            mean_e = torch.cat([mean, next_mean[:, None]], 1)
            second_e = torch.cat(
                [second, (next_cov + next_mean[:, :, None] * next_mean[:, None, :])[:, None]], 1
            )
        else:
            mean_e, second_e = mean, second
        pair = inside[:, start + 1 : start + mean_e.shape[1]]  # (N, pairs)
        for b in model.block_names:
            s0, s1 = model.block_slices[b]
            kb = model.dynamics[b].dim
            blk = (slice(None), slice(None), slice(s0, s1), slice(s0, s1))
            add(f"{b}.E11", second_e[:, 1:][blk][pair].sum(0).reshape(kb, kb))
            add(f"{b}.E00", second_e[:, :-1][blk][pair].sum(0).reshape(kb, kb))
            e10 = cross[blk] + mean_e[:, 1:, s0:s1, None] * mean_e[:, :-1, None, s0:s1]
            add(f"{b}.E10", e10[pair].sum(0).reshape(kb, kb))
            add(f"{b}.pairs", torch.tensor(float(pair.sum()), dtype=dtype, device=device))
            if start == 0:
                first = inside[:, 0]
                dev = mean[first, 0, s0:s1] - model.dynamics[b].init_loc.detach()
                stats[f"{b}.first_count"] = torch.tensor(
                    float(dev.shape[0]), dtype=dtype, device=device
                )
                stats[f"{b}.first_sum"] = dev.sum(0)
                stats[f"{b}.first_outer"] = dev.mT @ dev
                stats[f"{b}.first_cov"] = cov[first, 0, s0:s1, s0:s1].sum(0)

    loglik = rts_smoother_chunked(lg, inputs, T, chunk_size, on_chunk)
    return {"log_likelihood": loglik.sum(), **stats}
