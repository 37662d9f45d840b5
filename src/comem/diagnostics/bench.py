"""``comem bench train``: real training steps of every mode side by side, timed.

Per mode and clip count N: clips/s, step time, time the step waited for the loader, peak GPU
memory (``torch.cuda.max_memory_allocated``), FLOPs of one step (``FlopCounterMode``, forward
and backward, comem's no-grad pass included), the TFLOP/s they make at the measured step time
and MFU against the device's dense peak. Modes:

- ``plain``: the usual single-clip loop with no speed settings (float32, default layout).
- ``single``: single-clip with the speed settings (bf16 autocast, channels-last-3d, cuDNN autotune).
- ``joint`` / ``comem``: N clips per video, same settings.

Data is random uint8 video from a small pool (so generating it costs nothing) or a real data dir,
through the same pinned-memory DataLoader and non-blocking copy as training.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from comem.config import TrainConfig
from comem.data.datasets import collate_clips
from comem.data.formats import load_splits
from comem.diagnostics.bench_spec import MULTI_CLIP_MODES, BenchSpec
from comem.engine.loaders import make_loader, resolve_device
from comem.engine.performance import prepare_video, tune_model, uses_channels_last
from comem.engine.precision import autocast_for
from comem.engine.provenance import device_name, versions
from comem.engine.step import train_step
from comem.engine.trainer import EpochSampler, build_optimizer
from comem.memory import even_times
from comem.models.build import ModelSpec, VideoModel, build_model
from comem.tasks.classification import make_dataset

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' datasheets: (bf16, tf32).
# float32 convolutions run as TF32 on these GPUs by default (torch.backends.cudnn.allow_tf32).
# Matched in order against torch.cuda.get_device_name().
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 417.5),
    ("H100", 989.4, 494.7),
    ("H200", 989.4, 494.7),
    ("A100", 312.0, 156.0),
    ("L40S", 362.1, 183.0),
    ("A10G", 70.0, 35.0),
    ("L4", 121.0, 60.0),
)


@dataclass
class BenchRow:
    """One measured (mode, N). ``clips_per_s`` counts every clip trained on (B·N per step)."""

    mode: str
    clips: int
    batch_size: int
    clips_per_s: float | None = None
    step_ms: float | None = None  # median over the timed steps, loader wait included
    loader_wait_ms: float | None = None
    peak_memory_gib: float | None = None
    step_tflop: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None
    speed_vs_single: float | None = None
    flop_bound_vs_single: float | None = None  # clips/s relative to single at equal TFLOP/s
    memory_vs_single: float | None = None
    error: str | None = None  # e.g. out of memory


@dataclass
class BenchReport:
    spec: BenchSpec
    environment: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": asdict(self.spec),
            "environment": self.environment,
            "rows": [asdict(r) for r in self.rows],
        }


def device_peak_tflops(device: torch.device, *, amp: bool, override: float | None) -> float | None:
    """The dense peak TFLOP/s MFU is measured against: bf16 with autocast, else TF32."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, bf16, tf32 in PEAK_TFLOPS:
        if key in name:
            return bf16 if amp else tf32
    return None


def bench_model_spec(spec: BenchSpec) -> ModelSpec:
    """The model every row of ``spec`` trains."""
    return ModelSpec(backbone=spec.backbone, num_classes=spec.num_classes, memory_stages=spec.memory_stages)


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "device_name": device_name(device),
    }
    if device.type == "cuda":
        found = versions()
        info.update(cuda=found["cuda"], cudnn=found["cudnn"])
    return info


