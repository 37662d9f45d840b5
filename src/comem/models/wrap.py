"""A collaborative memory inside any clip network: ``wrap(model, stages)``.

The wrapped network is the user's own, unchanged: a forward hook on each named submodule (a
stage) applies that stage's memory to its output while the wrapper runs the network, and does
nothing otherwise (the original model still predicts as before when called directly). The
wrapper offers the same ways to run as :class:`~comem.models.build.VideoModel`, so one set
of training steps drives both:

- ``forward(video)``: all N clips of each video in one graph, (B, N, C, T, H, W) -> (B, N, ...).
- ``memory_pass(video)``: the two-pass scheme's no-grad pass. An opaque network cannot be resumed
  from the middle, so the bank of each memory stage is built by running the network up to that
  stage (the hook then stops the forward): with memories after several stages the pass costs the
  sum of those prefixes (memories after ``layer3`` and ``layer4`` of an R3D-18: about 1.8 forwards
  instead of 1). ``VideoModel``, whose stages are explicit, keeps it at one forward.
- ``logits_from_maps(clip, i, banks)``: clip i's output as a function of the banks, for the
  cross-clip gradient. For the same reason it reruns the network's prefix up to the first memory
  stage, without gradients, before the part that reads the memory.
- ``forward_clip(clip, i, banks, cross_grads)``: clip i of each video reading the banks.

The wrapper owns the wrapped model's submodules, parameters and buffers under their own names,
so its ``state_dict`` is the model's plus ``memories.<stage>.*`` and a checkpoint of the plain
model loads into it (``strict=False``, only the memories missing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from comem.memory import CollaborativeMemory
from comem.models.build import Bank, MemoryPass, MemoryStageError, _cat_clips, _clip_entry, _per_video
from comem.models.memories import PathwayMemory

Width = int | tuple[int, ...]  # channels of a stage's output map, or of each pathway's


class _StopForward(BaseException):
    """Raised by a stage hook to end the forward early (the bank pass needs nothing after it).

    A ``BaseException``, so an ``except Exception`` inside the user's forward does not swallow it.
    """


@dataclass
class _Pass:
    """What the stage hooks do during the wrapper's current call."""

    kind: Literal["off", "all", "clip", "bank"] = "off"
    num_clips: int = 1
    clip_index: int = 0
    banks: dict[str, Bank] = field(default_factory=dict)
    cross_grads: dict[str, Bank] | None = None
    resume_grad: bool = False  # logits_from_maps: gradients on from the first memory stage
    clips: slice = field(default_factory=lambda: slice(None))
    summarized: str | None = None  # bank pass: the stage that stopped the forward
    summary: Any = None
    times: torch.Tensor | None = None  # (B, N) the clips' times (comem.memory); None: even


class _StageHook:
    """The forward hook on one stage (an object, not a closure, so deep copies follow the copy)."""

    def __init__(self, owner: WrappedModel, stage: str) -> None:
        self.owner = owner
        self.stage = stage

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        return self.owner._after_stage(self.stage, output)


def memory_key(stage: str) -> str:
    """The ``memories`` entry of a stage (module names cannot contain dots): ``blocks.3`` -> ``blocks_3``."""
    return stage.replace(".", "_")


def _width_of(output: Any) -> Width:
    if isinstance(output, (list, tuple)):
        return tuple(int(part.shape[1]) for part in output)
    return int(output.shape[1])


def _width_from_structure(stage: nn.Module) -> int | None:
    """Channels of a stage's output read off its last normalisation or convolution layer."""
    for module in reversed(list(stage.modules())):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return module.num_features
        if isinstance(module, nn.GroupNorm):
            return module.num_channels
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.out_channels
    return None


@torch.no_grad()
def _widths_from_example(model: nn.Module, stages: dict[str, nn.Module], example: torch.Tensor) -> dict:
    """Run ``example`` (one clip batch) through ``model`` in eval mode and read each stage's width."""
    widths: dict[str, Width] = {}
    modes = {module: module.training for module in model.modules()}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: widths.__setitem__(name, _width_of(out)))
        for name, module in stages.items()
    ]
    try:
        model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return widths


