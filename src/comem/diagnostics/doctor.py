"""``comem doctor``: does comem train on this machine, and through which code paths?

It reports the versions that matter (comem, torch, torchvision, PyAV, CUDA, cuDNN, NCCL) and the
devices, then runs, on a tiny dataset of real H.264 videos it generates, one training step and
one evaluation step of every mode (``comem.config.MODES``) through every path the device has:

- ``fp32``: the plain step; the reference the other paths are compared with.
- ``bf16``: bf16 autocast with the bf16 input (CUDA).
- ``fp16+scaler``: fp16 autocast with ``torch.amp.GradScaler`` (CUDA): comem trains in bf16;
  this checks that its modules train in fp16 with loss scaling, as GPUs without fast bf16 need.
- ``channels-last-3d``: bf16 with the channels-last-3d layout and cuDNN autotuning: what
  ``comem train`` runs on a GPU.
- ``compile``: the backbone stages under ``torch.compile`` (inductor on CUDA; on a CPU the
  ``aot_eager`` backend: dynamo and AOTAutograd trace the same graphs, no kernels are generated).
- ``ddp``: the step through ``DistributedDataParallel`` in a one-process group (NCCL on CUDA,
  gloo on a CPU), the way a torchrun rank takes it.
- ``loader``: DataLoader workers (with pinned memory on CUDA) give the batches in-process loading gives.
- ``train-loop``: ``comem train`` itself, one epoch of one step and an evaluation, loader workers on.

Every step path starts from the same weights and batch as the fp32 step, and its loss, gradients
and evaluation scores must agree with that step's within the path's tolerance (loose for bf16
paths: the check is for wrong results, not rounding). These compared steps run BatchNorm on its
running statistics: with batch statistics over two videos of 4×32² clips the gradient is so
ill-conditioned that 16-bit rounding alone moves it by 20-100%, which would hide a real error
behind a loose tolerance. The train-loop check runs BatchNorm on batch statistics, as training
does. Paths the device cannot take are skipped with the reason; a check that raises is a FAIL
line with the error, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from comem.config import MODES, TrainConfig
from comem.data.datasets import VideoSplits, collate_clips
from comem.data.decode import open_video
from comem.data.formats import load_splits
from comem.data.synthetic import SyntheticSpec, make_synthetic
from comem.diagnostics.step_paths import Skipped, StepPath, StepResult, compare, run_step, step_paths
from comem.engine.loaders import make_loader, resolve_device
from comem.engine.provenance import devices, versions
from comem.engine.trainer import train
from comem.models.build import ModelSpec
from comem.tasks.classification import ClassificationTask, make_dataset

Status = Literal["PASS", "FAIL", "SKIP"]

# The generated dataset and the steps: small enough to run every check on a CPU in seconds.
VIDEO = SyntheticSpec(num_train=2, num_val=2, size=32, num_frames=16)
BATCH_SIZE = 2  # = the training videos: the train-loop check runs exactly one step per epoch
CLIPS = 2
CLIP_LEN = 4
CROP = 32
LOADER_WORKERS = 2


def check_names() -> tuple[str, ...]:
    """What ``run_checks(skip=...)`` can leave out, in the order the checks run."""
    return (*(path.name for path in step_paths(torch.device("cpu"))), "loader", "train-loop")


@dataclass
class Check:
    """One PASS / FAIL / SKIP line."""

    name: str
    mode: str | None
    status: Status
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:4}  {self.name:17} {self.mode or '':7} {self.detail} ({self.seconds:.1f} s)"


@dataclass
class DoctorReport:
    versions: dict[str, str | None]
    devices: list[dict[str, Any]]
    device: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.status != "FAIL" for check in self.checks)

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in ("PASS", "FAIL", "SKIP")}

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "devices": self.devices,
            "device": self.device,
            "ok": self.ok,
            "counts": self.counts(),
            "checks": [asdict(check) for check in self.checks],
        }


@dataclass
class Workspace:
    """The generated data and what every check shares."""

    folder: Path
    device: torch.device
    splits: VideoSplits
    batches: dict[int, dict] = field(default_factory=dict)  # training batch per clip count
    eval_batch: dict | None = None
    references: dict[str, StepResult] = field(default_factory=dict)  # the fp32 step of each mode
    compiled_graphs: int = 0  # graphs torch.compile captured so far (later modes reuse earlier ones)
    cpu_compile_mode: str = "comem"  # the one mode compiled on a CPU

    def config(self, mode: str, **overrides: Any) -> TrainConfig:
        base = TrainConfig(
            data=str(self.folder / "data"),
            mode=mode,
            backbone="tiny",
            clips=CLIPS,
            clip_len=CLIP_LEN,
            stride=2,
            crop_size=CROP,
            batch_size=BATCH_SIZE,
            workers=0,
            device=str(self.device),
            epochs=1,
        )
        return replace(base, **overrides).validate()

    def model_spec(self) -> ModelSpec:
        # No dropout: every path must see the same function, and dropout masks depend on the path.
        return ModelSpec(backbone="tiny", num_classes=self.splits.num_classes, dropout=0.0)

    def train_batch(self, mode: str) -> dict:
        config = self.config(mode)
        if config.train_clips not in self.batches:
            dataset = make_dataset(self.splits.train, config, train=True, num_classes=self.splits.num_classes)
            self.batches[config.train_clips] = next(
                iter(make_loader(dataset, collate_clips, config, None, self.device))
            )
        return self.batches[config.train_clips]

    def evaluation_batch(self) -> dict:
        if self.eval_batch is None:
            config = self.config("comem")
            dataset = make_dataset(self.splits.val, config, train=False, num_classes=self.splits.num_classes)
            self.eval_batch = next(iter(make_loader(dataset, collate_clips, config, None, self.device)))
        return self.eval_batch


def make_workspace(folder: Path, device: torch.device) -> Workspace:
    """Generate the videos (``VIDEO``) under ``folder/data``; the checks' shared state."""
    make_synthetic(folder / "data", VIDEO)
    return Workspace(folder, device, load_splits(folder / "data"))


