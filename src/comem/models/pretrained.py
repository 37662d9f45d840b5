"""Load pretrained weights from a local file in torchvision's, PySlowFast's or PyTorchVideo's naming.

The three formats name the same tensors differently; each is renamed onto comem's names
(``backbone.stages.<stage>.…``, ``head.…``) and then loaded:

- torchvision state dicts (``stem.0.weight``, ``layer1.0.conv1.0.0.weight``, ``fc.weight``): the
  backbones built from torchvision models record every tensor's torchvision name
  (``VideoBackbone.torchvision_keys``).
- PySlowFast checkpoints (``{"model_state": …}``; ``s1.pathway0_stem.conv.weight``,
  ``s2.pathway0_res0.branch2.a.weight``, ``s1_fuse.conv_f2s.weight``, ``head.projection.weight``).
- PyTorchVideo hub state dicts (``blocks.0.conv.weight``,
  ``blocks.1.res_blocks.0.branch2.conv_a.weight``, ``blocks.5.proj.weight``).
- VMZ's PyTorch CSN weights (the paper's ir-/ip-CSN-152, e.g. IG-65M), in torchvision's
  ``VideoResNet`` naming (``stem.0.weight``, ``layer1.0.conv2.0.weight``, ``layer1.0.downsample.0.weight``).

The classifier is loaded only when its class count matches; otherwise it keeps its fresh
initialisation. Memory modules are never in a pretrained file: they start as the identity, so a
loaded model predicts exactly as the pretrained network does, and the model takes on the input
normalisation its source was trained with (``normalization.py``).

``"torchvision"`` instead of a path reads the backbone's torchvision Kinetics-400 weights from
torch's hub cache (``$TORCH_HOME/hub/checkpoints/<file>``, where ``torchvision`` itself keeps them);
nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comem.errors import UserError
from comem.models import normalization as norms
from comem.models.backbones import BACKBONES, torchvision_normalization
from comem.models.normalization import Normalization
from comem.serialization import read_torch_file


class PretrainedLoadError(UserError, RuntimeError):
    """A pretrained checkpoint that does not fit the backbone (message names the file)."""


Rules = list[tuple[str, Any]]  # (regex on their key, re.sub replacement giving ours), in order

_BLOCK = [  # a residual block's modules; ours follow PyTorchVideo's names
    (r"\.branch1\.", ".branch1_conv."),
    (r"\.branch1_bn\.", ".branch1_norm."),
    (r"\.branch2\.a\.", ".branch2.conv_a."),
    (r"\.branch2\.a_bn\.", ".branch2.norm_a."),
    (r"\.branch2\.b\.", ".branch2.conv_b."),
    (r"\.branch2\.b_bn\.", ".branch2.norm_b."),
    (r"\.branch2\.c\.", ".branch2.conv_c."),
    (r"\.branch2\.c_bn\.", ".branch2.norm_c."),
]

PYSLOWFAST: dict[str, Rules] = {
    "resnet": [
        (r"^s1\.pathway0_stem\.bn\.", "backbone.stages.stem.norm."),
        (r"^s1\.pathway0_stem\.", "backbone.stages.stem."),
        (r"^s(\d)\.pathway0_res(\d+)\.", r"backbone.stages.res\1.res_blocks.\2."),
        *_BLOCK,
        (r"^head\.projection\.", "head.fc."),
    ],
    "x3d": [
        (r"^s1\.pathway0_stem\.conv_xy\.", "backbone.stages.stem.conv_xy."),
        (r"^s1\.pathway0_stem\.conv\.", "backbone.stages.stem.conv_t."),
        (r"^s1\.pathway0_stem\.bn\.", "backbone.stages.stem.norm."),
        (r"^s(\d)\.pathway0_res(\d+)\.", r"backbone.stages.res\1.res_blocks.\2."),
        *_BLOCK,
        (r"^head\.conv_5\.", "backbone.stages.conv5.conv."),
        (r"^head\.conv_5_bn\.", "backbone.stages.conv5.norm."),
        (r"^head\.lin_5\.", "head.hidden."),
        (r"^head\.projection\.", "head.fc."),
    ],
    "slowfast": [
        (r"^s1\.pathway(\d)_stem\.bn\.", r"backbone.stages.stem.pathways.\1.norm."),
        (r"^s1\.pathway(\d)_stem\.", r"backbone.stages.stem.pathways.\1."),
        (r"^s(\d)\.pathway(\d)_res(\d+)\.", r"backbone.stages.res\1.pathways.\2.res_blocks.\3."),
        *_BLOCK,
        (r"^s1_fuse\.conv_f2s\.", "backbone.stages.stem.fusion.conv."),
        (r"^s1_fuse\.bn\.", "backbone.stages.stem.fusion.norm."),
        (r"^s(\d)_fuse\.conv_f2s\.", r"backbone.stages.res\1.fusion.conv."),
        (r"^s(\d)_fuse\.bn\.", r"backbone.stages.res\1.fusion.norm."),
        (r"^head\.projection\.", "head.fc."),
    ],
}

_PTV_STAGES = [(r"^blocks\.0\.", "backbone.stages.stem.")] + [
    (rf"^blocks\.{index}\.", f"backbone.stages.res{index + 1}.") for index in range(1, 5)
]
PYTORCHVIDEO: dict[str, Rules] = {
    "resnet": [(r"^blocks\.5\.proj\.", "head.fc."), *_PTV_STAGES],
    "x3d": [
        (r"^blocks\.0\.conv\.conv_t\.", "backbone.stages.stem.conv_xy."),  # PyTorchVideo's X3D stem
        (r"^blocks\.0\.conv\.conv_xy\.", "backbone.stages.stem.conv_t."),  # names are swapped
        (r"^blocks\.5\.pool\.pre_conv\.", "backbone.stages.conv5.conv."),
        (r"^blocks\.5\.pool\.pre_norm\.", "backbone.stages.conv5.norm."),
        (r"^blocks\.5\.pool\.post_conv\.", "head.hidden."),
        (r"^blocks\.5\.proj\.", "head.fc."),
        *_PTV_STAGES,
        (r"\.branch2\.norm_b\.0\.", ".branch2.norm_b."),
        (r"\.branch2\.norm_b\.1\.block\.1\.", ".branch2.se.fc1."),
        (r"\.branch2\.norm_b\.1\.block\.3\.", ".branch2.se.fc2."),
    ],
    "slowfast": [
        (r"^blocks\.6\.proj\.", "head.fc."),
        *_PTV_STAGES,
        (r"\.multipathway_blocks\.(\d)\.", r".pathways.\1."),
        (r"\.multipathway_fusion\.conv_fast_to_slow\.", ".fusion.conv."),
        (r"\.multipathway_fusion\.norm\.", ".fusion.norm."),
    ],
}


FORMATS = ("comem", "torchvision", "PySlowFast", "PyTorchVideo", "VMZ")


VMZ: dict[str, Rules] = {
    "resnet": [
        (r"^stem\.0\.", "backbone.stages.stem.conv."),
        (r"^stem\.1\.", "backbone.stages.stem.norm."),
        (r"^layer(\d)\.(\d+)\.", lambda m: f"backbone.stages.res{int(m[1]) + 1}.res_blocks.{m[2]}."),
        (r"\.downsample\.0\.", ".branch1_conv."),
        (r"\.downsample\.1\.", ".branch1_norm."),
        (r"\.conv1\.0\.", ".branch2.conv_a."),
        (r"\.conv1\.1\.", ".branch2.norm_a."),
        (r"\.conv2\.0\.0\.", ".branch2.conv_b.pointwise."),  # ip-CSN: 1x1x1, BN, depthwise
        (r"\.conv2\.0\.1\.", ".branch2.conv_b.norm."),
        (r"\.conv2\.0\.2\.", ".branch2.conv_b.depthwise."),
        (r"\.conv2\.0\.", ".branch2.conv_b."),
        (r"\.conv2\.1\.", ".branch2.norm_b."),
        (r"\.conv3\.0\.", ".branch2.conv_c."),
        (r"\.conv3\.1\.", ".branch2.norm_c."),
        (r"^fc\.", "head.fc."),
    ]
}
FOREIGN_RULES = {"PySlowFast": PYSLOWFAST, "PyTorchVideo": PYTORCHVIDEO, "VMZ": VMZ}


def _rename(key: str, rules: Rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def to_comem_keys(model: nn.Module, state: dict[str, torch.Tensor], fmt: str) -> dict[str, str]:
    """Their key -> our key, for every key of ``state`` that has a counterpart in ``model``."""
    ours = model.state_dict()
    if fmt == "comem":
        return {key: key for key in state if key in ours}
    if fmt == "torchvision":
        table = model.backbone.torchvision_keys
        return {key: table[key] for key in state if table.get(key) in ours}
    rules = FOREIGN_RULES[fmt].get(model.backbone.family)
    if rules is None:
        return {}
    renamed = {key: _rename(key, rules) for key in state}
    return {key: mine for key, mine in renamed.items() if mine in ours}


TORCHVISION = "torchvision"  # --pretrained torchvision: the backbone's file in torch's hub cache


def torchvision_weights_file(backbone: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps ``backbone``'s torchvision weights, and the URL they come from."""
    weights = BACKBONES[backbone].torchvision_weights if backbone in BACKBONES else None
    if weights is None:
        having = ", ".join(name for name, entry in BACKBONES.items() if entry.torchvision_weights is not None)
        raise PretrainedLoadError(
            f"--pretrained torchvision: torchvision publishes no weights for backbone {backbone} "
            f"(it does for {having}); give the path of a weights file instead"
        )
    url = weights.DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def resolve_weights_path(source: str | Path, backbone: str) -> Path:
    """The file ``--pretrained`` names: a path, or for ``torchvision`` the backbone's cached file."""
    if str(source) != TORCHVISION:
        return Path(source)
    path, url = torchvision_weights_file(backbone)
    if not path.is_file():
        raise PretrainedLoadError(
            f"{path}: torchvision weights of {backbone} not found; on a machine with internet fetch "
            f"{url} and copy it there (or set TORCH_HOME to the folder above hub/)"
        )
    return path