class WrappedModel(nn.Module):
    """A clip network with a collaborative memory after each of its named ``stages``.

    Input videos are (B, N, C, T, H, W); the output is the network's own per-clip output with the
    clips axis restored, (B, N, ...). Made by :func:`wrap`; ``wrapped`` is the original network.
    """

    def __init__(
        self,
        model: nn.Module,
        stages: Sequence[str],
        *,
        channels: Mapping[str, Width] | None = None,
        example: torch.Tensor | None = None,
        **memory_options: Any,
    ) -> None:
        super().__init__()
        name = type(model).__name__
        if isinstance(stages, str) or not stages:
            raise MemoryStageError(f"stages must be a non-empty list of submodule names, got {stages!r}")
        submodules = dict(model.named_modules())
        unknown = [stage for stage in stages if not stage or stage not in submodules]
        if unknown:
            raise MemoryStageError(
                f"{name} has no submodule {', '.join(map(repr, unknown))}; its top-level submodules are "
                f"{', '.join(model._modules)}"
            )
        if hasattr(model, "memories"):
            raise ValueError(f"{name} already has an attribute 'memories' (is it wrapped already?)")
        keys = [memory_key(stage) for stage in stages]
        if len(set(keys)) != len(keys):
            raise MemoryStageError(f"stages name the same submodule twice: {list(stages)}")
        object.__setattr__(self, "wrapped", model)  # not registered: its parts are adopted below
        self._modules.update(model._modules)
        self._parameters.update(model._parameters)
        self._buffers.update(model._buffers)
        self._non_persistent_buffers_set.update(model._non_persistent_buffers_set)
        self.training = model.training
        widths = dict(channels or {})
        missing = {stage: submodules[stage] for stage in stages if stage not in widths}
        if missing and example is not None:
            widths.update(_widths_from_example(model, missing, example))
        for stage in stages:
            if stage not in widths and (width := _width_from_structure(submodules[stage])) is not None:
                widths[stage] = width
        unread = [stage for stage in stages if stage not in widths]
        if unread:
            raise MemoryStageError(
                f"cannot tell the output channels of {name}.{unread[0]}: pass channels={{{unread[0]!r}: C}} "
                "(a tuple for a list of pathway maps) or example=<one clip batch>"
            )
        self._stage_names = tuple(stages)
        self.memories = nn.ModuleDict(
            {
                memory_key(stage): PathwayMemory(widths[stage], **memory_options)
                if isinstance(widths[stage], tuple)
                else CollaborativeMemory(widths[stage], **memory_options)
                for stage in stages
            }
        )
        self._pass = _Pass()
        self._handles = [submodules[stage].register_forward_hook(_StageHook(self, stage)) for stage in stages]

    # --- the wrapped model's parts stay shared with it ---------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        inner = self.__dict__.get("wrapped")
        if inner is not None and isinstance(value, nn.Module) and name in inner._modules:
            setattr(inner, name, value)  # e.g. a new head: the wrapped forward must see it too

    def _apply(self, fn: Any, recurse: bool = True) -> WrappedModel:
        super()._apply(fn, recurse)
        inner = self.wrapped  # .to() replaces root-level tensors: hand the new ones back
        inner._parameters.update({name: self._parameters[name] for name in inner._parameters})
        inner._buffers.update({name: self._buffers[name] for name in inner._buffers})
        return self

    def train(self, mode: bool = True) -> WrappedModel:
        super().train(mode)
        self.wrapped.training = mode
        return self

    def unwrap(self) -> nn.Module:
        """Remove the hooks and return the original network (its weights as trained here)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.wrapped

    # --- the ways to run: the protocol the training steps drive ---------------------------
    @property
    def memory_stage_names(self) -> list[str]:
        return list(self._stage_names)

    @contextlib.contextmanager
    def _running(self, state: _Pass) -> Iterator[_Pass]:
        previous, self._pass = self._pass, state
        try:
            yield state
        finally:
            self._pass = previous

    def _after_stage(self, stage: str, output: Any) -> Any:
        state = self._pass
        if state.kind == "off":
            return None
        memory = self.memories[memory_key(stage)]
        expected = (
            tuple(m.channels for m in memory.pathways)
            if isinstance(memory, PathwayMemory)
            else memory.channels
        )
        if _width_of(output) != expected:
            raise MemoryStageError(
                f"{stage} outputs {_width_of(output)} channels, its memory was built for {expected}: "
                f"pass channels={{{stage!r}: ...}} to wrap"
            )
        features = list(output) if isinstance(output, tuple) else output
        if state.kind == "all":
            result = memory(features, state.num_clips, state.times)
        elif state.kind == "clip":
            if state.resume_grad:
                torch.set_grad_enabled(True)  # the caller's no_grad context restores the mode on exit
            cross = (
                None if state.cross_grads is None else _clip_entry(state.cross_grads[stage], state.clip_index)
            )
            result = memory.forward_one(features, state.banks[stage], state.clip_index, cross, state.times)
        elif stage in state.banks:
            result = memory.forward_bank(features, state.banks[stage], state.clips, state.times)
        else:
            state.summarized, state.summary = stage, memory.summarize(features)
            raise _StopForward
        return tuple(result) if isinstance(output, tuple) else result

    def forward(
        self,
        video: torch.Tensor,
        clip_index: int | None = None,
        banks: dict[str, Bank] | None = None,
        cross_grads: dict[str, Bank] | None = None,
        *,
        share_memory: bool = True,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-clip outputs (B, N, ...) of video (B, N, C, T, H, W), all clips in one graph.

        ``times`` (B, N): each clip's time in its video (``comem.memory``; None: even).
        ``share_memory=False`` gives every clip a memory of itself alone. With ``clip_index`` and
        ``banks`` this is :meth:`forward_clip` (so that a ``DistributedDataParallel`` wrapper,
        which only syncs gradients of its own forward, can run the two-pass scheme's clip passes).
        """
        if clip_index is not None:
            return self.forward_clip(video, clip_index, banks or {}, cross_grads, times=times)
        batch, num_clips = video.shape[:2]
        if times is not None and not share_memory:
            times = times.reshape(-1, 1)  # each clip a video of its own
        with self._running(_Pass("all", num_clips=num_clips if share_memory else 1, times=times)):
            output = self.wrapped(video.flatten(0, 1))
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"wrap needs a network that returns one tensor; {type(self.wrapped).__name__} "
                            f"returned {type(output).__name__}")  # fmt: skip
        return output.view(batch, num_clips, *output.shape[1:])

    @torch.no_grad()
    def memory_bank(
        self, video: torch.Tensor, *, chunk: int = 1, times: torch.Tensor | None = None
    ) -> dict[str, Bank]:
        """The banks of ``memory_pass``: summaries (B, N, C) of every clip at every memory stage."""
        return self.memory_pass(video, chunk=chunk, times=times).banks

    @torch.no_grad()
    def memory_pass(
        self,
        video: torch.Tensor,
        *,
        chunk: int = 1,
        keep_maps: bool = False,
        times: torch.Tensor | None = None,
    ) -> MemoryPass:
        """Summaries (B, N, C) of every clip at every memory stage, without gradients (a list, one
        per pathway, at a stage that outputs a list of maps).

        Stage by stage in the order the network runs them: a later stage's bank needs the earlier
        stages' gating, which needs the earlier banks of all clips. ``chunk`` clips of each video
        run per forward (see ``VideoModel.memory_pass``). ``keep_maps`` returns what
        ``logits_from_maps`` starts from: for an opaque network, each clip itself (no copy).
        """
        batch, num_clips = video.shape[:2]
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        spans = [slice(start, min(start + chunk, num_clips)) for start in range(0, num_clips, chunk)]
        banks: dict[str, Bank] = {}
        while len(banks) < len(self._stage_names):
            stage, parts = None, []
            for span in spans:
                with self._running(_Pass("bank", banks=banks, clips=span, times=times)) as state:
                    try:
                        self.wrapped(video[:, span].flatten(0, 1))
                    except _StopForward:
                        pass
                if state.summarized is None:
                    missing = [name for name in self._stage_names if name not in banks]
                    raise MemoryStageError(f"{type(self.wrapped).__name__}'s forward never ran {missing}")
                stage = state.summarized
                parts.append(_per_video(state.summary, batch))
            banks[stage] = _cat_clips(parts)
        return MemoryPass(banks, [video[:, index] for index in range(num_clips)] if keep_maps else [])

    def forward_clip(
        self,
        clip: torch.Tensor,
        clip_index: int,
        banks: dict[str, Bank],
        cross_grads: dict[str, Bank] | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's output for clip ``clip_index`` (B, C, T, H, W) of each video, reading ``banks``.

        ``cross_grads`` (as ``banks``): the gradient the other clips' losses send to every clip's
        summaries; this clip's entries are added to its summaries' gradients in backward.
        ``times`` (B, N): the banks' clip times (``comem.memory``; None: even).
        """
        state = _Pass("clip", clip_index=clip_index, banks=banks, cross_grads=cross_grads, times=times)
        with self._running(state):
            return self.wrapped(clip)

    def logits_from_maps(
        self, clip: torch.Tensor, clip_index: int, banks: dict[str, Bank], times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output of clip ``clip_index`` (``memory_pass(keep_maps=True).maps[clip_index]``) as a
        function of ``banks``: the prefix before the first memory stage runs without gradients."""
        state = _Pass("clip", clip_index=clip_index, banks=banks, resume_grad=True, times=times)
        with torch.no_grad(), self._running(state):
            return self.wrapped(clip)


def wrap(
    model: nn.Module,
    stages: Sequence[str],
    *,
    channels: Mapping[str, Width] | None = None,
    example: torch.Tensor | None = None,
    **memory_options: Any,
) -> WrappedModel:
    """Insert a collaborative memory after each named submodule of any clip network.

    Args:
        model: a network mapping a clip batch (B, C, T, H, W) to one tensor (B, ...), e.g.
            ``torchvision.models.video.r3d_18()``. It is not modified and still runs on its own.
        stages: names from ``model.named_modules()`` (``"layer3"``, ``"blocks.3"``), each
            returning a (B, C, T, H, W) map or a list of maps (one per pathway, e.g. SlowFast,
            which gets one memory per pathway).
        channels: output channels per stage (a tuple for pathway lists). Default: read off the
            stage's last normalisation/convolution layer, or measured on ``example``.
        example: one clip batch to run once (eval mode, no grad) to measure the stages' widths.
        memory_options: :class:`~comem.memory.CollaborativeMemory`'s options (``key_dim``,
            ``memory``, ``fusion``, ...).

    Returns a :class:`WrappedModel` mapping (B, N, C, T, H, W) to (B, N, ...). Its memories start
    at the identity, so at initialisation its outputs equal ``model``'s exactly.
    """
    return WrappedModel(model, stages, channels=channels, example=example, **memory_options)
