"""``comem eval``: multi-view testing of a checkpoint; everything not given comes from the checkpoint."""

from __future__ import annotations

import argparse
import json

NAME = "eval"


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(NAME, help="evaluate a checkpoint with multi-view testing")
    evaluate.add_argument("--checkpoint", required=True, help="a last.pt/best.pt written by comem train")
    evaluate.add_argument("--data", help="data dir (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--split", default="val", choices=["val", "test"])
    evaluate.add_argument("--views", type=int, help="clips per video (default: the training setting)")
    evaluate.add_argument("--crops", type=int, choices=[1, 3], help="spatial crops per clip")
    evaluate.add_argument("--batch-size", type=int, help="videos per batch")
    evaluate.add_argument("--workers", type=int, help="data loading processes")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run(args: argparse.Namespace) -> int:
    from comem.detection.train import evaluate_ava_command, is_ava_checkpoint

    if is_ava_checkpoint(args.checkpoint):  # AVA detection: detections CSV + official frame mAP
        return evaluate_ava_command(args)
    from comem.engine.evaluate import evaluate_checkpoint

    metrics, path = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        views=args.views,
        crops=args.crops,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    print(json.dumps(metrics))
    print(f"wrote {path}")
    return 0
