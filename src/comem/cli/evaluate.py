"""``comem eval``: multi-view testing of a checkpoint; everything not given comes from the checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comem.config import TrainConfig
from comem.files import json_text

if TYPE_CHECKING:
    import torch

    from comem.tasks.ava.task import AvaTask
    from comem.tasks.classification import ClassificationTask

NAME = "eval"


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(NAME, help="evaluate a checkpoint with multi-view testing")
    evaluate.add_argument("--checkpoint", required=True, help="a last.pt/best.pt written by comem train")
    evaluate.add_argument("--data", help="data dir (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--split", default="val", choices=["val", "test"])
    evaluate.add_argument(
        "--views", type=int, metavar="K", help="clips per video, uniformly spaced (default: training's)"
    )
    evaluate.add_argument(
        "--crops", type=int, choices=[1, 3], help="spatial crops per clip (3: along the long side)"
    )
    evaluate.add_argument(
        "--aggregate", default="mean", choices=["mean", "max"], help="how view scores become a video score"
    )
    evaluate.add_argument(
        "--weights",
        choices=["ema", "raw"],
        help="the run's weight average (ema) or its weights (raw); default: ema when the run kept one "
        "(--ema-decay), as it picked best.pt",
    )
    evaluate.add_argument(
        "--allow-other-classes",
        action="store_true",
        help="score a dataset whose class names differ from the checkpoint's, mapping labels by index "
        "(refused otherwise)",
    )
    evaluate.add_argument("--batch-size", type=int, help="videos per batch")
    evaluate.add_argument("--workers", type=int, help="data loading processes")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda")
    evaluate.add_argument(
        "--out", help="report directory (default: eval_<split>_<checkpoint name>/ beside the checkpoint)"
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    views: int | None = None,
    crops: int | None = None,
    aggregate: str = "mean",
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
    report's ``weights`` says which were scored. A classification dataset whose class names differ
    from the checkpoint's is refused unless ``allow_other_classes`` (labels then map by index).
    """
    from comem.checkpoint_state import stored_task
    from comem.engine.checkpoint import load_checkpoint
    from comem.engine.distributed import broadcast_object, init_distributed
    from comem.engine.evaluate import predict_dataset
    from comem.engine.loaders import resolve_device

    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint) if state is None else state
    context, torch_device = init_distributed(resolve_device(device))
    overrides = {"views": views, "crops": crops, "batch_size": batch_size, "workers": workers}
    if stored_task(state) == "ava":
        task, model, out_dir, kind = _ava_evaluation(checkpoint, state, data, split, overrides, out, weights)
    else:
        task, model, out_dir, kind = _classification_evaluation(
            checkpoint, state, data, split, overrides, aggregate, out, torch_device, weights,
            allow_other_classes,
        )  # fmt: skip
    model.to(torch_device)
    predictions = predict_dataset(task, model, task.val_set, task.config, torch_device, context)
    metrics = None
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        extra = {"split": split, "checkpoint": str(checkpoint), "weights": kind}
        metrics = task.report(predictions, out_dir, extra)
    return broadcast_object(metrics, context), out_dir


def _replaced(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).validate()


def _classification_evaluation(
    checkpoint: Path,
    state: dict,
    data: str | Path | None,
    split: str,
    overrides: dict[str, Any],
    aggregate: str,
    out: str | Path | None,
    device: torch.device,
    weights: str | None,
    allow_other_classes: bool = False,
) -> tuple[ClassificationTask, torch.nn.Module, Path, str]:
    from comem.data.datasets import DatasetFormatError
    from comem.inference.trained import load_trained
    from comem.tasks.classification import evaluation_task

    trained = load_trained(checkpoint, device, state=state, weights=weights)
    if data is None and trained.data_dir is None:
        raise DatasetFormatError(f"{checkpoint}: records no data dir; pass --data")
    task = evaluation_task(
        _replaced(trained.config, overrides),
        checkpoint=checkpoint,
        data_dir=Path(data) if data is not None else trained.data_dir,
        split=split,
        multi_label=trained.multi_label,
        class_names=trained.class_names,
        aggregate=aggregate,
        allow_other_classes=allow_other_classes,
    )
    out_dir = Path(out) if out is not None else checkpoint.with_name(f"eval_{split}_{checkpoint.stem}")
    return task, trained.model, out_dir, trained.weights


def _ava_evaluation(
    checkpoint: Path,
    state: dict,
    data: str | Path | None,
    split: str,
    overrides: dict[str, Any],
    out: str | Path | None,
    weights: str | None,
) -> tuple[AvaTask, torch.nn.Module, Path, str]:
    """``views`` sets the clips per keyframe (memory clips + 1); frames are never cropped."""
    from comem.checkpoint_state import checkpoint_weights, config_from_state, spec_from_state
    from comem.models.build import build_model
    from comem.tasks.ava.model import AvaDetector
    from comem.tasks.ava.task import evaluation_task

    config = _replaced(config_from_state(state), {**overrides, "crops": None})
    if overrides["views"] is not None and config.mode != "single":
        config = dataclasses.replace(config, clips=overrides["views"])
    data_dir = Path(data) if data is not None else Path(state["data_dir"])
    task = evaluation_task(config, data_dir=data_dir, split=split)
    detector = AvaDetector(build_model(spec_from_state(state)), state["num_classes"], dropout=config.dropout)
    weight_dict, kind = checkpoint_weights(state, checkpoint, weights)
    detector.load_state_dict(weight_dict)
    return task, detector, Path(out) if out is not None else checkpoint.parent, kind


def run(args: argparse.Namespace) -> int:
    from comem.checkpoint_state import stored_task
    from comem.config import ConfigError
    from comem.engine.checkpoint import load_checkpoint
    from comem.engine.distributed import is_main_process, shutdown_distributed

    for flag, value, least in (("--views", args.views, 1), ("--batch-size", args.batch_size, 1),
                               ("--workers", args.workers, 0)):  # fmt: skip
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}; got {value}")
    state = load_checkpoint(args.checkpoint)  # read once, whichever evaluation it needs
    try:
        metrics, out_dir = evaluate_checkpoint(
            args.checkpoint,
            data=args.data,
            split=args.split,
            views=args.views,
            crops=args.crops,
            aggregate=args.aggregate,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            out=args.out,
            state=state,
            weights=args.weights,
            allow_other_classes=args.allow_other_classes,
        )
    finally:
        shutdown_distributed()
    if not is_main_process():  # under torchrun, rank 0 reports
        return 0
    if stored_task(state) == "ava":  # AVA detection: detections CSV + official frame mAP
        print(json_text(metrics))
        print(f"wrote {out_dir / 'eval_val.json'} and {metrics['detections']}")
        return 0
    print(json_text({key: value for key, value in metrics.items() if not isinstance(value, list | dict)}))
    for pair in metrics.get("top_confused", [])[:5]:
        print(f"confused: {pair['videos']} x {pair['true']} -> {pair['predicted']}")
    print(f"wrote {', '.join(sorted(path.name for path in out_dir.iterdir()))} to {out_dir}")
    return 0
