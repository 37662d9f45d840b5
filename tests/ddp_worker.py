"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): one comem step and one
joint step through DDP on this rank's half of a fixed batch, plus a gather of uneven eval scores.
Writes ``OUT/rank<r>.pt``. Usage: ``torchrun --nproc_per_node 2 tests/ddp_worker.py OUT``."""

import contextlib
import functools
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from comem.engine.distributed import gather_predictions, init_distributed, step_hooks, wrap_for_training
from comem.engine.modes import comem_step, joint_step
from comem.models.build import ModelSpec, build_model

VIDEOS, CLIPS, CLASSES = 4, 3, 5


def make_model() -> torch.nn.Module:
    """The same weights in every process; memories away from their identity init so clips interact.
    BatchNorm runs on running statistics: torch's SyncBatchNorm is GPU-only, and with per-rank batch
    statistics the union-batch gradient is a different function (see test_distributed.py)."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(backbone="tiny", num_classes=CLASSES, memory_stages=("layer3", "layer4"), dropout=0.0)
    )
    with torch.no_grad():
        for memory in model.memories.values():
            memory.out.weight.normal_(0, 0.3)
            memory.out.bias.normal_(0, 0.3)
    return model.eval()


def union_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(42)
    video = torch.randn(VIDEOS, CLIPS, 3, 4, 32, 32, generator=generator)
    return video, torch.tensor([0, 4, 2, 1])


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    context, device = init_distributed(torch.device("cpu"))
    model = make_model()
    train_model = wrap_for_training(model, context, device)
    reductions = []  # one entry per gradient bucket all-reduced

    def counting_allreduce(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        reductions.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    train_model.register_comm_hook(None, counting_allreduce)
    video, targets = union_batch()
    share = slice(context.rank * VIDEOS // 2, (context.rank + 1) * VIDEOS // 2)
    result = {}
    # Joint first: DDP re-buckets the gradients after its first backward, so the two comem steps
    # below run with the same buckets and their all-reduce counts compare.
    joint_step(train_model, video[share], targets[share], contextlib.nullcontext)
    result["joint"] = gradients(model)
    for name, hooks in (
        ("comem", step_hooks(train_model)),
        ("comem_every_clip", {"forward_clip": functools.partial(train_model, method="forward_clip")}),
    ):
        model.zero_grad(set_to_none=True)
        reductions.clear()
        comem_step(model, video[share], targets[share], contextlib.nullcontext, **hooks)
        result[name], result[f"{name}_reductions"] = gradients(model), list(reductions)
    # Uneven eval shares with a wrapped-around duplicate (video 0 again on rank 1), as ShardSampler pads.
    indices = [[0, 2, 4], [1, 3, 0]][context.rank]
    own = [(index, (float(index), index % 2)) for index in indices]
    result["gathered"] = gather_predictions(own, [f"bad{context.rank}"], context)
    torch.save(result, out / f"rank{context.rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
