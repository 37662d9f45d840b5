"""The same video-level training under DistributedDataParallel: one process per device.

    torchrun --nproc_per_node 2 examples/train_ddp.py          # CPU: gloo; GPUs: nccl

`comem.step` takes the DDP wrapper: in comem mode the N per-clip backwards accumulate locally and
only the last one all-reduces, one gradient all-reduce per step as in single-clip training.
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchvision.models.video import r3d_18

import comem


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu")
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    clips = 3
    model = comem.wrap(r3d_18(num_classes=clips), ["layer3", "layer4"]).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    # this rank's share of the data: videos of noise whose label is the index of the brighter clip
    generator = torch.Generator().manual_seed(100 + rank)
    video = torch.randn(2, clips, 3, 4, 16, 16, generator=generator)
    label = torch.randint(clips, (2,), generator=generator)
    video[torch.arange(2), label] += 1.0
    video, label = video.to(device), label.to(device)
    for step in range(3):
        optimizer.zero_grad()
        loss = comem.step(ddp, video, label, mode="comem")
        optimizer.step()
        mean = loss.clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"step {step}  loss {mean.item() / world:.4f}", flush=True)
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    print(f"rank {rank} weights checksum {checksum:.10e}", flush=True)  # equal on every rank
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
