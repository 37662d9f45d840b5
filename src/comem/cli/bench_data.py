"""``comem bench data``: decode-once vs one independent decode per clip, through the same loader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "data loading: clips/s and videos/s of decode-once vs N independent decodes per video"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        help="dataset dir (its train split) or folder of videos; default: generated H.264 videos "
        "(320-px short side, 10 s, 30 fps) under $COMEM_HOME/bench-data",
    )
    parser.add_argument(
        "--generate", action="store_true", help="write the generated videos into --data first"
    )
    parser.add_argument("--videos", type=int, default=8, help="videos to generate / time at most [8]")
    parser.add_argument(
        "--short-side", type=int, default=320, help="generated videos' short side in pixels [320]"
    )
    parser.add_argument("--clips", type=int, default=4, help="clips per video (N) [4]")
    parser.add_argument("--clip-len", type=int, default=8, help="frames per clip [8]")
    parser.add_argument("--stride", type=int, default=2, help="frame stride within a clip [2]")
    parser.add_argument(
        "--crop-size", type=int, default=224, help="crop side; short side jittered in [crop, 8/7 crop]"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0], help="DataLoader workers; several = one line each"
    )
    parser.add_argument("--repeats", type=int, default=1, help="passes over the videos per measurement [1]")
    parser.add_argument("--decoder", default="pyav", help="decode-once backend: pyav | torchcodec [pyav]")


def run(args: argparse.Namespace) -> int:
    from comem.config import comem_home
    from comem.data.datasets import VideoRecord
    from comem.data.decode import check_decoder
    from comem.data.throughput import bench_records, generate_bench_videos, measure
    from comem.errors import UserError

    check_decoder(args.decoder)
    folder = Path(args.data) if args.data else comem_home() / "bench-data"
    if args.generate or not args.data:
        records = [
            VideoRecord(path, 0)
            for path in generate_bench_videos(folder, args.videos, short_side=args.short_side)
        ]
    else:
        if not folder.is_dir():
            raise UserError(f"{folder}/: data directory not found")
        records = bench_records(folder)[: args.videos]
    if not records:
        raise UserError(f"{folder}/: no videos found")
    options = dict(clips=args.clips, clip_len=args.clip_len, stride=args.stride, crop_size=args.crop_size)
    for workers in args.workers:
        once = measure(
            records, independent=False, workers=workers, decoder=args.decoder, repeats=args.repeats, **options
        )
        naive = measure(records, independent=True, workers=workers, repeats=args.repeats, **options)
        line = {
            "clips_per_s": round(once["clips_per_s"], 2),
            "videos_per_s": round(once["videos_per_s"], 2),
            "naive_clips_per_s": round(naive["clips_per_s"], 2),
            "naive_videos_per_s": round(naive["videos_per_s"], 2),
            "speedup": round(once["videos_per_s"] / naive["videos_per_s"], 2),
            "workers": workers,
            "clips": args.clips,
            "clip_len": args.clip_len,
            "stride": args.stride,
            "crop_size": args.crop_size,
            "videos": len(records) * args.repeats,
            "decoder": args.decoder,
            "data": str(folder),
        }
        print(json.dumps(line), flush=True)
    return 0
