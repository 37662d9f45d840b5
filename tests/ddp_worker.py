"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): one comem step and one
joint step through DDP on this rank's half of a fixed batch, the same for the AVA detector's step
(``comem.tasks.ava.task.detection_step``, through the engine's ``StepEngine``), plus a gather of
uneven eval predictions. Writes ``OUT/rank<r>.pt``.
Usage: ``torchrun --nproc_per_node 2 tests/ddp_worker.py OUT``."""

import contextlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from comem.config import TrainConfig
from comem.engine.distributed import gather_predictions, init_distributed, step_hooks, wrap_for_training
from comem.engine.modes import comem_step, joint_step
from comem.engine.step_engine import StepEngine
from comem.models.build import ModelSpec, build_model
from comem.tasks.ava.model import AvaDetector
from comem.tasks.ava.task import detection_step

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


def make_detector() -> AvaDetector:
    """An AVA detector (3 actions) on ``make_model``'s kind of backbone, BatchNorm on running statistics."""
    torch.manual_seed(1)
    spec = ModelSpec(backbone="tiny", num_classes=1, memory_stages=("layer3", "layer4"), dropout=0.0)
    detector = AvaDetector(build_model(spec), 3, dropout=0.0)
    with torch.no_grad():
        for memory in detector.video_model.memories.values():
            memory.out.weight.normal_(0, 0.3)
            memory.out.bias.normal_(0, 0.3)
    return detector.eval()


def ava_union_batch() -> dict[str, torch.Tensor]:
    """4 keyframes x 3 clips, uint8 as the loader gives them; items 0 and 2 have one box, 1 and 3
    two, so both ranks' halves hold 3 boxes (DDP averages per-rank mean losses: equal box counts
    make that the union's mean)."""
    generator = torch.Generator().manual_seed(7)
    video = torch.randint(0, 256, (VIDEOS, CLIPS, 3, 4, 32, 32), generator=generator, dtype=torch.uint8)
    corners = torch.rand(6, 2, generator=generator) * 0.5
    boxes = torch.cat([corners, corners + 0.4], dim=1)
    box_index = torch.tensor([0, 1, 1, 2, 3, 3])
    targets = (torch.rand(6, 3, generator=generator) > 0.5).float()
    return {"video": video, "boxes": boxes, "box_index": box_index, "targets": targets}


def ava_share(batch: dict[str, torch.Tensor], items: slice) -> dict[str, torch.Tensor]:
    """Items ``items`` of an AVA batch, box indices renumbered from 0."""
    keep = (batch["box_index"] >= items.start) & (batch["box_index"] < items.stop)
    return {
        "video": batch["video"][items],
        "boxes": batch["boxes"][keep],
        "box_index": batch["box_index"][keep] - items.start,
        "targets": batch["targets"][keep],
    }


def ava_step(detector: AvaDetector, train_model: torch.nn.Module, batch: dict, mode: str) -> None:
    config = TrainConfig(mode=mode, device="cpu")
    detection_step(detector, batch, StepEngine(config, detector, train_model, torch.device("cpu")).context())


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
        ("comem_every_clip", {"forward_clip": train_model}),
    ):
        model.zero_grad(set_to_none=True)
        reductions.clear()
        comem_step(model, video[share], targets[share], contextlib.nullcontext, **hooks)
        result[name], result[f"{name}_reductions"] = gradients(model), list(reductions)
    detector = make_detector()
    train_detector = wrap_for_training(detector, context, device)
    train_detector.register_comm_hook(None, counting_allreduce)
    ava = ava_share(ava_union_batch(), share)
    for mode in ("joint", "comem"):
        detector.zero_grad(set_to_none=True)
        reductions.clear()
        ava_step(detector, train_detector, ava, mode)
        result[f"ava_{mode}"], result[f"ava_{mode}_reductions"] = gradients(detector), list(reductions)
    # Uneven eval shares with a wrapped-around duplicate (video 0 again on rank 1), as ShardSampler pads.
    indices = [[0, 2, 4], [1, 3, 0]][context.rank]
    own = [(index, (float(index), index % 2)) for index in indices]
    result["gathered"] = gather_predictions(own, [f"bad{context.rank}"], context)
    torch.save(result, out / f"rank{context.rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