def _stored_normalization(checkpoint: Any) -> Normalization | None:
    """The input normalisation a comem checkpoint records (None for other files)."""
    spec = checkpoint.get("model_spec") if isinstance(checkpoint, dict) else None
    if not isinstance(spec, dict) or "backbone" not in spec:
        return None
    if spec.get("mean") is None:  # checkpoints that predate the field were all trained this way
        return norms.PYSLOWFAST
    return norms.normalization(spec["mean"], spec["std"])


def source_normalization(fmt: str, backbone: str, stored: Normalization | None) -> Normalization:
    """The input normalisation the weights of a file in naming ``fmt`` were trained with."""
    if fmt == "comem":
        return stored or norms.PYSLOWFAST
    weights = BACKBONES[backbone].torchvision_weights if backbone in BACKBONES else None
    if fmt == "torchvision" and weights is not None:
        return torchvision_normalization(weights)
    if fmt == "VMZ":
        return norms.VMZ
    return norms.PYSLOWFAST


def _read(path: Path) -> tuple[dict[str, torch.Tensor], Normalization | None]:
    """The file's state dict, and the normalisation it records if it is a comem checkpoint."""
    if not path.is_file():
        raise PretrainedLoadError(f"{path}: pretrained weights file not found")
    state = read_torch_file(path, PretrainedLoadError, "weights file")
    stored = _stored_normalization(state)
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedLoadError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    if state and all(key.startswith("module.") for key in state):  # saved from a DDP-wrapped model
        state = {key.removeprefix("module."): value for key, value in state.items()}
    if any(key.startswith("video_model.") for key in state):
        # A `--task ava` detector: its video model (backbone, memories) loads; its RoI head is the
        # detection task's own, left out like a classifier of another class count.
        state = {key[len("video_model.") :]: v for key, v in state.items() if key.startswith("video_model.")}
    return state, stored


