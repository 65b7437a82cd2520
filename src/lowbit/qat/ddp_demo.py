"""QAT under DistributedDataParallel on CPU (gloo): the documented multi-process recipe.

Run with ``torchrun --standalone --nproc_per_node 2 -m lowbit.qat.ddp_demo --out DIR``. Every
rank trains the same float model briefly, prepares it (calibrated input steps, so replicas
start equal), wraps it in DDP and trains on its own shard of the training set. At the end the
ranks compare their parameters; rank 0 converts the model, saves the artifact to ``DIR/model``
and writes ``DIR/ddp_report.json`` (replica agreement, accuracy, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import lowbit
from lowbit import qat
from lowbit.measure import top1_accuracy
from lowbit.tasks import TASKS, train


def _parameters_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for the converted artifact")
    p.add_argument("--task", default="digits", choices=sorted(TASKS))
    p.add_argument("--scheme", default="W4A8")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    task = TASKS[args.task]
    split = task.load(seed=0)
    model = train(task.make_model(), split, epochs=2, seed=0)
    prepared = qat.prepare(model, args.scheme, calibration=list(split.x_train[:256].split(64)))
    ddp = DistributedDataParallel(prepared)  # broadcasts rank 0's parameters and buffers
    opt = torch.optim.Adam(ddp.parameters(), lr=5e-4)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(epoch))
        for idx in perm.split(64 * world):
            if len(idx) < 2 * world:  # a tail too small to give every rank a batch: drop it
                continue
            shard = idx[rank::world]  # this rank's part of the global batch
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ddp(split.x_train[shard]), split.y_train[shard])
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    mine = _parameters_vector(prepared)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if rank == 0:
        max_diff = max(float((v - every[0]).abs().max()) for v in every)
        qmodel = qat.convert(prepared)
        out = Path(args.out)
        lowbit.save(qmodel, out / "model")
        report = {
            "world_size": world,
            "replicas_max_abs_diff": max_diff,
            "accuracy": top1_accuracy(qmodel, split.x_test, split.y_test),
            "train_seconds": seconds,
            "scheme": args.scheme,
        }
        (out / "ddp_report.json").write_text(json.dumps(report, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
