"""Data-parallel training of a MultimodalHMM: run ``torchrun --nproc_per_node=2
examples/train_distributed.py`` (or plainly ``python examples/train_distributed.py`` for one
process).

Every process builds the same data set (here sampled with a fixed seed; in practice load the
same files) and calls ``mmpgm.fit(..., distributed="auto")``: under torchrun the fit is data
parallel (each rank E-steps its own sequences, the statistics are all-reduced), alone it is the
ordinary one-process fit; the result is the same up to floating-point summation order. Rank 0
alone writes the checkpoint and the fitted model.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import mmpgm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("em", "svi"), default="em")
    ap.add_argument("--num-steps", type=int, default=50)
    ap.add_argument("--checkpoint", default="hmm_fit.ckpt")
    ap.add_argument("--out", default="hmm_fit.pt")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if "RANK" in os.environ:  # started by torchrun (or Slurm + torchrun)
        cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    rank = dist.get_rank() if dist.is_initialized() else 0

    torch.manual_seed(0)  # same truth, same data on every rank
    truth = mmpgm.MultimodalHMM({"accel": 3, "gyro": 3}, num_shared_states=4).double()
    data, _ = truth.sample(256, 100, seed=0)  # the same data on every rank
    model = mmpgm.MultimodalHMM({"accel": 3, "gyro": 3}, num_shared_states=4).double()
    if torch.cuda.is_available() and dist.is_initialized():
        model = model.cuda()
    result = mmpgm.fit(
        model,
        data,
        method=args.method,
        num_steps=args.num_steps,
        seed=0,
        checkpoint=args.checkpoint,  # rank 0 writes it; a restarted job resumes from it
        distributed="auto",
    )
    if rank == 0:
        print(f"{result.num_steps} steps, loss per frame {result.final_loss:.4f}")
        model.save(args.out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
