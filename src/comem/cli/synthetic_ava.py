"""``comem make-synthetic-ava``: write the synthetic AVA-format set (frames, CSVs, label map, proposals)."""

from __future__ import annotations

import argparse

NAME = "make-synthetic-ava"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="write a synthetic AVA-format data dir (moving actors, known actions)"
    )
    parser.add_argument("out", help="output directory")
    parser.add_argument("--train-movies", type=int, default=16)
    parser.add_argument("--val-movies", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--keyframes", type=int, default=6, help="annotated seconds per movie")
    parser.add_argument("--ava-version", default="2.2", choices=["2.1", "2.2"], help="annotation file names")
    parser.add_argument("--movies", action="store_true", help="also write videos_15min/ID.mp4 movie files")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from comem.tasks.ava.synthetic import SyntheticAvaSpec, write_synthetic_ava

    spec = SyntheticAvaSpec(
        train_movies=args.train_movies,
        val_movies=args.val_movies,
        size=args.size,
        keyframes=args.keyframes,
        version=args.ava_version,
        seed=args.seed,
        movies=args.movies,
    )
    out = write_synthetic_ava(args.out, spec)
    print(
        f"wrote {spec.train_movies} train and {spec.val_movies} val movies "
        f"({spec.keyframes} keyframes each) to {out}"
    )
    return 0