def _first(keys: list[str], count: int = 5) -> str:
    return ", ".join(keys[:count]) + (", …" if len(keys) > count else "")


def load_pretrained(model: nn.Module, path: str | Path, *, strict: bool = True) -> list[str]:
    """Load a local torchvision / PySlowFast / PyTorchVideo / VMZ checkpoint, or a comem one (its
    memories included), into ``model`` (a ``VideoModel``), and set ``model.normalization`` to the
    one the file's weights expect. ``path`` ``"torchvision"``: the backbone's torchvision weights
    from torch's hub cache.

    Returns our keys the file did not provide (empty when ``strict``; memory modules and a
    re-initialised classifier are not counted). With ``strict``, any such key, or any file key
    with no counterpart, is an error naming them; a shape mismatch is always an error.
    """
    path = resolve_weights_path(path, model.backbone.name)
    state, stored = _read(path)
    # The format is the naming under which most of the file's keys find a tensor in the model
    # (key prefixes alone mislead: torchvision's MViT and PyTorchVideo both use "blocks.").
    fmt, mapping = max(
        ((fmt, to_comem_keys(model, state, fmt)) for fmt in FORMATS), key=lambda pair: len(pair[1])
    )
    ours = model.state_dict()
    name = model.backbone.name
    loaded: dict[str, torch.Tensor] = {}
    for theirs, mine in mapping.items():
        value, target = state[theirs], ours[mine]
        if value.shape != target.shape and value.numel() == target.numel() and value.dim() != target.dim():
            value = value.reshape(target.shape)  # a 1x1x1 conv classifier into a linear one
        if value.shape != target.shape:
            if mine.startswith("head.fc."):
                continue  # another class count: the classifier keeps its fresh initialisation
            raise PretrainedLoadError(
                f"{path}: does not fit backbone {name}: {theirs} is {tuple(value.shape)} in the file, "
                f"{mine} is {tuple(target.shape)} in the model ({fmt} format)"
            )
        loaded[mine] = value
    expected = [  # memories are new; the classifier is optional; BN batch counters do not matter
        key
        for key in ours
        if not key.startswith(("memories.", "head.fc.")) and not key.endswith("num_batches_tracked")
    ]
    missing = [key for key in expected if key not in loaded]
    unexpected = [key for key in state if key not in mapping]
    if strict and (missing or unexpected):
        raise PretrainedLoadError(
            f"{path}: does not match the backbone {name} as a {fmt} checkpoint "
            f"({len(missing)} missing keys [{_first(missing)}], "
            f"{len(unexpected)} unexpected [{_first(unexpected)}]); --pretrained-strict false loads the rest"
        )
    model.load_state_dict(loaded, strict=False)
    model.normalization = source_normalization(fmt, name, stored)
    return missing
