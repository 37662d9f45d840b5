"""Evaluation of any task, in one process or sharded over the processes torchrun starts.

Each rank predicts its share of the dataset's batches (``ShardSampler``), the ``(index, prediction)``
pairs of all ranks are gathered in dataset order, and the task turns them into metrics and reports
on rank 0, so a sharded evaluation reports exactly what one process does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from comem.config import TrainConfig
from comem.engine.distributed import DistContext, ShardSampler, gather_predictions
from comem.engine.loaders import make_loader
from comem.engine.step_engine import StepEngine
from comem.tasks.base import Predictions, Task


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a batch on ``device`` (the video stays uint8: tasks convert it)."""
    return {
        key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


@torch.no_grad()
def predict_dataset(
    task: Task,
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    context: DistContext,
) -> Predictions:
    """The task's predictions of every item of ``dataset`` (this rank's share, then gathered)."""
    model.eval()
    sampler = ShardSampler(len(dataset), context, config.batch_size) if context.enabled else None
    loader = make_loader(dataset, task.collate, config, sampler, device, drop_last=False)
    step = StepEngine(config, model, model, device).context()
    own: list[tuple[int, Any]] = []
    skipped: list[str] = []
    quiet = {} if context.is_main else {"disable": True}
    for batch in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, **quiet):
        skipped.extend(batch.get("skipped", []))
        own.extend(task.predict(model, to_device(batch, device), step))
    return gather_predictions(own, skipped, context)
