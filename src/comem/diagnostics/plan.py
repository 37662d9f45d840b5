"""``comem bench plan``: estimated peak memory and FLOP-bound speed of each mode and chunk size.

For a backbone, an input size and N, without running anything: the peak memory of a training
step as the planner estimates it (``comem.engine.planner``) and the clips/s each row would train
at relative to single-clip training if every step ran at the same TFLOP/s (FLOPs counted on the
meta device). comem's rows run K clips per memory-pass forward and K per gradient-pass
forward/backward for K = 1, 2, 4, ... and N; at K = N the memory pass is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from comem.diagnostics.bench import BenchSpec, meta_step_flops
from comem.engine.planner import GIB, StepMemory, step_memory
from comem.models.build import ModelSpec, build_model


@dataclass(frozen=True)
class PlanRow:
    mode: str
    clips: int
    memory_chunk: int | None
    grad_chunk: int | None
    peak_gib: float
    speed_vs_single: float  # FLOP bound: single's FLOPs per clip over this row's


def chunk_sizes(num_clips: int) -> list[int]:
    """1, 2, 4, ... below N, and N."""
    sizes = [1]
    while sizes[-1] * 2 < num_clips:
        sizes.append(sizes[-1] * 2)
    return sizes + ([num_clips] if num_clips > 1 else [])


def plan_rows(spec: BenchSpec, num_clips: int, *, half_precision: bool) -> list[PlanRow]:
    """The rows of ``comem bench plan`` for ``num_clips`` clips per video."""
    with torch.device("meta"):
        model = build_model(
            ModelSpec(backbone=spec.backbone, num_classes=spec.num_classes, memory_stages=spec.memory_stages)
        )
    shape = (spec.batch_size, num_clips, 3, spec.clip_len, spec.crop_size, spec.crop_size)
    memory: StepMemory = step_memory(model, shape, half_precision=half_precision)
    single_flops = meta_step_flops(spec, "single", 1)

    def speed(mode: str, chunk: int = 1) -> float:
        flops = meta_step_flops(replace(spec, memory_chunk=chunk, grad_chunk=chunk), mode, num_clips)
        return num_clips * single_flops / flops

    rows = [
        PlanRow("single", 1, None, None, memory.peak("single") / GIB, 1.0),
        PlanRow("joint", num_clips, None, None, memory.peak("joint") / GIB, speed("joint")),
    ]
    for chunk in chunk_sizes(num_clips):
        peak = memory.peak("comem", chunk, chunk) / GIB
        rows.append(PlanRow("comem", num_clips, chunk, chunk, peak, speed("comem", chunk)))
    return rows


def format_plan(rows: list[PlanRow]) -> str:
    lines = [
        "| mode | N | memory chunk | grad chunk | est. peak GiB | FLOP-bound speed × single |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        chunks = [str(c) if c is not None else "—" for c in (row.memory_chunk, row.grad_chunk)]
        if row.grad_chunk is not None and row.grad_chunk >= row.clips > 1:
            chunks[0] = "— (no memory pass)"
        lines.append(
            f"| {row.mode} | {row.clips} | {chunks[0]} | {chunks[1]} | {row.peak_gib:.3g} | "
            f"{row.speed_vs_single:.3f} |"
        )
    return "\n".join(lines)