def compiled_graphs() -> int:
    """Graphs ``torch.compile`` has captured in this process."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def check_step(path: StepPath, mode: str, space: Workspace) -> tuple[Status, str]:
    """One step of ``path`` in ``mode``, compared with the fp32 step of the same mode (which, run
    first, becomes the reference)."""
    if path.cuda_only and space.device.type != "cuda":
        raise Skipped(path.cuda_only)
    if path.compile and space.device.type == "cpu" and mode != space.cpu_compile_mode:
        raise Skipped(
            f"on a CPU compile is traced in {space.cpu_compile_mode} mode only (about 10 s of CPU per mode)"
        )
    graphs = compiled_graphs() if path.compile else 0
    result = run_step(
        path,
        mode,
        spec=space.model_spec(),
        batch=space.train_batch(mode),
        eval_batch=space.evaluation_batch(),
        share_memory=space.config(mode).shares_eval_memory,
        device=space.device,
        folder=space.folder,
    )
    graphs = compiled_graphs() - graphs if path.compile else 0
    space.compiled_graphs += graphs
    if path.compile and space.compiled_graphs == 0:
        return "FAIL", "torch.compile captured no graph: the stages ran eagerly"
    values = [result.loss, *result.scores.flatten().tolist()]
    if not all(math.isfinite(value) for value in values) or not torch.isfinite(result.gradients).all():
        return "FAIL", f"non-finite loss, gradient or scores (loss {result.loss:.4g})"
    notes = [f"loss {result.loss:.4f}"]
    if path.compile:
        backend = "inductor" if space.device.type == "cuda" else "aot_eager backend: no kernels generated"
        notes.append(f"{backend}, {graphs} new graphs")
    if path.ddp:
        notes.append(f"{'nccl' if space.device.type == 'cuda' else 'gloo'}, 1 process")
    if result.peak_mib is not None:
        notes.append(f"peak {result.peak_mib:.0f} MiB")
    if path.name == "fp32":
        space.references[mode] = result
        return "PASS", ", ".join(notes)
    if mode not in space.references:
        raise Skipped("no fp32 step to compare with (it failed)")
    differences = compare(result, space.references[mode])
    notes.append("vs fp32: " + ", ".join(f"{key} {value:.1e}" for key, value in differences.items()))
    worst = max(differences.values())
    if worst > path.tolerance:
        return "FAIL", ", ".join(notes) + f" (tolerance {path.tolerance:g})"
    return "PASS", ", ".join(notes)


def check_videos(space: Workspace) -> tuple[Status, str]:
    """comem's reader decodes every frame of the generated videos at the size they were written."""
    records = space.splits.train + space.splits.val
    for record in records:
        with open_video(record.path) as reader:
            frames = reader.read(np.arange(VIDEO.num_frames))
        if frames.shape != (VIDEO.num_frames, VIDEO.size, VIDEO.size, 3):
            return "FAIL", f"{record.path}: decoded {tuple(frames.shape)}"
    size = f"{VIDEO.num_frames} frames of {VIDEO.size}×{VIDEO.size}"
    return "PASS", f"{len(records)} H.264 videos ({size}) written and decoded with PyAV"


def check_loader(space: Workspace) -> tuple[Status, str]:
    """Worker processes (and pinned memory on CUDA) deliver the in-process batches bit for bit."""
    config = space.config("comem", workers=LOADER_WORKERS)
    dataset = make_dataset(space.splits.train, config, train=True, num_classes=space.splits.num_classes)
    in_process = next(
        iter(make_loader(dataset, collate_clips, replace(config, workers=0), None, space.device))
    )
    with_workers = next(iter(make_loader(dataset, collate_clips, config, None, space.device)))
    if not torch.equal(in_process["video"], with_workers["video"]):
        return "FAIL", f"{LOADER_WORKERS} workers gave other clips than in-process loading"
    pinned = "not pinned (no CUDA)"
    if space.device.type == "cuda":
        if not with_workers["video"].is_pinned():
            return "FAIL", "batches are not in pinned memory on CUDA"
        pinned = "pinned"
    shape = "×".join(map(str, with_workers["video"].shape))
    return "PASS", f"{LOADER_WORKERS} workers, batches equal to in-process loading, {pinned}, uint8 {shape}"


