"""``comem bench train``: time real training steps of every mode in one run (clips/s, memory, MFU)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from comem.config import stage_list
from comem.diagnostics.bench_spec import BENCH_MODES, DEFAULT_BENCH_MODES

HELP = "time training steps of every mode: clips/s, memory, TFLOP/s, MFU"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="r2plus1d_18", help="any backbone name [r2plus1d_18]")
    parser.add_argument("--clips", type=_int_list, default=(2, 4, 8, 16), help="clip counts N [2,4,8,16]")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per step B [16]")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip [16]")
    parser.add_argument("--crop-size", type=int, default=112, help="crop side in pixels [112]")
    parser.add_argument(
        "--modes",
        type=lambda text: tuple(text.split(",")),
        default=DEFAULT_BENCH_MODES,
        help=f"comma-separated subset of {','.join(BENCH_MODES)} [{','.join(DEFAULT_BENCH_MODES)}]",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row [10]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them [3]")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone stages")
    parser.add_argument("--memory-chunk", type=int, default=1, help="comem: clips per no-grad forward [1]")
    parser.add_argument(
        "--memory-stages",
        type=lambda text: tuple(stage_list(text)),
        default=("last-2", "last-1", "last"),
        help="stages followed by a memory; the default is the recipes' placement [last-2,last-1,last]",
    )
    parser.add_argument("--data", help="real data dir, any format train reads (default: random video)")
    parser.add_argument("--workers", type=int, default=4, help="data loading processes [4]")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs)")
    parser.add_argument(
        "--profile-memory",
        action="store_true",
        help="CPU: peak tensor memory from torch.profiler (one extra, slow step per row)",
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="only count FLOPs per step (on the meta device: instant, any size, no GPU needed)",
    )
    parser.add_argument("--json", dest="json_path", help="also write the JSON report here")


def run(args: argparse.Namespace) -> int:
    from comem.diagnostics.bench import BenchReport, BenchRow, describe, format_table, run_bench
    from comem.diagnostics.bench_spec import BenchSpec

    spec = BenchSpec(
        backbone=args.backbone,
        clips=args.clips,
        batch_size=args.batch_size,
        clip_len=args.clip_len,
        crop_size=args.crop_size,
        modes=args.modes,
        steps=args.steps,
        warmup=args.warmup,
        compile=args.compile,
        memory_chunk=args.memory_chunk,
        memory_stages=args.memory_stages,
        data=args.data,
        workers=args.workers,
        device=args.device,
        peak_tflops=args.peak_tflops,
        profile_memory=args.profile_memory,
        flops_only=args.flops_only,
    )

    def progress(row: BenchRow, report: BenchReport) -> None:
        speed = (
            f"{row.step_tflop:.3g} TFLOP/step"
            if row.clips_per_s is None
            else f"{row.clips_per_s:.1f} clips/s"
        )
        print(f"  {row.mode} N={row.clips}: {row.error or speed}", file=sys.stderr, flush=True)
        if args.json_path:  # the rows so far: a run stopped part-way keeps what it measured
            Path(args.json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")

    report = run_bench(spec, progress)
    print(describe(report))
    print()
    print(format_table(report))
    payload = json.dumps(report.to_json(), indent=2)
    if args.json_path:
        Path(args.json_path).write_text(payload + "\n")
    print()
    print(payload)
    return 0
