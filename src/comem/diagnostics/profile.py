"""``comem bench train --profile DIR``: where a step of each mode spends its time.

For every (mode, N) row of a bench spec, a few real steps run under ``torch.profiler`` after one
warm-up step, on a fresh model and the same data as the timed rows. Each row's trace is written to
``DIR/<mode>_N<n>.pt.trace.json`` (Chrome trace format: Perfetto and chrome://tracing open the file,
TensorBoard's profiler plugin the folder), and the operators that took the most self time are
returned as a table per row: what the step's time goes to beyond its convolutions (host syncs such
as ``aten::item``, copies, many tiny kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from comem.diagnostics.bench import BenchSpec, batches, bench_rows, make_step, synchronize
from comem.engine.loaders import resolve_device
from comem.models.build import ModelSpec, build_model


@dataclass(frozen=True)
class ProfiledRow:
    """One profiled (mode, N): where its trace is and its top operators by self time."""

    mode: str
    clips: int
    trace: Path
    step_ms: float  # profiled wall time per step (the profiler's own overhead included)
    top: list[tuple[str, int, float]]  # (operator, calls per step, self ms per step)

    def format(self) -> str:
        lines = [f"{self.mode} N={self.clips}: {self.step_ms:.0f} ms/step profiled; trace {self.trace}"]
        lines += [f"  {ms:9.2f} ms  {calls:6d}×  {name}" for name, calls, ms in self.top]
        return "\n".join(lines)


def profile_row(
    spec: BenchSpec, mode: str, num_clips: int, folder: Path, *, steps: int = 2, top: int = 12
) -> ProfiledRow:
    """Profile ``steps`` steps of ``mode`` at ``num_clips`` clips after one warm-up step."""
    device = resolve_device(spec.device)
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(backbone=spec.backbone, num_classes=spec.num_classes, memory_stages=spec.memory_stages)
    ).to(device)
    model.train()
    step = make_step(mode, model, device, spec)
    source = batches(spec, num_clips, device)
    step(next(source))
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            with record_function(f"step {mode} N={num_clips}"):
                step(next(source))
            synchronize(device)
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / f"{mode}_N{num_clips}.pt.trace.json"
    profiler.export_chrome_trace(str(trace))
    events = [e for e in profiler.key_averages() if not e.key.startswith("step ")]
    device_time = device.type == "cuda"

    def self_us(event: torch.autograd.profiler_util.FunctionEventAvg) -> float:
        return event.self_device_time_total if device_time else event.self_cpu_time_total

    events.sort(key=self_us, reverse=True)
    rows = [(e.key, round(e.count / steps), self_us(e) / 1000 / steps) for e in events[:top]]
    wall = sum(e.cpu_time_total for e in profiler.key_averages() if e.key.startswith("step "))
    return ProfiledRow(mode, num_clips, trace, wall / 1000 / steps, rows)


def profile_bench(spec: BenchSpec, folder: Path, *, steps: int = 2) -> list[ProfiledRow]:
    """``profile_row`` for every row the bench measures."""
    spec = spec.validate()
    return [profile_row(spec, mode, n, folder, steps=steps) for mode, n in bench_rows(spec)]