def check_train_loop(mode: str, space: Workspace) -> tuple[Status, str]:
    """``comem train``: one epoch (one step) and its evaluation, checkpoints and logs included."""
    out = space.folder / f"train-{mode}"
    workers = LOADER_WORKERS if space.device.type == "cuda" else 0  # CPU workers: the loader check
    config = space.config(mode, out=str(out), workers=workers)
    console = io.StringIO()  # the run's progress bars and epoch line
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        metrics = train(config, ClassificationTask(config))
    record = metrics["history"][-1]
    if not math.isfinite(record["train_loss"]):
        return "FAIL", f"train loss {record['train_loss']}"
    if not (out / "last.pt").is_file():
        return "FAIL", f"{out / 'last.pt'} was not written"
    value = record.get("val_top1")
    score = f"val top-1 {value:.0f}%" if value is not None else "evaluated"
    loading = f"{workers} loader workers" if workers else "in-process loading"
    loss = record["train_loss"]
    return "PASS", f"1 step + evaluation ({loading}), loss {loss:.4f}, {score}, checkpoint written"


def run_check(name: str, mode: str | None, check: Callable[[], tuple[Status, str]]) -> Check:
    """Run one check; whatever it raises becomes a FAIL line (a doctor reports, it does not crash)."""
    started = time.perf_counter()
    try:
        status, detail = check()
    except Skipped as skip:
        status, detail = "SKIP", str(skip)
    except Exception as error:  # noqa: BLE001 - every failure is reported as its line
        status, detail = "FAIL", f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    return Check(name, mode, status, detail, time.perf_counter() - started)


def start_report(device: str = "auto") -> DoctorReport:
    """Versions and devices, and the device the checks will run on (``auto``: CUDA if present)."""
    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())
    return DoctorReport(versions(), devices(), str(torch_device))


def run_checks(
    report: DoctorReport,
    *,
    modes_to_check: tuple[str, ...] = MODES,
    skip: tuple[str, ...] = (),
    progress: Callable[[Check], None] | None = None,
) -> DoctorReport:
    """Every check on ``report.device`` but those named in ``skip`` (see :func:`check_names`),
    appended to ``report``; ``progress`` sees each as it ends."""
    torch_device = torch.device(report.device)

    def record(check: Check) -> None:
        report.checks.append(check)
        if progress:
            progress(check)

    def attempt(name: str, mode: str | None, check: Callable[[], tuple[Status, str]]) -> Check:
        if name in skip:
            return Check(name, mode, "SKIP", "skipped on request")
        return run_check(name, mode, check)

    with tempfile.TemporaryDirectory(prefix="comem-doctor-") as folder:
        spaces: list[Workspace] = []

        def videos() -> tuple[Status, str]:
            spaces.append(make_workspace(Path(folder), torch_device))
            return check_videos(spaces[0])

        record(attempt("videos", None, videos))
        if report.checks[-1].status == "FAIL":  # nothing else can run without data
            return report
        space = spaces[0]
        space.cpu_compile_mode = "comem" if "comem" in modes_to_check else modes_to_check[0]
        for path in step_paths(torch_device):
            for mode in modes_to_check:
                record(attempt(path.name, mode, lambda p=path, m=mode: check_step(p, m, space)))
        record(attempt("loader", None, lambda: check_loader(space)))
        for mode in modes_to_check:
            record(attempt("train-loop", mode, lambda m=mode: check_train_loop(m, space)))
    return report


def format_header(report: DoctorReport) -> str:
    v = report.versions
    lines = [
        f"comem {v['comem']} · Python {v['python']} · torch {v['torch']} · torchvision {v['torchvision']} "
        f"· PyAV {v['av']} (libavcodec {v['libavcodec']})",
        f"CUDA {v['cuda'] or '—'} · cuDNN {v['cudnn'] or '—'} · NCCL {v['nccl'] or '—'}",
    ]
    for entry in report.devices:
        if entry["device"] == "cpu":
            threads = entry["torch_threads"]
            lines.append(f"cpu: {entry['name']}, {entry['cores']} cores, torch threads {threads}")
        else:
            lines.append(
                f"{entry['device']}: {entry['name']}, {entry['memory_gib']} GiB, compute capability "
                f"{entry['compute_capability']}, {entry['multiprocessors']} multiprocessors"
            )
    if len(report.devices) == 1:
        build = "torch is built with CUDA" if v["cuda"] else "a CPU-only torch"
        lines.append(f"no CUDA device ({build})")
    lines.append(f"checking on {report.device}")
    return "\n".join(lines)


def format_summary(report: DoctorReport) -> str:
    counts = report.counts()
    verdict = "comem works here" if report.ok else "comem does NOT fully work here: see the FAIL lines"
    return f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP: {verdict}"
