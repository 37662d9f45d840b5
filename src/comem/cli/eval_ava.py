"""``comem eval-ava``: frame-level AVA mAP of a detections CSV, as the official AVA evaluator reports it."""

from __future__ import annotations

import argparse

NAME = "eval-ava"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME,
        help="AVA frame mAP@0.5IoU of a detections CSV (the official evaluator's rules)",
        description="Frame-level AVA mAP@0.5IoU, computed exactly as ActivityNet's get_ava_performance.py.",
    )
    parser.add_argument(
        "--gt", required=True, help="ground truth: video_id,timestamp,x1,y1,x2,y2,action_id[,…]"
    )
    parser.add_argument("--detections", required=True, help="video_id,timestamp,x1,y1,x2,y2,action_id,score")
    parser.add_argument("--labelmap", required=True, help="label map .pbtxt: only its class ids count")
    parser.add_argument("--exclusions", help="excluded timestamps CSV: video_id,timestamp")
    parser.add_argument(
        "--capacity",
        type=int,
        default=50,
        help="detections kept per keyframe, highest scores first (official: 50; 0 keeps all)",
    )
    parser.add_argument(
        "--pyslowfast",
        action="store_true",
        help="score as PySlowFast's in-training evaluation: no per-keyframe cap, rows matched in file order",
    )


def run(args: argparse.Namespace) -> int:
    from comem.tasks.ava.evaluation import evaluate_files, format_report

    result, categories = evaluate_files(
        args.labelmap,
        args.gt,
        args.detections,
        args.exclusions,
        capacity=args.capacity,
        pyslowfast=args.pyslowfast,
    )
    print(format_report(result, categories))
    return 0
