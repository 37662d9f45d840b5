"""``comem predict``: the top classes of any video files with a checkpoint, optionally a timeline PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from comem.choices import EVAL_MEMORY_KINDS
from comem.files import json_text

NAME = "predict"


def add_parser(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(NAME, help="predict the classes of video files with a checkpoint")
    predict.add_argument("videos", nargs="+", metavar="VIDEO", help="any file PyAV reads (mp4, webm, ...)")
    predict.add_argument("--checkpoint", required=True, help="a last.pt/best.pt written by comem train")
    predict.add_argument("--top", type=int, default=5, metavar="K", help="classes to print (default 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    predict.add_argument(
        "--plot",
        metavar="OUT.png",
        help="timeline PNG with each memory stage's clips x clips read weights "
        "(several videos: OUT-<video name>.png each)",
    )
    predict.add_argument(
        "--views",
        "--clips",
        dest="clips",
        type=int,
        metavar="K",
        help="clips uniformly spread over each video (default: the checkpoint's eval views)",
    )
    predict.add_argument(
        "--clips-per-second", type=float, metavar="R", help="more clips on long videos: R per second"
    )
    predict.add_argument(
        "--max-clips", type=int, default=64, metavar="N", help="at most N clips (default 64)"
    )
    predict.add_argument("--crops", type=int, choices=[1, 3], help="spatial crops per clip")
    predict.add_argument("--aggregate", default="mean", choices=["mean", "max"], help="clip scores to video")
    predict.add_argument(
        "--eval-memory",
        choices=EVAL_MEMORY_KINDS,
        help="which clips share a memory: groups (at most the training clips, spread over the video, one "
        "crop each) or all (one memory of every clip); default: the run's",
    )
    predict.add_argument(
        "--weights",
        choices=["ema", "raw"],
        help="the run's weight average (ema) or its weights (raw); default: ema when the run kept one",
    )
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda")


def plot_path(plot: str, video: str, several: bool) -> Path:
    out = Path(plot)
    return out.with_name(f"{out.stem}-{Path(video).stem}{out.suffix or '.png'}") if several else out


def run(args: argparse.Namespace) -> int:
    from comem.config import ConfigError
    from comem.data.decode import VideoDecodeError
    from comem.engine.loaders import resolve_device
    from comem.inference.predictor import load
    from comem.inference.timeline import plot_timeline

    for flag, value in (("--top", args.top), ("--views", args.clips), ("--max-clips", args.max_clips)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1; got {value}")
    if args.clips_per_second is not None and args.clips_per_second <= 0:
        raise ConfigError(f"--clips-per-second must be > 0; got {args.clips_per_second}")
    settings = {} if args.eval_memory is None else {"eval_memory": args.eval_memory}
    predictor = load(args.checkpoint, device=resolve_device(args.device), weights=args.weights, **settings)
    names = predictor.class_names
    results: list[dict[str, Any]] = []
    failed = 0
    for video in args.videos:
        try:
            prediction = predictor.predict(
                video,
                clips=args.clips,
                clips_per_second=args.clips_per_second,
                max_clips=args.max_clips,
                crops=args.crops,
                aggregate=args.aggregate,
            )
        except VideoDecodeError as error:
            print(f"comem {NAME}: error: {error}", file=sys.stderr)
            failed += 1
            continue
        top = [{"class": names[index], "score": round(score, 6)} for index, score in prediction.top(args.top)]
        result: dict[str, Any] = {
            "video": video,
            "duration_s": round(prediction.duration_s, 3),
            "frames": prediction.num_frames,
            "size": [prediction.width, prediction.height],
            "clips": len(prediction.thumbnails),
            "top": top,
            "clip_times_s": [round(float(t), 3) for t in prediction.clip_times_s],
            "clip_scores": {
                item["class"]: [round(float(p), 6) for p in prediction.clip_probabilities[:, index]]
                for item, (index, _) in zip(top, prediction.top(args.top), strict=True)
            },
            # per memory stage, row i: how much clip i read from each clip
            "attention": {
                stage: [[round(float(w), 6) for w in row] for row in weights]
                for stage, weights in prediction.attention.items()
            },
        }
        if args.plot:
            result["plot"] = str(plot_path(args.plot, video, len(args.videos) > 1))
            plot_timeline(Path(result["plot"]), prediction, names, top=min(args.top, 5))
        results.append(result)
        if not args.json:
            print(
                f"{video}  ({result['duration_s']:.1f} s, {prediction.width}x{prediction.height}, "
                f"{result['clips']} clips)"
            )
            for rank, item in enumerate(top, start=1):
                print(f"  {rank}. {item['class']:<30} {item['score']:.4f}")
            if args.plot:
                print(f"  timeline: {result['plot']}")
    if args.json:
        print(json_text(results, indent=2))
    return 2 if failed else 0
