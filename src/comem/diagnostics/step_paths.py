"""One training step and one evaluation step of a mode through one code path (precision, layout,
``torch.compile``, DDP), for ``comem doctor`` to compare the paths with the plain fp32 step.

fp16 loss scaling goes through the step functions' ``scale_loss``, as in ``comem train``: every
backward of the step runs on the scaled loss.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from comem.config import TrainConfig
from comem.engine.distributed import TrainingForward, unwrap
from comem.engine.modes import MODE_STEPS, StepOptions
from comem.engine.performance import prepare_video, tune_model, uses_channels_last
from comem.engine.precision import autocast_for
from comem.engine.trainer import build_optimizer
from comem.models.build import ModelSpec, VideoModel, build_model
from comem.tasks.classification import video_scores

# Largest relative difference from the fp32 step (loss, gradient norm) and absolute difference of
# evaluation probabilities. bf16 rounding moves this tiny model's gradient by 8% (single) to 15%
# (the N-clip modes), most of it in the stem convolution's weight gradient (a long sum of products
# that cancel), and its scores by up to 0.014: the same on a CPU and on an H200 with torch 2.11
# (2026-11-29). fp16 with loss scaling stays within 0.05-0.11%, TF32 convolutions (CUDA's float32
# default) within 0.1%. A wrong layout, a broken kernel or a missing gradient is off by far more.
FP32_TOLERANCE = 0.02
FP16_TOLERANCE = 0.02
BF16_TOLERANCE = 0.3


class Skipped(Exception):
    """The path does not apply here (the message says why)."""


@dataclass(frozen=True)
class StepPath:
    """One way a training step can run. ``cuda_only`` is the reason to skip it elsewhere."""

    name: str
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    ddp: bool = False
    tolerance: float = FP32_TOLERANCE
    cuda_only: str | None = None


def step_paths(device: torch.device) -> list[StepPath]:
    """The paths in the order they run. On CUDA, compile and DDP take the GPU training defaults
    (bf16, channels-last-3d), as ``comem train --compile`` and torchrun do; under compile that
    means the default layout (``comem.engine.performance.uses_channels_last``)."""
    gpu = device.type == "cuda"
    fast = {"precision": "bf16", "channels_last": True, "tolerance": BF16_TOLERANCE} if gpu else {}
    return [
        StepPath("fp32"),
        StepPath(
            "bf16",
            precision="bf16",
            tolerance=BF16_TOLERANCE,
            cuda_only="comem autocasts to bf16 on CUDA only (a CPU trains in fp32)",
        ),
        StepPath(
            "fp16+scaler",
            precision="fp16",
            tolerance=FP16_TOLERANCE,
            cuda_only="fp16 autocast with a GradScaler is a CUDA path (for GPUs without fast bf16)",
        ),
        StepPath(
            "channels-last-3d",
            precision="bf16",
            channels_last=True,
            tolerance=BF16_TOLERANCE,
            cuda_only="comem uses the channels-last-3d layout on CUDA only (cuDNN's fast 3-D layout)",
        ),
        StepPath("compile", compile=True, **fast),
        StepPath("ddp", ddp=True, **fast),
    ]


@dataclass
class StepResult:
    loss: float
    gradients: torch.Tensor  # every parameter's gradient, flattened and concatenated (float32, CPU)
    scores: torch.Tensor  # evaluation video scores (B, K)
    peak_mib: float | None  # CUDA: torch.cuda.max_memory_allocated over the step and the evaluation


def mode_step(
    mode: str,
    model: VideoModel,
    train_model: VideoModel | DistributedDataParallel,
    video: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The forward and backward of ``mode`` on one batch, through the engine's one dispatch
    (``MODE_STEPS``) with ``train_model`` (``model`` or its DDP wrapper) and every backward on the
    loss times ``scale`` (fp16's loss scale, None: 1); returns the detached loss."""
    if unwrap(train_model) is not model:
        raise ValueError("train_model must be model or its DDP wrapper")
    options = StepOptions(autocast=autocast)
    if scale is not None:
        options = replace(options, scale_loss=lambda loss: loss * scale)
    return MODE_STEPS[mode](train_model, video, targets, None, options).loss


