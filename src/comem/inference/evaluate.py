"""``comem eval`` of a checkpoint of any task: the task it was trained on says what to score and
how to report it (``Task.for_checkpoint``, ``Task.report``); this module runs the evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comem.checkpoint_state import stored_task
from comem.engine.checkpoint import load_checkpoint
from comem.engine.distributed import broadcast_object, init_distributed
from comem.engine.evaluate import predict_dataset
from comem.engine.loaders import resolve_device
from comem.tasks import task_class
from comem.tasks.base import EvalRequest


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    views: int | None = None,
    crops: int | None = None,
    aggregate: str = "mean",
    eval_memory: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    state: dict | None = None,
    weights: str | None = None,
    allow_other_classes: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a ``comem train`` checkpoint of any task; returns the metrics and the report directory.

    Classification: multi-view testing, a report directory (default ``eval_<split>_<checkpoint
    name>/`` beside the checkpoint) with ``metrics.json``, ``predictions.csv``, ``per_class.csv``
    and a chart. AVA: ``detections_val.csv`` and ``eval_val.json`` (default: beside the
    checkpoint). Everything not given comes from the checkpoint. Under torchrun the items are
    sharded over the processes and rank 0 writes the report of them all. ``weights``: ``ema`` or
    ``raw`` (default: the weight average when the run kept one, see ``comem.engine.ema``); the
    ``eval_memory``: which views share a memory (``TrainConfig.eval_memory``; default the run's); the
    report's ``weights`` says which were scored. ``state``: the checkpoint already read. A
    classification dataset whose class names differ from the checkpoint's is refused unless
    ``allow_other_classes`` (labels then map by index).
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint) if state is None else state
    context, torch_device = init_distributed(resolve_device(device))
    request = EvalRequest(
        data=Path(data) if data is not None else None,
        split=split,
        views=views,
        crops=crops,
        aggregate=aggregate,
        eval_memory=eval_memory,
        batch_size=batch_size,
        workers=workers,
        out=Path(out) if out is not None else None,
        weights=weights,
        allow_other_classes=allow_other_classes,
    )
    task, model, out_dir, kind = task_class(stored_task(state)).for_checkpoint(checkpoint, state, request)
    model.to(torch_device)
    predictions = predict_dataset(task, model, task.val_set, task.config, torch_device, context)
    metrics = None
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        extra = {"split": split, "checkpoint": str(checkpoint), "weights": kind}
        metrics = task.report(predictions, out_dir, extra)
    return broadcast_object(metrics, context), out_dir
