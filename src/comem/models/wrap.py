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
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from comem.memory import FUSION_KINDS, MEMORY_KINDS, SUMMARY_KINDS
from comem.models.build import MemoryStageError
from comem.models.contract import Bank, MemoryPass, cat_clips, clip_entry, group_times, per_video
from comem.models.layouts import (
    DEFAULT_OPTIONS,
    LAYOUTS,
    Layout,
    MemoryOptions,
    Width,
    memory_for,
    memory_width,
    width_of,
)


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
    times: torch.Tensor | None = None
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


def describe(output: Any) -> str:
    """A stage output's type and shape, ``Tensor (2, 96, 2, 8, 8)``, ``tuple(Tensor (…), list)``."""
    if isinstance(output, torch.Tensor):
        return f"Tensor {tuple(output.shape)}"
    if isinstance(output, (list, tuple)):
        return f"{type(output).__name__}({', '.join(describe(part) for part in output)})"
    return type(output).__name__


def _is_map(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.ndim == 5


def _tokens_and_grid(output: Any) -> tuple[torch.Tensor, tuple[int, ...] | None] | None:
    """Tokens (B, L, C) of an output that is them, or a tuple starting with them (and the grid
    (T, H, W) they were cut from, when the tuple carries it next: MViT's ``(tokens, thw)``)."""
    if isinstance(output, torch.Tensor) and output.ndim == 3:
        return output, None
    if not (isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor)):
        return None
    if output[0].ndim != 3:
        return None
    grid = output[1] if len(output) > 1 else None
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    if isinstance(grid, (list, tuple)) and len(grid) == 3 and all(isinstance(g, int) for g in grid):
        return output[0], tuple(grid)
    return output[0], None


def _layout_error(owner: str, stage: str, output: Any, problem: str) -> MemoryStageError:
    options = " | ".join(map(repr, LAYOUTS))
    return MemoryStageError(
        f"{owner}.{stage} returned {describe(output)}: {problem}; pass layout={{{stage!r}: {options}}}"
    )


def determine_layout(
    owner: str, stage: str, output: Any, larger: Any | None, given: Layout | None
) -> tuple[Layout, Width]:
    """The layout and width of ``stage`` from its output on a trial clip batch.

    ``larger``: its output on a batch with twice the frames and twice the width (None when the
    network would not run one), which tells a channels-first map from a channels-last one: the
    channel axis keeps its size. ``given``: the layout the user named, checked against the output.
    """
    if given is not None and given not in LAYOUTS:
        raise MemoryStageError(f"layout of {stage}: {given!r} is not one of {', '.join(LAYOUTS)}")
    if isinstance(output, (list, tuple)) and output and all(_is_map(part) for part in output):
        if given not in (None, "pathways"):
            raise _layout_error(owner, stage, output, f"a list of maps, not {given}")
        return "pathways", width_of("pathways", output)
    found = _tokens_and_grid(output)
    if found is not None:
        tokens, grid = found
        if given in ("tokens", "tokens_cls"):
            return given, width_of(given, output)
        if given is not None:
            raise _layout_error(owner, stage, output, f"tokens (B, L, C), not {given}")
        extra = None if grid is None else tokens.shape[1] - grid[0] * grid[1] * grid[2]
        if extra not in (0, 1):
            raise _layout_error(
                owner, stage, output, "cannot tell whether the tokens start with a class token"
            )
        layout: Layout = "tokens_cls" if extra == 1 else "tokens"
        return layout, width_of(layout, output)
    if not _is_map(output):
        raise _layout_error(owner, stage, output, "not a map (B, C, T, H, W), tokens or a list of maps")
    if given in ("channels_first", "channels_last"):
        return given, width_of(given, output)
    if given is not None:
        raise _layout_error(owner, stage, output, f"a map, not {given}")
    if larger is None or not _is_map(larger):
        raise _layout_error(
            owner, stage, output, "cannot tell its channel axis (the network did not run a larger clip)"
        )
    first = output.shape[1] == larger.shape[1] and output.shape[-1] != larger.shape[-1]
    last = output.shape[-1] == larger.shape[-1] and output.shape[1] != larger.shape[1]
    if first == last:
        raise _layout_error(
            owner, stage, output, "cannot tell its channel axis (B, C, T, H, W) or (B, T, H, W, C)"
        )
    layout = "channels_first" if first else "channels_last"
    return layout, width_of(layout, output)


