"""How comem's passes are batched: the largest chunks whose estimated peak memory fits a budget.

comem's memory pass runs ``memory_chunk`` clips of each video per no-grad forward and its gradient
pass ``grad_chunk`` clips per forward/backward (``engine/modes.py``); larger chunks mean fewer,
larger kernels and, at ``grad_chunk = N``, no memory pass at all. The planner never changes the
training mode (joint and comem differ in their gradients): it only picks the chunks given as
``auto``, and says the plan in one line.

The estimate comes from one forward of one clip per video on the meta device (no memory, no
arithmetic; ``torch.func.functional_call`` with meta copies of the weights):

- the bytes of the tensors that forward saves for backward: one clip's activations in the
  gradient pass, times the grad chunk;
- the largest single output of a module in that forward: a no-grad forward holds about three such
  tensors at once (input, output, a temporary), times the memory chunk; and the output of the
  memory stages, which the memory pass keeps for every clip;
- the training state: weights, gradients and AdamW's two moments (4 × the parameter bytes), and
  the uint8 batch.

It is an estimate (the CUDA caching allocator's fragmentation, cuDNN workspaces and the
optimizer's temporaries are not in it); the default budget leaves a margin for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

GIB = 2**30
AUTO = "auto"


@dataclass(frozen=True)
class StepMemory:
    """Bytes a training step of B videos of N clips holds, by what holds them."""

    num_clips: int
    state: int  # weights, gradients and AdamW's two moments
    video: int  # the uint8 batch (B, N, C, T, H, W)
    clip_saved: int  # tensors one clip of each video saves for backward
    clip_largest: int  # the largest module output of one clip of each video
    clip_carried: int  # one clip's output of its largest memory stage, kept through the memory pass

    def peak(self, mode: str, memory_chunk: int = 1, grad_chunk: int = 1) -> int:
        """Estimated peak bytes of a step of ``mode`` (comem at the given chunks)."""
        base = self.state + self.video
        if mode == "single":  # one clip of each video on the device
            return self.state + self.video // self.num_clips + self.clip_saved
        if mode in ("joint", "tsn") or grad_chunk >= self.num_clips:
            return base + self.num_clips * self.clip_saved
        memory_pass = min(memory_chunk, self.num_clips) * 3 * self.clip_largest
        memory_pass += self.num_clips * self.clip_carried
        return base + max(memory_pass, grad_chunk * self.clip_saved)


def step_memory(model: nn.Module, video_shape: tuple[int, ...], *, half_precision: bool) -> StepMemory:
    """``StepMemory`` of ``model`` (a ``VideoModel``) for uint8 videos ``video_shape`` (B, N, C, T, H, W),
    measured by one train-mode forward of one clip per video on the meta device. ``half_precision``:
    activations in bf16/fp16 (half the float32 bytes)."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {
        name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad) for name, t in named.items()
    }
    saved: dict[int, int] = {}
    largest = [0]
    carried = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage._cdata] = storage.nbytes()
        return tensor

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.nbytes)

    def record_stage(module: nn.Module, inputs: object, output: object) -> None:
        tensors = output if isinstance(output, list) else [output]
        size = sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))
        carried[0] = max(carried[0], size)

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    stages = getattr(getattr(model, "backbone", None), "stages", {})
    for name in getattr(model, "memory_stage_names", []):
        hooks.append(stages[name].register_forward_hook(record_stage))
    batch, num_clips = video_shape[:2]
    clip = torch.empty((batch, 1, *video_shape[2:]), device="meta")
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            functional_call(model, meta, (clip,))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    scale = 0.5 if half_precision else 1.0
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    return StepMemory(
        num_clips=num_clips,
        state=4 * parameters,
        video=batch * num_clips * int(torch.tensor(video_shape[2:]).prod()),
        clip_saved=int(scale * sum(saved.values())),
        clip_largest=int(scale * largest[0]),
        clip_carried=int(scale * carried[0]),
    )


def device_budget_gib(device: torch.device) -> float:
    """What ``device`` has, less a margin of 10 % (at least 1 GiB): the GPU's memory, or the
    machine's RAM for a CPU."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(total - max(0.1 * total, GIB), 0.0) / GIB


@dataclass(frozen=True)
class Plan:
    """The chunks a comem run uses and the peak they are estimated to need."""

    mode: str
    memory_chunk: int
    grad_chunk: int
    peak_gib: float
    budget_gib: float
    device: str

    def line(self) -> str:
        where = " (the CPU's memory)" if self.device == "cpu" else ""
        fits = "" if self.peak_gib <= self.budget_gib else " (over the budget)"
        peak = f"est. peak {self.peak_gib:.3g} GiB of {self.budget_gib:.3g}{where}{fits}"
        if self.mode != "comem":
            return f"plan: mode {self.mode}, {peak}"
        return f"plan: memory chunk {self.memory_chunk}, grad chunk {self.grad_chunk}, {peak}"


def plan_chunks(
    memory: StepMemory,
    mode: str,
    memory_chunk: int | str,
    grad_chunk: int | str,
    budget_gib: float,
    device: str,
) -> Plan:
    """The chunks for ``mode``: given ones kept, ``auto`` ones the largest that fit the budget
    (the grad chunk first: it saves backward kernels too; at least 1 each)."""
    budget = budget_gib * GIB
    num_clips = memory.num_clips
    grad = grad_chunk
    if grad == AUTO:
        fitting = [k for k in range(1, num_clips + 1) if memory.peak("comem", 1, k) <= budget]
        grad = max(fitting, default=1)
    chunk = memory_chunk
    if chunk == AUTO:
        fitting = [k for k in range(1, num_clips + 1) if memory.peak("comem", k, int(grad)) <= budget]
        chunk = max(fitting, default=1)
    peak = memory.peak(mode, int(chunk), int(grad))
    return Plan(mode, int(chunk), int(grad), peak / GIB, budget_gib, device)
