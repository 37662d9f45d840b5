"""``comem check-data``: scan a dataset for unreadable, short, cut-off and missing videos; exits 1 when
it found any (2 when the dataset cannot be read at all)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

NAME = "check-data"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        NAME, help="scan a dataset for unreadable/short/missing videos and write a report"
    )
    parser.add_argument("--data", required=True, help="data directory (any format comem train reads)")
    parser.add_argument(
        "--data-format", default="auto", help="auto | slowfast | kinetics | charades | ... [auto]"
    )
    parser.add_argument("--decoder", default="pyav", help="pyav | torchcodec | frames [pyav]")
    parser.add_argument("--clip-len", type=int, default=8, help="frames per clip, for the 'short' check [8]")
    parser.add_argument("--stride", type=int, default=2, help="frame stride, for the 'short' check [2]")
    parser.add_argument(
        "--full", action="store_true", help="decode every frame (slow; default: first and last)"
    )
    parser.add_argument("--workers", type=int, default=0, help="parallel processes [0]")
    parser.add_argument(
        "--allow-outside-data", action="store_true", help="CSV paths may point outside --data"
    )
    parser.add_argument(
        "--out", help="report path [DATA/check_data.json, or ./check_data.json if DATA is read-only]"
    )


def run(args: argparse.Namespace) -> int:
    from comem.data.check import check_splits
    from comem.data.decode import check_decoder
    from comem.data.formats import load_splits
    from comem.data.sampling import clip_span

    check_decoder(args.decoder)
    data = Path(args.data)
    splits = load_splits(data, args.data_format, outside=args.allow_outside_data)
    span = clip_span(args.clip_len, args.stride)
    report = check_splits(
        data, splits, min_frames=span, decoder=args.decoder, full=args.full, workers=args.workers
    )
    for entry in report.unreadable:
        print(f"unreadable: {entry['error']}")
    for entry in report.short:
        print(
            f"short: {entry['path']}: {entry['frames']} frames < {span} (clip span; last frame is repeated)"
        )
    for entry in report.truncated:
        print(f"cut off: {entry['path']}: {entry['frames']} of {entry['header_frames']} frames in the file")
    for name in report.missing:
        print(f"missing: {name}")
    out = Path(args.out) if args.out else data / "check_data.json"
    payload = json.dumps({**dataclasses.asdict(report), "problems": report.problems}, indent=2) + "\n"
    try:
        out.write_text(payload)
    except OSError:
        if args.out:
            raise
        out = Path("check_data.json")
        out.write_text(payload)
    print(
        f"{report.videos} videos ({report.data_format}): {report.readable} readable, "
        f"{len(report.unreadable)} unreadable, {len(report.short)} short, {len(report.truncated)} cut off, "
        f"{len(report.missing)} missing; wrote {out}"
    )
    return 1 if report.problems else 0