@torch.no_grad()
def _stage_outputs(model: nn.Module, stages: dict[str, nn.Module], clips: torch.Tensor) -> dict[str, Any]:
    """Each stage's output for ``clips`` (eval mode, no grad); the forward stops once all have run."""
    outputs: dict[str, Any] = {}

    def record(name: str, output: Any) -> None:
        outputs[name] = output
        if len(outputs) == len(stages):
            raise _StopForward

    modes = {module: module.training for module in model.modules()}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
        for name, module in stages.items()
    ]
    try:
        model.eval()(clips)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return outputs


def trial_clips(model: nn.Module) -> torch.Tensor | None:
    """A small clip batch (1, 3, T, H, W) that torchvision's video networks accept (None for others):
    any size for the 3D ResNets, S3D (up to its last feature block) and Video Swin; MViT's own size."""
    from torchvision.models import video as tv_video

    size: tuple[int, int, int] | None = None
    if isinstance(model, (tv_video.VideoResNet, tv_video.S3D, tv_video.SwinTransformer3d)):
        size = (8, 32, 32)
    elif isinstance(model, tv_video.MViT):
        stride = model.conv_proj.stride
        encoding = model.pos_encoding
        size = (
            encoding.temporal_size * stride[0],
            encoding.spatial_size[0] * stride[1],
            encoding.spatial_size[1] * stride[2],
        )
    if size is None:
        return None
    parameter = next(model.parameters())
    return torch.zeros(1, 3, *size, device=parameter.device, dtype=parameter.dtype)


def _measure(
    model: nn.Module,
    stages: dict[str, nn.Module],
    example: torch.Tensor | None,
    layouts: Mapping[str, Layout],
) -> dict[str, tuple[Layout, Width]]:
    """Layout and width of every stage, from a trial forward on ``example`` (or ``trial_clips``)."""
    name = type(model).__name__
    clips = example if example is not None else trial_clips(model)
    if clips is None:
        raise MemoryStageError(
            f"cannot build a trial clip batch for {name}: "
            "pass example=<a clip batch (B, C, T, H, W) it takes>"
        )
    if clips.ndim == 6:
        clips = clips.flatten(0, 1)
    parameter = next(model.parameters(), None)
    clips = clips[:1] if parameter is None else clips[:1].to(parameter.device)
    outputs = _stage_outputs(model, stages, clips)
    never = [stage for stage in stages if stage not in outputs]
    if never:
        raise MemoryStageError(f"{name}'s forward on the example never ran {', '.join(never)}")
    larger = None
    if any(_is_map(outputs[stage]) and stage not in layouts for stage in stages):
        bigger = clips.repeat_interleave(2, dim=2).repeat_interleave(2, dim=-1)
        try:
            larger = _stage_outputs(model, stages, bigger)
        except Exception:  # a network of one clip size: the layout must then be given
            larger = None
    return {
        stage: determine_layout(name, stage, outputs[stage], (larger or {}).get(stage), layouts.get(stage))
        for stage in stages
    }


def _unknown_stages(model: nn.Module, unknown: list[str]) -> MemoryStageError:
    names = [name for name, _ in model.named_modules() if name]
    hints = []
    for stage in unknown:
        close = difflib.get_close_matches(str(stage), names, n=5, cutoff=0.5)
        hints.append(f"{stage!r} (nearest: {', '.join(close)})" if close else repr(stage))
    return MemoryStageError(
        f"{type(model).__name__} has no submodule {'; '.join(hints)}; its top-level submodules are "
        f"{', '.join(model._modules)}"
    )


