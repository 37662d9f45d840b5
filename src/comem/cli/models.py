"""``comem models``: the backbones comem builds, with their size and compute at their usual clip."""

from __future__ import annotations

import argparse
import json

NAME = "models"


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(NAME, help="list the backbones with parameters and GFLOPs")
    models.add_argument("--json", action="store_true", help="print one JSON object per backbone")


def run(args: argparse.Namespace) -> int:
    from comem.models.backbones import BACKBONES
    from comem.models.build import ModelSpec
    from comem.models.flops import count_flops

    if not args.json:
        print(f"{'backbone':14} {'params(M)':>9} {'input':>9} {'GFLOPs':>8}  {'stages':40} published")
    for name, entry in BACKBONES.items():
        report = count_flops(
            ModelSpec(backbone=name, num_classes=400, memory_stages=()), entry.frames, entry.size
        )
        published = entry.published
        row = {
            "backbone": name,
            "params_m": round(report.params_m, 3),
            "input": [entry.frames, entry.size, entry.size],
            "gflops": round(report.backbone_gflops, 3),
            "stages": list(report.stage_names),
            "summary": entry.summary,
            "published": None
            if published is None
            else {
                "gflops": published.gflops,
                "params_m": round(published.params_m, 3),
                "input": [published.frames, published.size, published.size],
                "source": published.source,
            },
        }
        if args.json:
            print(json.dumps(row))
            continue
        clip = f"{entry.frames}x{entry.size}²"
        note = "-"
        if published is not None:
            note = f"{published.gflops:g} GFLOPs at {published.frames}x{published.size}² ({published.source})"
        stages = ",".join(row["stages"])
        print(f"{name:14} {report.params_m:9.2f} {clip:>9} {report.backbone_gflops:8.2f}  {stages:40} {note}")
    if not args.json:
        print("params and GFLOPs include a 400-class head; GFLOPs are multiply-accumulates per clip")
    return 0
