"""``comem eval``: multi-view testing of a checkpoint; everything not given comes from the checkpoint."""

from __future__ import annotations

import argparse

from comem.choices import EVAL_MEMORY_KINDS

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
        "--eval-memory",
        choices=EVAL_MEMORY_KINDS,
        help="which views share a memory: groups (at most the training clips, spread over the video, one "
        "crop each, as in training) or all (one memory of every view); default: the run's",
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


def run(args: argparse.Namespace) -> int:
    from comem.checkpoint_state import stored_task
    from comem.config import ConfigError
    from comem.engine.checkpoint import load_checkpoint
    from comem.engine.distributed import is_main_process, shutdown_distributed
    from comem.inference.evaluate import evaluate_checkpoint
    from comem.tasks import task_class

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
            eval_memory=args.eval_memory,
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
    for line in task_class(stored_task(state)).report_lines(metrics, out_dir):
        print(line)
    return 0