def _output_tensor(output: Any, owner: str) -> torch.Tensor:
    """The network's per-clip output: a tensor, or the ``logits`` of a model-output record
    (Hugging Face ``transformers`` models return one)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"wrap needs a network that returns one tensor (or an output with .logits); {owner} "
                    f"returned {type(output).__name__}")  # fmt: skip


class WrappedModel(nn.Module):
    """A clip network with a collaborative memory after each of its named ``stages``.

    Input videos are (B, N, C, T, H, W); the output is the network's own per-clip output with the
    clips axis restored, (B, N, ...). Made by :func:`wrap`; ``wrapped`` is the original network;
    ``layouts`` gives each stage's layout and width as the trial forward found them.
    """

    def __init__(
        self,
        model: nn.Module,
        stages: Sequence[str],
        *,
        example: torch.Tensor | None = None,
        layout: Layout | Mapping[str, Layout] | None = None,
        memory_options: MemoryOptions = DEFAULT_OPTIONS,
    ) -> None:
        super().__init__()
        name = type(model).__name__
        if isinstance(stages, str) or not stages:
            raise MemoryStageError(f"stages must be a non-empty list of submodule names, got {stages!r}")
        submodules = dict(model.named_modules())
        unknown = [stage for stage in stages if not stage or stage not in submodules]
        if unknown:
            raise _unknown_stages(model, unknown)
        if hasattr(model, "memories"):
            raise ValueError(f"{name} already has an attribute 'memories' (is it wrapped already?)")
        keys = [memory_key(stage) for stage in stages]
        if len(set(keys)) != len(keys):
            raise MemoryStageError(f"stages name the same submodule twice: {list(stages)}")
        given = dict(layout) if isinstance(layout, Mapping) else {stage: layout for stage in stages if layout}
        stray = [stage for stage in given if stage not in stages]
        if stray:
            raise MemoryStageError(
                f"layout names {', '.join(stray)}, which is not among the stages {list(stages)}"
            )
        measured = _measure(model, {stage: submodules[stage] for stage in stages}, example, given)
        object.__setattr__(self, "wrapped", model)  # not registered: its parts are adopted below
        self._modules.update(model._modules)
        self._parameters.update(model._parameters)
        self._buffers.update(model._buffers)
        self._non_persistent_buffers_set.update(model._non_persistent_buffers_set)
        self.training = model.training
        self._stage_names = tuple(stages)
        self.layouts: dict[str, tuple[Layout, Width]] = measured
        trial = example if example is not None else trial_clips(model)
        self.clip_shape: tuple[int, ...] = tuple(trial.shape[-4:])  # (C, T, H, W) of a clip it takes
        device = next(model.parameters(), torch.zeros(())).device
        self.memories = nn.ModuleDict(
            {memory_key(stage): memory_for(*measured[stage], memory_options).to(device) for stage in stages}
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
        layout = self.layouts[stage][0]
        expected = memory_width(memory)
        try:
            width = width_of(layout, output)
        except (AttributeError, IndexError, TypeError):
            width = None
        if width != expected:
            raise MemoryStageError(
                f"{stage} returned {describe(output)}, its memory was built for {layout} of {expected} "
                f"channels: pass example=<a clip batch like this one> to wrap"
            )
        if state.kind == "all":
            return memory(output, state.num_clips, state.times)
        if state.kind == "clip":
            if state.resume_grad:
                torch.set_grad_enabled(True)  # the caller's no_grad context restores the mode on exit
            cross = (
                None if state.cross_grads is None else clip_entry(state.cross_grads[stage], state.clip_index)
            )
            return memory.forward_one(output, state.banks[stage], state.clip_index, cross, state.times)
        if stage in state.banks:
            return memory.forward_bank(output, state.banks[stage], state.clips, state.times)
        state.summarized, state.summary = stage, memory.summarize(output)
        raise _StopForward

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
        """Per-clip outputs (B, N, ...) of video (B, N, C, T, H, W), all clips in one graph;
        ``times`` (B, N) the clips' times.

        ``times`` (B, N): each clip's time in its video (``comem.memory``; None: even).
        ``share_memory=False`` gives every clip a memory of itself alone. With ``clip_index`` and
        ``banks`` this is :meth:`forward_clip` (so that a ``DistributedDataParallel`` wrapper,
        which only syncs gradients of its own forward, can run the two-pass scheme's clip passes).
        """
        if clip_index is not None:
            return self.forward_clip(video, clip_index, banks or {}, cross_grads, times)
        batch, num_clips = video.shape[:2]
        state = _Pass(
            "all", num_clips=num_clips if share_memory else 1, times=group_times(times, share_memory)
        )
        with self._running(state):
            output = self._run(video.flatten(0, 1))
        return output.view(batch, num_clips, *output.shape[1:])

    def _run(self, clips: torch.Tensor) -> torch.Tensor:
        return _output_tensor(self.wrapped(clips), type(self.wrapped).__name__)

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
                parts.append(per_video(state.summary, batch))
            banks[stage] = cat_clips(parts)
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
        ``times`` (B, N): the times of the banks' clips.
        """
        state = _Pass("clip", clip_index=clip_index, banks=banks, cross_grads=cross_grads, times=times)
        with self._running(state):
            return self._run(clip)

    def logits_from_maps(
        self, clip: torch.Tensor, clip_index: int, banks: dict[str, Bank], times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output of clip ``clip_index`` (``memory_pass(keep_maps=True).maps[clip_index]``) as a
        function of ``banks``: the prefix before the first memory stage runs without gradients."""
        state = _Pass("clip", clip_index=clip_index, banks=banks, times=times, resume_grad=True)
        with torch.no_grad(), self._running(state):
            return self._run(clip)


def wrap(
    model: nn.Module,
    stages: Sequence[str],
    *,
    example: torch.Tensor | None = None,
    layout: Layout | Mapping[str, Layout] | None = None,
    **memory_options: Any,
) -> WrappedModel:
    """Insert a collaborative memory after each named submodule of any clip network.

    Args:
        model: a network mapping a clip batch (B, C, T, H, W) to one tensor (B, ...) (or to an
            output with ``.logits``, as Hugging Face models return), e.g.
            ``torchvision.models.video.r3d_18()``. It is not modified and still runs on its own.
        stages: names from ``model.named_modules()`` (``"layer3"``, ``"features.2"``, ``"blocks.3"``).
            A stage may return a map (B, C, T, H, W) or (B, T, H, W, C), tokens (B, L, C) with or
            without a class token (alone or first in a tuple, as MViT's ``(tokens, thw)``: the
            memory gates the tokens, the rest passes through), or a list of maps (one memory per
            pathway, e.g. SlowFast).
        example: a clip batch (B, C, T, H, W) the network takes (one clip of it runs, in eval mode
            and without gradients; a second run with twice the frames and width tells a map's
            channel axis). Default: a small batch built for torchvision's video networks.
        layout: each stage's layout (``channels_first``, ``channels_last``, ``tokens``,
            ``tokens_cls``, ``pathways``), one for all or a dict per stage, where the trial forward
            cannot tell it (tokens without a grid, a network of one clip size).
        memory_options: :class:`~comem.memory_options.MemoryOptions`' fields (``key_dim``,
            ``memory``, ``fusion``, ``gate_hidden``, ``summary``, ``entry_hidden``, ``clip_time``).

    Returns a :class:`WrappedModel` mapping (B, N, C, T, H, W) to (B, N, ...), whose memories are
    as wide as their stage's channels. They start at the identity, so at initialisation its
    outputs equal ``model``'s exactly.
    """
    try:
        options = MemoryOptions(**memory_options)
    except TypeError:
        known = ", ".join(MemoryOptions.__dataclass_fields__)
        unknown = ", ".join(sorted(set(memory_options) - set(MemoryOptions.__dataclass_fields__)))
        raise MemoryStageError(
            f"wrap got unknown option(s) {unknown}; the memory's options are {known}"
        ) from None
    for name, choices in (("memory", MEMORY_KINDS), ("fusion", FUSION_KINDS), ("summary", SUMMARY_KINDS)):
        if getattr(options, name) not in choices:
            raise MemoryStageError(
                f"wrap option {name}={getattr(options, name)!r}: not one of {', '.join(choices)}"
            )
    for name in ("key_dim", "gate_hidden", "entry_hidden"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise MemoryStageError(f"wrap option {name}={value!r}: not a positive integer or None")
    return WrappedModel(model, stages, example=example, layout=layout, memory_options=options)
