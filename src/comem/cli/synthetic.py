"""``comem make-synthetic``: write the built-in long-range dataset to a directory of mp4 files and CSVs."""

from __future__ import annotations

import argparse

from comem.choices import SYNTHETIC_TASKS
from comem.config import TrainConfig

NAME = "make-synthetic"


def add_parser(commands: argparse._SubParsersAction) -> None:
    synthetic = commands.add_parser(NAME, help="write the built-in long-range dataset as mp4 + CSV")
    synthetic.add_argument("out", help="output directory")
    synthetic.add_argument("--task", default="distinct", choices=SYNTHETIC_TASKS)
    synthetic.add_argument("--num-train", type=int, default=480)
    synthetic.add_argument("--num-val", type=int, default=120)
    synthetic.add_argument("--size", type=int, default=64, help="frame side in pixels")
    synthetic.add_argument("--frames", type=int, default=72, help="frames per video")
    synthetic.add_argument("--parts", type=int, default=3, help="parts (events) per video")
    synthetic.add_argument("--fps", type=int, default=24, help="frame rate")
    synthetic.add_argument("--distractors", type=int, default=1, help="grey squares moving through the video")
    synthetic.add_argument(
        "--coloured-distractors", type=int, default=0, help="small squares of palette colours in every part"
    )
    synthetic.add_argument("--codec", default="h264", choices=["h264", "mpeg4", "vp9"])
    synthetic.add_argument("--seed", type=int, default=0)
    clips = synthetic.add_argument_group("order: the clips its events are laid out for (comem train's flags)")
    clips.add_argument("--clip-len", type=int, default=TrainConfig.clip_len, help="frames per clip")
    clips.add_argument("--stride", type=int, default=TrainConfig.stride, help="frame sampling stride")


def run(args: argparse.Namespace) -> int:
    from comem.data.synthetic import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        num_frames=args.frames,
        num_parts=args.parts,
        fps=args.fps,
        task=args.task,
        seed=args.seed,
        distractors=args.distractors,
        coloured_distractors=args.coloured_distractors,
        codec=args.codec,
        clip_len=args.clip_len,
        stride=args.stride,
    )
    out = make_synthetic(args.out, spec)
    print(f"wrote {spec.num_train} train and {spec.num_val} val videos to {out}")
    return 0