@contextlib.contextmanager
def one_process_group(device: torch.device, folder: Path) -> Iterator[str]:
    """A process group of this process alone (NCCL on CUDA, gloo on a CPU); yields the backend."""
    if not dist.is_available():
        raise Skipped("this torch is built without torch.distributed")
    if dist.is_initialized():
        raise Skipped("this process is already in a process group (started by torchrun?)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise RuntimeError("this torch is built without NCCL")
    store = tempfile.mkdtemp(dir=folder)
    dist.init_process_group(backend, init_method=f"file://{store}/store", rank=0, world_size=1)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def autocast_of(path: StepPath, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    return autocast_for(device, path.precision)


def flat_gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().reshape(-1).cpu()
            for p in model.parameters()
        ]
    )


def where_nonfinite(model: torch.nn.Module, loss: torch.Tensor) -> str:
    """Where a step went non-finite, for the one-line FAIL: the loss, and the first parameters whose
    gradient or new value is not finite (a rare kernel fault is then traceable to its layer)."""
    named = list(model.named_parameters())
    bad_gradients = [name for name, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
    bad_weights = [name for name, p in named if not torch.isfinite(p.detach()).all()]
    return (
        f"loss {float(loss.detach()):.4g}; non-finite gradients in {len(bad_gradients)} parameters"
        f"{' (first ' + bad_gradients[0] + ')' if bad_gradients else ''}; non-finite weights in"
        f" {len(bad_weights)} (first {bad_weights[0] if bad_weights else '-'})"
    )


def run_step(
    path: StepPath,
    mode: str,
    *,
    spec: ModelSpec,
    batch: dict,
    eval_batch: dict,
    share_memory: bool,
    device: torch.device,
    folder: Path,
) -> StepResult:
    """One training step of ``mode`` on ``batch`` (uint8 video (B, N, C, T, H, W)) through ``path``,
    from seed-0 weights of ``spec``, then the evaluation of ``eval_batch``. ``folder`` holds the
    process group's rendezvous file.

    BatchNorm runs on its running statistics: a small batch's statistics make the gradient so
    ill-conditioned that 16-bit rounding alone moves it by 20-100% (see ``comem.diagnostics.doctor``).
    """
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    model.eval()  # gradients still flow; only BatchNorm and dropout change
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    tune_model(model, device, channels_last=path.channels_last, compile=path.compile, compile_backend=backend)
    optimizer = build_optimizer(model, TrainConfig())
    autocast = autocast_of(path, device)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10) if path.precision == "fp16" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    group = one_process_group(device, folder) if path.ddp else contextlib.nullcontext()
    with group:
        train_model: VideoModel | DistributedDataParallel = model
        if path.ddp:
            ids = [device.index] if device.type == "cuda" else None
            train_model = DistributedDataParallel(TrainingForward(model), device_ids=ids)
        layout = uses_channels_last(channels_last=path.channels_last, compile=path.compile)
        video = prepare_video(batch["video"], device, channels_last=layout)
        targets = batch["label"].to(device)
        before = torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()])
        optimizer.zero_grad(set_to_none=True)
        scale = None if scaler is None else scaler.scale(torch.ones((), device=device))
        loss = mode_step(mode, model, train_model, video, targets, autocast, scale)
        if scaler is not None:
            scaler.unscale_(optimizer)
        gradients = flat_gradients(model)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    after = torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()])
    if not torch.isfinite(after).all():
        raise RuntimeError(f"non-finite weights after the optimizer step ({where_nonfinite(model, loss)})")
    if torch.equal(before, after):
        raise RuntimeError("the optimizer step left every weight unchanged (skipped by the scaler?)")
    eval_autocast = autocast if path.precision == "fp16" else contextlib.nullcontext
    with eval_autocast():
        model.eval()
        video = prepare_video(eval_batch["video"], device, channels_last=False)
        with torch.no_grad(), autocast_for(device, "bf16" if path.precision == "bf16" else "fp32")():
            logits = model(video, share_memory=share_memory)
        scores = video_scores(logits, multi_label=eval_batch["label"].is_floating_point()).cpu()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return StepResult(float(loss), gradients, scores.float(), peak)


def compare(result: StepResult, reference: StepResult) -> dict[str, float]:
    """Differences from the fp32 step: relative for the loss and the gradient, absolute for the
    evaluation probabilities."""
    return {
        "loss": abs(result.loss - reference.loss) / max(abs(reference.loss), 1e-12),
        "gradient": float(
            (result.gradients - reference.gradients).norm() / reference.gradients.norm().clamp_min(1e-12)
        ),
        "scores": float((result.scores - reference.scores).abs().max()),
    }