class RandomVideos(Dataset):
    """Random uint8 videos, items shaped like ``MultiClipVideoDataset``'s, drawn from a pool of
    four so that producing them costs nothing: the bench measures the model, not a generator."""

    def __init__(self, size: int, num_clips: int, clip_len: int, crop_size: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        shape = (4, num_clips, 3, clip_len, crop_size, crop_size)
        self.pool = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        self.times = even_times(1, num_clips)[0].clone()
        self.size, self.num_classes = size, num_classes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        video, label = self.pool[index % 4], index % self.num_classes
        return {"video": video, "times": self.times, "label": label, "video_index": index}


def batches(spec: BenchSpec, num_clips: int, device: torch.device) -> Iterator[dict]:
    """Endless training batches of ``num_clips`` clips per video."""
    if spec.data is None:
        dataset = RandomVideos(
            spec.batch_size * 8, num_clips, spec.clip_len, spec.crop_size, spec.num_classes
        )
        loader: DataLoader = DataLoader(
            dataset,
            batch_size=spec.batch_size,
            num_workers=spec.workers,
            collate_fn=collate_clips,
            pin_memory=device.type == "cuda",
            persistent_workers=spec.workers > 0,
        )
        return itertools.cycle(loader) if spec.workers == 0 else _repeat(loader)
    splits = load_splits(spec.data)
    config = TrainConfig(
        data=spec.data,
        mode="single" if num_clips == 1 else "comem",
        clips=num_clips,
        clip_len=spec.clip_len,
        crop_size=spec.crop_size,
        batch_size=spec.batch_size,
        workers=spec.workers,
    ).validate()
    dataset = make_dataset(splits.train, config, train=True, num_classes=splits.num_classes)

    def epochs() -> Iterator[dict]:
        for epoch in itertools.count():
            dataset.set_epoch(epoch)
            sampler = EpochSampler(len(dataset), seed=0, epoch=epoch)
            yield from make_loader(dataset, collate_clips, config, sampler, device)

    return epochs()


def _repeat(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def bench_step(
    mode: str,
    model: VideoModel,
    video: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable,
    spec: BenchSpec,
) -> None:
    """Forward and backward of one step of a bench mode through the engine's one mode dispatch
    (``plain`` trains as ``single``; ``comem`` is ``comem train``'s default two-pass scheme,
    ``comem-cross`` the same with the cross-clip gradient, ``--cross-clip``)."""
    train_mode = {"plain": "single", "comem-cross": "comem"}.get(mode, mode)
    train_step(
        model,
        video,
        targets,
        mode=train_mode,
        autocast=autocast,
        memory_chunk=spec.memory_chunk,
        grad_chunk=spec.grad_chunk if train_mode == "comem" else 1,
        cross_clip=mode == "comem-cross",
    )


def make_step(mode: str, model: VideoModel, device: torch.device, spec: BenchSpec) -> Callable[[dict], None]:
    """One training step of ``mode`` on a loader batch, optimizer included."""
    fast = mode != "plain"
    autocast = autocast_for(device, "auto" if fast else "fp32")
    layout = uses_channels_last(channels_last=fast, compile=spec.compile)
    optimizer = build_optimizer(model, TrainConfig())

    def step(batch: dict) -> None:
        video = prepare_video(batch["video"], device, channels_last=layout)
        targets = batch["label"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        bench_step(mode, model, video, targets, autocast, spec)
        optimizer.step()

    return step


def count_step_flops(step: Callable[[dict], None], batch: dict) -> int:
    """FLOPs of one step as executed (forward, backward, comem's no-grad pass)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return counter.get_total_flops()


def profiled_peak_gib(step: Callable[[dict], None], batch: dict) -> float:
    """Peak tensor memory of one step on the CPU, where there are no allocator statistics: the
    largest total of live tensors on torch.profiler's memory timeline (slow: one step only)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(
        activities=activities, profile_memory=True, record_shapes=True, with_stack=True
    ) as profiler:
        step(batch)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of a CUDA-only tool
        path = Path(folder) / "timeline.json"
        profiler.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max((sum(categories) for categories in sizes), default=0) / 2**30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: BenchSpec, mode: str, num_clips: int, device: torch.device) -> BenchRow:
    row = BenchRow(mode=mode, clips=num_clips, batch_size=spec.batch_size)
    torch.manual_seed(0)
    model = build_model(bench_model_spec(spec)).to(device)
    model.train()
    fast = mode != "plain"
    torch.backends.cudnn.benchmark = False  # ``plain`` is the loop without any speed setting
    if fast:  # compiled below, after the eager FLOP count: then in the default layout
        tune_model(
            model,
            device,
            channels_last=uses_channels_last(channels_last=True, compile=spec.compile),
            compile=False,
        )
    step = make_step(mode, model, device, spec)
    source = batches(spec, num_clips, device)
    try:
        flops = count_step_flops(step, next(source))  # eager, before compiling: also a warm-up step
        if spec.compile and fast:
            tune_model(model, device, channels_last=False, compile=True)
        for _ in range(spec.warmup):
            step(next(source))
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        waited, step_times = 0.0, []
        for _ in range(spec.steps):
            fetch = time.perf_counter()
            batch = next(source)
            waited += time.perf_counter() - fetch
            step(batch)
            synchronize(device)  # as a training loop reading the loss each step does
            step_times.append(time.perf_counter() - fetch)
    except torch.cuda.OutOfMemoryError:
        row.error = "out of memory"
        return row
    finally:
        del model, step, source  # frees the GPU memory and stops the loader's workers
        if device.type == "cuda":
            torch.cuda.empty_cache()
    step_s = statistics.median(step_times)  # robust to a step slowed down by another process
    row.step_ms = 1000.0 * step_s
    row.clips_per_s = spec.batch_size * num_clips / step_s
    row.loader_wait_ms = 1000.0 * waited / spec.steps
    row.step_tflop = flops / 1e12
    row.achieved_tflops = flops / step_s / 1e12
    peak = device_peak_tflops(device, amp=fast, override=spec.peak_tflops)
    row.mfu = row.achieved_tflops / peak if peak else None
    if device.type == "cuda":
        row.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def profile_cpu_memory(spec: BenchSpec, mode: str, num_clips: int, device: torch.device) -> float:
    """``profiled_peak_gib`` of one step of ``mode`` after a warm-up step, on a fresh model."""
    torch.manual_seed(0)
    model = build_model(bench_model_spec(spec)).to(device)
    model.train()
    step = make_step(mode, model, device, spec)
    source = batches(replace(spec, workers=0), num_clips, device)
    step(next(source))  # optimizer state exists from here on, as in every later step
    return profiled_peak_gib(step, next(source))


def bench_rows(spec: BenchSpec) -> list[tuple[str, int]]:
    """The (mode, N) rows of ``spec``, in the table's order: one-clip modes first, then per N."""
    rows = [(mode, 1) for mode in spec.modes if mode in ("plain", "single")]
    return rows + [(mode, n) for n in spec.clips for mode in spec.modes if mode in MULTI_CLIP_MODES]


def run_bench(
    spec: BenchSpec, progress: Callable[[BenchRow, BenchReport], None] | None = None
) -> BenchReport:
    """Measure every row of ``spec``; ``progress`` sees each row and the report so far as it ends."""
    spec = spec.validate()
    if spec.data is not None:  # the model's classifier fits the data (multi-hot targets included)
        spec = BenchSpec(**{**asdict(spec), "num_classes": load_splits(spec.data).num_classes})
    device = resolve_device(spec.device)
    report = BenchReport(spec=spec, environment=environment(device))
    for mode, num_clips in bench_rows(spec):
        if spec.flops_only:
            row = BenchRow(
                mode, num_clips, spec.batch_size, step_tflop=meta_step_flops(spec, mode, num_clips) / 1e12
            )
        else:
            row = measure(spec, mode, num_clips, device)
        if spec.profile_memory and device.type == "cpu" and row.error is None:
            row.peak_memory_gib = profile_cpu_memory(spec, mode, num_clips, device)
        report.rows.append(row)
        if progress:
            progress(row, report)
    compare_to_single(report.rows)
    return report


def compare_to_single(rows: list[BenchRow]) -> None:
    """Fill the ``*_vs_single`` columns from the ``single`` row."""
    single = next((row for row in rows if row.mode == "single" and row.error is None), None)
    if single is None:
        return
    for row in rows:
        if row.step_tflop and single.step_tflop:
            row.flop_bound_vs_single = row.clips * single.step_tflop / row.step_tflop
        if row.clips_per_s is not None and single.clips_per_s:
            row.speed_vs_single = row.clips_per_s / single.clips_per_s
        if row.peak_memory_gib is not None and single.peak_memory_gib:
            row.memory_vs_single = row.peak_memory_gib / single.peak_memory_gib


def meta_step_flops(spec: BenchSpec, mode: str, num_clips: int) -> int:
    """FLOPs of one step counted on the meta device: exact, instant, no memory, any size."""
    with torch.device("meta"):
        model = build_model(bench_model_spec(spec))
    model.train()
    shape = (spec.batch_size, num_clips, 3, spec.clip_len, spec.crop_size, spec.crop_size)
    video = torch.empty(shape, device="meta")
    targets = torch.zeros(spec.batch_size, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        bench_step(mode, model, video, targets, contextlib.nullcontext, spec)
    return counter.get_total_flops()


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def format_table(report: BenchReport) -> str:
    """A Markdown table (what benchmarks/RESULTS.md holds)."""
    columns = [
        ("clips/s", "clips_per_s", ".1f"),
        ("× single", "speed_vs_single", ".2f"),
        ("FLOP bound × single", "flop_bound_vs_single", ".3f"),
        ("step ms", "step_ms", ".0f"),
        ("loader wait ms", "loader_wait_ms", ".1f"),
        ("peak GiB", "peak_memory_gib", ".3g"),
        ("mem × single", "memory_vs_single", ".2f"),
        ("TFLOP/step", "step_tflop", ".3g"),
        ("TFLOP/s", "achieved_tflops", ".3g"),
        ("MFU", "mfu", ".1%"),
    ]
    columns = [
        column for column in columns if any(getattr(row, column[1]) is not None for row in report.rows)
    ]
    lines = [
        "| mode | N | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for row in report.rows:
        if row.error:
            cells = [row.error] + [""] * (len(columns) - 1) if columns else [row.error]
        else:
            cells = [_cell(getattr(row, name), fmt) for _, name, fmt in columns]
        lines.append(f"| {row.mode} | {row.clips} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(report: BenchReport) -> str:
    env, spec = report.environment, report.spec
    versions = f"torch {env['torch']}" + (
        f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if "cuda" in env else ""
    )
    memory_source = "torch.cuda.max_memory_allocated"
    if "cuda" not in env:
        memory_source = "torch.profiler tensor timeline" if spec.profile_memory else "not measured"
    timing = (
        "FLOPs counted on the meta device, nothing timed"
        if spec.flops_only
        else f"{spec.data or 'random uint8'} data, median of {spec.steps} timed steps after "
        f"{spec.warmup} warm-up; peak memory: {memory_source}"
    )
    return (
        f"{env['device_name']} ({env['device']}), {versions}, {env['date']}; {spec.backbone}, "
        f"{spec.clip_len}×{spec.crop_size}², B={spec.batch_size}; memory stages "
        f"{','.join(spec.memory_stages)}, memory chunk {spec.memory_chunk}, grad chunk {spec.grad_chunk}"
        f"{', torch.compile' if spec.compile else ''}; {timing}"
    )
