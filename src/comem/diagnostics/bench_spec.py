"""What ``comem bench train`` measures (:class:`BenchSpec`) and its modes, without importing torch:
the command's parser lists them (docs/architecture.md, "A fast command"); :mod:`comem.diagnostics.bench`
runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from comem.config import MODES
from comem.errors import UserError

BENCH_MODES: tuple[str, ...] = ("plain", *MODES, "comem-cross")
DEFAULT_BENCH_MODES: tuple[str, ...] = ("plain", "single", "joint", "comem", "comem-cross")
MULTI_CLIP_MODES: tuple[str, ...] = ("tsn", "joint", "comem", "comem-cross")


class BenchError(UserError, ValueError):
    """A bad ``comem bench train`` option (one-line message)."""


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark run: the model and input sizes, the modes and clip counts N to time, the steps."""

    backbone: str = "r2plus1d_18"
    clips: tuple[int, ...] = (2, 4, 8, 16)
    batch_size: int = 16
    clip_len: int = 16
    crop_size: int = 112
    modes: tuple[str, ...] = DEFAULT_BENCH_MODES
    steps: int = 10
    warmup: int = 3
    compile: bool = False
    memory_chunk: int = 1
    # the recipes' placement for real backbones (configs/*.yaml), not train's CPU default (every stage)
    memory_stages: tuple[str, ...] = ("last-2", "last-1", "last")
    num_classes: int = 400
    device: str = "auto"
    data: str | None = None
    workers: int = 4
    peak_tflops: float | None = None  # overrides the table (e.g. for a CPU or an unlisted GPU)
    profile_memory: bool = False  # CPU: peak tensor memory of one extra step from torch.profiler
    flops_only: bool = False  # count FLOPs on the meta device, time nothing

    def validate(self) -> BenchSpec:
        from comem.models.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise BenchError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        unknown = [mode for mode in self.modes if mode not in BENCH_MODES]
        if unknown or not self.modes:
            raise BenchError(f"--modes must be a comma-separated subset of {','.join(BENCH_MODES)}")
        for name in ("batch_size", "clip_len", "crop_size", "steps", "memory_chunk"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if not self.clips or min(self.clips) < 1:
            raise BenchError(f"--clips must be positive integers; got {self.clips}")
        if self.warmup < 0 or self.workers < 0:
            raise BenchError("--warmup and --workers must be >= 0")
        return self
